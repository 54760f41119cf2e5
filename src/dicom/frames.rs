//! Which stored bytes make up frame N (dicom-rs has no API for the raw fragments of a frame).
//!
//! Native pixel data: frame N is `rows × columns × samples × bits/8` bytes at a fixed step.
//! Encapsulated pixel data (PS3.5 §A.4): one fragment per frame when the counts agree; else the
//! Basic Offset Table, or the Extended Offset Table when the Basic one is empty; else, for a
//! single frame, all fragments; else a new frame starts at each fragment that opens with a JPEG
//! SOI or JPEG 2000 SOC marker.

use super::layout::{EXTENDED_OFFSET_TABLE, LargeValue, PixelDataLayout};

use super::pixels::PixelDescription;

/// Which stored bytes make up each frame: computed once per instance by [`map`] in time linear
/// in the fragments, and a handful of bytes per frame (nothing per frame for native data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameMap {
    /// Native pixel data: frame N is `frame_bytes` at `offset + N × frame_bytes`.
    Native { offset: u64, frame_bytes: u64, frames: u32 },
    /// Encapsulated, one fragment per frame.
    OnePerFragment { frames: u32 },
    /// Encapsulated, a single frame of every fragment.
    Single,
    /// Encapsulated: the index (among the fragments after the Basic Offset Table) of the first
    /// fragment of each frame, then the number of fragments.
    Starts(Vec<u32>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("the instance has no pixel data")]
    NoPixelData,
    #[error("bit-packed (BitsAllocated 1) frames cannot be cut out")]
    BitPacked,
    #[error("the pixel data cannot be used: its fragments do not divide into NumberOfFrames frames ({0})")]
    Fragments(&'static str),
}

impl FrameMap {
    /// The form kept in the catalog when the map had to be worked out from the stored bytes
    /// (offset tables, fragment markers): the other forms follow from the record alone.
    pub fn to_stored(&self) -> Option<Vec<u8>> {
        match self {
            FrameMap::Starts(starts) => Some(starts.iter().flat_map(|s| s.to_le_bytes()).collect()),
            _ => None,
        }
    }

    /// Reads what [`FrameMap::to_stored`] wrote, for an instance of `frames` frames and
    /// `fragments` fragments after the offset table; `None` when it does not fit them.
    pub fn from_stored(bytes: &[u8], frames: u32, fragments: usize) -> Option<FrameMap> {
        if !bytes.len().is_multiple_of(4) || bytes.len() / 4 != frames as usize + 1 {
            return None;
        }
        let starts: Vec<u32> =
            bytes.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        let ascending = starts.windows(2).all(|pair| pair[0] < pair[1]);
        (ascending && starts.first() == Some(&0) && starts.last() == Some(&(fragments as u32)))
            .then_some(FrameMap::Starts(starts))
    }

