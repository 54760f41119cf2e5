//! What a codec job will allocate, estimated from the stored record before it starts, so that it
//! can draw that much from the memory budget (`crate::memory`). dicom-rs reads the whole stored
//! object into memory before decoding, so every estimate starts from the payload's length; decoded
//! frames are sized by the Image Pixel attributes the record keeps (saturating, so that a claim
//! of billions of frames asks for more than any budget and is refused before anything is read).

use dicom_dictionary_std::tags;

use crate::dicom::render::RenderOptions;
use crate::model::records::InstanceRecord;

/// Fixed costs of a job besides its data (dicom-rs's object, the codec's state).
const FLOOR: u64 = 2 * 1024 * 1024;

/// The stored object held whole.
fn object(record: &InstanceRecord) -> u64 {
    FLOOR.saturating_add(record.payload.length)
}

/// Samples of one frame (Rows × Columns × SamplesPerPixel).
fn frame_samples(record: &InstanceRecord) -> u64 {
    [tags::ROWS, tags::COLUMNS, tags::SAMPLES_PER_PIXEL]
        .into_iter()
        .map(|tag| record.number(tag).unwrap_or(1).max(1))
        .fold(1u64, u64::saturating_mul)
}

/// Bytes of one decoded frame.
fn frame_bytes(record: &InstanceRecord) -> u64 {
    let bytes_per_sample = u64::from(record.bits_allocated().unwrap_or(16)).div_ceil(8).max(1);
    frame_samples(record).saturating_mul(bytes_per_sample)
}

fn frames(record: &InstanceRecord) -> u64 {
    record.number(tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1)
}

/// A conversion of the whole instance to Explicit VR Little Endian: the object, its decoded
/// pixel data (when compressed) and the encoded output, each about the decoded size.
pub fn transcode(record: &InstanceRecord) -> u64 {
    let decoded = frames(record).saturating_mul(frame_bytes(record)).max(record.payload.length);
    object(record).saturating_add(decoded.saturating_mul(2))
}

/// `n` frames decoded: each decoded once by the codec and copied once for the response.
pub fn decode(record: &InstanceRecord, n: usize) -> u64 {
    object(record).saturating_add(frame_bytes(record).saturating_mul(2).saturating_mul(n as u64))
}

/// `n` frames rendered: per frame the decoded frame, the windowed values (4 bytes a sample as
/// floating point, then 1 as 8-bit) and the viewport's image or its encoding (the source's
/// size without a viewport). A 4096 × 3328 16-bit mammogram comes to about 136 MiB.
pub fn render(record: &InstanceRecord, n: usize, options: &RenderOptions) -> u64 {
    let output = options
        .viewport
        .as_ref()
        .map_or(frame_samples(record), |viewport| u64::from(viewport.width) * u64::from(viewport.height) * 3);
    let per_frame = frame_bytes(record).saturating_add(frame_samples(record).saturating_mul(5)).saturating_add(output);
    object(record).saturating_add(per_frame.saturating_mul(n as u64))
}

/// `n` frames encoded losslessly (`dicom::encode`): per frame the decoded frame, its samples as
/// 32-bit integers twice (interleaved, then by component for JPEG 2000) and the codestream (at
/// most about the decoded size); the whole instance's output on top when it is assembled.
pub fn encode(record: &InstanceRecord, n: usize, whole_instance: bool) -> u64 {
    let per_frame = frame_bytes(record).saturating_mul(2).saturating_add(frame_samples(record).saturating_mul(8));
    let output = if whole_instance { frames(record).saturating_mul(frame_bytes(record)) } else { 0 };
    object(record).saturating_add(per_frame.saturating_mul(n as u64)).saturating_add(output)
}
