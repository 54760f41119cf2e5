//! WADO-RS path and header values: the `{frames}` list (`wado::frames::frame_numbers`) and the
//! `Range` header of bulk data retrieval (`wado::frames::byte_range`).
//!
//! Input: 8 bytes of frame count / value length, then the text (used as both).
#![no_main]

use http::{HeaderMap, HeaderValue, header};
use kura::dicomweb::wado::frames;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let number = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let Ok(text) = std::str::from_utf8(&data[8..]) else { return };
    // Number of Frames is clamped to u32 where it is read (wado::rendered::frame_total).
    let count = (number & u64::from(u32::MAX)) as usize;
    if let Ok(numbers) = frames::frame_numbers(text, count) {
        assert!(numbers.iter().all(|n| *n >= 1 && *n <= count));
    }
    let Ok(value) = HeaderValue::from_str(text) else { return };
    let mut headers = HeaderMap::new();
    headers.insert(header::RANGE, value);
    if let Ok(Some((first, last))) = frames::byte_range(&headers, number) {
        assert!(first <= last && last < number, "range {first}-{last} of {number} bytes");
    }
});
