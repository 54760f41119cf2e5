//! Transfer-syntax conversion to Explicit VR Little Endian, the default of web services (PS3.18
//! §8.7.3.4), which also forbids Implicit VR Little Endian and Explicit VR Big Endian on the web
//! (§8.7.3). Three cases:
//! - Implicit VR LE and Explicit VR BE are re-encoded; no pixel codec is involved.
//! - Compressed pixel data (JPEG, JPEG-LS, JPEG 2000 and HTJ2K, JPEG XL, RLE) is decoded with
//!   dicom-pixeldata into native pixel data.
//! - Deflated data sets are not inflated (zip-bomb risk without a bounded inflater); they are
//!   served as stored.
//!
//! A frame can also be decoded on its own ([`decode_frames`]), for frames requested as
//! `application/octet-stream` from a compressed instance.

use std::io::Read;

use dicom_core::{DataElement, Length, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{DefaultDicomObject, OpenFileOptions, file::ReadPreamble};
use dicom_pixeldata::{PixelDecoder, PlanarConfiguration};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";

/// The most native pixel data one instance may decode to. Explicit VR Little Endian cannot
/// hold more than 2^32 - 2 bytes in a value (§8.7.8.1 note 1), and the decoded object is built
/// in memory, so the cap also bounds the memory one request can claim.
pub const MAX_DECODED_BYTES: u64 = 1 << 30;

/// Transfer syntaxes whose pixel data only exists in lossy form. PS3.18 §8.7.3.4 lets the
/// origin server return them as stored instead of decompressing to Explicit VR Little Endian.
const LOSSY: &[&str] = &[
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.93",
    "1.2.840.10008.1.2.4.203",
    "1.2.840.10008.1.2.4.111",
    "1.2.840.10008.1.2.4.112",
];

pub fn is_lossy(transfer_syntax_uid: &str) -> bool {
    LOSSY.contains(&transfer_syntax_uid) || transfer_syntax_uid.starts_with("1.2.840.10008.1.2.4.10")
}

/// Whether Kura can decode this transfer syntax's encapsulated pixel data to native (the codecs
/// compiled in: JPEG baseline/extended/lossless, RLE, JPEG 2000 and HTJ2K via openjp2).
pub fn can_decode(transfer_syntax_uid: &str) -> bool {
    TransferSyntaxRegistry
        .get(transfer_syntax_uid)
        .is_some_and(|ts| ts.is_encapsulated_pixel_data() && ts.can_decode_all())
}

/// Whether [`to_explicit_vr_little_endian`] can convert from this transfer syntax, for pixel
/// data of `bits_allocated` bits.
pub fn can_convert_to_explicit_little_endian(transfer_syntax_uid: &str, bits_allocated: Option<u16>) -> bool {
    match transfer_syntax_uid {
        IMPLICIT_VR_LITTLE_ENDIAN => true,
        EXPLICIT_VR_BIG_ENDIAN => matches!(bits_allocated, None | Some(1 | 8 | 16 | 32)),
        // dicom-rs decodes 8- and 16-bit samples only.
        other => can_decode(other) && matches!(bits_allocated, None | Some(8 | 16)),
    }
}

/// Whether the web may never see this transfer syntax (§8.7.3).
pub fn is_forbidden_on_the_web(transfer_syntax_uid: &str) -> bool {
    matches!(transfer_syntax_uid, IMPLICIT_VR_LITTLE_ENDIAN | EXPLICIT_VR_BIG_ENDIAN)
}

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    /// The decoded pixel data would exceed [`MAX_DECODED_BYTES`]; a 406 for the client.
    #[error("the decoded pixel data would take {0} bytes, more than Kura decodes ({MAX_DECODED_BYTES})")]
    TooLarge(u64),
    /// The codec refused the stored pixel data; the client can still have it as stored.
    #[error("the pixel data could not be decoded: {0}")]
    Undecodable(String),
    /// The requested syntax cannot carry these pixels, or they exist only in lossy form (a 406:
    /// another syntax may still serve them).
    #[error("{0}")]
    Unsupported(String),
    #[error("transcoding failed: {0}")]
    Failed(String),
}

/// An error's message with its causes (snafu errors keep the useful part in their sources).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn failed(error: impl std::fmt::Display) -> TranscodeError {
    TranscodeError::Failed(error.to_string())
}

fn undecodable(error: impl std::error::Error) -> TranscodeError {
    TranscodeError::Undecodable(chain(&error))
}

fn open(reader: impl Read) -> Result<DefaultDicomObject, TranscodeError> {
    // The stored object passed the store-time checks up to Pixel Data; one that cannot be read
    // whole is undecodable, not a server failure.
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(reader)
        .map_err(|e| TranscodeError::Undecodable(format!("the stored object cannot be read whole: {}", chain(&e))))
}

