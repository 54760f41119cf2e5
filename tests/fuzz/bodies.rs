//! The bodies of the fuzz targets, shared by the cargo-fuzz binaries (`fuzz_targets/*.rs`, the
//! long mode: libFuzzer with AddressSanitizer) and by the stable-toolchain smoke run in the
//! normal test build (`tests/fuzz/smoke.rs`, the short mode CI runs). Each body feeds its input
//! to the functions the server calls on what clients send and asserts what must hold of the
//! result; a failed assertion or a panic is a crash.
//!
//! Every body also runs under [`bounded`]: the heap it allocates (counted by [`Counting`], the
//! global allocator of every binary that includes this file) must stay under a bound stated per
//! target, so that "checked against a limit before allocating" is asserted, not hoped for.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Cursor;

use bytes::Bytes;
use dicom_core::{Tag, VR};
use futures_util::{FutureExt, StreamExt, stream};
use http::{HeaderMap, HeaderValue, header};
use kura::dicom::attrs::{self, Level};
use kura::dicom::frames::{self, FrameMap};
use kura::dicom::layout::PixelDataLayout;
use kura::dicom::{part10, pixels};
use kura::dicomweb::dataset::{self, Dataset, Values};
use kura::dicomweb::query;
use kura::dicomweb::wado::frames as wado_frames;
use kura::dicomweb::wado::rendered::{self, Kind};
use kura::media::mime::MediaType;
use kura::media::multipart::{self, GuardedBody};
use serde_json::{Map, Value as Json};

// ---------------------------------------------------------------------------------------------
// Allocation accounting

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// The system allocator, counting the live heap bytes of each thread and their peak.
pub struct Counting;

