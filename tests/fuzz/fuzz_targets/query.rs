//! The QIDO-RS query string: `dicomweb::query::parse` at each search level, as `dicomweb::qido`
//! calls it.
#![no_main]

use kura::dicom::attrs::Level;
use kura::dicomweb::query;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let raw = Some(raw);
    let _ = query::parse(raw, Level::Study, &[Level::Study], 1000);
    let _ = query::parse(raw, Level::Series, &[Level::Study, Level::Series], 1000);
    let _ = query::parse(raw, Level::Series, &[Level::Series], 1000);
    let _ = query::parse(raw, Level::Instance, &[Level::Study, Level::Series, Level::Instance], 1000);
    let _ = query::parse(raw, Level::Instance, &[Level::Series, Level::Instance], 1000);
    let _ = query::parse(raw, Level::Instance, &[Level::Instance], 1000);
});
