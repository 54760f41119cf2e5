//! The per-instance prepare step: the one place where an instance's bytes are made ready to
//! leave. Today it reads them (bounded) and proves that what will be sent is a DICOM PS3.10
//! file Kura's own parser accepts, with the UIDs the upload was planned by; an instance that
//! fails here is reported and never sent. Lossless re-encoding of the pixel data (JPEG-LS,
//! HTJ2K, JPEG XL: the encoders are being built in `dicom/` on another branch) plugs in here,
//! between the read and the check, so that the re-encoded bytes are the ones verified.

use std::io::Cursor;

use super::inputs::{Scanned, SourceReader};
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

/// Limits of the prepare step.
#[derive(Debug, Clone, Copy)]
pub struct PrepareLimits {
    pub max_instance_bytes: u64,
    pub zip_max_ratio: u64,
}

/// Reads `scanned` and checks it; the error says why it cannot be sent.
pub fn prepare(reader: &mut SourceReader, scanned: &Scanned, limits: PrepareLimits) -> Result<Prepared, String> {
    let bytes = reader.read(&scanned.origin, limits.max_instance_bytes, limits.zip_max_ratio)?;
    // Lossless re-encoding goes here: `bytes = encode(bytes)?` (see the module comment).
    verify(&bytes, scanned)?;
    Ok(Prepared {
        sop_uid: scanned.sop_uid.clone(),
        study_uid: scanned.study_uid.clone(),
        bytes,
        original_size: scanned.size,
    })
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
