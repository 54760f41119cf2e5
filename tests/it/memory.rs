//! The memory budget (issue 17, `--memory-budget-mib`): a large non-pixel value is stored and
//! served without ever being held in memory, and a mix of abusive requests (big decodes,
//! rendering, ZIP, whole-study metadata, concurrent parses) beside normal QIDO traffic keeps the
//! server's peak RSS within the budget plus its baseline, answers nothing but 200 or the
//! documented 503 (with Retry-After), and keeps QIDO answering. Each test drives `kura serve` as
//! a child process, whose VmHWM (/proc/PID/status) is the server's alone.

use std::time::{Duration, Instant};

use bytes::Bytes;
use dicom_dictionary_std::tags;
use futures_util::StreamExt;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::support::*;

/// Peak resident memory of a process, in KiB (`VmHWM` in /proc/PID/status).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the server process is alive");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a number")
}

const MIB: u64 = 1024 * 1024;

/// Byte `i` of the generated Encapsulated Document: not a repeating pattern a short offset
/// error could match.
fn document_byte(i: u64) -> u8 {
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 29) as u8 ^ (i >> 20) as u8
}

/// The bytes `[from, to)` of the document.
fn document_chunk(from: u64, to: u64) -> Vec<u8> {
    (from..to).map(document_byte).collect()
}

/// The fixture data set of `spec` without Pixel Data and the Image Pixel attributes: the base
/// of the document instances below.
fn dataset_without_image(spec: &Spec) -> dicom_object::InMemDicomObject {
    let mut object = dataset(spec);
    for tag in [
        tags::PIXEL_DATA,
        tags::ROWS,
        tags::COLUMNS,
        tags::BITS_ALLOCATED,
        tags::BITS_STORED,
        tags::HIGH_BIT,
        tags::PIXEL_REPRESENTATION,
        tags::SAMPLES_PER_PIXEL,
        tags::PHOTOMETRIC_INTERPRETATION,
    ] {
        object.remove_element(tag);
    }
    object
}

/// An Encapsulated PDF instance whose Encapsulated Document (0042,0011) has `length` bytes,
/// streamed as a one-part STOW-RS body in pieces of 1 MiB: the head (File Meta and the data set
/// up to the document), the document generated piece by piece, then (0042,0012) after it.
fn encapsulated_document_body(spec: &Spec, length: u64) -> impl futures_util::Stream<Item = Bytes> + Send + use<> {
    let mut object = dataset_without_image(spec);
    put(&mut object, tags::SOP_CLASS_UID, dicom_core::VR::UI, "1.2.840.10008.5.1.4.1.1.104.1");
    let mut head = format!("--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").into_bytes();
    head.extend(part10(object));
    head.extend_from_slice(&[0x42, 0x00, 0x11, 0x00, b'O', b'B', 0, 0]);
    head.extend_from_slice(&(length as u32).to_le_bytes());
    let mut tail = vec![0x42, 0x00, 0x12, 0x00, b'L', b'O', 16, 0];
    tail.extend_from_slice(b"application/pdf ");
    tail.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let pieces = length.div_ceil(MIB);
    futures_util::stream::once(async move { Bytes::from(head) })
        .chain(
            futures_util::stream::iter(0..pieces)
                .map(move |piece| Bytes::from(document_chunk(piece * MIB, ((piece + 1) * MIB).min(length)))),
        )
        .chain(futures_util::stream::once(async move { Bytes::from(tail) }))
}

/// POSTs a streamed STOW-RS body; the reply.
async fn stow_streamed(base: &str, body: impl futures_util::Stream<Item = Bytes> + Send + 'static) -> Reply {
    type Body = StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::convert::Infallible>>>;
    let body: Body = StreamBody::new(body.map(|bytes| Ok(Frame::data(bytes))).boxed());
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("{base}/studies"))
        .header("content-type", stow_content_type())
        .header("accept", "application/dicom+json")
        .body(body)
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let response = client.request(request).await.expect("STOW-RS answered");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply { status: parts.status, headers: parts.headers, body }
}

