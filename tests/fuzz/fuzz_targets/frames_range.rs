//! WADO-RS `{frames}` lists and `Range` headers (see `bodies::frames_range`).
//! The body is shared with the short mode (tests/fuzz/smoke.rs) in tests/fuzz/bodies.rs.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::frames_range(data));
