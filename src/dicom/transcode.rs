//! Transfer-syntax conversion that needs no pixel codec: Implicit VR Little Endian and Explicit
//! VR Big Endian re-encoded as Explicit VR Little Endian, the default of web services (PS3.18
//! §8.7.3.4), which also forbids the two on the web (§8.7.3). Compressed pixel data is not
//! decompressed (yet); Deflated data sets are not inflated (zip-bomb risk without a bounded
//! inflater).

use std::io::Read;

use dicom_core::{DataElement, PrimitiveValue};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{OpenFileOptions, file::ReadPreamble};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";

/// Whether [`to_explicit_vr_little_endian`] can convert from this transfer syntax, for pixel
/// data of `bits_allocated` bits.
pub fn can_convert_to_explicit_little_endian(transfer_syntax_uid: &str, bits_allocated: Option<u16>) -> bool {
    match transfer_syntax_uid {
        "1.2.840.10008.1.2" => true,
        EXPLICIT_VR_BIG_ENDIAN => matches!(bits_allocated, None | Some(1 | 8 | 16 | 32)),
        _ => false,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("transcoding failed: {0}")]
pub struct TranscodeError(String);

/// Re-encodes a whole PS3.10 file (preamble included) in Explicit VR Little Endian.
pub fn to_explicit_vr_little_endian(reader: impl Read, bits_allocated: Option<u16>) -> Result<Vec<u8>, TranscodeError> {
    let mut object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(reader)
        .map_err(|e| TranscodeError(e.to_string()))?;
    if object.meta().transfer_syntax().trim_end_matches('\0') == EXPLICIT_VR_BIG_ENDIAN && bits_allocated == Some(32) {
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
    let target = TransferSyntaxRegistry
        .get(EXPLICIT_VR_LITTLE_ENDIAN)
        .ok_or_else(|| TranscodeError("Explicit VR Little Endian is not registered".into()))?;
    object.meta_mut().set_transfer_syntax(target);
    object.meta_mut().update_information_group_length();
    let mut out = Vec::new();
    object.write_all(&mut out).map_err(|e| TranscodeError(e.to_string()))?;
    Ok(out)
}
