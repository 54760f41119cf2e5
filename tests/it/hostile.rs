//! Hostile DICOM content (issue 17): objects built to exhaust the stack or memory of whoever
//! parses, frames or renders them. Each test drives `kura serve` as a child process, so that an
//! abort shows as a dead server rather than a dead test binary, and checks that the server still
//! answers a normal QIDO afterwards with its peak RSS (VmHWM) not jumped.

use dicom_dictionary_std::tags;
use http::StatusCode;

use crate::support::*;

fn start_child(data: &std::path::Path) -> ChildServer {
    ChildServer::start(data)
}

/// Peak resident memory of a process, in KiB (`VmHWM` in /proc/PID/status).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the server process is alive");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a number")
}

/// The server is alive, answers a normal QIDO with the instance it holds, and its peak RSS grew
/// by less than `slack_mib` since `before_kib`.
async fn still_serving(server: &ChildServer, spec: &Spec, before_kib: u64, slack_mib: u64) {
    let studies = qido(&server.base, &format!("/studies?StudyInstanceUID={}", spec.study_uid())).await;
    assert_eq!(studies.len(), 1, "QIDO after the hostile request");
    let after = peak_rss_kib(server.child.id());
    eprintln!("peak RSS of the server: {before_kib} KiB before, {after} KiB after");
    assert!(
        after < before_kib + slack_mib * 1024,
        "peak RSS jumped from {before_kib} KiB to {after} KiB (allowed {slack_mib} MiB)"
    );
}

/// A top-level (0040,A730) Content Sequence holding `depth` sequences nested in each other, each
/// of defined length with one defined-length item (`defined`), or all of undefined length.
pub fn nested_sequences(depth: usize, defined: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(depth * 28);
    for level in (0..depth).rev() {
        // Inside level `level` there are `level` more sequences of 20 bytes of headers each.
        let item_length = if defined { (20 * level) as u32 } else { u32::MAX };
        let sequence_length = if defined { 8 + item_length } else { u32::MAX };
        out.extend_from_slice(&[0x40, 0x00, 0x30, 0xA7, b'S', b'Q', 0, 0]);
        out.extend_from_slice(&sequence_length.to_le_bytes());
        out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        out.extend_from_slice(&item_length.to_le_bytes());
    }
    if !defined {
        for _ in 0..depth {
            out.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]); // item delimitation
            out.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]); // sequence delimitation
        }
    }
    out
}

/// An instance of `spec` with `extra` (encoded elements) placed just before its Pixel Data.
pub fn with_elements_before_pixel_data(spec: &Spec, extra: &[u8]) -> Vec<u8> {
    let mut object = dataset(spec);
    let pixels = object.take_element(tags::PIXEL_DATA).expect("pixel data");
    let mut bytes = part10(object);
    bytes.extend_from_slice(extra);
    let value = pixels.value().to_bytes().expect("bytes").into_owned();
    bytes.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0]);
    bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&value);
    bytes
}

/// Issue 17: a 400 KB part of defined-length sequences nested 20,000 deep overflowed the stack
/// of the parsing thread and aborted the server. The depth limit now holds for every sequence
/// form before dicom-rs parses: FailureReason C000 with a message naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_nested_twenty_thousand_deep_are_refused_and_the_server_stays_up() {
    let data = tempfile::tempdir().unwrap();
    let server = start_child(data.path());
    let good = Spec::new(1701, 1, 1);
    stow(&server.base, None, &[instance(&good)]).await;
    let before = peak_rss_kib(server.child.id());
    for defined in [true, false] {
        let spec = Spec::new(1701, 2, if defined { 2 } else { 3 });
        let hostile = with_elements_before_pixel_data(&spec, &nested_sequences(20_000, defined));
        assert!(hostile.len() > 400_000);
        let reply = try_stow(&server.base, None, &[hostile]).await.unwrap_or_else(|e| panic!("server gone: {e}"));
        assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());
        assert_eq!(failure_reasons(&reply.json()), vec![0xC000]);
        assert!(reply.warnings().contains("nested more than 32 levels"), "{}", reply.warnings());
    }
    still_serving(&server, &good, before, 64).await;
}

