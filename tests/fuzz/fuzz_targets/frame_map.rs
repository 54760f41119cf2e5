//! The fragment-to-frame mapper, with its invariants and heap bound (see `bodies::frame_map`).
//! The body is shared with the short mode (tests/fuzz/smoke.rs) in tests/fuzz/bodies.rs.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::frame_map(data));
