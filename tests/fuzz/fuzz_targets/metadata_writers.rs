//! The DICOM JSON and Native DICOM Model XML writers on a parsed PS3.10 input: JSON that parses back, XML that is well-formed (see `bodies::metadata_writers`).
//! The body is shared with the short mode (tests/fuzz/smoke.rs) in tests/fuzz/bodies.rs.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::metadata_writers(data));
