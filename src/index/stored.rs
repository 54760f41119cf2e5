//! The compact encoding of the attribute values a document stores for QIDO-RS rows, so that a
//! search result is rendered from the index's doc store alone, without a store read and a
//! record decode per hit.
//!
//! Layout, repeated per attribute: tag (u32 BE), number of values (u16 BE), then per value its
//! length (u32 BE) and its UTF-8 bytes. The index is derived state, so the format needs no
//! version of its own: SCHEMA_VERSION covers it.

use crate::dicom::part10::AttributeValue;

pub fn encode(values: &[AttributeValue]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 24);
    for value in values {
        out.extend_from_slice(&value.tag.to_be_bytes());
        let count = value.values.len().min(u16::MAX as usize);
        out.extend_from_slice(&(count as u16).to_be_bytes());
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
        let mut values = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let length = u32::from_be_bytes(take(&mut bytes, 4)?.try_into().ok()?) as usize;
            values.push(std::str::from_utf8(take(&mut bytes, length)?).ok()?.to_string());
        }
        out.push(AttributeValue { tag, values });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let values = vec![
            AttributeValue { tag: 0x0010_0010, values: vec!["Yamada^Tarou=山田^太郎".into()] },
            AttributeValue { tag: 0x0008_0061, values: vec!["CT".into(), String::new(), "PT".into()] },
            AttributeValue { tag: 0x0020_1206, values: vec![] },
        ];
        let decoded = decode(&encode(&values)).unwrap();
        assert_eq!(decoded.len(), 3);
        for (a, b) in values.iter().zip(&decoded) {
            assert_eq!((a.tag, &a.values), (b.tag, &b.values));
        }
        assert!(decode(&encode(&values)[..7]).is_none());
    }
}
