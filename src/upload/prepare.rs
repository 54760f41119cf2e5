//! The per-instance prepare step: the one place where an instance's bytes are made ready to
//! leave. It reads them (bounded); re-encodes uncompressed pixel data losslessly (JPEG-LS by
//! default, with the archive's own encoders, `dicom::encode`), keeping the re-encoded object
//! only when every frame of it decodes to exactly the original's pixels; and proves that what
//! will be sent is a DICOM PS3.10 file Kura's own parser accepts, with the UIDs the upload was
//! planned by. An instance that fails here is reported and never sent.

use std::io::Cursor;

use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;
use dicom_object::file::ReadPreamble;

use super::inputs::{Scanned, SourceReader};
use crate::dicom::encode::{self, Codec};
use crate::dicom::part10;

/// An instance ready to be sent.
#[derive(Debug)]
pub struct Prepared {
    pub sop_uid: String,
    pub study_uid: String,
    /// The bytes that go on the wire (before the body's content coding).
    pub bytes: Vec<u8>,
    /// The size of the instance as found in the input.
    pub original_size: u64,
}

/// Limits and choices of the prepare step.
#[derive(Debug, Clone, Copy)]
pub struct PrepareLimits {
    pub max_instance_bytes: u64,
    pub zip_max_ratio: u64,
    /// The lossless syntax uncompressed pixel data is re-encoded in; `None`: sent as read.
    pub pixel_codec: Option<Codec>,
}

/// `--pixel-codec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PixelCodec {
    JpegLs,
    Htj2k,
    JpegXl,
    #[value(name = "jpeg-2000")]
    Jpeg2000,
    None,
}

impl PixelCodec {
    pub fn codec(self) -> Option<Codec> {
        match self {
            PixelCodec::JpegLs => Some(Codec::JpegLs),
            PixelCodec::Htj2k => Some(Codec::Htj2k),
            PixelCodec::JpegXl => Some(Codec::JpegXl),
            PixelCodec::Jpeg2000 => Some(Codec::Jpeg2000),
            PixelCodec::None => None,
        }
    }
}

/// Transfer syntaxes whose pixel data is uncompressed: the ones worth re-encoding (compressed
/// data goes as the modality made it).
const UNCOMPRESSED: [&str; 3] = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"];

/// Reads `scanned` and checks it; the error says why it cannot be sent.
pub fn prepare(reader: &mut SourceReader, scanned: &Scanned, limits: PrepareLimits) -> Result<Prepared, String> {
    let mut bytes = reader.read(&scanned.origin, limits.max_instance_bytes, limits.zip_max_ratio)?;
    if let Some(codec) = limits.pixel_codec
        && let Some(encoded) = reencode(&bytes, codec)
    {
        bytes = encoded;
    }
    verify(&bytes, scanned)?;
    Ok(Prepared {
        sop_uid: scanned.sop_uid.clone(),
        study_uid: scanned.study_uid.clone(),
        bytes,
        original_size: scanned.size,
    })
}

/// The instance with its uncompressed pixel data in `codec`, if it has such data the codec can
/// carry and every frame of the result decodes to exactly the original's pixels (checked here,
/// before anything leaves: the reader at the other end must see the modality's pixels).
fn reencode(original: &[u8], codec: Codec) -> Option<Vec<u8>> {
    let (transfer_syntax, format) = encode::read_pixel_format(Cursor::new(original))?;
    if !UNCOMPRESSED.contains(&transfer_syntax.as_str())
        || encode::can_encode(&transfer_syntax, Some(&format), codec).is_err()
    {
        return None;
    }
    let (encoded, _) = encode::encode_instance(Cursor::new(original), codec, Vec::new()).ok()?;
    let open = |bytes: &[u8]| {
        OpenFileOptions::new().read_preamble(ReadPreamble::Always).from_reader(Cursor::new(bytes.to_vec())).ok()
    };
    let (before, after) = (open(original)?, open(&encoded)?);
    let frames = before.get(tags::NUMBER_OF_FRAMES).and_then(|e| e.to_int::<u32>().ok()).unwrap_or(1).max(1);
    for frame in 0..frames {
        let (_, expected) = encode::native_frame(&before, frame).ok()?;
        let (_, decoded) = encode::native_frame(&after, frame).ok()?;
        if !same_samples(&expected, &decoded, &format) {
            return None;
        }
    }
    Some(encoded)
}

/// Whether two native frames hold the same pixel values: the same Bits Stored low bits of every
/// sample (PS3.5 §8.1.1: bits above them are not part of the value; a decoder gives a signed
/// sample back either sign-extended or not).
fn same_samples(a: &[u8], b: &[u8], format: &encode::PixelFormat) -> bool {
    if a.len() != b.len() {
        return false;
    }
    match format.bits_allocated {
        16 => {
            let mask = if format.bits_stored >= 16 { u16::MAX } else { (1u16 << format.bits_stored) - 1 };
            a.chunks_exact(2)
                .zip(b.chunks_exact(2))
                .all(|(x, y)| u16::from_le_bytes([x[0], x[1]]) & mask == u16::from_le_bytes([y[0], y[1]]) & mask)
        }
        8 => {
            let mask = if format.bits_stored >= 8 { u8::MAX } else { (1u8 << format.bits_stored) - 1 };
            a.iter().zip(b).all(|(x, y)| x & mask == y & mask)
        }
        _ => a == b,
    }
}

/// The bytes parse as PS3.10 (the framing of the whole file, the data set up to Pixel Data)
/// and still carry the instance's UIDs (the file may have changed since it was scanned).
fn verify(bytes: &[u8], scanned: &Scanned) -> Result<(), String> {
    let parsed = part10::parse(Cursor::new(bytes), bytes.len() as u64).map_err(|e| e.to_string())?;
    if parsed.sop_instance_uid != scanned.sop_uid || parsed.study_uid != scanned.study_uid {
        return Err("the file changed since it was read: its UIDs differ".into());
    }
    Ok(())
}
