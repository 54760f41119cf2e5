//! Where things are in a PS3.10 file: the end of the File Meta group, and the position of
//! Pixel Data (and of its fragments when encapsulated), found by walking the element framing
//! without reading values. The walk also proves that every declared length fits in the file,
//! which catches truncated objects that a parse stopping before Pixel Data would not see.

use std::io::{Read, Seek, SeekFrom};

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_dictionary_std::StandardDataDictionary;
use serde::{Deserialize, Serialize};

use super::part10::HEADER_LEN;

const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_DELIMITATION: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_DELIMITATION: (u16, u16) = (0xFFFE, 0xE0DD);
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);
/// Extended Offset Table (PS3.5 §A.4): recorded whatever its size, to find frames by it.
pub const EXTENDED_OFFSET_TABLE: u32 = 0x7FE0_0001;
const UNDEFINED: u32 = 0xFFFF_FFFF;
/// Sequences nested deeper than this (a sequence in an item of a top-level sequence is at depth
/// 2) are refused at store time, whatever their form: defined or undefined length, items of
/// either kind. No real object needs more; it bounds the recursion of the walk, of dicom-rs's
/// parser, of the DICOM JSON writer, of serde and of `Drop`, which all follow the nesting, and
/// keeps the stored DICOM JSON within serde_json's recursion limit (128) when it is read back.
pub const MAX_SEQUENCE_DEPTH: u32 = 32;
/// Most fragments (items) of encapsulated Pixel Data: each is recorded, so the count bounds the
/// record; a million is far beyond any real multi-frame object (one fragment per frame).
pub const MAX_FRAGMENTS: usize = 1 << 20;
/// Most data elements in one instance, at all nesting levels: each costs memory in dicom-rs's
/// object and in the DICOM JSON built from it (about 1.2 KiB together: a part of a million empty
/// elements once took the server to 1 GB, 260,000 to 330 MB). The store keeps at most 512 KiB of
/// DICOM JSON per instance, which already refuses data sets of more than some 25,000 elements.
pub const MAX_ELEMENTS: u64 = 1 << 17;

/// Pixel Data's place in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PixelDataLayout {
    /// Offset of the value (native) or of the first item (encapsulated).
    pub offset: u64,
    /// Value length for native data; `None` when encapsulated (undefined length).
    pub length: Option<u64>,
    /// Encapsulated only: (offset, length) of each item's value, the Basic Offset Table first.
    pub fragments: Vec<(u64, u32)>,
    /// The VR native Pixel Data was written with (OB or OW); `None` in Implicit VR, where
    /// Pixel Data is OW (PS3.5 §A.1), and for encapsulated data (always OB).
    // No skip_serializing_if: catalog records are postcard, which is not self-describing.
    #[serde(default)]
    pub vr: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Offset of the first data set element (just past the File Meta group).
    pub dataset_offset: u64,
    /// Offset of the File Meta elements that follow a leading File Meta Information Group Length
    /// (0002,0000) of 4 bytes, or of the first element when there is none: the parse hands
    /// dicom-rs a group length of its own, counted from here to `dataset_offset` (see
    /// [`super::part10::parse`]).
    pub meta_elements_offset: u64,
    /// The Transfer Syntax UID found in the File Meta group.
    pub transfer_syntax_uid: String,
    /// Whether the data set is big endian (Explicit VR Big Endian, retired).
    pub big_endian: bool,
    pub pixel_data: Option<PixelDataLayout>,
    /// The raw value bytes of the top-level elements of at most [`MAX_CAPTURE`] bytes (tag as
    /// `group << 16 | element`), for decoding text that dicom-rs cannot.
    pub raw_values: RawValues,
    /// The top-level elements larger than [`super::json::INLINE_BINARY_MAX`], by place: the bulk
    /// data a metadata response may refer to by BulkDataURI.
    pub large_values: Vec<LargeValue>,
    /// The values inside sequences larger than [`super::part10::HIDDEN_VALUE_MIN`], in file
    /// order, and the defined lengths around them, less the hidden bytes.
    pub nested_values: Vec<NestedValue>,
    pub length_patches: Vec<LengthPatch>,
    /// Data elements walked, at all nesting levels (what a parse of the data set costs besides
    /// its bytes).
    pub elements: u64,
    /// Bytes of `raw_values`.
    pub captured_bytes: u64,
}

