//! A workitem's data set as DICOM JSON (PS3.18 Annex F): the form UPS-RS sends and receives,
//! kept as the client sent it (minus what the SCP owns). Helpers to read and write elements by
//! tag, and the matching of search keys and subscription filters (PS3.4 C.2.2.2).

use dicom_core::Tag;
use serde_json::{Map, Value, json};

/// A DICOM JSON data set: `"GGGGEEEE" → {"vr": …, "Value": […]}`.
pub type Dataset = Map<String, Value>;

/// The DICOM JSON key of a tag.
pub fn key(tag: Tag) -> String {
    format!("{:04X}{:04X}", tag.group(), tag.element())
}

/// An element with a value list.
pub fn element(vr: &str, values: Vec<Value>) -> Value {
    if values.is_empty() { json!({ "vr": vr }) } else { json!({ "vr": vr, "Value": values }) }
}

pub fn string_element(vr: &str, value: &str) -> Value {
    element(vr, vec![Value::String(value.to_string())])
}

/// The values of an element (empty when absent or without a value).
pub fn values(dataset: &Dataset, tag: Tag) -> &[Value] {
    dataset.get(&key(tag)).and_then(|e| e.get("Value")).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// The first value of an element as text (a PN's alphabetic group, a number's digits).
pub fn first_text(dataset: &Dataset, tag: Tag) -> Option<String> {
    values(dataset, tag).first().and_then(value_text)
}

/// The items of a sequence (none when absent or empty; items that are not objects are skipped).
pub fn items(dataset: &Dataset, tag: Tag) -> impl Iterator<Item = &Dataset> {
    values(dataset, tag).iter().filter_map(Value::as_object)
}

/// Whether an element is present with at least one value.
pub fn has_value(dataset: &Dataset, tag: Tag) -> bool {
    !values(dataset, tag).is_empty()
}

fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Object(person) => person.get("Alphabetic").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Checks the shape of a DICOM JSON data set (F.2): every member an 8-hex-digit tag naming an
/// object with a `vr`; sequences' items checked the same way, at most `depth` levels deep.
pub fn check_shape(dataset: &Dataset, depth: usize) -> Result<(), String> {
    if depth == 0 {
        return Err("sequences are nested too deeply".into());
    }
    for (name, element) in dataset {
        if name.len() != 8 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{name:?} is not a DICOM JSON attribute tag (PS3.18 F.2.1)"));
        }
        let Some(vr) = element.get("vr").and_then(Value::as_str) else {
            return Err(format!("attribute {name} has no vr (PS3.18 F.2.2)"));
        };
        if vr.len() != 2 || !vr.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!("attribute {name} has an invalid vr {vr:?}"));
        }
        match element.get("Value") {
            None | Some(Value::Null) => {}
            Some(Value::Array(values)) if vr == "SQ" => {
                for item in values {
                    let Some(item) = item.as_object() else {
                        return Err(format!("an item of sequence {name} is not an object"));
                    };
                    check_shape(item, depth - 1)?;
                }
            }
            Some(Value::Array(_)) => {}
            Some(_) => return Err(format!("the Value of attribute {name} is not an array (PS3.18 F.2.4)")),
        }
    }
    Ok(())
}

/// One match key of a search or of a filtered subscription: an attribute path (sequence tags
/// then the attribute; PS3.18 §8.3.1) and the value to match (PS3.4 C.2.2.2).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MatchKey {
    /// Tags as `(group << 16) | element`.
    pub path: Vec<u32>,
    pub value: String,
}

impl MatchKey {
    pub fn new(path: &[Tag], value: impl Into<String>) -> MatchKey {
        MatchKey {
            path: path.iter().map(|t| ((t.group() as u32) << 16) | t.element() as u32).collect(),
            value: value.into(),
        }
    }

    fn tags(&self) -> impl Iterator<Item = Tag> + '_ {
        self.path.iter().map(|v| Tag((v >> 16) as u16, (v & 0xFFFF) as u16))
    }
}

/// Whether `dataset` matches every key (PS3.4 C.2.2.2: universal, single value, wildcard, UID
/// list, range, sequence matching).
pub fn matches_all(dataset: &Dataset, keys: &[MatchKey]) -> bool {
    keys.iter().all(|k| {
        let tags: Vec<Tag> = k.tags().collect();
        matches_path(dataset, &tags, &k.value)
    })
}

