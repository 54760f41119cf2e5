//! The rendering parameters of WADO-RS Rendered and Thumbnail (see `bodies::render_params`).
//! The body is shared with the short mode (tests/fuzz/smoke.rs) in tests/fuzz/bodies.rs.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::render_params(data));