fn account(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            account(layout.size() as isize);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            account(layout.size() as isize);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        account(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            account(new_size as isize - layout.size() as isize);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `body` and returns its result and the most heap it held at once beyond what was live
/// before (on this thread: every body here runs on the calling thread).
pub fn peak_heap<T>(body: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    let result = body();
    let peak = PEAK.with(Cell::get);
    (result, (peak - start).max(0) as usize)
}

/// Runs `body`, then asserts that it held at most `limit` heap bytes at once.
fn bounded<T>(target: &str, limit: usize, body: impl FnOnce() -> T) -> T {
    let (result, peak) = peak_heap(body);
    assert!(peak <= limit, "{target}: {peak} heap bytes at once for one input, over its bound of {limit}");
    result
}

// ---------------------------------------------------------------------------------------------
// The targets

/// A target's body: one input.
pub type Body = fn(&[u8]);

/// The targets, by name, as `fuzz_targets/<name>.rs` and the smoke run call them.
pub const TARGETS: &[(&str, Body)] = &[
    ("multipart", multipart),
    ("part10", part10),
    ("query", query),
    ("frames_range", frames_range),
    ("render_params", render_params),
    ("metadata_writers", metadata_writers),
    ("frame_map", frame_map),
];

/// The largest input each target is given (libFuzzer's `-max_len` in run.sh, and the smoke
/// run's mutations).
pub fn max_len(target: &str) -> usize {
    match target {
        "part10" | "multipart" | "metadata_writers" => 65536,
        _ => 4096,
    }
}

/// STOW-RS request framing: the Content-Type parameters (`media::mime`,
/// `media::multipart::related`), the body guard (`GuardedBody`: request, preamble, header and
/// epilogue limits) and multer reading the parts, put together as `dicomweb::stow` does.
///
/// Input: the Content-Type header value up to the first `\n`, then one byte choosing the chunk
/// size the body arrives in, then the body.
pub fn multipart(data: &[u8]) {
    /// Small limits, so that the fuzzer reaches them.
    const MAX_REQUEST_BYTES: u64 = 64 * 1024;
    const MAX_PART_HEADER_BYTES: u64 = 1024;
    const MAX_PARTS: usize = 64;
    let Some(newline) = data.iter().position(|b| *b == b'\n') else { return };
    let Ok(header) = std::str::from_utf8(&data[..newline]) else { return };
    let Some(content_type) = MediaType::parse(header) else { return };
    let Ok(related) = multipart::related(&content_type) else { return };
    let rest = &data[newline + 1..];
    let Some((chunk, body)) = rest.split_first() else { return };
    let chunk = usize::from(*chunk % 64) + 1;
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        body.chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    // The chunks above are the input's; what reading them adds is bounded by the limits.
    bounded("multipart", 1024 * 1024 + 8 * data.len(), move || {
        let guarded = GuardedBody::new(
            stream::iter(chunks),
            Some(related.boundary.as_str()),
            MAX_REQUEST_BYTES,
            MAX_PART_HEADER_BYTES,
        );
        let constraints =
            multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(MAX_REQUEST_BYTES));
        let mut parts = multer::Multipart::with_constraints(guarded, related.boundary.clone(), constraints);
        // Every stream here is always ready, so each future completes on its first poll.
        let read = async {
            let mut total = 0usize;
            for _ in 0..MAX_PARTS {
                let mut field = match parts.next_field().await {
                    Ok(Some(field)) => field,
                    Ok(None) | Err(_) => break,
                };
                let _ = field.content_type();
                let _ = field.headers().get("content-location");
                while let Some(chunk) = field.next().await {
                    match chunk {
                        Ok(bytes) => total += bytes.len(),
                        Err(_) => return total,
                    }
                }
            }
            total
        };
        let total = read.now_or_never().expect("an always-ready body is read in one poll");
        assert!(total <= body.len(), "{total} part bytes out of a {}-byte body", body.len());
        assert!(total as u64 <= MAX_REQUEST_BYTES);
    });
}

/// Heap a PS3.10 parse may hold for an input of `len` bytes: the data set as dicom-rs keeps it
/// (a few times its wire size), the layout, the table attributes and the JSON metadata. Any value
/// dicom-rs sizes by a length the input cannot hold fails it (the 3.7 GB, 1.16 GB and 18.8 MB
/// cases of tests/fuzz/regressions/part10/README.md).
fn parse_bound(len: usize) -> usize {
    16 * 1024 * 1024 + 64 * len
}

/// As `store::record::InstanceRecord::number` reads the stored attributes.
fn number(parsed: &part10::ParsedInstance, tag: Tag) -> Option<u64> {
    parsed.attributes.iter().find(|v| v.tag() == tag && v.sequence.is_none())?.values.first()?.trim().parse().ok()
}

/// A STOW-RS part as the archive reads it: `dicom::part10::parse` (header check, the
/// `dicom::layout` walk of the whole file, dicom-rs up to Pixel Data, the table attributes, and
/// the DICOM JSON metadata written by `dicom::json`), then the frame mapping that WADO-RS frame
/// retrieval does on the stored layout (`dicom::pixels::describe`, `dicom::frames::map`, every
/// frame's byte ranges), with the attributes and the offset table as the parse found them.
pub fn part10(data: &[u8]) {
    let Some(parsed) =
        bounded("part10", parse_bound(data.len()), || part10::parse(Cursor::new(data), data.len() as u64).ok())
    else {
        return;
    };
    // The metadata the server stores must be JSON.
    let _: Json = serde_json::from_slice(&parsed.metadata).expect("metadata is JSON");
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
}

/// The QIDO-RS query string: `dicomweb::query::parse` at each search level, as
/// `dicomweb::qido` calls it.
pub fn query(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let raw = Some(raw);
    bounded("query", 4 * 1024 * 1024 + 256 * data.len(), || {
        let _ = query::parse(raw, Level::Study, &[Level::Study], 1000);
        let _ = query::parse(raw, Level::Series, &[Level::Study, Level::Series], 1000);
        let _ = query::parse(raw, Level::Series, &[Level::Series], 1000);
        let _ = query::parse(raw, Level::Instance, &[Level::Study, Level::Series, Level::Instance], 1000);
        let _ = query::parse(raw, Level::Instance, &[Level::Series, Level::Instance], 1000);
        let _ = query::parse(raw, Level::Instance, &[Level::Instance], 1000);
    });
}

/// WADO-RS path and header values: the `{frames}` list (`wado::frames::frame_numbers`) and the
/// `Range` header of bulk data retrieval (`wado::frames::byte_range`).
///
/// Input: 8 bytes of frame count / value length, then the text (used as both).
pub fn frames_range(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let number = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let Ok(text) = std::str::from_utf8(&data[8..]) else { return };
    // Number of Frames is clamped to u32 where it is read (wado::rendered::frame_total).
    let count = (number & u64::from(u32::MAX)) as usize;
    // A list names at most one frame per two input bytes ("1,"): nothing is sized by the count.
    if let Ok(numbers) = bounded("frames_range", 4096 + 16 * data.len(), || wado_frames::frame_numbers(text, count)) {
        assert!(numbers.iter().all(|n| *n >= 1 && *n <= count));
        assert!(numbers.len() <= text.len() / 2 + 1);
    }
    let Ok(value) = HeaderValue::from_str(text) else { return };
    let mut headers = HeaderMap::new();
    headers.insert(header::RANGE, value);
    if let Ok(Some((first, last))) = wado_frames::byte_range(&headers, number) {
        assert!(first <= last && last < number, "range {first}-{last} of {number} bytes");
    }
}

/// The rendering parameters of WADO-RS Rendered and Thumbnail (PS3.18 §8.3.5.1):
/// `wado::rendered::options`.
pub fn render_params(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    for kind in [Kind::Rendered, Kind::Thumbnail] {
        let options = bounded("render_params", 1024 * 1024 + 64 * data.len(), || rendered::options(Some(raw), kind));
        if let Ok((options, _)) = options {
            // What the renderer is handed must be usable: quality 1..=100, a finite window of
            // positive width.
            assert!((1..=100).contains(&options.quality), "quality {}", options.quality);
            if let Some((center, width, _)) = options.window {
                assert!(center.is_finite() && width.is_finite() && width > 0.0, "window {center} {width}");
            }
        }
    }
}

/// The writers of DICOM JSON (PS3.18 Annex F) and of the Native DICOM Model XML (PS3.19 Annex A),
/// on what a parsed PS3.10 input holds: the instance metadata of `dicom::json` (as stored), its
/// XML by `dicomweb::dataset::xml_from_json` (WADO-RS metadata as XML), and the table attributes
/// as a response data set written by `Dataset::to_json` and `Dataset::to_xml` (QIDO-RS results,
/// the STOW-RS response).
///
/// Checked: the JSON parses back with serde_json and is a DICOM JSON object (keys eight upper
/// case hex digits in ascending order, each a `vr` of two letters and at most one of `Value`,
/// `BulkDataURI` and `InlineBinary`, the last valid base64); the XML is well-formed (roxmltree)
/// and holds one `DicomAttribute` per JSON attribute, with the same tags in the same order.
pub fn metadata_writers(data: &[u8]) {
    let Some(parsed) = bounded("metadata_writers", parse_bound(data.len()), || {
        part10::parse(Cursor::new(data), data.len() as u64).ok()
    }) else {
        return;
    };
    let metadata: Json = serde_json::from_slice(&parsed.metadata).expect("stored metadata is JSON");
    let object = metadata.as_object().expect("the metadata is one JSON object");
    check_dicom_json(object, 0);
    let xml = bounded("metadata_writers", 1024 * 1024 + 32 * parsed.metadata.len(), || dataset::xml_from_json(object));
    check_native_xml(&xml, object);

    // The table attributes as a response data set (how QIDO-RS rows are built).
    let mut response = Dataset::new();
    let mut items: std::collections::BTreeMap<Tag, Dataset> = Default::default();
    for value in &parsed.attributes {
        let tag = value.tag();
        match value.sequence {
            None => {
                let Some(attribute) = attrs::by_tag(tag) else { continue };
                response.put_strings(tag, attribute.vr, value.values.clone());
            }
            Some(sequence) => {
                let sequence = Tag((sequence >> 16) as u16, sequence as u16);
                let Some(attribute) = attrs::find(tag, Some(sequence)) else { continue };
                items.entry(sequence).or_default().put_strings(tag, attribute.vr, value.values.clone());
            }
        }
    }
    for (sequence, item) in items {
        response.put(sequence, VR::SQ, Values::Items(vec![item]));
    }
    let json = response.to_json();
    let text = serde_json::to_string(&json).expect("serialisable");
    let back: Json = serde_json::from_str(&text).expect("the response JSON parses back");
    let object = back.as_object().expect("an object");
    check_dicom_json(object, 0);
    check_native_xml(&response.to_xml(), object);
}

fn check_dicom_json(object: &Map<String, Json>, depth: usize) {
    assert!(depth < 64, "DICOM JSON nested {depth} deep");
    let mut previous: Option<&str> = None;
    for (key, element) in object {
        assert!(
            key.len() == 8 && key.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)),
            "attribute key {key:?} is not eight upper case hex digits"
        );
        if let Some(previous) = previous {
            assert!(previous < key.as_str(), "attributes out of order: {previous} before {key}");
        }
        previous = Some(key);
        let element = element.as_object().unwrap_or_else(|| panic!("{key} is not an object"));
        let vr = element.get("vr").and_then(Json::as_str).unwrap_or_else(|| panic!("{key} has no vr"));
        assert!(vr.len() == 2 && vr.bytes().all(|b| b.is_ascii_uppercase()), "{key}: vr {vr:?}");
        let kinds = ["Value", "BulkDataURI", "InlineBinary"].iter().filter(|k| element.contains_key(**k)).count();
        assert!(kinds <= 1, "{key}: more than one of Value, BulkDataURI, InlineBinary");
        assert!(element.keys().all(|k| ["vr", "Value", "BulkDataURI", "InlineBinary"].contains(&k.as_str())));
        if let Some(inline) = element.get("InlineBinary") {
            use base64::Engine;
            let inline = inline.as_str().unwrap_or_else(|| panic!("{key}: InlineBinary is not a string"));
            assert!(base64::engine::general_purpose::STANDARD.decode(inline).is_ok(), "{key}: InlineBinary base64");
        }
        if let Some(values) = element.get("Value") {
            let values = values.as_array().unwrap_or_else(|| panic!("{key}: Value is not an array"));
            assert!(!values.is_empty(), "{key}: an empty Value array (F.2.5 leaves Value out)");
            for value in values {
                match (vr, value) {
                    ("SQ", Json::Object(item)) => check_dicom_json(item, depth + 1),
                    ("SQ", other) => panic!("{key}: a sequence item {other}"),
                    ("PN", Json::Object(groups)) => assert!(
                        groups.keys().all(|g| ["Alphabetic", "Ideographic", "Phonetic"].contains(&g.as_str()))
                            && groups.values().all(Json::is_string),
                        "{key}: person name {value}"
                    ),
                    (_, Json::Object(_) | Json::Array(_)) => panic!("{key} ({vr}): value {value}"),
                    _ => {}
                }
            }
        }
    }
}

