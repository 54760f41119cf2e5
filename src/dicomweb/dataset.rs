//! A small response data set, rendered as DICOM JSON (PS3.18 Annex F) or as the Native DICOM
//! Model XML (PS3.19). Used for the Store Instances Response and QIDO-RS results.

use std::collections::BTreeMap;
use std::fmt::Write;

use dicom_core::{Tag, VR};
use serde_json::{Map, Value as Json, json};

/// An element's values.
#[derive(Debug, Clone)]
pub enum Values {
    /// Zero-length value (F.2.5: the attribute with only "vr").
    Empty,
    Strings(Vec<String>),
    Items(Vec<Dataset>),
}

#[derive(Debug, Clone, Default)]
pub struct Dataset {
    elements: BTreeMap<Tag, (VR, Values)>,
}

fn tag_hex(tag: Tag) -> String {
    format!("{:04X}{:04X}", tag.group(), tag.element())
}

/// VRs whose values are numbers, written as numbers in JSON: their text is written trimmed, in
/// JSON and XML alike, so that both documents of one data set carry the same value.
fn is_number(vr: VR) -> bool {
    matches!(vr, VR::US | VR::UL | VR::SS | VR::SL | VR::FL | VR::FD | VR::IS | VR::DS)
}

/// Numbers in JSON where the VR is numeric and the text is a valid JSON number (F.2.3);
/// otherwise the original string, which F.2.3 allows for IS and DS.
fn json_value(vr: VR, value: &str) -> Json {
    if value.is_empty() {
        return Json::Null;
    }
    match vr {
        _ if is_number(vr) => {
            let trimmed = value.trim();
            if let Ok(integer) = trimmed.parse::<i64>() {
                return json!(integer);
            }
            match trimmed.parse::<f64>() {
                Ok(number) if number.is_finite() && !trimmed.starts_with(['+', '.']) && !trimmed.ends_with('.') => {
                    json!(number)
                }
                _ => Json::String(trimmed.to_string()),
            }
        }
        VR::PN => {
            // F.2.2: one member per non-empty component group; "=" is not used in JSON.
            let mut groups = Map::new();
            for (name, group) in ["Alphabetic", "Ideographic", "Phonetic"].iter().zip(value.split('=')) {
                if !group.is_empty() {
                    groups.insert((*name).to_string(), Json::String(group.to_string()));
                }
            }
            Json::Object(groups)
        }
        _ => Json::String(value.to_string()),
    }
}

/// Text as XML 1.0 content or attribute value: markup characters escaped, a carriage return as
/// a character reference (a literal one would be read back as a line feed), and the characters
/// XML 1.0 cannot hold at all (controls other than tab, line feed and carriage return, U+FFFE,
/// U+FFFF; XML 1.0 §2.2 `Char`), which a DICOM value can contain, replaced by U+FFFD so that
/// the document stays well-formed (found by the `metadata_writers` fuzz target).
fn escape_xml(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#xD;"),
            '\t' | '\n' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}' => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
}

impl Dataset {
    pub fn new() -> Dataset {
        Dataset::default()
    }

    pub fn put(&mut self, tag: Tag, vr: VR, values: Values) -> &mut Self {
        self.elements.insert(tag, (vr, values));
        self
    }

    pub fn put_str(&mut self, tag: Tag, vr: VR, value: impl Into<String>) -> &mut Self {
        self.put(tag, vr, Values::Strings(vec![value.into()]))
    }

    pub fn put_strings(&mut self, tag: Tag, vr: VR, values: Vec<String>) -> &mut Self {
        let values = if values.is_empty() || values.iter().all(String::is_empty) {
            Values::Empty
        } else {
            Values::Strings(values)
        };
        self.put(tag, vr, values)
    }

    pub fn contains(&self, tag: Tag) -> bool {
        self.elements.contains_key(&tag)
    }

    /// DICOM JSON: members in ascending tag order (F.2.2).
    pub fn to_json(&self) -> Json {
        let mut object = Map::new();
        for (tag, (vr, values)) in &self.elements {
            let mut element = Map::new();
            element.insert("vr".into(), Json::String(vr.to_string().to_string()));
            match values {
                Values::Empty => {}
                Values::Strings(values) => {
                    element.insert("Value".into(), values.iter().map(|v| json_value(*vr, v)).collect());
                }
                Values::Items(items) => {
                    if !items.is_empty() {
                        element.insert("Value".into(), items.iter().map(Dataset::to_json).collect());
                    }
                }
            }
            object.insert(tag_hex(*tag), Json::Object(element));
        }
        Json::Object(object)
    }

