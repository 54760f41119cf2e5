//! The rendering parameters of WADO-RS Rendered and Thumbnail (PS3.18 §8.3.5.1):
//! `wado::rendered::options`.
#![no_main]

use kura::dicomweb::wado::rendered::{self, Kind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    for kind in [Kind::Rendered, Kind::Thumbnail] {
        if let Ok((options, _)) = rendered::options(Some(raw), kind) {
            // What the renderer is handed must be usable: quality 1..=100, a finite window of
            // positive width.
            assert!((1..=100).contains(&options.quality), "quality {}", options.quality);
            if let Some((center, width, _)) = options.window {
                assert!(center.is_finite() && width.is_finite() && width > 0.0, "window {center} {width}");
            }
        }
    }
});
