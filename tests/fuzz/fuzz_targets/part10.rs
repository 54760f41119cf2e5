//! A STOW-RS part as the archive reads it, then the frame mapping of WADO-RS (see `bodies::part10`).
//! The body is shared with the short mode (tests/fuzz/smoke.rs) in tests/fuzz/bodies.rs.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::part10(data));