    /// The Native DICOM Model (PS3.19 Annex A) document of this data set.
    pub fn to_xml(&self) -> String {
        let mut out = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<NativeDicomModel xmlns=\"http://dicom.nema.org/PS3.19/models/NativeDICOM\">",
        );
        self.write_xml_elements(&mut out);
        out.push_str("</NativeDicomModel>\n");
        out
    }

    fn write_xml_elements(&self, out: &mut String) {
        for (tag, (vr, values)) in &self.elements {
            let keyword = keyword_of(*tag);
            let _ = write!(out, "<DicomAttribute tag=\"{}\" vr=\"{}\" keyword=\"{keyword}\">", tag_hex(*tag), vr);
            match values {
                Values::Empty => {}
                Values::Strings(values) => {
                    for (i, value) in values.iter().enumerate() {
                        let number = i + 1;
                        if *vr == VR::PN {
                            write_person_name(out, number, COMPONENT_GROUPS.iter().copied().zip(value.split('=')));
                        } else {
                            let _ = write!(out, "<Value number=\"{number}\">");
                            // Trimmed as `json_value` trims it (found by the metadata_writers
                            // fuzz target: an IS of one form feed was "" in JSON, U+FFFD here).
                            escape_xml(if is_number(*vr) { value.trim() } else { value }, out);
                            out.push_str("</Value>");
                        }
                    }
                }
                Values::Items(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let _ = write!(out, "<Item number=\"{}\">", i + 1);
                        item.write_xml_elements(out);
                        out.push_str("</Item>");
                    }
                }
            }
            out.push_str("</DicomAttribute>");
        }
    }
}

/// The Native DICOM Model (PS3.19 Annex A) document of one instance's DICOM JSON (as WADO-RS
/// metadata holds it): the same attributes, BulkDataURI as `<BulkData uri>`, InlineBinary as
/// `<InlineBinary>`.
pub fn xml_from_json(object: &Map<String, Json>) -> String {
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<NativeDicomModel xmlns=\"http://dicom.nema.org/PS3.19/models/NativeDICOM\">",
    );
    write_json_elements(object, &mut out);
    out.push_str("</NativeDicomModel>\n");
    out
}

fn write_json_elements(object: &Map<String, Json>, out: &mut String) {
    for (tag_text, element) in object {
        let Ok(number) = u32::from_str_radix(tag_text, 16) else { continue };
        let tag = Tag((number >> 16) as u16, number as u16);
        let vr = element["vr"].as_str().unwrap_or("UN");
        let _ = write!(out, "<DicomAttribute tag=\"{number:08X}\" vr=\"");
        escape_xml(vr, out);
        out.push('"');
        let keyword = keyword_of(tag);
        if !keyword.is_empty() {
            let _ = write!(out, " keyword=\"{keyword}\"");
        }
        out.push('>');
        if let Some(uri) = element["BulkDataURI"].as_str() {
            out.push_str("<BulkData uri=\"");
            escape_xml(uri, out);
            out.push_str("\"/>");
        } else if let Some(base64) = element["InlineBinary"].as_str() {
            out.push_str("<InlineBinary>");
            escape_xml(base64, out);
            out.push_str("</InlineBinary>");
        } else if let Some(values) = element["Value"].as_array() {
            for (i, value) in values.iter().enumerate() {
                let number = i + 1;
                match value {
                    Json::Object(item) if vr == "SQ" => {
                        let _ = write!(out, "<Item number=\"{number}\">");
                        write_json_elements(item, out);
                        out.push_str("</Item>");
                    }
                    Json::Object(groups) if vr == "PN" => {
                        let present =
                            COMPONENT_GROUPS.iter().filter_map(|name| Some((*name, groups.get(*name)?.as_str()?)));
                        write_person_name(out, number, present);
                    }
                    Json::Null => {
                        let _ = write!(out, "<Value number=\"{number}\"/>");
                    }
                    Json::String(text) => {
                        let _ = write!(out, "<Value number=\"{number}\">");
                        escape_xml(text, out);
                        out.push_str("</Value>");
                    }
                    other => {
                        let _ = write!(out, "<Value number=\"{number}\">{other}</Value>");
                    }
                }
            }
        }
        out.push_str("</DicomAttribute>");
    }
}

const COMPONENT_GROUPS: [&str; 3] = ["Alphabetic", "Ideographic", "Phonetic"];

/// A `<PersonName>` of PS3.19 Annex A: each non-empty component group, split into its named
/// components.
fn write_person_name<'a>(out: &mut String, number: usize, groups: impl Iterator<Item = (&'a str, &'a str)>) {
    let _ = write!(out, "<PersonName number=\"{number}\">");
    for (name, group) in groups.filter(|(_, group)| !group.is_empty()) {
        let _ = write!(out, "<{name}>");
        let parts = ["FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix"];
        for (part, component) in parts.iter().zip(group.split('^')) {
            if !component.is_empty() {
                let _ = write!(out, "<{part}>");
                escape_xml(component, out);
                let _ = write!(out, "</{part}>");
            }
        }
        let _ = write!(out, "</{name}>");
    }
    out.push_str("</PersonName>");
}