fn check_native_xml(xml: &str, object: &Map<String, Json>) {
    let document = roxmltree::Document::parse(xml).unwrap_or_else(|error| {
        let excerpt: String = xml.chars().take(2000).collect();
        panic!("the Native DICOM Model XML is not well-formed: {error}\n{excerpt}")
    });
    let root = document.root_element();
    assert_eq!(root.tag_name().name(), "NativeDicomModel");
    check_xml_attributes(root, object);
}

fn check_xml_attributes(node: roxmltree::Node<'_, '_>, object: &Map<String, Json>) {
    let elements: Vec<_> = node.children().filter(|n| n.is_element()).collect();
    assert!(elements.iter().all(|e| e.tag_name().name() == "DicomAttribute"), "only DicomAttribute children");
    let tags: Vec<&str> = elements.iter().map(|e| e.attribute("tag").unwrap_or_default()).collect();
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(tags, keys, "the XML's attributes are the JSON's");
    for (element, (key, json)) in elements.iter().zip(object) {
        assert_eq!(element.attribute("vr"), json["vr"].as_str(), "{key}: vr");
        if let Some(values) = json["Value"].as_array() {
            let children: Vec<_> = element.children().filter(|n| n.is_element()).collect();
            if json["vr"] == "SQ" {
                assert_eq!(children.len(), values.len(), "{key}: one Item per item");
                for (child, item) in children.iter().zip(values) {
                    assert_eq!(child.tag_name().name(), "Item");
                    check_xml_attributes(*child, item.as_object().expect("item"));
                }
            } else {
                assert_eq!(children.len(), values.len(), "{key}: one Value or PersonName per value");
                for (child, value) in children.iter().zip(values) {
                    if let (Json::String(text), "Value") = (value, child.tag_name().name()) {
                        let read = child.text().unwrap_or_default();
                        // IS and DS may be written trimmed in JSON only (F.2.3: a number, or the
                        // string when it is none), so surrounding whitespace may differ.
                        let (read, text) = if matches!(json["vr"].as_str(), Some("IS" | "DS")) {
                            (read.trim().to_string(), xml_text(text.trim()))
                        } else {
                            (read.to_string(), xml_text(text))
                        };
                        assert_eq!(read, text, "{key}: a value survives the XML");
                    }
                }
            }
        }
    }
}