/// Issue 17: the data set before Pixel Data was read into memory whole, so an Encapsulated
/// Document (or any OB, OW, UN, UT value) of gigabytes was allocated by the store-time parse.
/// Now such a value is bulk data the parse never reads: a 600 MiB document is stored with the
/// server's peak RSS growing by far less than the document (and less than the budget), the
/// element after it is still parsed, the metadata gives the document by BulkDataURI, and the
/// bulk data resource serves it byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_600_mib_encapsulated_document_is_stored_and_served_without_being_held() {
    let data = tempfile::tempdir().unwrap();
    let server = ChildServer::start_with(data.path(), &["--memory-budget-mib", "64"]);
    let warmup = Spec::new(1801, 1, 1);
    stow(&server.base, None, &[instance(&warmup)]).await;
    let before = peak_rss_kib(server.child.id());
    let length = 600 * MIB;
    let spec = Spec::new(1801, 2, 1);
    let reply = stow_streamed(&server.base, encapsulated_document_body(&spec, length)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let after = peak_rss_kib(server.child.id());
    eprintln!("600 MiB document stored: peak RSS {before} KiB before, {after} KiB after");
    assert!(after < before + 64 * 1024, "peak RSS grew from {before} KiB to {after} KiB storing a 600 MiB value");

    let metadata = get(&format!("{}/metadata", spec.instance_url(&server.base)), "application/dicom+json").await;
    assert_eq!(metadata.status, StatusCode::OK);
    let object = &metadata.json()[0];
    let uri = object["00420011"]["BulkDataURI"].as_str().expect("the document by BulkDataURI").to_string();
    assert_eq!(object["00420011"]["vr"], "OB");
    assert_eq!(object["00420012"]["Value"][0], "application/pdf", "the element after the document was parsed");
    assert!(uri.ends_with("/bulkdata/00420011"), "{uri}");

    // Streamed back and compared piece by piece, never held whole by the test either.
    let request = Request::builder()
        .uri(&uri)
        .header("accept", "application/octet-stream")
        .body(http_body_util::Empty::<Bytes>::new());
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    let response = client.request(request.unwrap()).await.expect("bulk data answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-length"], length.to_string().as_str());
    let mut body = response.into_body();
    let mut offset = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body");
        if let Some(chunk) = frame.data_ref() {
            let expected = document_chunk(offset, offset + chunk.len() as u64);
            assert!(chunk[..] == expected[..], "the document differs within bytes {offset}..");
            offset += chunk.len() as u64;
        }
    }
    assert_eq!(offset, length, "the whole document came back");
    let end = peak_rss_kib(server.child.id());
    eprintln!("after serving it: peak RSS {end} KiB");
    assert!(end < before + 64 * 1024, "peak RSS grew to {end} KiB serving the document");
}

/// Explicit VR Little Endian element header with a 32-bit length (OB, SQ, UT, …).
fn long_header(group: u16, element: u16, vr: &[u8; 2], length: u32) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(12);
    bytes.extend_from_slice(&group.to_le_bytes());
    bytes.extend_from_slice(&element.to_le_bytes());
    bytes.extend_from_slice(vr);
    bytes.extend_from_slice(&[0, 0]);
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes
}

/// An item tag with its length (undefined: 0xFFFFFFFF).
fn item_header(length: u32) -> Vec<u8> {
    let mut bytes = vec![0xFE, 0xFF, 0x00, 0xE0];
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes
}

