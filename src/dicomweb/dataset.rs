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

/// Numbers in JSON where the VR is numeric and the text is a valid JSON number (F.2.3);
/// otherwise the original string, which F.2.3 allows for IS and DS.
fn json_value(vr: VR, value: &str) -> Json {
    if value.is_empty() {
        return Json::Null;
    }
    match vr {
        VR::US | VR::UL | VR::SS | VR::SL | VR::FL | VR::FD | VR::IS | VR::DS => {
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

fn escape_xml(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
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
                            let _ = write!(out, "<PersonName number=\"{number}\">");
                            for (name, group) in ["Alphabetic", "Ideographic", "Phonetic"].iter().zip(value.split('='))
                            {
                                if group.is_empty() {
                                    continue;
                                }
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
                        } else {
                            let _ = write!(out, "<Value number=\"{number}\">");
                            escape_xml(value, out);
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

fn keyword_of(tag: Tag) -> String {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    dicom_dictionary_std::StandardDataDictionary.by_tag(tag).map(|entry| entry.alias().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_dictionary_std::tags;

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
