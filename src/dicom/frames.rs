//! Which stored bytes make up frame N (dicom-rs has no API for the raw fragments of a frame).
//!
//! Native pixel data: frame N is `rows × columns × samples × bits/8` bytes at a fixed step.
//! Encapsulated pixel data (PS3.5 §A.4): one fragment per frame when the counts agree; else the
//! Basic Offset Table, or the Extended Offset Table when the Basic one is empty; else, for a
//! single frame, all fragments; else a new frame starts at each fragment that opens with a JPEG
//! SOI or JPEG 2000 SOC marker.

use super::layout::PixelDataLayout;

/// The byte ranges (offset, length) of one frame in the stored file.
pub type FrameRanges = Vec<(u64, u64)>;

/// Image Pixel attributes that size a native frame.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub rows: u64,
    pub columns: u64,
    pub samples_per_pixel: u64,
    pub bits_allocated: u64,
    pub number_of_frames: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("the instance has no pixel data")]
    NoPixelData,
    #[error("frame {0} does not exist")]
    NoSuchFrame(u64),
    #[error("bit-packed (BitsAllocated 1) frames cannot be cut out")]
    BitPacked,
    #[error("the pixel data is shorter than its attributes say")]
    Short,
}

/// The frames of native pixel data.
pub fn native(layout: &PixelDataLayout, geometry: Geometry) -> Result<Vec<FrameRanges>, FrameError> {
    let length = layout.length.ok_or(FrameError::NoPixelData)?;
    if geometry.bits_allocated == 1 {
        return Err(FrameError::BitPacked);
    }
    let frame_size = geometry
        .rows
        .checked_mul(geometry.columns)
        .and_then(|n| n.checked_mul(geometry.samples_per_pixel.max(1)))
        .and_then(|n| n.checked_mul(geometry.bits_allocated.div_ceil(8)))
        .filter(|n| *n > 0)
        .ok_or(FrameError::Short)?;
    let frames = geometry.number_of_frames.max(1);
    if frame_size.checked_mul(frames).is_none_or(|total| total > length) {
        return Err(FrameError::Short);
    }
    Ok((0..frames).map(|i| vec![(layout.offset + i * frame_size, frame_size)]).collect())
}

/// The frames of encapsulated pixel data. `offset_table` is the Basic Offset Table, or the
/// Extended one when that is empty (both count from the first item after the table);
/// `first_bytes(offset)` reads up to 4 bytes at an offset of the stored file (for the marker scan).
pub fn encapsulated(
    layout: &PixelDataLayout,
    number_of_frames: u64,
    offset_table: &[u64],
    mut first_bytes: impl FnMut(u64) -> Vec<u8>,
) -> Result<Vec<FrameRanges>, FrameError> {
    let fragments: Vec<(u64, u64)> = layout.fragments.iter().skip(1).map(|(o, l)| (*o, u64::from(*l))).collect();
    if fragments.is_empty() {
        return Err(FrameError::NoPixelData);
    }
    let frames = number_of_frames.max(1);
    if fragments.len() as u64 == frames {
        return Ok(fragments.into_iter().map(|fragment| vec![fragment]).collect());
    }
    if frames == 1 {
        return Ok(vec![fragments]);
    }
    // Item headers are 8 bytes; Basic Offset Table offsets count from the first item header.
    let base = fragments[0].0 - 8;
    let starts: Vec<u64> = if offset_table.len() as u64 == frames {
        offset_table.iter().map(|o| base.saturating_add(*o)).collect()
    } else {
        fragments
            .iter()
            .filter(|(offset, _)| {
                let head = first_bytes(*offset);
                head.starts_with(&[0xFF, 0xD8]) || head.starts_with(&[0xFF, 0x4F, 0xFF, 0x51])
            })
            .map(|(offset, _)| offset - 8)
            .collect()
    };
    let mut out: Vec<FrameRanges> = Vec::new();
    for fragment in fragments {
        let header = fragment.0 - 8;
        let index = starts.iter().rposition(|start| *start <= header);
        match index {
            Some(i) if i == out.len() => out.push(vec![fragment]),
            Some(i) if i + 1 == out.len() => out[i].push(fragment),
            _ => return Err(FrameError::Short),
        }
    }
    if out.len() as u64 != frames {
        return Err(FrameError::Short);
    }
    Ok(out)
}

/// The media type of compressed frames in a transfer syntax (PS3.18 Table 8.7.3-5), and
/// whether the transfer syntax is video (all frames in one part).
pub fn media_type(transfer_syntax_uid: &str) -> Option<(&'static str, bool)> {
    let suffix = transfer_syntax_uid.strip_prefix("1.2.840.10008.1.2.")?;
    Some(match suffix {
        "4.50" | "4.51" | "4.57" | "4.70" => ("image/jpeg", false),
        "4.80" | "4.81" => ("image/jls", false),
        "4.90" | "4.91" => ("image/jp2", false),
        "4.92" | "4.93" => ("image/jpx", false),
        "4.201" | "4.202" | "4.203" => ("image/jphc", false),
        "4.110" | "4.111" | "4.112" => ("image/jxl", false),
        "5" => ("image/dicom-rle", false),
        "4.100" | "4.101" => ("video/mpeg", true),
        "4.102" | "4.103" | "4.104" | "4.105" | "4.106" => ("video/mp4", true),
        _ => return None,
    })
}

/// Whether pixel data in this transfer syntax is stored native and little-endian, so that its
/// frames can be served as `application/octet-stream` as they are.
pub fn is_native_little_endian(transfer_syntax_uid: &str) -> bool {
    matches!(transfer_syntax_uid, "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(fragments: &[(u64, u32)]) -> PixelDataLayout {
        PixelDataLayout { offset: 1000, length: None, fragments: fragments.to_vec(), vr: None }
    }

    #[test]
    fn native_frames_step_through_the_value() {
        let pixels = PixelDataLayout { offset: 500, length: Some(3 * 8), fragments: Vec::new(), vr: None };
        let geometry = Geometry { rows: 2, columns: 2, samples_per_pixel: 1, bits_allocated: 16, number_of_frames: 3 };
        let frames = native(&pixels, geometry).unwrap();
        assert_eq!(frames, vec![vec![(500, 8)], vec![(508, 8)], vec![(516, 8)]]);
        let too_many = Geometry { number_of_frames: 4, ..geometry };
        assert_eq!(native(&pixels, too_many), Err(FrameError::Short));
    }

    #[test]
    fn one_fragment_per_frame_or_basic_offset_table() {
        // BOT item at 1000 (value 1008), fragments at headers 1016, 1036, 1056.
        let pixel = layout(&[(1008, 0), (1024, 12), (1044, 12), (1064, 4)]);
        assert_eq!(encapsulated(&pixel, 3, &[], |_| vec![]).unwrap().len(), 3);
        // Two frames: the BOT says the second starts at the third item (offset 40 from 1016).
        let frames = encapsulated(&pixel, 2, &[0, 40], |_| vec![]).unwrap();
        assert_eq!(frames, vec![vec![(1024, 12), (1044, 12)], vec![(1064, 4)]]);
        // Without a BOT, JPEG markers split the frames.
        let frames =
            encapsulated(&pixel, 2, &[], |offset| if offset == 1044 { vec![0, 0] } else { vec![0xFF, 0xD8] }).unwrap();
        assert_eq!(frames, vec![vec![(1024, 12), (1044, 12)], vec![(1064, 4)]]);
        assert_eq!(encapsulated(&pixel, 1, &[], |_| vec![]).unwrap(), vec![vec![(1024, 12), (1044, 12), (1064, 4)]]);
    }
}