/// A value inside a sequence, larger than [`super::part10::HIDDEN_VALUE_MIN`], by place: the
/// parse hides it from dicom-rs as it hides large top-level values, and the metadata refers to
/// it by a BulkDataURI with its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NestedValue {
    /// Sequence tag, item number (1-based), and so on, ending with the value's own tag.
    pub path: Vec<u32>,
    pub offset: u64,
    pub length: u64,
}

/// A defined length (of a sequence or an item) that encloses hidden values: the parse reads
/// `length` at `offset` instead of what the file says, so the enclosing framing stays true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthPatch {
    pub offset: u64,
    pub length: u32,
}

/// Raw value bytes by tag (`group << 16 | element`): found by lookup, not by a search per
/// element, so that a data set of a million elements costs a million steps.
pub type RawValues = std::collections::HashMap<u32, Vec<u8>>;

/// Values longer than this are not captured.
const MAX_CAPTURE: u32 = 16 * 1024;
/// At most this many bytes are captured in all (a file of 16 KiB elements would otherwise be
/// held whole); values beyond are decoded by dicom-rs alone.
const MAX_CAPTURE_TOTAL: u64 = 2 * 1024 * 1024;

/// Where a large top-level value sits in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LargeValue {
    pub tag: u32,
    pub offset: u64,
    pub length: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("the file ends inside an element (declared lengths exceed the file)")]
    Truncated,
    #[error("sequences are nested more than {MAX_SEQUENCE_DEPTH} levels deep, the most Kura accepts")]
    TooDeep,
    #[error("encapsulated pixel data has more than {MAX_FRAGMENTS} fragments, the most Kura accepts")]
    TooManyFragments,
    #[error("the data set has more than {MAX_ELEMENTS} elements, the most Kura accepts")]
    TooManyElements,
    #[error("the element structure is invalid: {0}")]
    Invalid(&'static str),
    #[error("reading the payload failed: {0}")]
    Io(#[from] std::io::Error),
}

struct Walker<'a, R> {
    reader: &'a mut R,
    position: u64,
    total: u64,
    explicit: bool,
    big_endian: bool,
    pixel_data: Option<PixelDataLayout>,
    capture_all: bool,
    raw_values: RawValues,
    large_values: Vec<LargeValue>,
    nested_values: Vec<NestedValue>,
    length_patches: Vec<LengthPatch>,
    /// Where the walk is: sequence tag, item number, … (empty at the top level).
    path: Vec<u32>,
    /// The defined-length sequences and items the walk is inside: where their length field is,
    /// the length, and the bytes of hidden values inside them.
    enclosing: Vec<(u64, u32, u64)>,
    elements: u64,
    captured_bytes: u64,
}

