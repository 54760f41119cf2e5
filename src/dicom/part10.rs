//! Reading the parts of a PS3.10 file that the archive needs at store time.
//!
//! The payload itself is never re-encoded: this module only reads the File Meta Information
//! and the data set up to Pixel Data, so the cost of a parse does not grow with image size.
//! Large top-level values before Pixel Data (an Encapsulated Document, an OB, OW, UN or UT value
//! of gigabytes) are not read either: dicom-rs sees them as empty values ([`WithoutLargeValues`])
//! and the metadata refers to them by BulkDataURI, served from the stored bytes by place.

use std::io::{Read, Seek, SeekFrom};

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{OpenFileOptions, file::ReadPreamble};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::layout::{self, LargeValue, PixelDataLayout};
use super::{attrs, charset, json, uid};

/// Bytes before the "DICM" prefix (PS3.10 §7.1).
pub const PREAMBLE_LEN: usize = 128;
/// Preamble plus the 4-byte "DICM" prefix.
pub const HEADER_LEN: usize = PREAMBLE_LEN + 4;

/// Whether the first bytes of a payload carry the PS3.10 "DICM" prefix after the preamble.
pub fn has_dicm_prefix(head: &[u8]) -> bool {
    head.len() >= HEADER_LEN && &head[PREAMBLE_LEN..HEADER_LEN] == b"DICM"
}

/// Values of one table attribute, as decoded strings (PN keeps its `=` groups). For an
/// attribute of the items of a sequence, one value per item, in item order, empty where the
/// item lacks it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttributeValue {
    /// The tag as `(group << 16) | element`.
    pub tag: u32,
    pub values: Vec<String>,
    /// For an attribute of the items of a sequence: the sequence's tag, encoded as `tag`.
    // No skip_serializing_if: catalog records are postcard, which is not self-describing.
    #[serde(default)]
    pub sequence: Option<u32>,
}

fn tag_of(number: u32) -> Tag {
    Tag((number >> 16) as u16, (number & 0xFFFF) as u16)
}

/// A tag as `(group << 16) | element`.
pub fn tag_number(tag: Tag) -> u32 {
    (u32::from(tag.group()) << 16) | u32::from(tag.element())
}

impl AttributeValue {
    /// A top-level attribute's values.
    pub fn new(tag: Tag, values: Vec<String>) -> AttributeValue {
        AttributeValue { tag: tag_number(tag), values, sequence: None }
    }

    pub fn tag(&self) -> Tag {
        tag_of(self.tag)
    }

    pub fn sequence(&self) -> Option<Tag> {
        self.sequence.map(tag_of)
    }

    /// Whether these are the values of `attribute` (same tag, same sequence or none).
    pub fn is(&self, attribute: &attrs::Attribute) -> bool {
        self.tag() == attribute.tag && self.sequence() == attribute.sequence
    }

    /// The table row these values belong to.
    pub fn attribute(&self) -> Option<&'static attrs::Attribute> {
        attrs::find(self.tag(), self.sequence())
    }
}

/// What the archive learns from an instance when it is stored.
#[derive(Debug, Clone)]
pub struct ParsedInstance {
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax_uid: String,
    /// The values of every table attribute present in the instance (see [`attrs::ATTRIBUTES`]).
    pub attributes: Vec<AttributeValue>,
    /// Where Pixel Data sits in the file, for frame retrieval.
    pub pixel_data: Option<PixelDataLayout>,
    /// Where the large top-level values are, for bulk data retrieval.
    pub large_values: Vec<LargeValue>,
    /// The instance's DICOM JSON (PS3.18 Annex F), with [`json::BASE_PLACEHOLDER`] for the
    /// base URL in BulkDataURIs.
    pub metadata: Vec<u8>,
}