/// Exactly the limit is stored, in both forms, and its metadata (JSON and XML) is served; one
/// level more is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_nested_up_to_the_limit_are_stored_and_served() {
    let server = Server::start().await;
    for (instance_number, defined) in [(1, true), (2, false)] {
        let spec = Spec::new(1702, 1, instance_number);
        let at_limit = with_elements_before_pixel_data(&spec, &nested_sequences(32, defined));
        let reply = stow(&server.base, None, &[at_limit]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let metadata = get(&format!("{}/metadata", spec.instance_url(&server.base)), "application/dicom+json").await;
        assert_eq!(metadata.status, StatusCode::OK);
        let mut item = &metadata.json()[0];
        for _ in 0..32 {
            item = &item["0040A730"]["Value"][0];
        }
        assert!(item.is_object() && item.as_object().unwrap().is_empty(), "the innermost item is empty");
        let xml = get(
            &format!("{}/metadata", spec.instance_url(&server.base)),
            "multipart/related; type=\"application/dicom+xml\"",
        )
        .await;
        assert_eq!(xml.status, StatusCode::OK, "{}", xml.text());
        let over =
            with_elements_before_pixel_data(&Spec::new(1702, 1, 10 + instance_number), &nested_sequences(33, defined));
        let reply = stow(&server.base, None, &[over]).await;
        assert_eq!(failure_reasons(&reply.json()), vec![0xC000], "33 levels, defined: {defined}");
    }
}

fn us(value: u16) -> dicom_core::PrimitiveValue {
    dicom_core::dicom_value!(U16, [value])
}

/// The WADO-URI rendered URL of an instance.
fn wado_uri(server: &ChildServer, spec: &Spec, extra: &str) -> String {
    format!(
        "http://{}/wado?requestType=WADO&studyUID={}&seriesUID={}&objectUID={}{extra}",
        server.address,
        spec.study_uid(),
        spec.series_uid(),
        spec.sop_uid()
    )
}

/// Every derived-pixel resource of `spec` answers `status` with a message naming `attribute`,
/// and the stored bytes are still served as stored.
async fn pixel_resources_refuse(server: &ChildServer, spec: &Spec, original: &[u8], attribute: &str) {
    let instance = spec.instance_url(&server.base);
    let resources = [
        (format!("{instance}/frames/1"), "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*"),
        (format!("{instance}/rendered"), "image/jpeg"),
        (format!("{instance}/frames/1/rendered"), "image/png"),
        (format!("{instance}/thumbnail"), "image/jpeg"),
        (format!("{}/thumbnail", spec.series_url(&server.base)), "image/jpeg"),
        (format!("{}/rendered", spec.series_url(&server.base)), "multipart/related; type=\"image/jpeg\""),
        (wado_uri(server, spec, ""), "image/jpeg"),
        (wado_uri(server, spec, "&contentType=image/png&frameNumber=1"), "*/*"),
    ];
    for (url, accept) in resources {
        let reply = try_send(http::Method::GET, &url, &[("accept", accept)], bytes::Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("server gone after {url}: {e}"));
        assert_eq!(reply.status, StatusCode::NOT_ACCEPTABLE, "{url} ({attribute}): {}", reply.text());
        assert!(reply.text().contains(attribute), "{url}: the message names {attribute}: {}", reply.text());
    }
    let stored = get(&instance, "application/dicom; transfer-syntax=*").await;
    assert_eq!(stored.status, StatusCode::OK);
    assert_eq!(stored.body.as_ref(), as_stored(original).as_slice(), "the stored bytes, as stored");
}

/// Issue 17: a 1-pixel instance claiming 4294967295 frames is stored as received, but its
/// `…/rendered` collected `0..NumberOfFrames` and aborted the server ("memory allocation of
/// 17179869180 bytes failed"). Frame counts are now bounded by what Pixel Data holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_billion_frames_of_one_pixel_are_refused_not_allocated() {
    let data = tempfile::tempdir().unwrap();
    let server = start_child(data.path());
    let spec = Spec::new(1703, 1, 1).size(1, 1, 1);
    let mut object = dataset(&spec);
    put(&mut object, tags::NUMBER_OF_FRAMES, dicom_core::VR::IS, "4294967295");
    let original = part10(object);
    let reply = stow(&server.base, None, std::slice::from_ref(&original)).await;
    assert_eq!(reply.status, StatusCode::OK, "stored as received: {}", reply.text());
    let before = peak_rss_kib(server.child.id());
    pixel_resources_refuse(&server, &spec, &original, "NumberOfFrames").await;
    still_serving(&server, &spec, before, 64).await;
}

