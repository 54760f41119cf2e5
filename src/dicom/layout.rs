//! Where things are in a PS3.10 file: the end of the File Meta group, and the position of
//! Pixel Data (and of its fragments when encapsulated), found by walking the element framing
//! without reading values. The walk also proves that every declared length fits in the file,
//! which catches truncated objects that a parse stopping before Pixel Data would not see.

use std::io::{Read, Seek, SeekFrom};

use serde::{Deserialize, Serialize};

use super::part10::HEADER_LEN;

const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_DELIMITATION: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_DELIMITATION: (u16, u16) = (0xFFFE, 0xE0DD);
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);
/// Extended Offset Table (PS3.5 §A.4): recorded whatever its size, to find frames by it.
pub const EXTENDED_OFFSET_TABLE: u32 = 0x7FE0_0001;
const UNDEFINED: u32 = 0xFFFF_FFFF;
/// Nesting beyond this is refused: no real object needs it, and it bounds the recursion.
const MAX_DEPTH: u32 = 32;

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
    /// Whether the File Meta group carries its Group Length (0002,0000).
    pub meta_has_group_length: bool,
    /// The Transfer Syntax UID found in the File Meta group.
    pub transfer_syntax_uid: String,
    pub pixel_data: Option<PixelDataLayout>,
    /// The raw value bytes of the top-level elements of at most [`MAX_CAPTURE`] bytes (tag as
    /// `group << 16 | element`), for decoding text that dicom-rs cannot.
    pub raw_values: Vec<(u32, Vec<u8>)>,
    /// The top-level elements larger than [`super::json::INLINE_BINARY_MAX`], by place: the bulk
    /// data a metadata response may refer to by BulkDataURI.
    pub large_values: Vec<LargeValue>,
}

/// Values longer than this are not captured.
const MAX_CAPTURE: u32 = 16 * 1024;

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
    raw_values: Vec<(u32, Vec<u8>)>,
    large_values: Vec<LargeValue>,
}

