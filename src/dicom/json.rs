//! The DICOM JSON Model (PS3.18 Annex F) of a stored instance, for WADO-RS metadata.
//!
//! dicom-json 0.10 cannot write BulkDataURI and inlines every binary value, so Kura serialises
//! the data set itself: values by VR as Table F.2.3-1 says, person names split into component
//! groups, text re-decoded where ISO 2022 code extensions apply, and every binary value larger
//! than [`INLINE_BINARY_MAX`] (Pixel Data always) as a BulkDataURI that the bulkdata resource
//! resolves. The URIs carry [`BASE_PLACEHOLDER`] instead of the service's base URL, which a
//! response replaces, so that the JSON can be computed once, at store time.

use base64::Engine;
use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use serde_json::{Map, Value as Json, json};

use super::charset;
use super::layout::PixelDataLayout;

/// Binary values up to this many bytes go inline (InlineBinary); larger ones by BulkDataURI.
pub const INLINE_BINARY_MAX: usize = 1024;
/// Stands for the DICOMweb base URL in stored metadata.
pub const BASE_PLACEHOLDER: &str = "kura-base:";

/// What the serialiser needs besides the data set.
pub struct Context<'a> {
    /// `{BASE_PLACEHOLDER}/studies/…/instances/{sop}`: bulkdata URIs are `{this}/bulkdata/{tag}`.
    pub instance_path: &'a str,
    pub transfer_syntax_uid: &'a str,
    /// Values of (0008,0005), for ISO 2022 text.
    pub character_sets: &'a [String],
    /// Raw bytes of small top-level elements (from `layout::walk`).
    pub raw_values: &'a super::layout::RawValues,
    pub pixel_data: Option<&'a PixelDataLayout>,
    /// Top-level elements whose values the parse did not read (`part10::HIDDEN_VALUE_MIN`):
    /// bulk data, given by BulkDataURI whatever their VR (PS3.18 F.2.5). Sorted.
    pub bulk_values: &'a [u32],
    /// Values inside sequences that the parse did not read, by path (sequence tag, item number
    /// from 1, …, the value's tag; `layout::NestedValue`): BulkDataURI
    /// `{instance}/bulkdata/{sequence}/{item}/…/{tag}`. Sorted.
    pub nested_bulk_values: &'a [Vec<u32>],
}

/// The bulkdata path segments of a nested value: tags as 8 hex digits, item numbers in decimal.
pub fn nested_bulk_path(path: &[u32]) -> String {
    path.iter()
        .enumerate()
        .map(|(i, n)| if i % 2 == 0 { format!("{n:08X}") } else { n.to_string() })
        .collect::<Vec<_>>()
        .join("/")
}

fn tag_hex(tag: Tag) -> String {
    format!("{:04X}{:04X}", tag.group(), tag.element())
}

fn tag_number(tag: Tag) -> u32 {
    (u32::from(tag.group()) << 16) | u32::from(tag.element())
}

fn is_binary(vr: VR) -> bool {
    matches!(vr, VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN)
}

/// A JSON number where the text is one (F.2.3 allows IS and DS as strings otherwise).
fn decimal(text: &str) -> Json {
    let text = text.trim();
    if let Ok(integer) = text.parse::<i64>() {
        return json!(integer);
    }
    match text.parse::<f64>() {
        Ok(number) if number.is_finite() && !text.starts_with(['+', '.']) && !text.ends_with('.') => json!(number),
        _ => Json::String(text.to_string()),
    }
}

fn person_name(value: &str) -> Json {
    let mut groups = Map::new();
    for (name, group) in ["Alphabetic", "Ideographic", "Phonetic"].iter().zip(value.split('=')) {
        if !group.is_empty() {
            groups.insert((*name).to_string(), Json::String(group.to_string()));
        }
    }
    Json::Object(groups)
}