/// Why a payload could not be accepted as an instance.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not a DICOM PS3.10 file: no DICM prefix after the 128-byte preamble")]
    NotPart10,
    #[error("transfer syntax {0} is not supported")]
    UnsupportedTransferSyntax(String),
    #[error("the data set cannot be parsed: {0}")]
    Malformed(String),
    #[error("{keyword} is missing")]
    MissingAttribute { keyword: &'static str },
    #[error("{keyword} is not a valid UID: {reason}")]
    InvalidUid { keyword: &'static str, reason: uid::UidError },
    /// The memory budget cannot hold the parse now, or ever (see `crate::memory`).
    #[error("parsing the data set needs memory the archive cannot spare: {0}")]
    OutOfMemory(crate::memory::BudgetError),
}

/// Top-level values before Pixel Data longer than this are bulk data that the parse never
/// reads (any value of a 32-bit length field above it: OB, OD, OF, OL, OV, OW, UN, UC, UR, UT,
/// and every VR in Implicit VR).
pub const HIDDEN_VALUE_MIN: u64 = 64 * 1024;

/// What a parse of a data set costs in memory: dicom-rs's object and the DICOM JSON tree and
/// text built from it are a few times the bytes read, plus about 1 KiB per element (measured:
/// a million empty elements took 1.2 GB), plus the walk's records (fragments are copied into
/// the instance record twice), plus a floor for the fixed costs.
pub fn parse_cost(read_bytes: u64, elements: u64, fragments: u64, captured_bytes: u64) -> u64 {
    const FLOOR: u64 = 1024 * 1024;
    FLOOR
        .saturating_add(read_bytes.saturating_mul(6))
        .saturating_add(elements.saturating_mul(1024))
        .saturating_add(fragments.saturating_mul(48))
        .saturating_add(captured_bytes.saturating_mul(2))
}

/// Parses a PS3.10 payload of `total` bytes that starts at the preamble.
///
/// The element framing of the whole file is checked (every declared length fits), and the
/// data set is parsed up to Pixel Data.
pub fn parse<R: Read + Seek>(reader: R, total: u64) -> Result<ParsedInstance, ParseError> {
    parse_within(reader, total, None)
}

/// [`parse`], drawing what the parse will allocate from `budget` (once the walk has told how
/// much) and holding it until the parse ends. Call it where blocking is allowed.
pub fn parse_within<R: Read + Seek>(
    mut reader: R,
    total: u64,
    budget: Option<&crate::memory::MemoryBudget>,
) -> Result<ParsedInstance, ParseError> {
    let mut header = [0u8; HEADER_LEN];
    reader.read_exact(&mut header).map_err(|_| ParseError::NotPart10)?;
    if !has_dicm_prefix(&header) {
        return Err(ParseError::NotPart10);
    }
    let framing = layout::walk(&mut reader, total, true).map_err(|error| ParseError::Malformed(error.to_string()))?;
    // dicom-rs stops before Pixel Data: only what precedes it, less the hidden values, is read.
    let pixel_data_number = tag_number(tags::PIXEL_DATA);
    let hidden: Vec<&LargeValue> = framing
        .large_values
        .iter()
        .filter(|value| value.tag < pixel_data_number && value.length > HIDDEN_VALUE_MIN)
        .collect();
    let read_end = framing.pixel_data.as_ref().map_or(total, |pixels| pixels.offset);
    let hidden_bytes: u64 = hidden
        .iter()
        .map(|value| (value.offset, value.length))
        .chain(framing.nested_values.iter().map(|value| (value.offset, value.length)))
        .filter(|(offset, _)| *offset < read_end)
        .map(|(_, length)| length)
        .sum();
    let read_bytes = read_end.saturating_sub(framing.dataset_offset).saturating_sub(hidden_bytes);
    let fragments = framing.pixel_data.as_ref().map_or(0, |pixels| pixels.fragments.len() as u64);
    let _permit = budget
        .map(|budget| {
            budget.reserve_blocking(parse_cost(read_bytes, framing.elements, fragments, framing.captured_bytes))
        })
        .transpose()
        .map_err(ParseError::OutOfMemory)?;
    // Values inside sequences, as large, are hidden the same way (what precedes Pixel Data only:
    // dicom-rs reads no further), and the defined lengths around them shortened to match.
    let nested: Vec<&layout::NestedValue> =
        framing.nested_values.iter().filter(|value| value.offset < read_end).collect();
    let patches: Vec<layout::LengthPatch> =
        framing.length_patches.iter().filter(|patch| patch.offset < read_end).copied().collect();
    let places: Vec<(u64, u64)> = hidden
        .iter()
        .map(|value| (value.offset, value.length))
        .chain(nested.iter().map(|value| (value.offset, value.length)))
        .collect();
    // dicom-rs reads from the File Meta elements after the file's own group length (if any): it
    // is handed one below.
    let reader =
        WithoutLargeValues::new(reader, framing.meta_elements_offset, total, &places, &patches, framing.big_endian)
            .map_err(|e| ParseError::Malformed(e.to_string()))?;
    let mut nested_paths: Vec<Vec<u32>> = nested.iter().map(|value| value.path.clone()).collect();
    nested_paths.sort_unstable();
    let mut hidden_tags: Vec<u32> = hidden.iter().map(|value| value.tag).collect();
    hidden_tags.sort_unstable();
    // dicom-object reads the "DICM" magic itself, and insists on the File Meta Information
    // Group Length, which some writers omit: hand it both. The group length is always the one
    // the walk counted, never the file's: dicom-rs ends the File Meta group where that length
    // says, and a wrong one (found by fuzzing: 32 bytes too many in a big-endian file) made it
    // read the data set from another place than the walk checked, take Pixel Data bytes for an
    // element and allocate the 18.8 MB length they spelled, for a 9,708-byte part. Read by
    // group, as the walk reads it, every declared length dicom-rs meets is one the walk proved
    // fits in the file (dcmtk and pydicom also end the group by its elements, not its length).
    let mut prefix = b"DICM".to_vec();
    let meta_length = u32::try_from(framing.dataset_offset - framing.meta_elements_offset)
        .map_err(|_| ParseError::Malformed("the File Meta group is longer than 4 GiB".into()))?;
    prefix.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 0x04, 0x00]);
    prefix.extend_from_slice(&meta_length.to_le_bytes());
    let reader = std::io::Cursor::new(prefix).chain(reader);
    let object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .read_until(tags::PIXEL_DATA)
        .from_reader(reader)
        .map_err(|error| classify_open_error(&error.to_string()))?;

    let transfer_syntax_uid = uid::trim(object.meta().transfer_syntax()).to_string();
    if TransferSyntaxRegistry.get(&transfer_syntax_uid).is_none() {
        return Err(ParseError::UnsupportedTransferSyntax(transfer_syntax_uid));
    }

    let text = |tag: Tag| -> Option<Vec<String>> {
        let element = object.element_opt(tag).ok().flatten()?;
        if element.vr() == VR::UN {
            // Explicit VR UN for a standard element: read it with its dictionary VR (PS3.5 §6.2.2).
            let bytes = element.value().to_bytes().ok()?;
            return Some(values_of_unknown(&bytes, attrs::by_tag(tag).map_or(VR::LO, |a| a.vr)));
        }
        let values = element.value().to_multi_str().ok()?;
        Some(values.iter().map(|v| v.trim_end_matches(['\0', ' ']).to_string()).collect())
    };
    // dicom-rs decodes with the first value of (0008,0005) only; ISO 2022 code extensions are
    // decoded here from the raw bytes the walk kept.
    let character_sets = text(tags::SPECIFIC_CHARACTER_SET).unwrap_or_default();
    let extended = charset::needs_code_extensions(&character_sets);
    let text = |tag: Tag| -> Option<Vec<String>> {
        let number = (u32::from(tag.group()) << 16) | u32::from(tag.element());
        let is_text = attrs::by_tag(tag).is_some_and(|a| matches!(a.vr, VR::PN | VR::LO | VR::SH | VR::LT | VR::ST));
        match framing.raw_values.get(&number) {
            Some(raw) if extended && is_text => {
                let person_name = attrs::by_tag(tag).is_some_and(|a| a.vr == VR::PN);
                let decoded = charset::decode(raw, &character_sets, person_name);
                Some(decoded.split('\\').map(|v| v.trim_end_matches(['\0', ' ']).to_string()).collect())
            }
            _ => text(tag),
        }
    };
    let required_uid = |tag: Tag, keyword: &'static str| -> Result<String, ParseError> {
        let value = text(tag)
            .and_then(|values| values.into_iter().next())
            .filter(|value| !value.is_empty())
            .ok_or(ParseError::MissingAttribute { keyword })?;
        uid::validate(&value).map_err(|reason| ParseError::InvalidUid { keyword, reason })?;
        Ok(value)
    };

    let parsed = ParsedInstance {
        study_uid: required_uid(tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?,
        series_uid: required_uid(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?,
        sop_instance_uid: required_uid(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?,
        sop_class_uid: required_uid(tags::SOP_CLASS_UID, "SOPClassUID")?,
        transfer_syntax_uid,
        attributes: attrs::ATTRIBUTES
            .iter()
            .filter(|attribute| !attribute.computed)
            .filter_map(|attribute| match attribute.sequence {
                None => Some(AttributeValue::new(attribute.tag, text(attribute.tag)?)),
                Some(sequence) => Some(AttributeValue {
                    sequence: Some(tag_number(sequence)),
                    ..AttributeValue::new(attribute.tag, item_values(&object, sequence, attribute.tag)?)
                }),
            })
            .collect(),
        pixel_data: framing.pixel_data.clone(),
        large_values: framing.large_values.clone(),
        metadata: Vec::new(),
    };
    let instance_path = format!(
        "{}/studies/{}/series/{}/instances/{}",
        json::BASE_PLACEHOLDER,
        parsed.study_uid,
        parsed.series_uid,
        parsed.sop_instance_uid
    );
    let context = json::Context {
        instance_path: &instance_path,
        transfer_syntax_uid: &parsed.transfer_syntax_uid,
        character_sets: &character_sets,
        raw_values: &framing.raw_values,
        pixel_data: framing.pixel_data.as_ref(),
        bulk_values: &hidden_tags,
        nested_bulk_values: &nested_paths,
    };
    let metadata = serde_json::to_vec(&json::instance_json(&context, &object)).expect("json");
    Ok(ParsedInstance { metadata, ..parsed })
}

/// A PS3.10 payload from `start` as dicom-rs is to see it: each hidden value (its 32-bit
/// length field just before it) reads as an empty value, its length field zero and its bytes
/// skipped, so that a value of gigabytes costs the parse nothing; and the defined length of each
/// sequence or item around a hidden value reads as what is left ([`layout::LengthPatch`]).
pub struct WithoutLargeValues<R> {
    inner: R,
    /// Pieces in order: a range of the payload, or a length field read as the given bytes.
    pieces: Vec<Piece>,
    current: usize,
    /// Position within the current piece.
    within: u64,
    /// Where `inner` is positioned, when known.
    inner_position: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
enum Piece {
    Range { start: u64, end: u64 },
    Length([u8; 4]),
}

/// One change to what dicom-rs reads: the bytes `[start, end)` read as `length`.
struct Edit {
    start: u64,
    end: u64,
    length: [u8; 4],
}

impl<R: Read + Seek> WithoutLargeValues<R> {
    /// `hidden`: the values to read as empty; `patches`: the lengths around them; `big_endian`:
    /// the data set's byte order (for the patched lengths).
    pub fn new(
        inner: R,
        start: u64,
        total: u64,
        hidden: &[(u64, u64)],
        patches: &[layout::LengthPatch],
        big_endian: bool,
    ) -> std::io::Result<Self> {
        let mut edits: Vec<Edit> = hidden
            .iter()
            .map(|&(offset, length)| Edit { start: offset.saturating_sub(4), end: offset + length, length: [0; 4] })
            .chain(patches.iter().map(|patch| Edit {
                start: patch.offset,
                end: patch.offset + 4,
                length: if big_endian { patch.length.to_be_bytes() } else { patch.length.to_le_bytes() },
            }))
            .collect();
        edits.sort_unstable_by_key(|edit| edit.start);
        let mut pieces = Vec::with_capacity(edits.len() * 2 + 1);
        let mut position = start;
        for edit in edits {
            if edit.start < position || edit.end < edit.start + 4 {
                return Err(std::io::Error::other("hidden values out of order"));
            }
            pieces.push(Piece::Range { start: position, end: edit.start });
            pieces.push(Piece::Length(edit.length));
            position = edit.end;
        }
        pieces.push(Piece::Range { start: position, end: total.max(position) });
        Ok(WithoutLargeValues { inner, pieces, current: 0, within: 0, inner_position: None })
    }
}

impl<R: Read + Seek> Read for WithoutLargeValues<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let Some(piece) = self.pieces.get(self.current).copied() else { return Ok(0) };
            let remaining = match piece {
                Piece::Range { start, end } => end - start - self.within,
                Piece::Length(_) => 4 - self.within,
            };
            if remaining == 0 {
                self.current += 1;
                self.within = 0;
                continue;
            }
            if buffer.is_empty() {
                return Ok(0);
            }
            let wanted = (buffer.len() as u64).min(remaining) as usize;
            let read = match piece {
                Piece::Length(bytes) => {
                    let from = self.within as usize;
                    buffer[..wanted].copy_from_slice(&bytes[from..from + wanted]);
                    wanted
                }
                Piece::Range { start, .. } => {
                    let at = start + self.within;
                    if self.inner_position != Some(at) {
                        self.inner.seek(SeekFrom::Start(at))?;
                    }
                    let read = self.inner.read(&mut buffer[..wanted])?;
                    if read == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    self.inner_position = Some(at + read as u64);
                    read
                }
            };
            self.within += read as u64;
            return Ok(read);
        }
    }
}

