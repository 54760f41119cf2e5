//! STOW-RS request framing: Content-Type parameters, the body guard and multer (see `bodies::multipart`).
//! The body is shared with the short mode (tests/fuzz/smoke.rs) in tests/fuzz/bodies.rs.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::multipart(data));