fn strings_value(vr: VR, values: &[String]) -> Option<Json> {
    if values.iter().all(|v| v.trim_end_matches(['\0', ' ']).is_empty()) {
        return None;
    }
    let items = values.iter().map(|raw| {
        let value = raw.trim_end_matches(['\0', ' ']);
        let value = if matches!(vr, VR::LT | VR::ST | VR::UT | VR::UC | VR::UR) { value } else { value.trim_start() };
        if value.is_empty() {
            return Json::Null;
        }
        match vr {
            VR::PN => person_name(value),
            VR::IS | VR::DS => decimal(value),
            _ => Json::String(value.to_string()),
        }
    });
    Some(Json::Array(items.collect()))
}

fn primitive_value(vr: VR, value: &PrimitiveValue) -> Option<Json> {
    if value.multiplicity() == 0 {
        return None;
    }
    match vr {
        VR::AT => match value {
            PrimitiveValue::Tags(values) => Some(values.iter().map(|t| Json::String(tag_hex(*t))).collect()),
            _ => None,
        },
        VR::US | VR::SS | VR::UL | VR::SL | VR::SV => {
            value.to_multi_int::<i64>().ok().map(|values| values.into_iter().map(|v| json!(v)).collect())
        }
        VR::UV => value.to_multi_int::<u64>().ok().map(|values| values.into_iter().map(|v| json!(v)).collect()),
        VR::FL | VR::FD => value.to_multi_float64().ok().map(|values| {
            values.into_iter().map(|v| if v.is_finite() { json!(v) } else { Json::String(v.to_string()) }).collect()
        }),
        _ => strings_value(vr, &value.to_multi_str()),
    }
}

/// `path`: where the element's data set sits (sequence tag, item number, …; empty at the top).
fn element_json(context: &Context<'_>, path: &[u32], tag: Tag, vr: VR, value: &Value<InMemDicomObject>) -> Json {
    let top_level = path.is_empty();
    let mut out = Map::new();
    out.insert("vr".into(), Json::String(vr.to_string().to_string()));
    // A hidden nested value reads as empty; only then can it be one.
    if !top_level
        && !context.nested_bulk_values.is_empty()
        && value.primitive().is_some_and(dicom_core::header::HasLength::is_empty)
    {
        let full: Vec<u32> = path.iter().copied().chain([tag_number(tag)]).collect();
        if context.nested_bulk_values.binary_search(&full).is_ok() {
            let uri = format!("{}/bulkdata/{}", context.instance_path, nested_bulk_path(&full));
            out.insert("BulkDataURI".into(), Json::String(uri));
            return Json::Object(out);
        }
    }
    if top_level && context.bulk_values.binary_search(&tag_number(tag)).is_ok() {
        // F.2.6 allows BulkDataURI for these VRs only; a value of another VR this large (possible
        // in Implicit VR alone, and never valid) is given as present but empty (F.2.5).
        if matches!(
            vr,
            VR::DS
                | VR::FL
                | VR::FD
                | VR::IS
                | VR::LT
                | VR::ST
                | VR::SL
                | VR::SS
                | VR::SV
                | VR::UC
                | VR::UL
                | VR::US
                | VR::UT
                | VR::UV
        ) || is_binary(vr)
        {
            let uri = format!("{}/bulkdata/{}", context.instance_path, tag_hex(tag));
            out.insert("BulkDataURI".into(), Json::String(uri));
        }
        return Json::Object(out);
    }
    match value {
        Value::Sequence(sequence) => {
            let items: Vec<Json> = sequence
                .items()
                .iter()
                .enumerate()
                .map(|(index, item)| {
                    let item_path: Vec<u32> = path.iter().copied().chain([tag_number(tag), index as u32 + 1]).collect();
                    dataset_json(context, item, &item_path)
                })
                .collect();
            if !items.is_empty() {
                out.insert("Value".into(), Json::Array(items));
            }
        }
        Value::PixelSequence(_) => {
            out.insert(
                "BulkDataURI".into(),
                Json::String(format!("{}/bulkdata/{}", context.instance_path, tag_hex(tag))),
            );
        }
        Value::Primitive(primitive) if is_binary(vr) => {
            let bytes = primitive.to_bytes();
            if top_level && bytes.len() > INLINE_BINARY_MAX {
                let uri = format!("{}/bulkdata/{}", context.instance_path, tag_hex(tag));
                out.insert("BulkDataURI".into(), Json::String(uri));
            } else if !bytes.is_empty() {
                let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
                out.insert("InlineBinary".into(), Json::String(encoded));
            }
        }
        Value::Primitive(primitive) => {
            let raw = context.raw_values.get(&tag_number(tag));
            let extended = charset::needs_code_extensions(context.character_sets)
                && matches!(vr, VR::PN | VR::LO | VR::SH | VR::LT | VR::ST | VR::UT | VR::UC);
            // Inside sequences there are no raw bytes from the layout walk; dicom-rs read them
            // in the default repertoire, one character per byte, so the bytes can be recovered.
            let recovered = || -> Option<Vec<u8>> {
                let text = primitive.to_multi_str().join("\\");
                text.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
            };
            let bytes = match raw {
                Some(raw) if top_level && extended => Some(raw.clone()),
                _ if extended => recovered(),
                _ => None,
            };
            let json = match bytes {
                Some(bytes) => {
                    let decoded = charset::decode(&bytes, context.character_sets, vr == VR::PN);
                    let values: Vec<String> = if matches!(vr, VR::LT | VR::ST | VR::UT) {
                        vec![decoded]
                    } else {
                        decoded.split('\\').map(str::to_string).collect()
                    };
                    strings_value(vr, &values)
                }
                None => primitive_value(vr, primitive),
            };
            if let Some(json) = json {
                out.insert("Value".into(), json);
            }
        }
    }
    Json::Object(out)
}

