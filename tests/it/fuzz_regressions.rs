//! Inputs the fuzz targets (tests/fuzz) crashed on, fed through the server that uses the same
//! functions. Each input is kept under tests/fuzz/regressions/<target>/ with a README saying
//! what it does.

use http::StatusCode;

use crate::support::client::{get, qido, stow};
use crate::support::server::ChildServer;

/// Peak resident set of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("kB") * 1024
}

/// part10 crasher: a UN element of undefined length (Implicit VR content, PS3.5 §6.2.2) that
/// dicom-rs reads as Explicit VR, taking an item tag for a 3.7 GB value length and writing that
/// many zeros before the read fails (tests/fuzz/regressions/part10/README.md). A 674-byte part
/// must be answered without the server touching gigabytes.
#[tokio::test(flavor = "multi_thread")]
async fn fuzz_part10_un_sequence_undefined_length_is_answered_without_allocating_its_misread_length() {
    let part = include_bytes!("../fuzz/regressions/part10/un-sequence-undefined-length.dcm").to_vec();
    answered_without_gigabytes(part).await;
}

/// part10 crasher: the same mechanism at the top level of the data set (1,890 bytes).
#[tokio::test(flavor = "multi_thread")]
async fn fuzz_part10_top_level_misread_length_is_answered_without_allocating_it() {
    let part = include_bytes!("../fuzz/regressions/part10/top-level-ob-misread-length.dcm").to_vec();
    answered_without_gigabytes(part).await;
}

async fn answered_without_gigabytes(part: Vec<u8>) {
    let data = tempfile::tempdir().unwrap();
    let server = ChildServer::start(data.path());
    let pid = server.child.id();
    let before = peak_rss(pid);
    let size = part.len();
    let reply = stow(&server.base, None, &[part]).await;
    assert!(
        reply.status == StatusCode::OK || reply.status.is_client_error() || reply.status == StatusCode::CONFLICT,
        "STOW answered {}: {}",
        reply.status,
        reply.text()
    );
    let grown = peak_rss(pid).saturating_sub(before);
    assert!(grown < 256 << 20, "the server's peak RSS grew by {} MiB for a {}-byte part", grown >> 20, size);
    // Still serving.
    let _ = qido(&server.base, "/studies").await;
    server.terminate();
}

/// part10 crasher found by the short mode (tests/fuzz/smoke.rs, mutation 32089 of pydicom's
/// `JPEG2000.dcm`): a private SL element whose length says 2 and a hundred bytes cut after it;
/// `part10::parse` held 1.16 GB of heap for the 3,250-byte part, and the server's peak RSS
/// reached 1.1 GiB (measured): dicom-rs left the 2 bytes unread and read every later element
/// from a shifted position. The layout walk now refuses a binary value whose length is not a
/// multiple of its VR's size (PS3.5 §6.2).
#[tokio::test(flavor = "multi_thread")]
async fn fuzz_part10_short_sl_value_is_answered_without_allocating_gigabytes() {
    let part = include_bytes!("../fuzz/regressions/part10/short-sl-value.dcm").to_vec();
    answered_without_gigabytes(part).await;
}

/// part10 finding of the short mode (mutation 33413 of pydicom's `MR_small_bigendian.dcm`, in
/// the metadata_writers target): its File Meta Information Group Length says 238 where the group
/// holds 206 bytes. dicom-rs ended the group by that length, 32 bytes into the big-endian data
/// set, and so read the data set from elsewhere than the layout walk had checked: from inside
/// Pixel Data, where an "element" of unknown VR spelled a length of 18,809,147, which dicom-rs
/// allocated and zeroed for the 9,708-byte part (18.8 MB of heap at once, measured by the fuzz
/// bodies' allocator). The parse now hands dicom-rs the group length the walk counted (group
/// 0002 read by its elements, as dcmtk and pydicom read it), so the instance reads as the file
/// it was mutated from: stored, with the attributes pydicom reads from it.
#[tokio::test(flavor = "multi_thread")]
async fn fuzz_part10_wrong_meta_group_length_is_read_as_the_walk_framed_it() {
    let part = include_bytes!("../fuzz/regressions/part10/mr-small-bigendian-18mb.dcm").to_vec();
    let data = tempfile::tempdir().unwrap();
    let server = ChildServer::start(data.path());
    let reply = stow(&server.base, None, &[part]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let study = "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457";
    let found = qido(&server.base, &format!("/studies?StudyInstanceUID={study}")).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["00100010"]["Value"][0]["Alphabetic"], "CompressedSamples^MR1");
    let metadata = get(&format!("{}/studies/{study}/metadata", server.base), "application/dicom+json").await;
    assert_eq!(metadata.status, StatusCode::OK, "{}", metadata.text());
    let instance = &metadata.json()[0];
    assert_eq!(instance["00280010"]["Value"][0], 64, "Rows, read in big endian");
    assert_eq!(instance["00280011"]["Value"][0], 64, "Columns");
    assert_eq!(
        instance["00080018"]["Value"][0], "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457",
        "SOP Instance UID, from the data set read at the right place"
    );
    server.terminate();
}