/// Issue 17: instances whose pixel description contradicts their Pixel Data are stored as
/// received, but frames, rendered, thumbnail and WADO-URI answered 500. Each now answers 406
/// naming the offending attribute, and the stored bytes stay retrievable as stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contradictory_pixel_descriptions_are_406_naming_the_attribute() {
    let data = tempfile::tempdir().unwrap();
    let server = start_child(data.path());
    type Change = fn(&mut dicom_object::InMemDicomObject);
    let cases: Vec<(&str, Change)> = vec![
        ("Rows", |o| put(o, tags::ROWS, dicom_core::VR::US, us(64))),
        ("BitsAllocated", |o| put(o, tags::BITS_ALLOCATED, dicom_core::VR::US, us(0))),
        ("BitsAllocated", |o| put(o, tags::BITS_ALLOCATED, dicom_core::VR::US, us(64))),
        ("SamplesPerPixel", |o| put(o, tags::SAMPLES_PER_PIXEL, dicom_core::VR::US, us(0))),
        ("SamplesPerPixel", |o| put(o, tags::SAMPLES_PER_PIXEL, dicom_core::VR::US, us(255))),
        ("Columns", |o| {
            o.remove_element(tags::COLUMNS);
        }),
    ];
    let mut before = None;
    // Each case alone in its series, so that the series resources meet only it.
    for (i, (attribute, change)) in cases.iter().enumerate() {
        let spec = Spec::new(1705, i as u32 + 1, 1);
        let mut object = dataset(&spec);
        change(&mut object);
        let original = part10(object);
        let reply = stow(&server.base, None, std::slice::from_ref(&original)).await;
        assert_eq!(reply.status, StatusCode::OK, "stored as received: {}", reply.text());
        before.get_or_insert(peak_rss_kib(server.child.id()));
        pixel_resources_refuse(&server, &spec, &original, attribute).await;
    }
    // Sizes that wrap 32 bits: 256 × 256 × 2 bytes × 32769 frames is 2^32 + 2^17, which in 32-bit
    // arithmetic is exactly the one frame Pixel Data holds.
    let spec = Spec::new(1705, 99, 1).size(256, 256, 1);
    let mut object = dataset(&spec);
    put(&mut object, tags::NUMBER_OF_FRAMES, dicom_core::VR::IS, "32769");
    let original = part10(object);
    stow(&server.base, None, std::slice::from_ref(&original)).await;
    pixel_resources_refuse(&server, &spec, &original, "NumberOfFrames").await;
    still_serving(&server, &Spec::new(1705, 1, 1), before.unwrap(), 64).await;
}

/// Issue 17: a non-finite windowCenter or windowWidth in WADO-URI answered 406; it is a bad
/// parameter value, 400 with a message (PS3.18 §8.3, §9.5.1.2.6). The RS `window` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_finite_windows_are_400() {
    let data = tempfile::tempdir().unwrap();
    let server = start_child(data.path());
    let spec = Spec::new(1706, 1, 1);
    stow(&server.base, None, &[instance(&spec)]).await;
    for (center, width) in [("NaN", "400"), ("40", "inf"), ("-inf", "400"), ("40", "NaN"), ("1e999", "400")] {
        let url = wado_uri(&server, &spec, &format!("&windowCenter={center}&windowWidth={width}"));
        let reply = get(&url, "image/jpeg").await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{center},{width}: {}", reply.text());
        assert!(reply.text().contains("window"), "{}", reply.text());
    }
    for window in ["nan,400,linear", "40,inf,linear", "inf,400,sigmoid"] {
        let url = format!("{}/rendered?window={window}", spec.instance_url(&server.base));
        let reply = get(&url, "image/jpeg").await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{window}: {}", reply.text());
    }
    let fine = get(&wado_uri(&server, &spec, "&windowCenter=40&windowWidth=400"), "image/jpeg").await;
    assert_eq!(fine.status, StatusCode::OK);
    still_serving(&server, &spec, peak_rss_kib(server.child.id()), 64).await;
}

/// Issue 17: a client that disconnected released its codec permit while its decode went on, so
/// connect/disconnect loops started decodes without bound. The permit now belongs to the
/// blocking job until it ends: however many clients leave, no more jobs run than there are
/// permits (one per core).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_do_not_free_codec_permits_early() {
    let spec = Spec::new(1707, 1, 1).size(4096, 4096, 1);
    // Rendering it takes about 180 MiB, more than the default memory budget: this test is about
    // the CPU permits, so the budget is out of its way.
    let server = Server::with_config(&[instance(&spec)], |config| {
        config.archive.memory_budget_bytes = 1 << 30;
    })
    .await;
    let slots = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    let url = format!("{}/frames/1/rendered", spec.instance_url(&server.base));
    for _ in 0..slots + 3 {
        let request = try_send(http::Method::GET, &url, &[("accept", "image/jpeg")], bytes::Bytes::new());
        let _ = tokio::time::timeout(std::time::Duration::from_millis(40), request).await;
    }
    let (mut peak, mut seen) = (0, false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let running = server.archive.codec_jobs_running();
        peak = peak.max(running);
        seen |= running > 0;
        if seen && running == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(seen, "the rendered requests reached the codec");
    assert!(peak <= slots, "{peak} codec jobs ran at once; the cap is {slots}");
    let studies = qido(&server.base, &format!("/studies?StudyInstanceUID={}", spec.study_uid())).await;
    assert_eq!(studies.len(), 1);
}