fn dataset_json(context: &Context<'_>, object: &InMemDicomObject, path: &[u32]) -> Json {
    let top_level = path.is_empty();
    let mut out = Map::new();
    for element in object.iter() {
        let tag = element.header().tag;
        // Group lengths never appear (F.2.2); File Meta is not part of the data set.
        if tag.element() == 0 || tag.group() == 0x0002 {
            continue;
        }
        if top_level && tag == tags::SPECIFIC_CHARACTER_SET {
            // Every value below is UTF-8 now (F.2).
            out.insert(tag_hex(tag), json!({"vr": "CS", "Value": ["ISO_IR 192"]}));
            continue;
        }
        out.insert(tag_hex(tag), element_json(context, path, tag, element.vr(), element.value()));
    }
    Json::Object(out)
}

/// The DICOM JSON object of one instance (parsed up to Pixel Data), members in tag order.
pub fn instance_json(context: &Context<'_>, object: &InMemDicomObject) -> Json {
    let mut json = dataset_json(context, object, &[]);
    if let Json::Object(map) = &mut json {
        map.insert(
            tag_hex(tags::AVAILABLE_TRANSFER_SYNTAX_UID),
            json!({"vr": "UI", "Value": [context.transfer_syntax_uid]}),
        );
        if let Some(pixel_data) = context.pixel_data {
            // The VR the file has (F.2.3); Implicit VR files have OW (PS3.5 §A.1). Pixel Data
            // is OB or OW (PS3.5 §8.2); a file that writes another VR there (found by the
            // `metadata_writers` fuzz target: "O^", which also went unescaped into the XML)
            // gets OW, so the metadata never carries a VR that is not one.
            let vr = match (pixel_data.vr.as_deref(), pixel_data.length) {
                (_, None) | (Some("OB"), _) => "OB",
                _ => "OW",
            };
            map.insert(
                tag_hex(tags::PIXEL_DATA),
                json!({"vr": vr, "BulkDataURI": format!("{}/bulkdata/{}", context.instance_path, tag_hex(tags::PIXEL_DATA))}),
            );
        }
        // serde_json keeps insertion order only with `preserve_order`; sort to be sure (F.2.2).
        let mut entries: Vec<(String, Json)> = std::mem::take(map).into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        map.extend(entries);
    }
    json
}