/// What an XML 1.0 document can carry of `text` (characters XML cannot hold are replaced
/// with U+FFFD by the writer).
fn xml_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\t' | '\n' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}' => c,
            // A carriage return is written as a character reference and so kept.
            '\r' => '\r',
            _ => '\u{FFFD}',
        })
        .collect()
}

/// The fragment-to-frame mapper (`dicom::frames::map`) on a Pixel Data layout described by the
/// input, after `dicom::pixels::describe` has checked the Image Pixel attributes against it as
/// WADO-RS does.
///
/// Input: byte 0 chooses native or encapsulated data and whether the Basic Offset Table is used;
/// bytes 1..13 give Rows, Columns, SamplesPerPixel, BitsAllocated (u16 each) and NumberOfFrames
/// (u32); then for native data a u32 value length; for encapsulated data the rest is a u16
/// count of offset table entries (each u32), then fragments of 3 bytes each: a u16 length and a
/// flag byte whose low bit says whether the fragment opens with a JPEG SOI marker.
///
/// Checked: no panic; the map has NumberOfFrames frames; native frames step through the value
/// and stay inside it; encapsulated frames are non-empty, in order, and together are every
/// fragment exactly once (a frame's fragments are contiguous and frames are monotone); the heap
/// the mapper holds at once is linear in the fragments and the table, never in NumberOfFrames.
pub fn frame_map(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    if rest.len() < 12 {
        return;
    }
    let u16_at = |i: usize| u64::from(u16::from_le_bytes([rest[i], rest[i + 1]]));
    let (rows, columns, samples, bits) = (u16_at(0), u16_at(2), u16_at(4), u16_at(6));
    let number_of_frames = u64::from(u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]));
    let body = &rest[12..];
    // Offsets as in a real file: Pixel Data's value after a few hundred bytes of data set.
    const VALUE_OFFSET: u64 = 400;
    let (layout, offset_table, markers) = if mode & 1 == 0 {
        let length = match body.get(..4) {
            Some(b) => u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            None => return,
        };
        (
            PixelDataLayout { offset: VALUE_OFFSET, length: Some(length), fragments: Vec::new(), vr: None },
            Vec::new(),
            Vec::new(),
        )
    } else {
        let Some(entries) = body.get(..2).map(|b| usize::from(u16::from_le_bytes([b[0], b[1]]))) else { return };
        let table_bytes = body.get(2..).unwrap_or_default();
        let entries = entries.min(table_bytes.len() / 4);
        let table: Vec<u64> = table_bytes[..entries * 4]
            .chunks_exact(4)
            .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect();
        // The Basic Offset Table item, then the fragments, each after an 8-byte item header.
        let mut fragments = vec![(VALUE_OFFSET + 8, (entries * 4) as u32)];
        let mut next = VALUE_OFFSET + 8 + (entries * 4) as u64;
        let mut markers = Vec::new();
        for fragment in table_bytes[entries * 4..].chunks_exact(3) {
            let length = u32::from(u16::from_le_bytes([fragment[0], fragment[1]]));
            fragments.push((next + 8, length));
            markers.push((next + 8, fragment[2] & 1 == 1));
            next += 8 + u64::from(length);
        }
        let table = if mode & 2 == 0 { Vec::new() } else { table };
        (PixelDataLayout { offset: VALUE_OFFSET, length: None, fragments, vr: None }, table, markers)
    };
    let attributes = move |tag: Tag| -> Option<u64> {
        use dicom_dictionary_std::tags;
        match tag {
            tags::ROWS => Some(rows),
            tags::COLUMNS => Some(columns),
            tags::SAMPLES_PER_PIXEL => (samples != 0xFFFF).then_some(samples),
            tags::BITS_ALLOCATED => Some(bits),
            tags::NUMBER_OF_FRAMES => (number_of_frames != 0xFFFF_FFFF).then_some(number_of_frames),
            _ => None,
        }
    };
    let Ok(description) = pixels::describe(attributes, &layout) else { return };
    let fragments = layout.fragments.len().saturating_sub(1);
    let first_bytes = |offset: u64| -> Vec<u8> {
        match markers.binary_search_by_key(&offset, |(at, _)| *at) {
            Ok(i) if markers[i].1 => vec![0xFF, 0xD8, 0xFF, 0xE0],
            _ => vec![0, 0, 0, 0],
        }
    };
    let limit = 1024 + 32 * (fragments + offset_table.len() + 2);
    let Ok(map) = bounded("frame_map", limit, || frames::map(&layout, &description, &offset_table, first_bytes)) else {
        return;
    };
    assert_eq!(u64::from(map.len()), u64::from(description.frames), "one entry per frame");
    match (&map, layout.length) {
        (FrameMap::Native { .. }, Some(length)) => {
            // Up to 2^32 frames: the first and last few, and the end of the last.
            let count = map.len();
            let indices = (0..count.min(64)).chain(count.saturating_sub(64).max(64)..count);
            for index in indices {
                let ranges: Vec<_> = map.ranges(&layout, index).collect();
                let expected = layout.offset + u64::from(index) * description.frame_bytes;
                assert_eq!(ranges, vec![(expected, description.frame_bytes)], "native frame {index}");
            }
            let end = layout.offset + u64::from(count) * description.frame_bytes;
            assert!(end <= layout.offset + length, "native frames past the value's end");
        }
        (FrameMap::Native { .. }, None) => panic!("a native map of encapsulated data"),
        (_, Some(_)) => panic!("an encapsulated map of native data"),
        (_, None) => {
            let mut all = Vec::with_capacity(fragments);
            for index in 0..map.len() {
                let before = all.len();
                all.extend(map.ranges(&layout, index));
                assert!(all.len() > before, "frame {index} has no fragment");
            }
            let expected: Vec<(u64, u64)> = layout.fragments[1..].iter().map(|(o, l)| (*o, u64::from(*l))).collect();
            assert_eq!(all, expected, "the frames are every fragment once, in order");
        }
    }
}
