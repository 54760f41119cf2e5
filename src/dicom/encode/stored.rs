//! Storage compression (issue 19 item 4, `--store-compression`): an instance received with
//! native pixel data in Explicit VR Little Endian is kept on disk with its pixel data losslessly
//! encoded (JPEG-LS or JPEG XL), and the bytes it was received as can be given back exactly.
//!
//! What "original" means here: the PS3.10 file as Kura stores any instance (preamble zeroed,
//! CVE-2019-11687), byte for byte. Only the File Meta group's Transfer Syntax UID (0002,0010)
//! and its group length (0002,0000), and the Pixel Data element (7FE0,0010) change in the stored
//! form: every other byte of the data set, before and after Pixel Data, is copied unchanged (an
//! encapsulated syntax is Explicit VR Little Endian outside Pixel Data, PS3.5 §A.4), so the data
//! set a reader parses is the received one. What the stored form cannot hold goes into an
//! [`OriginalForm`] kept in the catalog beside the instance's record: the original File Meta
//! group, Pixel Data's VR and length, and the bytes of its value after the last frame (the
//! padding of an odd length).
//!
//! The stored form is only kept when [`restore`] gives back the received bytes exactly (checked
//! here, at store time, with the same code that serves them later), and when it is smaller: so
//! an instance whose samples carry bits above Bits Stored (which no codec keeps, PS3.5 §8.1.1),
//! whose colour is by plane, or whose pixels a codec cannot carry, is stored as received.

use std::io::Cursor;

use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;
use dicom_object::file::ReadPreamble;
use serde::{Deserialize, Serialize};

use super::{Codec, PixelFormat};
use crate::dicom::layout;
use crate::dicom::part10::{HEADER_LEN, PREAMBLE_LEN};
use crate::dicom::transcode::{self, EXPLICIT_VR_LITTLE_ENDIAN, MAX_DECODED_BYTES, TranscodeError};

/// Version of [`OriginalForm`]'s encoding; readers refuse one they do not know.
pub const ORIGINAL_FORM_VERSION: u32 = 1;

/// Bytes of Pixel Data's value after the last frame that the catalog keeps (an odd frame size's
/// padding is one); an instance with more is stored as received.
const MAX_PIXEL_TAIL: usize = 64;

/// Bytes of a File Meta group the catalog keeps; a larger group is stored as received.
const MAX_FILE_META: usize = 16 * 1024;

/// What the catalog keeps of an instance stored re-encoded, to give back its received bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginalForm {
    pub version: u32,
    /// The transfer syntax the instance was received in (Explicit VR Little Endian).
    pub transfer_syntax_uid: String,
    /// Length and SHA-256 (lower-case hex) of the received bytes, preamble zeroed: what
    /// duplicate detection compares, so that a re-sent instance is recognised.
    pub length: u64,
    pub sha256: String,
    /// The received File Meta group: every byte from the `DICM` prefix's end to the data set.
    pub file_meta: Vec<u8>,
    /// Pixel Data's VR as received ("OB" or "OW") and its value length.
    pub pixel_vr: String,
    pub pixel_length: u32,
    /// Value bytes of Pixel Data after the last frame.
    pub pixel_tail: Vec<u8>,
    pub frames: u32,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
}

impl OriginalForm {
    fn frame_bytes(&self) -> usize {
        (self.pixel_length as usize - self.pixel_tail.len()) / self.frames.max(1) as usize
    }

    /// The native frame's samples as received: the decoded value in Bits Stored bits,
    /// sign-extended into Bits Allocated when signed and zero above when not. A decoder that
    /// gives the value some other way (sign-extended or not) is read the same way.
    fn native(&self, decoded: &[u8]) -> Result<Vec<u8>, TranscodeError> {
        if decoded.len() != self.frame_bytes() {
            return Err(TranscodeError::Failed(format!(
                "a decoded frame of {} bytes, {} expected",
                decoded.len(),
                self.frame_bytes()
            )));
        }
        let bits = u32::from(self.bits_stored);
        let reduce = |raw: u32, width: u32| -> u32 {
            let mask = if bits >= 32 { u32::MAX } else { (1u32 << bits) - 1 };
            let value = raw & mask;
            let negative = self.signed && bits < width && value & (1 << (bits - 1)) != 0;
            if negative { (value | !mask) & ((1u64 << width) - 1) as u32 } else { value }
        };
        Ok(match self.bits_allocated {
            8 => decoded.iter().map(|b| reduce(u32::from(*b), 8) as u8).collect(),
            _ => decoded
                .chunks_exact(2)
                .flat_map(|b| (reduce(u32::from(u16::from_le_bytes([b[0], b[1]])), 16) as u16).to_le_bytes())
                .collect(),
        })
    }
}