fn int(object: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<u64> {
    object.element_opt(tag).ok().flatten()?.to_int::<u64>().ok()
}

/// The size of the object's pixel data once decoded, refused above [`MAX_DECODED_BYTES`].
fn check_decoded_size(object: &DefaultDicomObject) -> Result<(), TranscodeError> {
    let size = [tags::ROWS, tags::COLUMNS, tags::SAMPLES_PER_PIXEL]
        .into_iter()
        .map(|tag| int(object, tag).unwrap_or(1))
        .chain([int(object, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1)])
        .chain([int(object, tags::BITS_ALLOCATED).unwrap_or(16).div_ceil(8)])
        .try_fold(1u64, u64::checked_mul)
        .unwrap_or(u64::MAX);
    if size > MAX_DECODED_BYTES { Err(TranscodeError::TooLarge(size)) } else { Ok(()) }
}

/// Re-encodes a whole PS3.10 file (preamble included) in Explicit VR Little Endian.
pub fn to_explicit_vr_little_endian(reader: impl Read, bits_allocated: Option<u16>) -> Result<Vec<u8>, TranscodeError> {
    let mut object = open(reader)?;
    let stored_ts = object.meta().transfer_syntax().trim_end_matches('\0').to_string();
    if stored_ts == EXPLICIT_VR_BIG_ENDIAN && bits_allocated == Some(32) {
        // dicom-rs swaps OW pixel data as 16-bit words; 32-bit samples need their two words
        // exchanged as well to come out little endian.
        if let Some(element) = object.element_opt(tags::PIXEL_DATA).ok().flatten()
            && let dicom_core::value::Value::Primitive(PrimitiveValue::U16(words)) = element.value()
        {
            let mut swapped: Vec<u16> = words.to_vec();
            for pair in swapped.chunks_exact_mut(2) {
                pair.swap(0, 1);
            }
            let vr = element.vr();
            object.put(DataElement::new(tags::PIXEL_DATA, vr, PrimitiveValue::U16(swapped.into())));
        }
    }
    if can_decode(&stored_ts) {
        decode_in_place(&mut object, is_lossy(&stored_ts))?;
    }
    let target = TransferSyntaxRegistry
        .get(EXPLICIT_VR_LITTLE_ENDIAN)
        .ok_or_else(|| failed("Explicit VR Little Endian is not registered"))?;
    object.meta_mut().set_transfer_syntax(target);
    object.meta_mut().update_information_group_length();
    let mut out = Vec::new();
    object.write_all(&mut out).map_err(failed)?;
    Ok(out)
}

/// Replaces encapsulated Pixel Data by its decoded, native form and makes the Image Pixel
/// attributes describe it (PS3.5 §8.2, PS3.3 C.7.6.3.1.2 for Photometric Interpretation).
fn decode_in_place(object: &mut DefaultDicomObject, lossy: bool) -> Result<(), TranscodeError> {
    check_decoded_size(object)?;
    let decoded = object.decode_pixel_data().map_err(undecodable)?;
    let bits_allocated = decoded.bits_allocated();
    let samples_per_pixel = decoded.samples_per_pixel();
    let planar = decoded.planar_configuration();
    let signed_bits = signed_bits(&decoded);
    let mut bytes = decoded.into_data();
    sign_extend(&mut bytes, bits_allocated, signed_bits);
    // The decoders hand out little-endian samples; OW takes them byte for byte.
    let vr = match bits_allocated {
        8 => VR::OB,
        16 | 32 => VR::OW,
        other => return Err(failed(format!("decoded pixel data of {other} bits is not supported"))),
    };
    let value = PrimitiveValue::from(bytes);
    let length = value.calculate_byte_len() as u32;
    object.put(DataElement::new_with_len(tags::PIXEL_DATA, vr, Length::defined(length), value));
    // Encapsulation-only attributes have no meaning for native data.
    for tag in [
        tags::EXTENDED_OFFSET_TABLE,
        tags::EXTENDED_OFFSET_TABLE_LENGTHS,
        tags::ENCAPSULATED_PIXEL_DATA_VALUE_TOTAL_LENGTH,
    ] {
        object.remove_element(tag);
    }
    if samples_per_pixel == 1 {
        let photometric = object.element_opt(tags::PHOTOMETRIC_INTERPRETATION).ok().flatten();
        let photometric = photometric.and_then(|e| e.to_str().ok()).map(|s| s.trim().to_string());
        if !matches!(photometric.as_deref(), Some("MONOCHROME1" | "MONOCHROME2" | "PALETTE COLOR")) {
            object.put(DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"));
        }
    } else {
        // The decoders return colour as RGB, in the planar configuration they report.
        object.put(DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB"));
        let planar = u16::from(planar != PlanarConfiguration::Standard);
        object.put(DataElement::new(tags::PLANAR_CONFIGURATION, VR::US, PrimitiveValue::from(planar)));
    }
    if lossy {
        // Once lossy, always marked lossy (PS3.3 C.7.6.1.1.5).
        object.put(DataElement::new(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "01"));
    }
    Ok(())
}

/// Bits Stored of signed (two's complement) samples that leave bits of their 16-bit word unused;
/// `None` otherwise.
fn signed_bits(decoded: &dicom_pixeldata::DecodedPixelData<'_>) -> Option<u16> {
    let signed = decoded.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed;
    (signed && decoded.bits_allocated() == 16 && decoded.bits_stored() < 16).then(|| decoded.bits_stored())
}

/// Copies the sign bit of each 16-bit sample into the bits above High Bit. Decoders such as
/// CharLS hand out a signed 12- or 14-bit sample as its bit pattern (−2000 in 14 bits as
/// `0x3830`); native Pixel Data is normally written sign-extended (`0xF830`), and viewers that
/// read native samples as 16-bit integers without masking to Bits Stored (cornerstone, many
/// scripts) would show the pattern as a large positive value. Readers that mask see no change.
fn sign_extend(bytes: &mut [u8], bits_allocated: u16, signed_bits: Option<u16>) {
    let Some(bits) = signed_bits.filter(|b| (1..16).contains(b) && bits_allocated == 16) else { return };
    let shift = 16 - bits;
    for sample in bytes.chunks_exact_mut(2) {
        let value = i16::from_le_bytes([sample[0], sample[1]]);
        sample.copy_from_slice(&((value << shift) >> shift).to_le_bytes());
    }
}

/// The native (little-endian) bytes of each of `frames` (0-based) of a compressed PS3.10 file.
pub fn decode_frames(reader: impl Read, frames: &[u32]) -> Result<Vec<Vec<u8>>, TranscodeError> {
    let object = open(reader)?;
    let frame_size = [tags::ROWS, tags::COLUMNS, tags::SAMPLES_PER_PIXEL]
        .into_iter()
        .map(|tag| int(&object, tag).unwrap_or(1))
        .chain([int(&object, tags::BITS_ALLOCATED).unwrap_or(16).div_ceil(8)])
        .try_fold(1u64, u64::checked_mul)
        .unwrap_or(u64::MAX);
    let total = frame_size.saturating_mul(frames.len() as u64);
    if total > MAX_DECODED_BYTES {
        return Err(TranscodeError::TooLarge(total));
    }
    frames
        .iter()
        .map(|&frame| {
            let decoded = object.decode_pixel_data_frame(frame).map_err(undecodable)?;
            let mut bytes = decoded.frame_data(0).map_err(failed)?.to_vec();
            sign_extend(&mut bytes, decoded.bits_allocated(), signed_bits(&decoded));
            Ok(bytes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_samples_are_sign_extended_above_high_bit() {
        // −2000 and +2000 in 14 bits, as a decoder hands them out; then already extended.
        let mut bytes = [0x30, 0x38, 0xD0, 0x07, 0x30, 0xF8];
        sign_extend(&mut bytes, 16, Some(14));
        assert_eq!(bytes, [0x30, 0xF8, 0xD0, 0x07, 0x30, 0xF8]);
        let mut unsigned = [0x30, 0x38];
        sign_extend(&mut unsigned, 16, None);
        assert_eq!(unsigned, [0x30, 0x38]);
        let mut full = [0x30, 0x38];
        sign_extend(&mut full, 16, Some(16));
        assert_eq!(full, [0x30, 0x38], "no unused bits, nothing to extend");
    }

    /// The decodable set the conformance statement's §4 table promises.
    #[test]
    fn codecs_compiled_in() {
        let decodable = [
            "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.51",
            "1.2.840.10008.1.2.4.57",
            "1.2.840.10008.1.2.4.70",
            "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.4.91",
            "1.2.840.10008.1.2.4.92",
            "1.2.840.10008.1.2.4.93",
            "1.2.840.10008.1.2.4.201",
            "1.2.840.10008.1.2.4.202",
            "1.2.840.10008.1.2.4.203",
            "1.2.840.10008.1.2.5",
        ];
        for uid in decodable {
            assert!(can_decode(uid), "{uid}");
        }
        // CharLS and jxl-oxide came in with the encoders (dicom::encode).
        for uid in ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.110"] {
            assert!(can_decode(uid), "{uid}");
        }
        assert!(!can_decode("1.2.840.10008.1.2.1.99"));
        assert!(can_convert_to_explicit_little_endian("1.2.840.10008.1.2.5", Some(16)));
        assert!(!can_convert_to_explicit_little_endian("1.2.840.10008.1.2.5", Some(32)));
        assert!(is_lossy("1.2.840.10008.1.2.4.50") && !is_lossy("1.2.840.10008.1.2.4.70"));
    }
}
