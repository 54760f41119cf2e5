//! What the Image Pixel attributes (PS3.3 C.7.6.3) say about Pixel Data, checked against what
//! Pixel Data holds before anything is sized by them. An instance is stored as received even when
//! they contradict each other (the archive keeps what it was given); the resources derived from
//! its pixels (frames, rendered, thumbnail) refuse it with the offending attribute named, and
//! every frame count and size they use comes from here, computed in checked 64-bit arithmetic.

use dicom_core::Tag;
use dicom_dictionary_std::tags;

use super::layout::PixelDataLayout;

/// The Image Pixel attributes of an instance, consistent with its Pixel Data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelDescription {
    pub rows: u64,
    pub columns: u64,
    pub samples_per_pixel: u64,
    pub bits_allocated: u64,
    /// Number of Frames (1 when absent), at most what Pixel Data can hold.
    pub frames: u32,
    /// Bytes of one native frame (bit-packed frames rounded up to whole bytes).
    pub frame_bytes: u64,
}

/// An attribute that contradicts Pixel Data or the standard's constraints on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the pixel data cannot be used: {message}")]
pub struct DescriptionError {
    /// The keyword of the offending attribute.
    pub attribute: &'static str,
    pub message: String,
}

fn refuse(attribute: &'static str, message: String) -> DescriptionError {
    DescriptionError { attribute, message }
}

