//! A STOW-RS part as the archive reads it: `dicom::part10::parse` (header check, the
//! `dicom::layout` walk of the whole file, dicom-rs up to Pixel Data, the table attributes, and
//! the DICOM JSON metadata written by `dicom::json`), then the frame mapping that WADO-RS frame
//! retrieval does on the stored layout (`dicom::pixels::describe`, `dicom::frames::map`, every
//! frame's byte ranges), with the attributes and the offset table as the parse found them.
#![no_main]

use std::io::Cursor;

use dicom_core::Tag;
use kura::dicom::{frames, pixels};
use kura::dicom::part10;
use libfuzzer_sys::fuzz_target;

/// As `store::record::InstanceRecord::number` reads the stored attributes.
fn number(parsed: &part10::ParsedInstance, tag: Tag) -> Option<u64> {
    parsed.attributes.iter().find(|v| v.tag() == tag && v.sequence.is_none())?.values.first()?.trim().parse().ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = part10::parse(Cursor::new(data), data.len() as u64) else { return };
    // The metadata the server stores must be JSON.
    let _: serde_json::Value = serde_json::from_slice(&parsed.metadata).expect("metadata is JSON");
    let Some(layout) = parsed.pixel_data.as_ref() else { return };
    let read = |offset: u64, length: usize| -> Vec<u8> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
        data[start..start.saturating_add(length).min(data.len())].to_vec()
    };
    let Ok(description) = pixels::describe(|tag| number(&parsed, tag), layout) else { return };
    let offset_table: Vec<u64> = match (layout.length, layout.fragments.first()) {
        (None, Some((offset, length))) if *length > 0 && *length <= 4 * 1_000_000 => read(*offset, *length as usize)
            .chunks_exact(4)
            .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        _ => Vec::new(),
    };
    let Ok(map) = frames::map(layout, &description, &offset_table, |offset| read(offset, 4)) else { return };
    // Every frame's bytes lie inside the file.
    for (offset, length) in map.all_ranges(layout) {
        assert!(offset.saturating_add(length) <= data.len() as u64, "a frame range past the end of the file");
    }
});