fn matches_path(dataset: &Dataset, path: &[Tag], value: &str) -> bool {
    // Universal matching (C.2.2.2.3): an empty value matches everything.
    if value.is_empty() {
        return true;
    }
    let Some((first, rest)) = path.split_first() else { return false };
    let Some(element) = dataset.get(&key(*first)) else { return false };
    if !rest.is_empty() {
        // Sequence matching (C.2.2.2.6): some item matches the rest of the path.
        return items(dataset, *first).any(|item| matches_path(item, rest, value));
    }
    let vr = element.get("vr").and_then(Value::as_str).unwrap_or("");
    let texts: Vec<String> = values(dataset, *first).iter().filter_map(value_text).collect();
    texts.iter().any(|text| matches_value(vr, text, value))
}

fn matches_value(vr: &str, stored: &str, wanted: &str) -> bool {
    match vr {
        // UID list matching (C.2.2.2.2).
        "UI" => wanted.split(',').any(|uid| uid == stored),
        // Range matching (C.2.2.2.5) on the digits: a missing bound is open; the upper bound
        // extended with 9s takes in every longer value it is a prefix of.
        "DA" | "DT" | "TM" if wanted.contains('-') => {
            let (from, to) = wanted.split_once('-').unwrap_or((wanted, wanted));
            let upper = format!("{to}99999999999999999999");
            (from.is_empty() || stored >= from) && (to.is_empty() || stored <= upper.as_str())
        }
        "DA" | "DT" | "TM" => stored.starts_with(wanted) && (vr == "DA" || stored.len() >= wanted.len()),
        // Person names are matched case-insensitively, as Kura's QIDO-RS does.
        "PN" => wildcard(&stored.to_lowercase(), &wanted.to_lowercase()),
        _ => wildcard(stored, wanted),
    }
}

/// Single value or wildcard matching (C.2.2.2.1, C.2.2.2.4): `*` any run, `?` one character.
pub fn wildcard(text: &str, pattern: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    let pattern: Vec<char> = pattern.chars().collect();
    let (mut t, mut p) = (0, 0);
    let (mut star, mut star_t) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            t += 1;
            p += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some(p);
            star_t = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            star_t += 1;
            t = star_t;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_dictionary_std::tags;

    fn sample() -> Dataset {
        serde_json::from_value(json!({
            "00741204": {"vr": "LO", "Value": ["Read CT chest"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
            "00404005": {"vr": "DT", "Value": ["20260315103000"]},
            "00404021": {"vr": "SQ", "Value": [{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}]},
            "00741200": {"vr": "CS", "Value": ["HIGH"]}
        }))
        .unwrap()
    }

    #[test]
    fn matching_rules() {
        let d = sample();
        let m = |path: &[Tag], v: &str| matches_all(&d, &[MatchKey::new(path, v)]);
        assert!(m(&[tags::PROCEDURE_STEP_LABEL], "Read*"));
        assert!(!m(&[tags::PROCEDURE_STEP_LABEL], "read*"), "case-sensitive outside PN");
        assert!(m(&[tags::PATIENT_NAME], "doe*"));
        assert!(m(&[tags::SCHEDULED_PROCEDURE_STEP_START_DATE_TIME], "20260301-20260331"));
        assert!(m(&[tags::SCHEDULED_PROCEDURE_STEP_START_DATE_TIME], "-20260315"));
        assert!(!m(&[tags::SCHEDULED_PROCEDURE_STEP_START_DATE_TIME], "20260316-"));
        assert!(m(&[tags::INPUT_INFORMATION_SEQUENCE, tags::STUDY_INSTANCE_UID], "9.9,1.2.3"));
        assert!(!m(&[tags::INPUT_INFORMATION_SEQUENCE, tags::STUDY_INSTANCE_UID], "1.2"));
        assert!(m(&[tags::SCHEDULED_PROCEDURE_STEP_PRIORITY], ""), "universal");
        assert!(!m(&[tags::WORKLIST_LABEL], "x"), "absent attribute");
        assert!(wildcard("abc", "a?c") && !wildcard("abcd", "a?c") && wildcard("", "*"));
    }

    #[test]
    fn shape_is_checked() {
        assert!(check_shape(&sample(), 4).is_ok());
        let bad: Dataset = serde_json::from_value(json!({"PatientName": {"vr": "PN"}})).unwrap();
        assert!(check_shape(&bad, 4).is_err());
        let no_vr: Dataset = serde_json::from_value(json!({"00100010": {"Value": []}})).unwrap();
        assert!(check_shape(&no_vr, 4).is_err());
    }
}