/// Checks the Image Pixel attributes (`value(tag)` gives a numeric attribute, `None` when absent)
/// against Pixel Data as the layout walk found it: native data must hold Rows × Columns ×
/// SamplesPerPixel × BitsAllocated × NumberOfFrames bits; encapsulated data must have at least
/// one fragment per frame (PS3.5 §A.4).
pub fn describe(
    value: impl Fn(Tag) -> Option<u64>,
    layout: &PixelDataLayout,
) -> Result<PixelDescription, DescriptionError> {
    let dimension = |tag: Tag, keyword: &'static str| match value(tag) {
        None => Err(refuse(keyword, format!("{keyword} is missing"))),
        Some(n @ 1..=65_535) => Ok(n),
        Some(n) => Err(refuse(keyword, format!("{keyword} is {n}; it must be 1 to 65535 (US)"))),
    };
    let rows = dimension(tags::ROWS, "Rows")?;
    let columns = dimension(tags::COLUMNS, "Columns")?;
    let samples_per_pixel = match value(tags::SAMPLES_PER_PIXEL).unwrap_or(1) {
        n @ (1 | 3) => n,
        n => {
            return Err(refuse(
                "SamplesPerPixel",
                format!("SamplesPerPixel is {n}; it must be 1 or 3 (PS3.3 C.7.6.3.1.1)"),
            ));
        }
    };
    let bits_allocated = match value(tags::BITS_ALLOCATED) {
        None => return Err(refuse("BitsAllocated", "BitsAllocated is missing".into())),
        Some(n @ (1 | 8 | 16 | 32)) => n,
        Some(n) => {
            return Err(refuse(
                "BitsAllocated",
                format!("BitsAllocated is {n}; Pixel Data takes 1, 8, 16 or 32 (PS3.5 §8.1.1)"),
            ));
        }
    };
    let frames = match value(tags::NUMBER_OF_FRAMES) {
        None => 1,
        Some(0) => return Err(refuse("NumberOfFrames", "NumberOfFrames is 0".into())),
        Some(n) => u32::try_from(n)
            .map_err(|_| refuse("NumberOfFrames", format!("NumberOfFrames is {n}, more than an IS can say")))?,
    };
    let frame_bits = rows * columns * samples_per_pixel * bits_allocated; // < 2^16 · 2^16 · 2^2 · 2^6
    let frame_bytes = frame_bits.div_ceil(8);
    let description = PixelDescription { rows, columns, samples_per_pixel, bits_allocated, frames, frame_bytes };
    let geometry = format!(
        "Rows {rows} × Columns {columns} × SamplesPerPixel {samples_per_pixel} × BitsAllocated {bits_allocated}"
    );
    match layout.length {
        Some(length) => {
            let needed = frame_bits.checked_mul(u64::from(frames)).map(|bits| bits.div_ceil(8));
            if needed.is_some_and(|needed| needed <= length) {
                return Ok(description);
            }
            let needed = needed.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string());
            let (attribute, culprit) = if frames > 1 && frame_bytes <= length {
                ("NumberOfFrames", format!("NumberOfFrames {frames} of {frame_bytes} bytes each ({geometry} bits)"))
            } else {
                ("Rows", format!("{geometry} bits a frame × NumberOfFrames {frames}"))
            };
            Err(refuse(attribute, format!("{culprit} need {needed} bytes, but Pixel Data holds {length}")))
        }
        None => {
            let fragments = layout.fragments.len().saturating_sub(1) as u64;
            if fragments == 0 {
                return Err(refuse("PixelData", "the encapsulated Pixel Data has no fragment".into()));
            }
            if u64::from(frames) > fragments {
                return Err(refuse(
                    "NumberOfFrames",
                    format!("NumberOfFrames is {frames}, but the encapsulated Pixel Data has {fragments} fragment(s)"),
                ));
            }
            Ok(description)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(length: u64) -> PixelDataLayout {
        PixelDataLayout { offset: 1000, length: Some(length), fragments: Vec::new(), vr: None }
    }

    fn with(values: &[(Tag, u64)]) -> impl Fn(Tag) -> Option<u64> + '_ {
        move |tag| values.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v)
    }

    const CT: [(Tag, u64); 4] =
        [(tags::ROWS, 2), (tags::COLUMNS, 2), (tags::SAMPLES_PER_PIXEL, 1), (tags::BITS_ALLOCATED, 16)];

    #[test]
    fn a_consistent_description_passes() {
        let d = describe(with(&CT), &native(8)).unwrap();
        assert_eq!((d.frames, d.frame_bytes), (1, 8));
        let mut three = CT.to_vec();
        three.push((tags::NUMBER_OF_FRAMES, 3));
        assert_eq!(describe(with(&three), &native(24)).unwrap().frames, 3);
        assert_eq!(describe(with(&three), &native(16)).unwrap_err().attribute, "NumberOfFrames");
    }

    #[test]
    fn each_contradiction_names_its_attribute() {
        let cases: [(Tag, u64, &str); 6] = [
            (tags::BITS_ALLOCATED, 0, "BitsAllocated"),
            (tags::BITS_ALLOCATED, 64, "BitsAllocated"),
            (tags::SAMPLES_PER_PIXEL, 0, "SamplesPerPixel"),
            (tags::SAMPLES_PER_PIXEL, 255, "SamplesPerPixel"),
            (tags::ROWS, 64, "Rows"),
            (tags::NUMBER_OF_FRAMES, u64::from(u32::MAX), "NumberOfFrames"),
        ];
        for (tag, value, attribute) in cases {
            let mut values = CT.to_vec();
            values.retain(|(t, _)| *t != tag);
            values.push((tag, value));
            assert_eq!(describe(with(&values), &native(8)).unwrap_err().attribute, attribute, "{attribute} {value}");
        }
        // 256 × 256 × 16 bits × 32769 frames wraps to one frame in 32 bits; not in 64.
        let wrap =
            [(tags::ROWS, 256), (tags::COLUMNS, 256), (tags::BITS_ALLOCATED, 16), (tags::NUMBER_OF_FRAMES, 32_769)];
        assert_eq!(describe(with(&wrap), &native(131_072)).unwrap_err().attribute, "NumberOfFrames");
        let encapsulated = PixelDataLayout { offset: 0, length: None, fragments: vec![(8, 0), (16, 4)], vr: None };
        let two = [(tags::ROWS, 1), (tags::COLUMNS, 1), (tags::BITS_ALLOCATED, 8), (tags::NUMBER_OF_FRAMES, 2)];
        assert_eq!(describe(with(&two), &encapsulated).unwrap_err().attribute, "NumberOfFrames");
    }
}