/// A Content Sequence (0040,A730) of defined length whose defined-length item holds a Value
/// Type and a second, nested Content Sequence of defined length, whose item (undefined length)
/// holds a Value Type, an Encapsulated Document (0042,0011) of `length` bytes and its MIME type;
/// after the outer sequence, a top-level MIME type. Three defined lengths enclose the document.
fn nested_document_body(spec: &Spec, length: u64) -> impl futures_util::Stream<Item = Bytes> + Send + use<> {
    let mut object = dataset_without_image(spec);
    put(&mut object, tags::SOP_CLASS_UID, dicom_core::VR::UI, "1.2.840.10008.5.1.4.1.1.88.11");
    let n = length as u32;
    let value_type: &[u8] = &[0x40, 0x00, 0x40, 0xA0, b'C', b'S', 4, 0, b'T', b'E', b'X', b'T'];
    let mime: &[u8] = &[0x42, 0x00, 0x12, 0x00, b'L', b'O', 16, 0];
    let mut head = format!("--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").into_bytes();
    head.extend(part10(object));
    head.extend(long_header(0x0040, 0xA730, b"SQ", n + 96));
    head.extend(item_header(n + 88));
    head.extend_from_slice(value_type);
    head.extend(long_header(0x0040, 0xA730, b"SQ", n + 64));
    head.extend(item_header(u32::MAX));
    head.extend_from_slice(value_type);
    head.extend(long_header(0x0042, 0x0011, b"OB", n));
    let mut tail = mime.to_vec();
    tail.extend_from_slice(b"application/pdf ");
    tail.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
    tail.extend_from_slice(mime);
    tail.extend_from_slice(b"text/plain      ");
    tail.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let pieces = length.div_ceil(MIB);
    futures_util::stream::once(async move { Bytes::from(head) })
        .chain(
            futures_util::stream::iter(0..pieces)
                .map(move |piece| Bytes::from(document_chunk(piece * MIB, ((piece + 1) * MIB).min(length)))),
        )
        .chain(futures_util::stream::once(async move { Bytes::from(tail) }))
}

/// Issue 17: large values inside sequences were read whole by the store-time parse (only
/// top-level ones were hidden), so a 300 MiB document two sequences deep needed more than a
/// 64 MiB budget allows and was refused. Now it is hidden like a top-level one, the three
/// defined lengths around it read shortened, the elements after it (in its item, and at the top
/// level) are still parsed, the metadata gives it by a BulkDataURI with its path, and that URI
/// serves it byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_value_inside_sequences_is_bulk_data_the_parse_never_reads() {
    let data = tempfile::tempdir().unwrap();
    let server = ChildServer::start_with(data.path(), &["--memory-budget-mib", "64"]);
    let warmup = Spec::new(1806, 1, 1);
    stow(&server.base, None, &[instance(&warmup)]).await;
    let before = peak_rss_kib(server.child.id());
    let length = 300 * MIB;
    let spec = Spec::new(1806, 2, 1);
    let reply = stow_streamed(&server.base, nested_document_body(&spec, length)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let after = peak_rss_kib(server.child.id());
    eprintln!("300 MiB nested document stored: peak RSS {before} KiB before, {after} KiB after");
    assert!(
        after < before + 64 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB storing a nested 300 MiB value"
    );

    let metadata = get(&format!("{}/metadata", spec.instance_url(&server.base)), "application/dicom+json").await;
    assert_eq!(metadata.status, StatusCode::OK);
    let object = &metadata.json()[0];
    assert_eq!(object["00420012"]["Value"][0], "text/plain", "the top-level element after the sequence was parsed");
    let outer = &object["0040A730"]["Value"][0];
    assert_eq!(outer["0040A040"]["Value"][0], "TEXT");
    let inner = &outer["0040A730"]["Value"][0];
    assert_eq!(inner["0040A040"]["Value"][0], "TEXT");
    assert_eq!(inner["00420012"]["Value"][0], "application/pdf", "the element after the document in its item");
    assert_eq!(inner["00420011"]["vr"], "OB");
    let uri = inner["00420011"]["BulkDataURI"].as_str().expect("the nested document by BulkDataURI").to_string();
    assert!(uri.ends_with("/bulkdata/0040A730/1/0040A730/1/00420011"), "{uri}");

    // A path that names no hidden value is 404; a malformed one 400.
    let instance_url = spec.instance_url(&server.base);
    let none = get(&format!("{instance_url}/bulkdata/0040A730/1/00420011"), "application/octet-stream").await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    let bad = get(&format!("{instance_url}/bulkdata/0040A730/0/00420011"), "application/octet-stream").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // A Range from inside the document, then the whole of it, streamed and compared.
    let range = Request::builder()
        .uri(&uri)
        .header("accept", "application/octet-stream")
        .header("range", "bytes=1000000-1000999")
        .body(http_body_util::Empty::<Bytes>::new());
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    let response = client.request(range.unwrap()).await.expect("bulk data answered");
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes[..], document_chunk(1_000_000, 1_001_000)[..]);

    let request = Request::builder()
        .uri(&uri)
        .header("accept", "application/octet-stream")
        .body(http_body_util::Empty::<Bytes>::new());
    let response = client.request(request.unwrap()).await.expect("bulk data answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-length"], length.to_string().as_str());
    let mut body = response.into_body();
    let mut offset = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body");
        if let Some(chunk) = frame.data_ref() {
            let expected = document_chunk(offset, offset + chunk.len() as u64);
            assert!(chunk[..] == expected[..], "the document differs within bytes {offset}..");
            offset += chunk.len() as u64;
        }
    }
    assert_eq!(offset, length, "the whole document came back");
}