/// An instance re-encoded for storage, with what gives its received bytes back.
#[derive(Debug)]
pub struct Compressed {
    pub bytes: Vec<u8>,
    pub original: OriginalForm,
}

/// The instance `original` (a whole PS3.10 file, preamble zeroed; `sha256` its digest) with its
/// pixel data in `codec`, or why it stays as received. Checked: [`restore`] of the result gives
/// `original` back byte for byte, and the result is smaller.
pub fn compress(original: &[u8], sha256: &str, codec: Codec) -> Result<Compressed, String> {
    let total = original.len() as u64;
    let layout = layout::walk(&mut Cursor::new(original), total, false).map_err(|e| e.to_string())?;
    if layout.transfer_syntax_uid != EXPLICIT_VR_LITTLE_ENDIAN || layout.big_endian {
        return Err(format!("received in {}, not Explicit VR Little Endian", layout.transfer_syntax_uid));
    }
    let pixels = layout.pixel_data.as_ref().ok_or("no Pixel Data")?;
    let pixel_length = pixels.length.ok_or("Pixel Data is encapsulated")?;
    let (format, frames) = header_format(original).ok_or("no usable Image Pixel attributes")?;
    format.check(codec).map_err(|e| e.to_string())?;
    if format.samples_per_pixel != 1 && format.planar {
        // The codestreams hold colour by pixel, and the data set is never changed: Planar
        // Configuration 1 would then describe the stored pixels wrongly (PS3.5 §8.2).
        return Err("colour by plane (Planar Configuration 1)".into());
    }
    let element = usize::try_from(pixels.offset).map_err(|e| e.to_string())?.checked_sub(12).ok_or("framing")?;
    let header = &original[element..element + 12];
    let vr = std::str::from_utf8(&header[4..6]).unwrap_or_default().to_string();
    if header[..4] != [0xE0, 0x7F, 0x10, 0x00] || !matches!(vr.as_str(), "OB" | "OW") || header[6..8] != [0, 0] {
        return Err("Pixel Data is not a top-level OB/OW element".into());
    }
    let pixel_length = u32::try_from(pixel_length).map_err(|e| e.to_string())?;
    let frame_bytes = format.frame_bytes();
    let pixels_total = (frame_bytes as u64).checked_mul(u64::from(frames)).ok_or("frame sizes overflow")?;
    if pixels_total > u64::from(pixel_length) || pixels_total > MAX_DECODED_BYTES {
        return Err("Pixel Data is shorter than its frames, or too large".into());
    }
    let value_start = element + 12;
    let value_end = value_start + pixel_length as usize;
    let tail = &original[value_start + pixels_total as usize..value_end];
    if tail.len() > MAX_PIXEL_TAIL {
        return Err(format!("{} bytes of Pixel Data after the last frame", tail.len()));
    }
    let dataset_offset = usize::try_from(layout.dataset_offset).map_err(|e| e.to_string())?;
    let file_meta = &original[HEADER_LEN..dataset_offset];
    if file_meta.len() > MAX_FILE_META {
        return Err("a File Meta group too large to keep".into());
    }
    let stored_meta = meta_with_transfer_syntax(file_meta, codec.transfer_syntax())?;

    let mut codestreams = Vec::with_capacity(frames as usize);
    for frame in 0..frames as usize {
        let native = &original[value_start + frame * frame_bytes..value_start + (frame + 1) * frame_bytes];
        codestreams.push(super::encode_frame(codec, &format, native).map_err(|e| e.to_string())?);
    }
    let mut bytes = Vec::with_capacity(original.len() / 2);
    bytes.extend_from_slice(&[0; PREAMBLE_LEN]);
    bytes.extend_from_slice(b"DICM");
    bytes.extend_from_slice(&stored_meta);
    bytes.extend_from_slice(&original[dataset_offset..element]);
    encapsulate(&mut bytes, codestreams)?;
    bytes.extend_from_slice(&original[value_end..]);

    let form = OriginalForm {
        version: ORIGINAL_FORM_VERSION,
        transfer_syntax_uid: EXPLICIT_VR_LITTLE_ENDIAN.into(),
        length: total,
        sha256: sha256.to_string(),
        file_meta: file_meta.to_vec(),
        pixel_vr: vr,
        pixel_length,
        pixel_tail: tail.to_vec(),
        frames,
        bits_allocated: format.bits_allocated,
        bits_stored: format.bits_stored,
        signed: format.signed,
    };
    if bytes.len() >= original.len() {
        return Err(format!("{} bytes re-encoded, not smaller than {}", bytes.len(), original.len()));
    }
    // The promise: what is served later as the original is exactly what was received.
    match restore(&bytes, &form) {
        Ok(restored) if restored == original => Ok(Compressed { bytes, original: form }),
        Ok(_) => Err("the re-encoded pixel data does not give back the received bytes".into()),
        Err(e) => Err(format!("the re-encoded instance does not decode: {e}")),
    }
}