/// The value of `tag` in each item of the sequence `sequence` (the first value; empty where an
/// item lacks it), or `None` when the data set has no such sequence.
fn item_values(object: &dicom_object::DefaultDicomObject, sequence: Tag, tag: Tag) -> Option<Vec<String>> {
    let items = object.element_opt(sequence).ok().flatten()?.value().items()?;
    Some(
        items
            .iter()
            .map(|item| {
                let value = item.element_opt(tag).ok().flatten().and_then(|e| e.value().to_str().ok());
                let first = value.as_deref().unwrap_or("").split('\\').next().unwrap_or("");
                first.trim_end_matches(['\0', ' ']).trim_start().to_string()
            })
            .collect(),
    )
}

/// Decodes the bytes of a UN element whose dictionary VR is `vr` (little endian).
fn values_of_unknown(bytes: &[u8], vr: VR) -> Vec<String> {
    match vr {
        VR::US => bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]).to_string()).collect(),
        VR::UL => bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]).to_string()).collect(),
        _ => String::from_utf8_lossy(bytes)
            .split('\\')
            .map(|v| v.trim_end_matches(['\0', ' ']).trim_start().to_string())
            .collect(),
    }
}

fn classify_open_error(message: &str) -> ParseError {
    if message.contains("transfer syntax") || message.contains("Unsupported") {
        ParseError::UnsupportedTransferSyntax(message.to_string())
    } else {
        ParseError::Malformed(message.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// An Explicit VR element (16-bit length form for the VRs used here), in either byte order.
    fn element(tag: (u16, u16), vr: &[u8; 2], value: &[u8], big_endian: bool) -> Vec<u8> {
        let u16_bytes = |v: u16| if big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
        let mut out = Vec::new();
        out.extend_from_slice(&u16_bytes(tag.0));
        out.extend_from_slice(&u16_bytes(tag.1));
        out.extend_from_slice(vr);
        out.extend_from_slice(&u16_bytes(value.len() as u16));
        out.extend_from_slice(value);
        out
    }

    /// A PS3.10 file whose File Meta group starts with a Group Length of `group_length` (the
    /// right one when `None`).
    fn instance(transfer_syntax: &[u8], big_endian: bool, group_length: Option<u32>) -> Vec<u8> {
        let meta = meta(transfer_syntax);
        let mut dataset = element((0x0008, 0x0016), b"UI", b"1.2.840.10008.5.1.4.1.1.7\0", big_endian);
        dataset.extend(element((0x0008, 0x0018), b"UI", b"1.2.3.4.5.6\0", big_endian));
        dataset.extend(element((0x0010, 0x0010), b"PN", b"Doe^Jane", big_endian));
        dataset.extend(element((0x0020, 0x000D), b"UI", b"1.2.3.4\0", big_endian));
        dataset.extend(element((0x0020, 0x000E), b"UI", b"1.2.3.4.5\0", big_endian));
        dataset.extend(element((0x0028, 0x0010), b"US", &if big_endian { [0, 8] } else { [8, 0] }, big_endian));
        let mut out = vec![0u8; PREAMBLE_LEN];
        out.extend_from_slice(b"DICM");
        let length = group_length.unwrap_or(meta.len() as u32);
        out.extend(element((2, 0), b"UL", &length.to_le_bytes(), false));
        out.extend(meta);
        out.extend(dataset);
        out
    }

    /// The File Meta elements after the Group Length.
    fn meta(transfer_syntax: &[u8]) -> Vec<u8> {
        let mut meta = element((2, 0x02), b"UI", b"1.2.840.10008.5.1.4.1.1.7\0", false);
        meta.extend(element((2, 0x03), b"UI", b"1.2.3.4.5.6\0", false));
        meta.extend(element((2, 0x10), b"UI", transfer_syntax, false));
        meta
    }

    fn parse_bytes(bytes: &[u8]) -> Result<ParsedInstance, ParseError> {
        parse(Cursor::new(bytes), bytes.len() as u64)
    }

    /// dicom-rs ends the File Meta group where its Group Length says; the walk, where group 0002
    /// ends. A wrong group length made dicom-rs read the data set from elsewhere than the walk
    /// checked (fuzzing: a big-endian file with 32 bytes too many allocated an 18.8 MB length
    /// read from Pixel Data). The parse hands dicom-rs the walk's length: a file with a wrong
    /// one reads exactly as the same file with the right one.
    #[test]
    fn a_wrong_file_meta_group_length_reads_as_the_right_one() {
        for (transfer_syntax, big_endian) in
            [(&b"1.2.840.10008.1.2.1\0"[..], false), (&b"1.2.840.10008.1.2.2\0"[..], true)]
        {
            let right = parse_bytes(&instance(transfer_syntax, big_endian, None)).unwrap();
            assert_eq!(right.study_uid, "1.2.3.4");
            let metadata: serde_json::Value = serde_json::from_slice(&right.metadata).unwrap();
            assert_eq!(metadata["00280010"]["Value"][0], 8, "big endian {big_endian}");
            assert_eq!(metadata["00100010"]["Value"][0]["Alphabetic"], "Doe^Jane");
            let meta_length = meta(transfer_syntax).len() as u32;
            for wrong in [meta_length + 8, meta_length + 32, meta_length - 20, 1, u32::MAX] {
                let parsed = parse_bytes(&instance(transfer_syntax, big_endian, Some(wrong)))
                    .unwrap_or_else(|e| panic!("group length {wrong} (big endian {big_endian}): {e}"));
                assert_eq!(parsed.metadata, right.metadata, "group length {wrong}, big endian {big_endian}");
                assert_eq!(parsed.attributes, right.attributes);
            }
        }
    }
}