/// The busy path of the budget over HTTP: a ZIP whose client reads nothing holds its share (its
/// producer waits on the client) and so leaves too little for a second ZIP, which waits
/// `--memory-wait-secs` and is answered 503 with Retry-After; QIDO, which draws nothing, answers
/// meanwhile; and once the stalled client goes away its share comes back and the ZIP is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_that_waits_too_long_for_the_budget_is_503_with_retry_after() {
    let data = tempfile::tempdir().unwrap();
    let server = ChildServer::start_with(data.path(), &["--memory-budget-mib", "16", "--memory-wait-secs", "1"]);
    // 24 instances of 1 MiB: their ZIP is far more than what sockets and the channel buffer.
    let specs: Vec<Spec> = (1..=24).map(|i| Spec::new(1807, 1, i).size(512, 1024, 1)).collect();
    for batch in specs.chunks(8) {
        let payloads: Vec<Vec<u8>> = batch.iter().map(instance).collect();
        let reply = stow(&server.base, None, &payloads).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let zip_url = specs[0].study_url(&server.base);

    let stalled = Request::builder().uri(&zip_url).header("accept", "application/zip");
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    let stalled = client.request(stalled.body(http_body_util::Empty::new()).unwrap()).await.expect("answered");
    assert_eq!(stalled.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let busy = get(&zip_url, "application/zip").await;
    let waited = started.elapsed();
    assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE, "{}", busy.text());
    assert_eq!(busy.headers["retry-after"], "2");
    assert!(busy.text().contains("memory budget"), "{}", busy.text());
    assert!(waited >= Duration::from_millis(900), "answered after {waited:?}, before the wait ended");
    let qido =
        get(&format!("{}/studies?StudyInstanceUID={}", server.base, specs[0].study_uid()), "application/dicom+json")
            .await;
    assert_eq!(qido.status, StatusCode::OK);
    assert_eq!(qido.json().as_array().map(Vec::len), Some(1));

    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(10);
    let served = loop {
        let reply = get(&zip_url, "application/zip").await;
        if reply.status == StatusCode::OK || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(served.status, StatusCode::OK, "{}", served.text());
    assert_eq!(&served.body[..4], b"PK\x03\x04");
    assert!(served.body.len() > 24 * 1024 * 1024, "the whole study: {} bytes", served.body.len());
}

/// Whole-study metadata is streamed instance by instance: a 400-instance study comes back whole
/// and equal in every coding (identity, gzip, brotli), with its ETag, and If-None-Match on it
/// answers 304.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_study_metadata_streams_in_every_coding() {
    let server = Server::start().await;
    let parts: Vec<Vec<u8>> = (1..=400).map(|n| instance(&Spec::new(1802, 1 + n % 4, n).size(2, 2, 1))).collect();
    let reply = stow(&server.base, None, &parts).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let url = format!("{}/metadata", Spec::new(1802, 1, 1).study_url(&server.base));
    let plain = get(&url, "application/dicom+json").await;
    assert_eq!(plain.status, StatusCode::OK);
    let etag = plain.header("etag").expect("etag").to_string();
    let instances = plain.json();
    assert_eq!(instances.as_array().map(Vec::len), Some(400));
    for coding in ["gzip", "br"] {
        let coded =
            send(Method::GET, &url, &[("accept", "application/dicom+json"), ("accept-encoding", coding)], Bytes::new())
                .await;
        assert_eq!(coded.status, StatusCode::OK);
        assert_eq!(coded.header("content-encoding"), Some(coding));
        let mut decoded = Vec::new();
        use std::io::Read;
        match coding {
            "gzip" => flate2::read::GzDecoder::new(&coded.body[..]).read_to_end(&mut decoded),
            _ => brotli::Decompressor::new(&coded.body[..], 4096).read_to_end(&mut decoded),
        }
        .expect("a valid coding");
        assert!(coded.body.len() * 4 < decoded.len(), "{coding} compresses");
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&decoded).unwrap(), instances, "{coding}");
        let coded_etag = coded.header("etag").expect("etag").to_string();
        let again = send(Method::GET, &url, &[("if-none-match", &coded_etag)], Bytes::new()).await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{coding}");
    }
    let again = send(Method::GET, &url, &[("if-none-match", &etag)], Bytes::new()).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
}