/// The received bytes of an instance stored re-encoded (`stored`, the whole stored file).
pub fn restore(stored: &[u8], form: &OriginalForm) -> Result<Vec<u8>, TranscodeError> {
    if form.version != ORIGINAL_FORM_VERSION {
        return Err(TranscodeError::Failed(format!("original form version {}", form.version)));
    }
    let broken = |what: &str| TranscodeError::Failed(format!("the stored re-encoded instance: {what}"));
    let layout =
        layout::walk(&mut Cursor::new(stored), stored.len() as u64, false).map_err(|e| broken(&e.to_string()))?;
    let pixels = layout.pixel_data.as_ref().ok_or_else(|| broken("no Pixel Data"))?;
    let element = (pixels.offset as usize).checked_sub(12).ok_or_else(|| broken("framing"))?;
    let (last, last_length) = *pixels.fragments.last().ok_or_else(|| broken("no fragments"))?;
    let end = last as usize + last_length as usize + 8;
    if stored.get(element..element + 4) != Some(&[0xE0, 0x7F, 0x10, 0x00])
        || stored.get(end - 8..end - 4) != Some(&[0xFE, 0xFF, 0xDD, 0xE0])
    {
        return Err(broken("Pixel Data framing"));
    }
    let frames = decode(stored, form, &(0..form.frames).collect::<Vec<_>>())?;
    let mut out = Vec::with_capacity(form.length as usize);
    out.extend_from_slice(&[0; PREAMBLE_LEN]);
    out.extend_from_slice(b"DICM");
    out.extend_from_slice(&form.file_meta);
    out.extend_from_slice(&stored[layout.dataset_offset as usize..element]);
    out.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00]);
    out.extend_from_slice(form.pixel_vr.as_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&form.pixel_length.to_le_bytes());
    for frame in frames {
        out.extend_from_slice(&frame);
    }
    out.extend_from_slice(&form.pixel_tail);
    out.extend_from_slice(&stored[end..]);
    Ok(out)
}

/// Frames (0-based) of an instance stored re-encoded, native as received.
pub fn decode(stored: &[u8], form: &OriginalForm, frames: &[u32]) -> Result<Vec<Vec<u8>>, TranscodeError> {
    if let Some(beyond) = frames.iter().find(|&&n| n >= form.frames) {
        return Err(TranscodeError::Failed(format!("frame {} of {}", beyond + 1, form.frames)));
    }
    let decoded = transcode::decode_frames(Cursor::new(stored), frames)?;
    decoded.iter().map(|frame| form.native(frame)).collect()
}

/// Pixel Data's value as received: every frame native, then the bytes after the last one.
pub fn pixel_value(stored: &[u8], form: &OriginalForm) -> Result<Vec<u8>, TranscodeError> {
    let frames = decode(stored, form, &(0..form.frames).collect::<Vec<_>>())?;
    let mut value = Vec::with_capacity(form.pixel_length as usize);
    for frame in frames {
        value.extend_from_slice(&frame);
    }
    value.extend_from_slice(&form.pixel_tail);
    Ok(value)
}

/// The Image Pixel attributes and Number of Frames of a native instance.
fn header_format(file: &[u8]) -> Option<(PixelFormat, u32)> {
    let object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .read_until(tags::PIXEL_DATA)
        .from_reader(Cursor::new(file))
        .ok()?;
    let format = super::pixel_format(&object)?;
    let frames = match object.element_opt(tags::NUMBER_OF_FRAMES).ok().flatten() {
        Some(element) => element.to_int::<u32>().ok()?,
        None => 1,
    };
    (frames >= 1).then_some((format, frames))
}