fn keyword_of(tag: Tag) -> String {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    dicom_dictionary_std::StandardDataDictionary.by_tag(tag).map(|entry| entry.alias().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_dictionary_std::tags;

    #[test]
    fn metadata_json_becomes_native_dicom_model_xml() {
        let json: Json = serde_json::from_str(
            r#"{"00100010":{"vr":"PN","Value":[{"Alphabetic":"Yamada^Tarou","Ideographic":"山田^太郎"}]},
                "00181110":{"vr":"DS","Value":[1.5,null]},
                "00081115":{"vr":"SQ","Value":[{"00081150":{"vr":"UI","Value":["1.2.3"]}}]},
                "7FE00010":{"vr":"OW","BulkDataURI":"http://h/a?b=1&c=2"},
                "00091001":{"vr":"OB","InlineBinary":"AAE="}}"#,
        )
        .unwrap();
        let xml = xml_from_json(json.as_object().unwrap());
        assert!(xml.contains(
            "<DicomAttribute tag=\"00100010\" vr=\"PN\" keyword=\"PatientName\"><PersonName number=\"1\">\
             <Alphabetic><FamilyName>Yamada</FamilyName><GivenName>Tarou</GivenName></Alphabetic>\
             <Ideographic><FamilyName>山田</FamilyName><GivenName>太郎</GivenName></Ideographic></PersonName>"
        ));
        assert!(xml.contains("<Value number=\"1\">1.5</Value><Value number=\"2\"/>"));
        assert!(xml.contains("<Item number=\"1\"><DicomAttribute tag=\"00081150\" vr=\"UI\" keyword=\"ReferencedSOPClassUID\"><Value number=\"1\">1.2.3</Value>"));
        assert!(xml.contains("<BulkData uri=\"http://h/a?b=1&amp;c=2\"/>"));
        assert!(xml.contains("<DicomAttribute tag=\"00091001\" vr=\"OB\"><InlineBinary>AAE=</InlineBinary>"));
    }

    /// Characters XML 1.0 cannot hold become U+FFFD, a carriage return a character reference,
    /// and a VR is escaped like any text (fuzz target `metadata_writers`).
    #[test]
    fn xml_stays_well_formed_whatever_the_values_hold() {
        let json: Json = serde_json::from_str(
            r#"{"00081030":{"vr":"LO","Value":["a\u0001b\u0000c\r\nd\ufffee"]},
                "00100010":{"vr":"PN","Value":[{"Alphabetic":"A\u001b^B"}]},
                "7FE00010":{"vr":"O\"<","BulkDataURI":"x"}}"#,
        )
        .unwrap();
        let xml = xml_from_json(json.as_object().unwrap());
        assert!(xml.contains("<Value number=\"1\">a\u{FFFD}b\u{FFFD}c&#xD;\nd\u{FFFD}e</Value>"), "{xml}");
        assert!(xml.contains("<FamilyName>A\u{FFFD}</FamilyName>"), "{xml}");
        assert!(xml.contains("vr=\"O&quot;&lt;\""), "{xml}");
        let mut dataset = Dataset::new();
        dataset.put_str(tags::STUDY_DESCRIPTION, VR::LO, "x\u{7}y");
        assert!(dataset.to_xml().contains("<Value number=\"1\">x\u{FFFD}y</Value>"));
    }

    /// A number's text is trimmed in XML as in JSON (fuzz target `metadata_writers`: an IS of
    /// one form feed, white space to `trim`, was "" in the JSON and U+FFFD in the XML).
    #[test]
    fn numbers_read_the_same_in_json_and_xml() {
        let mut dataset = Dataset::new();
        dataset.put_strings(tags::NUMBER_OF_FRAMES, VR::IS, vec!["\u{c}".into()]);
        dataset.put_str(tags::SERIES_NUMBER, VR::IS, " 12 \u{c}");
        dataset.put_str(tags::STUDY_DESCRIPTION, VR::LO, " x ");
        assert_eq!(dataset.to_json()["00280008"]["Value"][0], "");
        assert_eq!(dataset.to_json()["00200011"]["Value"][0], 12);
        let xml = dataset.to_xml();
        assert!(xml.contains("keyword=\"NumberOfFrames\"><Value number=\"1\"></Value>"), "{xml}");
        assert!(xml.contains("<Value number=\"1\">12</Value>"), "{xml}");
        assert!(xml.contains("<Value number=\"1\"> x </Value>"), "text keeps its spaces: {xml}");
    }

    #[test]
    fn person_names_split_into_component_groups() {
        let mut dataset = Dataset::new();
        dataset.put_str(tags::PATIENT_NAME, VR::PN, "Yamada^Tarou=山田^太郎=やまだ^たろう");
        let json = dataset.to_json();
        assert_eq!(
            json["00100010"]["Value"][0],
            json!({"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"})
        );
    }

    #[test]
    fn numbers_and_empty_values_follow_annex_f() {
        let mut dataset = Dataset::new();
        dataset.put_str(tags::SERIES_NUMBER, VR::IS, "4");
        dataset.put_strings(tags::ACCESSION_NUMBER, VR::SH, vec![]);
        let json = dataset.to_json();
        assert_eq!(json["00200011"], json!({"vr": "IS", "Value": [4]}));
        assert_eq!(json["00080050"], json!({"vr": "SH"}));
    }
}