/// A decode that can never fit the budget is refused at once with 406 naming the budget; the
/// stored form stays available.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_larger_than_the_budget_is_406_and_the_stored_form_is_served() {
    let spec = Spec::new(1803, 1, 1).size(1024, 1024, 20);
    let server = Server::with_config(&[rle_instance(&spec)], |config| {
        config.archive.memory_budget_bytes = 16 * MIB;
    })
    .await;
    let url = spec.instance_url(&server.base);
    let refused = get(&url, "application/dicom").await;
    assert_eq!(refused.status, StatusCode::NOT_ACCEPTABLE, "{}", refused.text());
    assert!(refused.text().contains("memory budget of 16 MiB"), "{}", refused.text());
    let stored = get(&url, "application/dicom; transfer-syntax=*").await;
    assert_eq!(stored.status, StatusCode::OK);
    assert_eq!(server.archive.memory_budget().available_bytes(), 16 * MIB, "nothing stays reserved");
}

/// Counts of the answers seen during the mix, by status.
#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    busy: u64,
    other: Vec<(String, u16, String)>,
}

/// One request of the mix: 200 or a 503 with Retry-After are fine, anything else is recorded.
async fn abuse(
    tally: &std::sync::Mutex<Tally>,
    what: &str,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) {
    let reply = try_send(method, url, headers, body).await;
    let mut tally = tally.lock().unwrap();
    match reply {
        Ok(reply) if reply.status == StatusCode::OK => tally.ok += 1,
        Ok(reply) if reply.status == StatusCode::SERVICE_UNAVAILABLE && reply.header("retry-after").is_some() => {
            tally.busy += 1
        }
        Ok(reply) => tally.other.push((what.into(), reply.status.as_u16(), reply.text())),
        Err(error) => tally.other.push((what.into(), 0, error)),
    }
}