impl<R: Read + Seek> Walker<'_, R> {
    /// Walks a defined-length sequence or item whose length field ends at the current position:
    /// a value hidden inside it shortens it, and the patch is recorded when it closes.
    fn enclosed(
        &mut self,
        length: u32,
        walk: impl FnOnce(&mut Self, u64) -> Result<(), LayoutError>,
    ) -> Result<(), LayoutError> {
        let end = self.position.checked_add(u64::from(length)).filter(|end| *end <= self.total);
        let end = end.ok_or(LayoutError::Truncated)?;
        self.enclosing.push((self.position - 4, length, 0));
        walk(self, end)?;
        let (offset, length, hidden) = self.enclosing.pop().expect("pushed above");
        if hidden > 0 {
            // hidden ≤ length: the hidden values lie inside.
            self.length_patches.push(LengthPatch { offset, length: length - hidden as u32 });
        }
        Ok(())
    }

    fn read<const N: usize>(&mut self) -> Result<[u8; N], LayoutError> {
        if self.position + N as u64 > self.total {
            return Err(LayoutError::Truncated);
        }
        let mut buffer = [0u8; N];
        self.reader.read_exact(&mut buffer).map_err(|_| LayoutError::Truncated)?;
        self.position += N as u64;
        Ok(buffer)
    }

    fn u16(&mut self, big_endian: bool) -> Result<u16, LayoutError> {
        let bytes = self.read::<2>()?;
        Ok(if big_endian { u16::from_be_bytes(bytes) } else { u16::from_le_bytes(bytes) })
    }

    fn u32(&mut self, big_endian: bool) -> Result<u32, LayoutError> {
        let bytes = self.read::<4>()?;
        Ok(if big_endian { u32::from_be_bytes(bytes) } else { u32::from_le_bytes(bytes) })
    }

    fn skip(&mut self, length: u64) -> Result<(), LayoutError> {
        if self.position + length > self.total {
            return Err(LayoutError::Truncated);
        }
        self.position += length;
        self.reader.seek(SeekFrom::Start(self.position))?;
        Ok(())
    }

    /// Reads a tag; item and delimitation tags are always little-endian-or-big-endian like the
    /// data set (PS3.5 §7.5).
    fn tag(&mut self) -> Result<(u16, u16), LayoutError> {
        let big_endian = self.big_endian;
        Ok((self.u16(big_endian)?, self.u16(big_endian)?))
    }

    /// Reads VR (when explicit) and length of the element whose tag was just read. The 16-bit
    /// length form is used for exactly the VRs dicom-rs reads it for (PS3.5 Table 7.1-2); any
    /// other VR, unknown ones included, has the 32-bit form, as dicom-rs reads it (an unknown VR
    /// becomes UN there), so that the walk and the parse frame the data set alike.
    fn vr_and_length(&mut self, tag: (u16, u16), explicit: bool) -> Result<([u8; 2], u32), LayoutError> {
        let big_endian = self.big_endian;
        if tag.0 == 0xFFFE || !explicit {
            return Ok((*b"  ", self.u32(big_endian)?));
        }
        let vr = self.read::<2>()?;
        let short = matches!(
            &vr,
            b"AE"
                | b"AS"
                | b"AT"
                | b"CS"
                | b"DA"
                | b"DS"
                | b"DT"
                | b"FL"
                | b"FD"
                | b"IS"
                | b"LO"
                | b"LT"
                | b"PN"
                | b"SH"
                | b"SL"
                | b"SS"
                | b"ST"
                | b"TM"
                | b"UI"
                | b"UL"
                | b"US"
        );
        let length = if short {
            u32::from(self.u16(big_endian)?)
        } else {
            self.read::<2>()?;
            self.u32(big_endian)?
        };
        Ok((vr, length))
    }

    /// Whether dicom-rs parses this element as a sequence of items: VR SQ, written (explicit VR)
    /// or, in Implicit VR, from the data dictionary, whatever the length.
    fn is_sequence(&self, tag: (u16, u16), vr: [u8; 2]) -> bool {
        if self.explicit {
            return &vr == b"SQ";
        }
        let tag = dicom_core::Tag(tag.0, tag.1);
        tag != dicom_core::Tag(0x7FE0, 0x0010)
            && StandardDataDictionary.by_tag(tag).is_some_and(|entry| entry.vr().relaxed() == dicom_core::VR::SQ)
    }

    /// Walks elements until `end` (an item of defined length) or an Item Delimitation Item
    /// (undefined length); the top level (`end` `None`, `top_level`) runs to the end of the file.
    fn dataset(&mut self, end: Option<u64>, depth: u32, top_level: bool) -> Result<(), LayoutError> {
        if depth > MAX_SEQUENCE_DEPTH {
            return Err(LayoutError::TooDeep);
        }
        loop {
            match end {
                Some(end) if self.position == end => return Ok(()),
                Some(end) if self.position > end => {
                    return Err(LayoutError::Invalid("an element crosses the end of its item"));
                }
                None if self.position >= self.total => {
                    return if top_level { Ok(()) } else { Err(LayoutError::Truncated) };
                }
                _ => {}
            }
            let tag = self.tag()?;
            if tag == ITEM_DELIMITATION {
                self.u32(self.big_endian)?;
                if top_level {
                    // dicom-rs skips a stray delimiter outside any sequence and reads on; so
                    // does the walk, lest what follows go unchecked.
                    continue;
                }
                return if end.is_none() { Ok(()) } else { Err(LayoutError::Invalid("unexpected item delimitation")) };
            }
            self.elements += 1;
            if self.elements > MAX_ELEMENTS {
                return Err(LayoutError::TooManyElements);
            }
            let (vr, length) = self.vr_and_length(tag, self.explicit)?;
            if tag == PIXEL_DATA && length == UNDEFINED {
                // Encapsulated, at any depth (an Icon Image Sequence may hold some).
                self.encapsulated(top_level)?;
            } else if self.is_sequence(tag, vr) {
                self.path.push(tag_number(tag));
                if length == UNDEFINED {
                    self.sequence(None, depth)?;
                } else {
                    self.enclosed(length, |walker, end| walker.sequence(Some(end), depth))?;
                }
                self.path.pop();
            } else if length == UNDEFINED {
                // dicom-rs reads any other undefined-length element as a sequence, in the data
                // set's own encoding, and walks the same way. PS3.5 §6.2.2 says an
                // undefined-length UN holds Implicit VR Little Endian; in an explicit data set
                // dicom-rs 0.10 reads that content as Explicit VR, takes item tags for value
                // lengths and allocates them (3.7 GB for pydicom's 674-byte UN_sequence.dcm,
                // found by fuzzing). So when the walk in the data set's encoding fails, the
                // object is refused: nothing may reach dicom-rs that it would misread.
                self.path.push(tag_number(tag));
                self.sequence(None, depth).map_err(|error| match error {
                    LayoutError::TooDeep => LayoutError::TooDeep,
                    _ if &vr == b"UN" => LayoutError::Invalid(
                        "an undefined-length UN element holds Implicit VR content inside an explicit VR data set \
                         (PS3.5 6.2.2), which Kura cannot parse safely",
                    ),
                    other => other,
                })?;
                self.path.pop();
            } else {
                self.value(tag, vr, length, top_level)?;
            }
        }
    }

    /// A value of defined length: recorded when it is Pixel Data, large or small enough to keep
    /// (top level only), then skipped.
    fn value(&mut self, tag: (u16, u16), vr: [u8; 2], length: u32, top_level: bool) -> Result<(), LayoutError> {
        // dicom-rs reads a binary number value as whole numbers and leaves a remainder unread
        // (an SL of length 2 consumes nothing), so every later element is read from a shifted
        // position and may be sized by bytes that are not a length (found by fuzzing: a 3,250-byte
        // part made the parse hold 1.16 GB). PS3.5 §6.2 makes such a length invalid: refuse it.
        if tag != PIXEL_DATA && !length.is_multiple_of(binary_value_size(tag, vr)) {
            return Err(LayoutError::Invalid(
                "a binary value's length is not a multiple of its value representation's size (PS3.5 6.2)",
            ));
        }
        if top_level && tag == PIXEL_DATA {
            self.pixel_data = Some(PixelDataLayout {
                offset: self.position,
                length: Some(u64::from(length)),
                fragments: Vec::new(),
                vr: (vr != *b"  ").then(|| String::from_utf8_lossy(&vr).into_owned()),
            });
        }
        let number = tag_number(tag);
        if top_level && (length as usize > super::json::INLINE_BINARY_MAX || number == EXTENDED_OFFSET_TABLE) {
            self.large_values.push(LargeValue { tag: number, offset: self.position, length: u64::from(length) });
        }
        if !top_level
            && u64::from(length) > super::part10::HIDDEN_VALUE_MIN
            && self.position + u64::from(length) <= self.total
        {
            let mut path = self.path.clone();
            path.push(number);
            self.nested_values.push(NestedValue { path, offset: self.position, length: u64::from(length) });
            for (_, _, hidden) in &mut self.enclosing {
                *hidden += u64::from(length);
            }
        }
        if top_level
            && length <= MAX_CAPTURE
            && self.capture_all
            && self.captured_bytes + u64::from(length) <= MAX_CAPTURE_TOTAL
        {
            if self.position + u64::from(length) > self.total {
                return Err(LayoutError::Truncated);
            }
            let mut value = vec![0u8; length as usize];
            self.reader.read_exact(&mut value).map_err(|_| LayoutError::Truncated)?;
            self.position += u64::from(length);
            self.captured_bytes += u64::from(length);
            self.raw_values.insert(number, value);
            return Ok(());
        }
        self.skip(u64::from(length))
    }

    /// Items of a sequence, up to its Sequence Delimitation Item (`end` `None`) or its declared
    /// end. Each item, of defined or undefined length, is one level deeper.
    fn sequence(&mut self, end: Option<u64>, depth: u32) -> Result<(), LayoutError> {
        let mut item = 0u32;
        loop {
            match end {
                Some(end) if self.position == end => return Ok(()),
                Some(end) if self.position > end => {
                    return Err(LayoutError::Invalid("an item crosses the end of its sequence"));
                }
                _ => {}
            }
            let tag = self.tag()?;
            let length = self.u32(self.big_endian)?;
            match tag {
                SEQUENCE_DELIMITATION if end.is_none() => return Ok(()),
                ITEM => {
                    item += 1;
                    self.path.push(item);
                    if length == UNDEFINED {
                        self.dataset(None, depth + 1, false)?;
                    } else {
                        self.enclosed(length, |walker, end| walker.dataset(Some(end), depth + 1, false))?;
                    }
                    self.path.pop();
                }
                _ => return Err(LayoutError::Invalid("expected an item in a sequence")),
            }
        }
    }

    /// Items of encapsulated Pixel Data (PS3.5 §A.4): each fragment's place is recorded.
    /// Nested ones (in an icon image) are walked, not recorded.
    fn encapsulated(&mut self, top_level: bool) -> Result<(), LayoutError> {
        let mut layout = PixelDataLayout { offset: self.position, length: None, fragments: Vec::new(), vr: None };
        loop {
            let tag = self.tag()?;
            let length = self.u32(self.big_endian)?;
            match tag {
                SEQUENCE_DELIMITATION => break,
                ITEM if length != UNDEFINED => {
                    if top_level {
                        if layout.fragments.len() >= MAX_FRAGMENTS {
                            return Err(LayoutError::TooManyFragments);
                        }
                        layout.fragments.push((self.position, length));
                    }
                    self.skip(u64::from(length))?;
                }
                _ => return Err(LayoutError::Invalid("encapsulated pixel data holds a non-item")),
            }
        }
        if top_level {
            self.pixel_data = Some(layout);
        }
        Ok(())
    }
}

