//! Key encoding of the catalog tree. One tree with one-byte prefixes, so that a single sled
//! `Batch` updates an instance, its series, its study and the change log atomically.
//! Numbers are big-endian so that sled's byte order is numeric order. UIDs never contain the
//! 0x00 separator (they are validated as digits and dots).

pub const INSTANCE: u8 = b'i';
pub const HIERARCHY: u8 = b'h';
pub const SERIES: u8 = b'e';
pub const STUDY: u8 = b's';
pub const CHANGE: u8 = b'c';
pub const PENDING_PAYLOAD: u8 = b'p';
pub const META: u8 = b'm';
pub const METADATA: u8 = b'j';

/// The catalog's on-disk format; a store with another value is refused at open.
pub const FORMAT_VERSION: &[u8] = b"kura-catalog-1";

fn with_prefix(prefix: u8, parts: &[&str]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + parts.iter().map(|p| p.len() + 1).sum::<usize>());
    key.push(prefix);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(0);
        }
        key.extend_from_slice(part.as_bytes());
    }
    key
}

pub fn instance(sop_uid: &str) -> Vec<u8> {
    with_prefix(INSTANCE, &[sop_uid])
}

pub fn metadata(sop_uid: &str) -> Vec<u8> {
    with_prefix(METADATA, &[sop_uid])
}

pub fn hierarchy(study: &str, series: &str, sop: &str) -> Vec<u8> {
    with_prefix(HIERARCHY, &[study, series, sop])
}

/// Prefix of every hierarchy key of a study (with a trailing separator) or of a series.
pub fn hierarchy_prefix(study: &str, series: Option<&str>) -> Vec<u8> {
    let mut key = match series {
        Some(series) => with_prefix(HIERARCHY, &[study, series]),
        None => with_prefix(HIERARCHY, &[study]),
    };
    key.push(0);
    key
}

pub fn series(study: &str, series: &str) -> Vec<u8> {
    with_prefix(SERIES, &[study, series])
}

pub fn series_prefix(study: &str) -> Vec<u8> {
    let mut key = with_prefix(SERIES, &[study]);
    key.push(0);
    key
}

pub fn study(study: &str) -> Vec<u8> {
    with_prefix(STUDY, &[study])
}

pub fn change(seq: u64) -> Vec<u8> {
    let mut key = vec![CHANGE];
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub fn pending_payload(id: u64) -> Vec<u8> {
    let mut key = vec![PENDING_PAYLOAD];
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub fn meta(name: &str) -> Vec<u8> {
    with_prefix(META, &[name])
}

/// Key of one payload chunk in the payload tree.
pub fn chunk(payload: u64, index: u32) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&payload.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

pub fn chunk_prefix(payload: u64) -> [u8; 8] {
    payload.to_be_bytes()
}

/// The last component of a hierarchy key: the SOP Instance UID.
pub fn sop_from_hierarchy(key: &[u8]) -> Option<&str> {
    let last = key.iter().rposition(|b| *b == 0)?;
    std::str::from_utf8(&key[last + 1..]).ok()
}

pub fn u64_suffix(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}
