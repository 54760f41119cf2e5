//! Hostile DICOM content (issue 17): objects built to exhaust the stack or memory of whoever
//! parses, frames or renders them. Each test drives `kura serve` as a child process, so that an
//! abort shows as a dead server rather than a dead test binary, and checks that the server still
//! answers a normal QIDO afterwards with its peak RSS (VmHWM) not jumped.

use dicom_dictionary_std::tags;
use http::StatusCode;

use crate::support::*;

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
    let server = ChildServer::start(data.path());
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
    server.terminate();
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