fn tag_number(tag: (u16, u16)) -> u32 {
    (u32::from(tag.0) << 16) | u32::from(tag.1)
}

/// The size of one number of a binary value representation (1 for every other VR). In Implicit
/// VR the dictionary's VR counts, as it does for dicom-rs.
fn binary_value_size(tag: (u16, u16), vr: [u8; 2]) -> u32 {
    let vr = if vr == *b"  " {
        match StandardDataDictionary.by_tag(dicom_core::Tag(tag.0, tag.1)).map(|entry| entry.vr().relaxed()) {
            Some(vr) => vr.to_bytes(),
            None => return 1,
        }
    } else {
        vr
    };
    match &vr {
        b"SS" | b"US" | b"OW" => 2,
        b"AT" | b"FL" | b"SL" | b"UL" | b"OF" | b"OL" => 4,
        b"FD" | b"SV" | b"UV" | b"OD" | b"OV" => 8,
        _ => 1,
    }
}

/// Walks a PS3.10 payload of `total` bytes (preamble included), keeping the raw values of the
/// top-level elements up to [`MAX_CAPTURE`] bytes when `capture` is set.
pub fn walk<R: Read + Seek>(reader: &mut R, total: u64, capture: bool) -> Result<Layout, LayoutError> {
    reader.seek(SeekFrom::Start(HEADER_LEN as u64))?;
    let mut walker = Walker {
        reader,
        position: HEADER_LEN as u64,
        total,
        explicit: true,
        big_endian: false,
        pixel_data: None,
        capture_all: capture,
        raw_values: RawValues::new(),
        large_values: Vec::new(),
        nested_values: Vec::new(),
        length_patches: Vec::new(),
        path: Vec::new(),
        enclosing: Vec::new(),
        elements: 0,
        captured_bytes: 0,
    };
    // File Meta: explicit VR little endian, every element of group 0002 (PS3.10 §7.1). The walk
    // ends it where group 0002 ends, whatever its Group Length (0002,0000) says: the parse hands
    // dicom-rs a group length counted the same way, so that both frame the data set alike.
    let mut meta_elements_offset = HEADER_LEN as u64;
    let mut transfer_syntax_uid = String::new();
    loop {
        if walker.position + 4 > total {
            return Err(LayoutError::Truncated);
        }
        let group = walker.u16(false)?;
        if group != 0x0002 {
            walker.position -= 2;
            walker.reader.seek(SeekFrom::Start(walker.position))?;
            break;
        }
        let element = walker.u16(false)?;
        let (_, length) = walker.vr_and_length((group, element), true)?;
        if length == UNDEFINED {
            return Err(LayoutError::Invalid("undefined length in the file meta group"));
        }
        match element {
            0x0000 if length == 4 && walker.position == HEADER_LEN as u64 + 8 => {
                walker.skip(4)?;
                meta_elements_offset = walker.position;
                continue;
            }
            0x0010 => {
                // A UI value is at most 64 bytes (PS3.5 Table 6.2-1). A longer one would go
                // unread here while dicom-rs read it, and the two could frame the data set in
                // different byte orders or VR forms.
                if length > 64 {
                    return Err(LayoutError::Invalid("the Transfer Syntax UID is longer than 64 bytes (PS3.5 6.2)"));
                }
                let mut value = vec![0u8; length as usize];
                walker.reader.read_exact(&mut value).map_err(|_| LayoutError::Truncated)?;
                walker.position += u64::from(length);
                // Trimmed as dicom-rs trims it (`FileMetaTable::transfer_syntax`), so that both
                // take the same transfer syntax.
                transfer_syntax_uid = String::from_utf8_lossy(&value)
                    .trim_end_matches(|c: char| c.is_whitespace() || c == '\0')
                    .to_string();
                continue;
            }
            _ => {}
        }
        walker.skip(u64::from(length))?;
    }
    let dataset_offset = walker.position;
    match transfer_syntax_uid.as_str() {
        // Deflated data sets cannot be walked without inflating. dicom-rs is built without its
        // deflate feature, so it refuses them before parsing anything (C122): no nesting of
        // theirs is ever parsed.
        "1.2.840.10008.1.2.1.99" => {
            return Ok(Layout {
                dataset_offset,
                meta_elements_offset,
                transfer_syntax_uid,
                big_endian: false,
                pixel_data: None,
                raw_values: RawValues::new(),
                large_values: Vec::new(),
                nested_values: Vec::new(),
                length_patches: Vec::new(),
                elements: 0,
                captured_bytes: 0,
            });
        }
        "1.2.840.10008.1.2" => walker.explicit = false,
        "1.2.840.10008.1.2.2" => walker.big_endian = true,
        _ => {}
    }
    walker.dataset(None, 0, true)?;
    let pixel_data = walker.pixel_data.take();
    let raw_values = std::mem::take(&mut walker.raw_values);
    let large_values = std::mem::take(&mut walker.large_values);
    let nested_values = std::mem::take(&mut walker.nested_values);
    let mut length_patches = std::mem::take(&mut walker.length_patches);
    // Inner containers close first; the parse wants them in file order.
    length_patches.sort_unstable_by_key(|patch| patch.offset);
    Ok(Layout {
        dataset_offset,
        meta_elements_offset,
        transfer_syntax_uid,
        big_endian: walker.big_endian,
        pixel_data,
        raw_values,
        large_values,
        nested_values,
        length_patches,
        elements: walker.elements,
        captured_bytes: walker.captured_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn element(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(vr);
        if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN") {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        }
        out.extend_from_slice(value);
        out
    }

    fn file(dataset: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 128];
        out.extend_from_slice(b"DICM");
        out.extend(element((2, 0x10), b"UI", b"1.2.840.10008.1.2.1\0"));
        out.extend_from_slice(dataset);
        out
    }

    #[test]
    fn finds_native_pixel_data_and_flags_truncation() {
        let mut dataset = element((0x0010, 0x0010), b"PN", b"Doe^J ");
        dataset.extend(element(PIXEL_DATA, b"OW", &[7u8; 64]));
        let bytes = file(&dataset);
        let layout = walk(&mut Cursor::new(&bytes), bytes.len() as u64, false).unwrap();
        assert_eq!(layout.meta_elements_offset, HEADER_LEN as u64, "no group length");
        assert_eq!(layout.transfer_syntax_uid, "1.2.840.10008.1.2.1");
        let pixels = layout.pixel_data.unwrap();
        assert_eq!(pixels.length, Some(64));
        assert_eq!(&bytes[pixels.offset as usize..][..64], &[7u8; 64]);
        let cut = &bytes[..bytes.len() - 10];
        assert!(matches!(walk(&mut Cursor::new(cut), cut.len() as u64, false), Err(LayoutError::Truncated)));
    }

    #[test]
    fn records_fragments_of_encapsulated_pixel_data() {
        let mut dataset = Vec::new();
        dataset.extend_from_slice(&0x7FE0u16.to_le_bytes());
        dataset.extend_from_slice(&0x0010u16.to_le_bytes());
        dataset.extend_from_slice(b"OB\0\0");
        dataset.extend_from_slice(&UNDEFINED.to_le_bytes());
        for fragment in [&[][..], &[1u8, 2, 3, 4][..], &[5u8, 6][..]] {
            dataset.extend_from_slice(&0xFFFEu16.to_le_bytes());
            dataset.extend_from_slice(&0xE000u16.to_le_bytes());
            dataset.extend_from_slice(&(fragment.len() as u32).to_le_bytes());
            dataset.extend_from_slice(fragment);
        }
        dataset.extend_from_slice(&0xFFFEu16.to_le_bytes());
        dataset.extend_from_slice(&0xE0DDu16.to_le_bytes());
        dataset.extend_from_slice(&0u32.to_le_bytes());
        let bytes = file(&dataset);
        let layout = walk(&mut Cursor::new(&bytes), bytes.len() as u64, false).unwrap();
        let pixels = layout.pixel_data.unwrap();
        assert_eq!(pixels.fragments.iter().map(|f| f.1).collect::<Vec<_>>(), vec![0, 4, 2]);
        assert_eq!(&bytes[pixels.fragments[1].0 as usize..][..4], &[1, 2, 3, 4]);
    }

    #[test]
    fn large_values_inside_sequences_are_found_with_their_path_and_the_lengths_around_them() {
        let large = vec![9u8; 70_000];
        let mut first_item = element((0x0040, 0xA040), b"CS", b"TEXT");
        first_item.extend(element((0x0042, 0x0011), b"OB", &large));
        first_item.extend(element((0x0042, 0x0012), b"LO", b"application/pdf "));
        let mut items = vec![0xFE, 0xFF, 0x00, 0xE0];
        items.extend_from_slice(&(first_item.len() as u32).to_le_bytes());
        items.extend_from_slice(&first_item);
        // A second item of undefined length with a large value of its own: no length to patch.
        items.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        items.extend(element((0x0042, 0x0011), b"OB", &large));
        items.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        let mut dataset = element((0x0040, 0xA730), b"SQ", &items);
        dataset.extend(element((0x0042, 0x0012), b"LO", b"text/plain      "));
        let bytes = file(&dataset);
        let layout = walk(&mut Cursor::new(&bytes), bytes.len() as u64, false).unwrap();
        let paths: Vec<&[u32]> = layout.nested_values.iter().map(|value| &value.path[..]).collect();
        assert_eq!(paths, [&[0x0040_A730, 1, 0x0042_0011][..], &[0x0040_A730, 2, 0x0042_0011][..]]);
        for value in &layout.nested_values {
            assert_eq!(value.length, 70_000);
            assert_eq!(&bytes[value.offset as usize..][..70_000], &large[..]);
        }
        // The sequence's length field (the first thing after the File Meta group, 8 bytes in)
        // and the first item's (8 bytes further) each lose both, resp. one, large value.
        let sequence_field = layout.dataset_offset + 8;
        assert_eq!(
            layout.length_patches,
            [
                LengthPatch { offset: sequence_field, length: items.len() as u32 - 140_000 },
                LengthPatch { offset: sequence_field + 8, length: first_item.len() as u32 - 70_000 },
            ]
        );
        assert!(layout.large_values.is_empty(), "nested values are not top-level bulk data");
    }

    /// `depth` nested sequences, each with one item; `defined` picks lengths or delimiters.
    fn nested(depth: usize, defined: bool, explicit: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for level in (0..depth).rev() {
            let item = if defined { (level * if explicit { 20 } else { 16 }) as u32 } else { UNDEFINED };
            let sequence = if defined { item + 8 } else { UNDEFINED };
            out.extend_from_slice(&[0x40, 0x00, 0x30, 0xA7]);
            if explicit {
                out.extend_from_slice(b"SQ\0\0");
            }
            out.extend_from_slice(&sequence.to_le_bytes());
            out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
            out.extend_from_slice(&item.to_le_bytes());
        }
        if !defined {
            for _ in 0..depth {
                out.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0, 0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
            }
        }
        out
    }

    fn file_in(transfer_syntax: &[u8], dataset: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 128];
        out.extend_from_slice(b"DICM");
        out.extend(element((2, 0x10), b"UI", transfer_syntax));
        out.extend_from_slice(dataset);
        out
    }

    fn walk_bytes(bytes: &[u8]) -> Result<Layout, LayoutError> {
        walk(&mut Cursor::new(bytes), bytes.len() as u64, true)
    }

    #[test]
    fn the_depth_limit_holds_for_every_sequence_form() {
        let explicit = b"1.2.840.10008.1.2.1\0";
        let implicit = b"1.2.840.10008.1.2\0\0";
        for defined in [true, false] {
            for (ts, is_explicit) in [(&explicit[..], true), (&implicit[..], false)] {
                let at_limit = file_in(ts, &nested(MAX_SEQUENCE_DEPTH as usize, defined, is_explicit));
                assert!(walk_bytes(&at_limit).is_ok(), "defined {defined}, explicit {is_explicit}");
                let over = file_in(ts, &nested(MAX_SEQUENCE_DEPTH as usize + 1, defined, is_explicit));
                assert!(
                    matches!(walk_bytes(&over), Err(LayoutError::TooDeep)),
                    "defined {defined}, explicit {is_explicit}"
                );
            }
        }
        // A stray Item Delimitation Item at the top level does not end the walk (dicom-rs reads on).
        let mut dataset = vec![0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0];
        dataset.extend(nested(MAX_SEQUENCE_DEPTH as usize + 1, true, true));
        assert!(matches!(walk_bytes(&file_in(explicit, &dataset)), Err(LayoutError::TooDeep)));
        // An undefined-length UN hides no depth, read either way.
        let mut un = vec![0x09, 0x00, 0x10, 0x10, b'U', b'N', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF];
        un.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        un.extend(nested(MAX_SEQUENCE_DEPTH as usize, true, true));
        un.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0, 0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        assert!(matches!(walk_bytes(&file_in(explicit, &un)), Err(LayoutError::TooDeep)));
    }

    /// A File Meta group led by its Group Length (0002,0000) holding `group_length`, then the
    /// Transfer Syntax UID `transfer_syntax`.
    fn file_with_group_length(group_length: u32, transfer_syntax: &[u8], dataset: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 128];
        out.extend_from_slice(b"DICM");
        out.extend(element((2, 0), b"UL", &group_length.to_le_bytes()));
        out.extend(element((2, 0x10), b"UI", transfer_syntax));
        out.extend_from_slice(dataset);
        out
    }

    #[test]
    fn the_file_meta_group_ends_where_its_elements_end_whatever_its_group_length_says() {
        let dataset = element((0x0010, 0x0010), b"PN", b"Doe^J ");
        let transfer_syntax = b"1.2.840.10008.1.2.1\0";
        let right = 8 + transfer_syntax.len() as u32;
        for group_length in [right, right + 32, right - 8, 0, u32::MAX] {
            let bytes = file_with_group_length(group_length, transfer_syntax, &dataset);
            let layout = walk_bytes(&bytes).unwrap();
            assert_eq!(layout.meta_elements_offset, HEADER_LEN as u64 + 12, "group length {group_length}");
            assert_eq!(layout.dataset_offset, HEADER_LEN as u64 + 12 + u64::from(right), "group length {group_length}");
        }
    }

    #[test]
    fn the_transfer_syntax_is_read_as_dicom_rs_reads_it_or_refused() {
        // Trailing white space of any kind is trimmed, as dicom-rs trims it: big endian here.
        let mut dataset = Vec::new();
        dataset.extend_from_slice(&[0x00, 0x10, 0x00, 0x10, b'P', b'N', 0x00, 0x06]);
        dataset.extend_from_slice(b"Doe^J ");
        let bytes = file_in(b"1.2.840.10008.1.2.2\t", &dataset);
        let layout = walk_bytes(&bytes).unwrap();
        assert!(layout.big_endian);
        assert_eq!(layout.transfer_syntax_uid, "1.2.840.10008.1.2.2");
        // Longer than a UI value may be (PS3.5 Table 6.2-1): refused, not read past.
        let mut long = b"1.2.840.10008.1.2.2".to_vec();
        long.resize(66, b' ');
        assert!(matches!(walk_bytes(&file_in(&long, &dataset)), Err(LayoutError::Invalid(_))));
    }

    #[test]
    fn an_item_that_overruns_its_declared_length_is_refused() {
        // A defined-length item of 4 bytes holding an 8-byte element.
        let mut dataset =
            vec![0x40, 0x00, 0x30, 0xA7, b'S', b'Q', 0, 0, 20, 0, 0, 0, 0xFE, 0xFF, 0x00, 0xE0, 4, 0, 0, 0];
        dataset.extend(element((0x0008, 0x0100), b"SH", b"ABCD"));
        let bytes = file_in(b"1.2.840.10008.1.2.1\0", &dataset);
        assert!(matches!(walk_bytes(&bytes), Err(LayoutError::Invalid(_))));
    }
}
