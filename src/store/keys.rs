//! Key encoding of the catalog tree. One tree with one-byte prefixes, so that a single sled
//! `Batch` updates an instance, its series, its study and the change log atomically.
//! Numbers are big-endian so that sled's byte order is numeric order. UIDs never contain the
//! 0x00 separator (they are validated as digits and dots).

pub const INSTANCE: u8 = b'i';
pub const HIERARCHY: u8 = b'h';
pub const SERIES: u8 = b'e';
pub const STUDY: u8 = b's';
pub const CHANGE: u8 = b'c';
/// Legacy (format 1): a payload written but not yet recorded.
pub const PENDING_PAYLOAD: u8 = b'p';
/// A payload a record references (the sweep after an unclean stop keeps these).
pub const PAYLOAD_REF: u8 = b'b';
/// A payload no record references any more, whose blob is deleted once that is durable.
pub const GARBAGE: u8 = b'd';
pub const META: u8 = b'm';
pub const METADATA: u8 = b'j';
/// Where each frame of an encapsulated instance starts, worked out when it was stored.
pub const FRAME_MAP: u8 = b'g';
/// What gives back the received bytes of an instance stored re-encoded (`--store-compression`).
pub const ORIGINAL_FORM: u8 = b'o';

/// The catalog's on-disk format; a store with another value is refused at open.
/// Format 4: an instance may be stored re-encoded (`--store-compression`), its received form
/// described by an [`ORIGINAL_FORM`] key an older Kura would not read (it would serve the
/// re-encoded bytes as if received so); formats 3 and 2 are read as is and relabelled.
pub const FORMAT_VERSION: &[u8] = b"kura-catalog-4";
/// Format 3: payload ids with the top bit set name entries of the blob store's pack files.
/// Opens as format 4 without any change.
pub const FORMAT_VERSION_3: &[u8] = b"kura-catalog-3";
/// Format 2: every payload in a file of its own. Opens as format 4 without any change.
pub const FORMAT_VERSION_2: &[u8] = b"kura-catalog-2";
/// Format 1: payload chunks in sled, every value in one key. Migrated at open.
pub const FORMAT_VERSION_1: &[u8] = b"kura-catalog-1";

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

/// A one-byte prefix and a big-endian number.
fn numbered(prefix: u8, n: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(prefix);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

pub fn instance(sop_uid: &str) -> Vec<u8> {
    with_prefix(INSTANCE, &[sop_uid])
}

pub fn metadata(sop_uid: &str) -> Vec<u8> {
    with_prefix(METADATA, &[sop_uid])
}

pub fn frame_map(sop_uid: &str) -> Vec<u8> {
    with_prefix(FRAME_MAP, &[sop_uid])
}

pub fn original_form(sop_uid: &str) -> Vec<u8> {
    with_prefix(ORIGINAL_FORM, &[sop_uid])
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
    numbered(CHANGE, seq)
}

pub fn pending_payload(id: u64) -> Vec<u8> {
    numbered(PENDING_PAYLOAD, id)
}

pub fn payload_ref(id: u64) -> Vec<u8> {
    numbered(PAYLOAD_REF, id)
}

pub fn garbage(id: u64) -> Vec<u8> {
    numbered(GARBAGE, id)
}

/// Piece `n` of a value stored in pieces under `base` (see `SledStore`'s module docs).
pub fn piece(base: &[u8], n: u16) -> Vec<u8> {
    let mut key = Vec::with_capacity(base.len() + 3);
    key.extend_from_slice(base);
    key.push(0);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

/// Prefix of every piece of the value under `base`.
pub fn pieces_prefix(base: &[u8]) -> Vec<u8> {
    let mut key = base.to_vec();
    key.push(0);
    key
}

/// Whether `key` is the first piece of a value (used to count values).
pub fn is_first_piece(key: &[u8]) -> bool {
    key.len() >= 3 && key[key.len() - 3..] == [0, 0, 0]
}

/// The base key of a piece key.
pub fn piece_base(key: &[u8]) -> &[u8] {
    &key[..key.len().saturating_sub(3)]
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