/// Encapsulated Pixel Data (PS3.5 §A.4): the element with undefined length, a Basic Offset
/// Table, one fragment per frame (padded to an even length), the sequence delimiter.
fn encapsulate(out: &mut Vec<u8>, codestreams: Vec<Vec<u8>>) -> Result<(), String> {
    out.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
    let item = |out: &mut Vec<u8>, length: u32| {
        out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        out.extend_from_slice(&length.to_le_bytes());
    };
    let table_length = u32::try_from(codestreams.len() * 4).map_err(|e| e.to_string())?;
    item(out, table_length);
    let mut position: u64 = 0;
    for codestream in &codestreams {
        out.extend_from_slice(&u32::try_from(position).map_err(|_| "over 4 GiB of fragments")?.to_le_bytes());
        position += 8 + codestream.len().next_multiple_of(2) as u64;
    }
    for mut codestream in codestreams {
        if codestream.len() % 2 == 1 {
            codestream.push(0);
        }
        item(out, u32::try_from(codestream.len()).map_err(|e| e.to_string())?);
        out.extend_from_slice(&codestream);
    }
    out.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    Ok(())
}

/// A File Meta group (Explicit VR Little Endian, PS3.10 §7.1) with its Transfer Syntax UID
/// replaced and its group length, when present, recounted.
fn meta_with_transfer_syntax(meta: &[u8], transfer_syntax: &str) -> Result<Vec<u8>, String> {
    let mut elements: Vec<([u8; 4], [u8; 2], Vec<u8>)> = Vec::new();
    let mut at = 0;
    while at < meta.len() {
        let head = meta.get(at..at + 8).ok_or("a truncated File Meta element")?;
        let tag: [u8; 4] = head[..4].try_into().expect("4 bytes");
        let vr: [u8; 2] = head[4..6].try_into().expect("2 bytes");
        if tag[..2] != [0x02, 0x00] {
            return Err("an element outside group 0002 in the File Meta group".into());
        }
        let (length, value_at) = if long_form(vr) {
            let length = meta.get(at + 8..at + 12).ok_or("a truncated File Meta element")?;
            (u32::from_le_bytes(length.try_into().expect("4 bytes")) as usize, at + 12)
        } else {
            (u16::from_le_bytes([head[6], head[7]]) as usize, at + 8)
        };
        let value = meta.get(value_at..value_at + length).ok_or("a File Meta value past its group")?;
        elements.push((tag, vr, value.to_vec()));
        at = value_at + length;
    }
    let transfer_syntax_tag = [0x02, 0x00, 0x10, 0x00];
    let entry = elements.iter_mut().find(|(tag, ..)| *tag == transfer_syntax_tag).ok_or("no Transfer Syntax UID")?;
    let mut uid = transfer_syntax.as_bytes().to_vec();
    if uid.len() % 2 == 1 {
        uid.push(0); // UI values are padded with NUL (PS3.5 §6.2).
    }
    entry.2 = uid;
    let encode = |(tag, vr, value): &([u8; 4], [u8; 2], Vec<u8>), out: &mut Vec<u8>| {
        out.extend_from_slice(tag);
        out.extend_from_slice(vr);
        if long_form(*vr) {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        }
        out.extend_from_slice(value);
    };
    let group_length_tag = [0x02, 0x00, 0x00, 0x00];
    let mut rest = Vec::new();
    for element in elements.iter().filter(|(tag, ..)| *tag != group_length_tag) {
        encode(element, &mut rest);
    }
    let mut out = Vec::with_capacity(rest.len() + 12);
    if elements.first().is_some_and(|(tag, ..)| *tag == group_length_tag) {
        let length = u32::try_from(rest.len()).map_err(|e| e.to_string())?;
        encode(&(group_length_tag, *b"UL", length.to_le_bytes().to_vec()), &mut out);
    }
    out.extend_from_slice(&rest);
    Ok(out)
}

/// VRs whose explicit header has a 4-byte length after two reserved bytes (PS3.5 §7.1.2).
fn long_form(vr: [u8; 2]) -> bool {
    matches!(&vr, b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"SV" | b"UC" | b"UN" | b"UR" | b"UT" | b"UV")
}