/// Issue 17: fuzzy matching built a Levenshtein automaton (and a prefix regex) for every word of
/// the value, of any length and number. Words are now bounded (8 words of at most 64
/// characters); beyond, 400 naming the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzy_matching_bounds_word_length_and_count() {
    let spec = Spec::new(1708, 1, 1);
    let server = Server::with(&[instance(&spec)]).await;
    let long = "a".repeat(5_000);
    let many = (0..50).map(|i| format!("w{i}")).collect::<Vec<_>>().join("^");
    for (value, bound) in [(long.as_str(), "64 characters"), (many.as_str(), "8 words")] {
        let url = format!("{}/studies?PatientName={value}&fuzzymatching=true", server.base);
        let reply = get(&url, "application/dicom+json").await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
        assert!(reply.text().contains(bound), "{}", reply.text());
    }
    let found = qido(&server.base, "/studies?PatientName=Doe^Patient1708&fuzzymatching=true").await;
    assert_eq!(found.len(), 1, "a normal fuzzy search still matches");
}

/// `count` empty private LO elements (groups 0029, 002B, …), 8 bytes each, in tag order.
fn empty_elements(count: usize) -> Vec<u8> {
    let mut extra = Vec::with_capacity(count * 8);
    'groups: for group in (0x0029u16..=0x0047).step_by(2) {
        for element in 0x1000u16..=0xFFFF {
            if extra.len() == count * 8 {
                break 'groups;
            }
            extra.extend_from_slice(&group.to_le_bytes());
            extra.extend_from_slice(&element.to_le_bytes());
            extra.extend_from_slice(b"LO\0\0");
        }
    }
    assert_eq!(extra.len(), count * 8);
    extra
}

/// Issue 17: the DICOM JSON writer looked up each element's raw bytes by a linear search over
/// all of them, quadratic in the number of elements (1M empty elements in an 8 MB part is about
/// 10^11 comparisons), and such a part took the server's peak RSS to about 1 GB. Now a part of
/// more than 131,072 elements is refused (C000) by the element walk, before dicom-rs builds
/// anything; one just under the limit is answered in seconds (by lookup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_empty_elements_are_answered_in_linear_time() {
    let data = tempfile::tempdir().unwrap();
    let server = start_child(data.path());
    let spec = Spec::new(1709, 1, 1);
    stow(&server.base, None, &[instance(&spec)]).await;
    let before = peak_rss_kib(server.child.id());
    let million = with_elements_before_pixel_data(&Spec::new(1709, 1, 2), &empty_elements(983_040));
    let started = std::time::Instant::now();
    let reply = try_stow(&server.base, None, &[million]).await.unwrap_or_else(|e| panic!("server gone: {e}"));
    eprintln!("983,040 empty elements answered in {:?}", started.elapsed());
    assert_eq!(failure_reasons(&reply.json()), vec![0xC000]);
    assert!(reply.warnings().contains("more than 131072 elements"), "{}", reply.warnings());
    still_serving(&server, &spec, before, 64).await;
    let under = with_elements_before_pixel_data(&Spec::new(1709, 1, 3), &empty_elements(20_000));
    let started = std::time::Instant::now();
    let reply = stow(&server.base, None, &[under]).await;
    eprintln!("20,000 empty elements answered in {:?}", started.elapsed());
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let big = with_elements_before_pixel_data(&Spec::new(1709, 1, 4), &empty_elements(130_000));
    let started = std::time::Instant::now();
    let reply = try_stow(&server.base, None, &[big]).await.unwrap_or_else(|e| panic!("server gone: {e}"));
    let took = started.elapsed();
    eprintln!("130,000 empty elements answered in {took:?} ({})", reply.status);
    assert!(took < std::time::Duration::from_secs(30), "the answer took {took:?}");
    // At the limit, the parse and its DICOM JSON stay well below the 250 MiB a server should need.
    assert!(peak_rss_kib(server.child.id()) < 250 * 1024, "peak RSS {} KiB", peak_rss_kib(server.child.id()));
    still_serving(&server, &spec, peak_rss_kib(server.child.id()), 64).await;
}