    /// Number of frames.
    pub fn len(&self) -> u32 {
        match self {
            FrameMap::Native { frames, .. } | FrameMap::OnePerFragment { frames } => *frames,
            FrameMap::Single => 1,
            FrameMap::Starts(starts) => (starts.len() - 1) as u32,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The byte ranges (offset, length) of frame `index` (0-based, below [`FrameMap::len`]).
    pub fn ranges<'a>(&'a self, layout: &'a PixelDataLayout, index: u32) -> impl Iterator<Item = (u64, u64)> + 'a {
        let fragments = layout.fragments.get(1..).unwrap_or_default();
        let (native, span) = match self {
            FrameMap::Native { offset, frame_bytes, .. } => {
                (Some((offset + u64::from(index) * frame_bytes, *frame_bytes)), 0..0)
            }
            FrameMap::OnePerFragment { .. } => (None, index as usize..index as usize + 1),
            FrameMap::Single => (None, 0..fragments.len()),
            FrameMap::Starts(starts) => (None, starts[index as usize] as usize..starts[index as usize + 1] as usize),
        };
        native.into_iter().chain(fragments[span].iter().map(|(offset, length)| (*offset, u64::from(*length))))
    }

    /// Every byte range of every frame, in order (a video's single part).
    pub fn all_ranges<'a>(&'a self, layout: &'a PixelDataLayout) -> impl Iterator<Item = (u64, u64)> + 'a {
        (0..self.len()).flat_map(move |index| self.ranges(layout, index))
    }
}

/// Maps the frames of a stored instance: reads its offset tables (`read(offset, length)` reads
/// stored bytes) when the fragments alone cannot tell, then [`map`]s. Blocking.
pub fn map_stored(
    layout: &PixelDataLayout,
    description: &PixelDescription,
    large_values: &[LargeValue],
    mut read: impl FnMut(u64, usize) -> Vec<u8>,
) -> Result<FrameMap, FrameError> {
    let mut offset_table = Vec::new();
    if layout.length.is_none() && u64::from(description.frames) != (layout.fragments.len() as u64).saturating_sub(1) {
        // Offset tables of up to a million frames are read; beyond that the marker scan decides.
        let basic = layout.fragments.first().filter(|(_, length)| *length > 0 && *length <= 4 * 1_000_000);
        let extended = large_values.iter().find(|v| v.tag == EXTENDED_OFFSET_TABLE);
        offset_table = match (basic, extended) {
            (Some((offset, length)), _) => read(*offset, *length as usize)
                .chunks_exact(4)
                .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect(),
            (None, Some(table)) if table.length <= 8 * 1_000_000 => read(table.offset, table.length as usize)
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
            _ => Vec::new(),
        };
    }
    map(layout, description, &offset_table, |offset| read(offset, 4))
}

/// Maps the frames of an instance whose Image Pixel attributes were checked by
/// [`super::pixels::describe`]. Native: a fixed step. Encapsulated: `offset_table` is the Basic
/// Offset Table, or the Extended one when that is empty (both count from the first item after the
/// table); `first_bytes(offset)` reads up to 4 bytes at an offset of the stored file (for the
/// marker scan).
pub fn map(
    layout: &PixelDataLayout,
    description: &PixelDescription,
    offset_table: &[u64],
    mut first_bytes: impl FnMut(u64) -> Vec<u8>,
) -> Result<FrameMap, FrameError> {
    let frames = description.frames;
    if let Some(length) = layout.length {
        if description.bits_allocated == 1 {
            return Err(FrameError::BitPacked);
        }
        // `describe` proved that every frame lies inside the value.
        debug_assert!(u64::from(frames) * description.frame_bytes <= length);
        return Ok(FrameMap::Native { offset: layout.offset, frame_bytes: description.frame_bytes, frames });
    }
    let fragments = layout.fragments.get(1..).unwrap_or_default();
    if fragments.is_empty() {
        return Err(FrameError::NoPixelData);
    }
    if fragments.len() as u64 == u64::from(frames) {
        return Ok(FrameMap::OnePerFragment { frames });
    }
    if frames == 1 {
        return Ok(FrameMap::Single);
    }
    // Item headers are 8 bytes; offset tables count from the first item header.
    let base = fragments[0].0 - 8;
    let starts: Vec<u64> = if offset_table.len() as u64 == u64::from(frames) {
        let starts: Vec<u64> = offset_table.iter().map(|o| base.saturating_add(*o)).collect();
        if starts.windows(2).any(|pair| pair[0] > pair[1]) {
            return Err(FrameError::Fragments("the offset table is not in ascending order"));
        }
        starts
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
    // One pass: each fragment belongs to the last frame that starts at or before its header,
    // which must be the current frame or the next one.
    let mut first_fragments: Vec<u32> = Vec::with_capacity(frames as usize + 1);
    let mut started = 0usize;
    for (index, (offset, _)) in fragments.iter().enumerate() {
        let header = offset - 8;
        while started < starts.len() && starts[started] <= header {
            started += 1;
        }
        match started {
            0 => return Err(FrameError::Fragments("the first fragment starts no frame")),
            n if n == first_fragments.len() + 1 => first_fragments.push(index as u32),
            n if n == first_fragments.len() => {}
            _ => return Err(FrameError::Fragments("a frame starts inside a fragment or has none")),
        }
    }
    if first_fragments.len() as u64 != u64::from(frames) {
        return Err(FrameError::Fragments("fewer frame starts than NumberOfFrames"));
    }
    first_fragments.push(fragments.len() as u32);
    Ok(FrameMap::Starts(first_fragments))
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

    fn description(frames: u32) -> PixelDescription {
        PixelDescription { rows: 2, columns: 2, samples_per_pixel: 1, bits_allocated: 16, frames, frame_bytes: 8 }
    }

    fn frames(map: &FrameMap, layout: &PixelDataLayout) -> Vec<Vec<(u64, u64)>> {
        (0..map.len()).map(|i| map.ranges(layout, i).collect()).collect()
    }

    #[test]
    fn native_frames_step_through_the_value() {
        let pixels = PixelDataLayout { offset: 500, length: Some(3 * 8), fragments: Vec::new(), vr: None };
        let map = map(&pixels, &description(3), &[], |_| vec![]).unwrap();
        assert_eq!(frames(&map, &pixels), vec![vec![(500, 8)], vec![(508, 8)], vec![(516, 8)]]);
    }

    #[test]
    fn one_fragment_per_frame_or_basic_offset_table() {
        // BOT item at 1000 (value 1008), fragments at headers 1016, 1036, 1056.
        let pixel = layout(&[(1008, 0), (1024, 12), (1044, 12), (1064, 4)]);
        assert_eq!(map(&pixel, &description(3), &[], |_| vec![]).unwrap().len(), 3);
        // Two frames: the BOT says the second starts at the third item (offset 40 from 1016).
        let two = map(&pixel, &description(2), &[0, 40], |_| vec![]).unwrap();
        assert_eq!(frames(&two, &pixel), vec![vec![(1024, 12), (1044, 12)], vec![(1064, 4)]]);
        // Without a BOT, JPEG markers split the frames.
        let scanned =
            map(&pixel, &description(2), &[], |offset| if offset == 1044 { vec![0, 0] } else { vec![0xFF, 0xD8] })
                .unwrap();
        assert_eq!(frames(&scanned, &pixel), vec![vec![(1024, 12), (1044, 12)], vec![(1064, 4)]]);
        let single = map(&pixel, &description(1), &[], |_| vec![]).unwrap();
        assert_eq!(frames(&single, &pixel), vec![vec![(1024, 12), (1044, 12), (1064, 4)]]);
        assert_eq!(single.all_ranges(&pixel).count(), 3);
        // A descending table is refused, not trusted.
        assert!(matches!(map(&pixel, &description(2), &[40, 0], |_| vec![]), Err(FrameError::Fragments(_))));
    }

    /// A million fragments in a thousand frames map in one pass (the old search per fragment
    /// over every frame start took about 10^9 steps).
    #[test]
    fn mapping_is_linear_in_the_fragments() {
        let n = 1_000_000u64;
        let mut fragments = vec![(8u64, 0u32)];
        fragments.extend((0..n).map(|i| (24 + i * 10, 2u32)));
        let pixel = layout(&fragments);
        let table: Vec<u64> = (0..1000).map(|f| f * 1000 * 10).collect();
        let started = std::time::Instant::now();
        let map = map(&pixel, &description(1000), &table, |_| vec![]).unwrap();
        assert_eq!(map.len(), 1000);
        assert_eq!(map.ranges(&pixel, 999).count(), 1000);
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    }
}
