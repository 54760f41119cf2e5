//! The compact encoding of the attribute values a document stores for QIDO-RS rows, so that a
//! search result is rendered from the index's doc store alone, without a store read and a
//! record decode per hit.
//!
//! Layout, repeated per attribute: tag (u32 BE), number of values (u16 BE, at most 0x7FFF; the
//! high bit says that the sequence tag of an item attribute follows, u32 BE), then per value its
//! length (u32 BE) and its UTF-8 bytes. The index is derived state, so the format needs no
//! version of its own: SCHEMA_VERSION covers it.

use crate::dicom::part10::AttributeValue;

/// The flag of the count that says a sequence tag follows.
const IN_SEQUENCE: u16 = 0x8000;

pub fn encode(values: &[AttributeValue]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 24);
    for value in values {
        out.extend_from_slice(&value.tag.to_be_bytes());
        let count = value.values.len().min(IN_SEQUENCE as usize - 1);
        let flag = if value.sequence.is_some() { IN_SEQUENCE } else { 0 };
        out.extend_from_slice(&(count as u16 | flag).to_be_bytes());
        if let Some(sequence) = value.sequence {
            out.extend_from_slice(&sequence.to_be_bytes());
        }
        for text in value.values.iter().take(count) {
            out.extend_from_slice(&(text.len() as u32).to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
    }
    out
}

/// Decodes [`encode`]'s output; `None` if the bytes are not in that layout.
pub fn decode(mut bytes: &[u8]) -> Option<Vec<AttributeValue>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if bytes.len() < n {
            return None;
        }
        let (head, tail) = bytes.split_at(n);
        *bytes = tail;
        Some(head)
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let tag = u32::from_be_bytes(take(&mut bytes, 4)?.try_into().ok()?);
        let count = u16::from_be_bytes(take(&mut bytes, 2)?.try_into().ok()?);
        let sequence = match count & IN_SEQUENCE {
            0 => None,
            _ => Some(u32::from_be_bytes(take(&mut bytes, 4)?.try_into().ok()?)),
        };
        let count = count & !IN_SEQUENCE;
        let mut values = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let length = u32::from_be_bytes(take(&mut bytes, 4)?.try_into().ok()?) as usize;
            values.push(std::str::from_utf8(take(&mut bytes, length)?).ok()?.to_string());
        }
        out.push(AttributeValue { tag, values, sequence });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let values = vec![
            AttributeValue { tag: 0x0010_0010, values: vec!["Yamada^Tarou=山田^太郎".into()], sequence: None },
            AttributeValue { tag: 0x0008_0061, values: vec!["CT".into(), String::new(), "PT".into()], sequence: None },
            AttributeValue { tag: 0x0020_1206, values: vec![], sequence: None },
            AttributeValue { tag: 0x0040_1001, values: vec!["RP1".into(), String::new()], sequence: Some(0x0040_0275) },
        ];
        let decoded = decode(&encode(&values)).unwrap();
        assert_eq!(decoded, values);
        assert!(decode(&encode(&values)[..7]).is_none());
    }
}