/// Issue 17's memory-budget mix: for 12 s, big decodes of compressed frames, rendered images of
/// large frames, ZIPs of a study, whole-study metadata (plain and compressed) and concurrent
/// STOW-RS parses, all at once, beside a client doing normal QIDO searches. The server runs with
/// the default budget (160 MiB). Its peak RSS stays within the baseline (after setup) plus the
/// budget plus 48 MiB of slack (allocator fragmentation, connection buffers, blob read-ahead of
/// the streams, which are not budgeted); every answer is 200 or 503 with Retry-After; QIDO's
/// 95th percentile latency stays under 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_memory_budget_mix_keeps_rss_bounded_and_qido_answering() {
    let data = tempfile::tempdir().unwrap();
    let server = ChildServer::start(data.path());
    let base = server.base.clone();
    // A compressed multi-frame (RLE, 8 frames of 1024 × 1024), a large native image
    // (2048 × 2048 16-bit), a 300-instance study for metadata and ZIP.
    let compressed = Spec::new(1804, 1, 1).size(1024, 1024, 8);
    let large = Spec::new(1804, 2, 1).size(2048, 2048, 1);
    let reply = stow(&base, None, &[rle_instance(&compressed), instance(&large)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let many: Vec<Vec<u8>> = (1..=300).map(|n| instance(&Spec::new(1805, 1 + n % 3, n).size(64, 64, 1))).collect();
    let reply = stow(&base, None, &many).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    for n in 0..20 {
        qido(&base, &format!("/studies?limit=10&offset={}", n % 2)).await;
    }
    let baseline = peak_rss_kib(server.child.id());

    let tally = std::sync::Arc::new(std::sync::Mutex::new(Tally::default()));
    let deadline = Instant::now() + Duration::from_secs(12);
    let frames_url = format!("{}/frames/1,2,3,4,5,6,7,8", compressed.instance_url(&base));
    let rendered_url = format!("{}/rendered", large.instance_url(&base));
    let study_url = Spec::new(1805, 1, 1).study_url(&base);
    let metadata_url = format!("{study_url}/metadata");
    let native_frames = "multipart/related; type=\"application/octet-stream\"; transfer-syntax=1.2.840.10008.1.2.1";
    type Job = (&'static str, String, Vec<(&'static str, String)>);
    let jobs: Vec<Job> = vec![
        ("decode", frames_url.clone(), vec![("accept", native_frames.to_string())]),
        ("decode", frames_url.clone(), vec![("accept", native_frames.to_string())]),
        ("decode", frames_url, vec![("accept", native_frames.to_string())]),
        ("rendered", rendered_url.clone(), vec![("accept", "image/png".into())]),
        ("rendered", rendered_url.clone(), vec![("accept", "image/jpeg".into())]),
        ("rendered", rendered_url, vec![("accept", "image/png".into())]),
        ("zip", study_url.clone(), vec![("accept", "application/zip".into())]),
        ("zip", study_url, vec![("accept", "application/zip".into())]),
        ("metadata", metadata_url.clone(), vec![]),
        ("metadata", metadata_url.clone(), vec![("accept-encoding", "br".into())]),
        ("metadata", metadata_url, vec![("accept-encoding", "gzip".into())]),
    ];
    let mut tasks = Vec::new();
    for (what, url, headers) in jobs {
        let tally = tally.clone();
        tasks.push(tokio::spawn(async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            while Instant::now() < deadline {
                abuse(&tally, what, Method::GET, &url, &headers, Bytes::new()).await;
            }
        }));
    }
    for client in 0..3u32 {
        let (tally, base) = (tally.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let mut round = 0u32;
            while Instant::now() < deadline {
                round += 1;
                let parts: Vec<Vec<u8>> =
                    (1..=10).map(|n| instance(&Spec::new(1810 + client, round, n).size(256, 256, 1))).collect();
                let url = format!("{base}/studies");
                let content_type = stow_content_type();
                let headers = [("content-type", content_type.as_str()), ("accept", "application/dicom+json")];
                abuse(&tally, "stow", Method::POST, &url, &headers, Bytes::from(multipart(&parts))).await;
            }
        }));
    }
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let started = Instant::now();
        let reply = get(&format!("{base}/studies?limit=10&PatientID=*"), "application/dicom+json").await;
        latencies.push(started.elapsed());
        assert_eq!(reply.status, StatusCode::OK, "QIDO during the mix: {}", reply.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    let peak = peak_rss_kib(server.child.id());
    latencies.sort();
    let p95 = latencies[latencies.len() * 95 / 100];
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    eprintln!(
        "memory-budget mix: baseline {baseline} KiB, peak {peak} KiB (+{} MiB); {} answered 200, {} 503; \
         QIDO p95 {p95:?} over {} searches (max {:?})",
        (peak - baseline) / 1024,
        tally.ok,
        tally.busy,
        latencies.len(),
        latencies.last().unwrap()
    );
    assert!(tally.other.is_empty(), "answers other than 200 or 503 with Retry-After: {:?}", tally.other);
    assert!(tally.ok > 50, "the mix did work: {tally:?}");
    assert!(peak < baseline + (160 + 48) * 1024, "peak RSS {peak} KiB above baseline {baseline} KiB + budget + slack");
    assert!(p95 < Duration::from_secs(5), "QIDO p95 {p95:?}");
    // Still a normal server afterwards.
    assert!(!qido(&base, "/studies?limit=5").await.is_empty());
}