impl<R: Read + Seek> Walker<'_, R> {
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

    /// Reads VR (when explicit) and length of the element whose tag was just read.
    fn vr_and_length(&mut self, tag: (u16, u16), explicit: bool) -> Result<([u8; 2], u32), LayoutError> {
        let big_endian = self.big_endian;
        if tag.0 == 0xFFFE || !explicit {
            return Ok((*b"  ", self.u32(big_endian)?));
        }
        let vr = self.read::<2>()?;
        let long = matches!(
            &vr,
            b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"SV" | b"UC" | b"UN" | b"UR" | b"UT" | b"UV"
        );
        let length = if long {
            self.read::<2>()?;
            self.u32(big_endian)?
        } else {
            u32::from(self.u16(big_endian)?)
        };
        Ok((vr, length))
    }

    /// Walks elements until `end` (defined length) or a delimitation item (undefined length).
    fn dataset(&mut self, end: Option<u64>, depth: u32, top_level: bool) -> Result<(), LayoutError> {
        if depth > MAX_DEPTH {
            return Err(LayoutError::Invalid("sequences nested too deeply"));
        }
        loop {
            if end.is_some_and(|end| self.position >= end) || (end.is_none() && self.position >= self.total) {
                if end.is_none() && !top_level {
                    return Err(LayoutError::Truncated);
                }
                return Ok(());
            }
            let tag = self.tag()?;
            if tag == ITEM_DELIMITATION {
                self.u32(self.big_endian)?;
                return if end.is_none() { Ok(()) } else { Err(LayoutError::Invalid("unexpected item delimitation")) };
            }
            let (vr, length) = self.vr_and_length(tag, self.explicit)?;
            if length != UNDEFINED {
                if top_level && tag == PIXEL_DATA {
                    self.pixel_data = Some(PixelDataLayout {
                        offset: self.position,
                        length: Some(u64::from(length)),
                        fragments: Vec::new(),
                        vr: (vr != *b"  ").then(|| String::from_utf8_lossy(&vr).into_owned()),
                    });
                }
                let number = (u32::from(tag.0) << 16) | u32::from(tag.1);
                if top_level && (length as usize > super::json::INLINE_BINARY_MAX || number == EXTENDED_OFFSET_TABLE) {
                    self.large_values.push(LargeValue {
                        tag: number,
                        offset: self.position,
                        length: u64::from(length),
                    });
                }
                if top_level && length <= MAX_CAPTURE && self.capture_all {
                    if self.position + u64::from(length) > self.total {
                        return Err(LayoutError::Truncated);
                    }
                    let mut value = vec![0u8; length as usize];
                    self.reader.read_exact(&mut value).map_err(|_| LayoutError::Truncated)?;
                    self.position += u64::from(length);
                    self.raw_values.push((number, value));
                    continue;
                }
                self.skip(u64::from(length))?;
                continue;
            }
            if tag == PIXEL_DATA && top_level {
                self.encapsulated()?;
            } else if &vr == b"UN" {
                // Undefined-length UN is a sequence in Implicit VR Little Endian (PS3.5 §6.2.2).
                let explicit = std::mem::replace(&mut self.explicit, false);
                let big_endian = std::mem::replace(&mut self.big_endian, false);
                let walked = self.sequence(depth);
                self.explicit = explicit;
                self.big_endian = big_endian;
                walked?;
            } else {
                self.sequence(depth)?;
            }
        }
    }

    /// Items of an undefined-length sequence, up to its Sequence Delimitation Item.
    fn sequence(&mut self, depth: u32) -> Result<(), LayoutError> {
        loop {
            let tag = self.tag()?;
            let length = self.u32(self.big_endian)?;
            match tag {
                SEQUENCE_DELIMITATION => return Ok(()),
                ITEM if length == UNDEFINED => self.dataset(None, depth + 1, false)?,
                ITEM => {
                    let end = self.position + u64::from(length);
                    if end > self.total {
                        return Err(LayoutError::Truncated);
                    }
                    self.dataset(Some(end), depth + 1, false)?;
                }
                _ => return Err(LayoutError::Invalid("expected an item in a sequence")),
            }
        }
    }

    /// Items of encapsulated Pixel Data (PS3.5 §A.4): each fragment's place is recorded.
    fn encapsulated(&mut self) -> Result<(), LayoutError> {
        let mut layout = PixelDataLayout { offset: self.position, length: None, fragments: Vec::new(), vr: None };
        loop {
            let tag = self.tag()?;
            let length = self.u32(self.big_endian)?;
            match tag {
                SEQUENCE_DELIMITATION => break,
                ITEM if length != UNDEFINED => {
                    layout.fragments.push((self.position, length));
                    self.skip(u64::from(length))?;
                }
                _ => return Err(LayoutError::Invalid("encapsulated pixel data holds a non-item")),
            }
        }
        self.pixel_data = Some(layout);
        Ok(())
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
        raw_values: Vec::new(),
        large_values: Vec::new(),
    };
    // File Meta: explicit VR little endian, every element of group 0002 (PS3.10 §7.1).
    let mut meta_has_group_length = false;
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
            0x0000 => meta_has_group_length = true,
            0x0010 if length <= 64 => {
                let mut value = vec![0u8; length as usize];
                walker.reader.read_exact(&mut value).map_err(|_| LayoutError::Truncated)?;
                walker.position += u64::from(length);
                transfer_syntax_uid = String::from_utf8_lossy(&value).trim_end_matches(['\0', ' ']).to_string();
                continue;
            }
            _ => {}
        }
        walker.skip(u64::from(length))?;
    }
    let dataset_offset = walker.position;
    match transfer_syntax_uid.as_str() {
        // Deflated data sets cannot be walked without inflating; dicom-rs parses them.
        "1.2.840.10008.1.2.1.99" => {
            return Ok(Layout {
                dataset_offset,
                meta_has_group_length,
                transfer_syntax_uid,
                pixel_data: None,
                raw_values: Vec::new(),
                large_values: Vec::new(),
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
    Ok(Layout { dataset_offset, meta_has_group_length, transfer_syntax_uid, pixel_data, raw_values, large_values })
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
        assert!(!layout.meta_has_group_length);
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
}
