//! `kura upload` against a `kura serve` child, through a proxy that records every byte and cuts
//! the link where a test says (tests/support/proxy.rs). What was sent and acknowledged is read
//! from the proxy's recording, not from the uploader; what arrived is read back with WADO-RS
//! (`transfer-syntax=*`) and compared with the source files byte for byte.

use std::path::{Path, PathBuf};

use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use http::{Method, StatusCode};

use crate::support::proxy::{Cut, CutProxy, assert_no_acknowledged_resent};
use crate::support::*;

const DICOM_ANY_TS: &str = "multipart/related; type=\"application/dicom\"; transfer-syntax=*";

struct UploadRun {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `kura upload` to its end. The transport tests compare bytes: unless `extra` names a
/// `--pixel-codec`, the pixels go as read (`--pixel-codec none`).
async fn upload(paths: &[&Path], to: &str, journal: &Path, extra: &[&str], token: Option<&str>) -> UploadRun {
    let mut command = tokio::process::Command::new(kura_binary());
    command.arg("upload").args(paths).args(["--to", to, "--journal"]).arg(journal).args(extra);
    if !extra.contains(&"--pixel-codec") {
        command.args(["--pixel-codec", "none"]);
    }
    command.env_remove("KURA_TOKEN");
    if let Some(token) = token {
        command.env("KURA_TOKEN", token);
    }
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), command.output())
        .await
        .expect("kura upload ends within 2 minutes")
        .expect("kura upload runs");
    let run = UploadRun {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!("kura upload exited {}\n{}{}", run.code, run.stderr, run.stdout);
    run
}

/// `count` 512×512 CT slices of one study as files in `dir`: (path, bytes, spec).
fn write_study(dir: &Path, study: u32, count: u32) -> Vec<(PathBuf, Vec<u8>, Spec)> {
    std::fs::create_dir_all(dir).unwrap();
    (1..=count)
        .map(|n| {
            let spec = Spec::new(study, 1, n).size(512, 512, 1);
            let bytes = instance(&spec);
            let path = dir.join(format!("IM{n:04}"));
            std::fs::write(&path, &bytes).unwrap();
            (path, bytes, spec)
        })
        .collect()
}

/// Every source instance is on the server, byte for byte (the preamble zeroed, as Kura stores).
async fn assert_arrived_exact(base: &str, files: &[(PathBuf, Vec<u8>, Spec)], auth: Option<&str>) {
    for (path, bytes, spec) in files {
        let bearer = auth.map(|token| format!("Bearer {token}"));
        let mut headers = vec![("accept", DICOM_ANY_TS)];
        if let Some(bearer) = &bearer {
            headers.push(("authorization", bearer.as_str()));
        }
        let reply = send(Method::GET, &spec.instance_url(base), &headers, bytes::Bytes::new()).await;
        assert_eq!(reply.status, StatusCode::OK, "{}: {}", path.display(), reply.text());
        let parts = split_multipart(reply.content_type(), &reply.body);
        assert_eq!(parts.len(), 1);
        assert!(parts[0].1 == as_stored(bytes), "{} arrived with other bytes", path.display());
    }
}

/// (sent, already present) from the summary line.
fn sent_and_present(summary: &str) -> (usize, usize) {
    let number = |after: &str| -> usize {
        let rest = &summary[summary.find(after).expect(after) + after.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    (number("sent "), number("already present "))
}

/// Where each request of a recorded one-connection run starts and ends, in client-to-server
/// bytes: (method, start, end).
fn request_spans(proxy: &CutProxy) -> Vec<(String, u64, u64)> {
    let mut at = 0u64;
    proxy
        .exchanges()
        .iter()
        .map(|exchange| {
            let start = at;
            at += exchange.request_bytes;
            (exchange.method.clone(), start, at)
        })
        .collect()
}

/// Cuts mid-request, between requests and mid-answer (the batch stored, its answer lost): the
/// uploader retries on a new connection and finishes; no instance the server acknowledged is
/// sent again; every instance arrives byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_links_are_resumed_without_resending_acknowledged_instances() {
    let inputs = tempfile::tempdir().unwrap();
    let files = write_study(inputs.path(), 5100, 12);
    let batch = ["--batch-instances", "3", "--no-compress", "--quiet"];

    // A run without a cut gives the request boundaries (uncoded bodies: the same sizes again).
    let data = tempfile::tempdir().unwrap();
    let server = ChildServer::start(data.path());
    let proxy = CutProxy::start(server.address, Cut::Never).await;
    let journal = inputs.path().join("journal-baseline");
    let run = upload(&[inputs.path()], &proxy.base(), &journal, &batch, None).await;
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("sent 12, already present 0, failed 0"), "{}", run.stdout);
    let spans = request_spans(&proxy);
    let posts: Vec<(u64, u64)> = spans.iter().filter(|(m, _, _)| m == "POST").map(|(_, s, e)| (*s, *e)).collect();
    assert_eq!(posts.len(), 4, "12 instances in batches of 3: {spans:?}");
    let stows = proxy.stows();
    assert!(stows.iter().all(|(uids, acked)| uids.len() == 3 && *acked));
    // Into the answer to the second STOW request: the answers before it whole, then 20 bytes.
    let exchanges = proxy.exchanges();
    let answer_cut = exchanges.iter().take(2).map(|e| e.answer_bytes.unwrap()).sum::<u64>() + 20;
    assert_eq!(exchanges[2].method, "POST");
    drop(proxy);
    drop(server);

    let cuts = [
        ("mid first request", Cut::AfterClientBytes(posts[0].0 + (posts[0].1 - posts[0].0) / 2)),
        ("in the first request's head", Cut::AfterClientBytes(posts[0].0 + 40)),
        ("between the second and third request", Cut::AfterClientBytes(posts[1].1)),
        ("mid third request", Cut::AfterClientBytes(posts[2].0 + (posts[2].1 - posts[2].0) / 3)),
        // The second batch is stored; its answer is cut off after its first bytes.
        ("answer of the second request lost", Cut::AfterServerBytes(answer_cut)),
    ];
    for (name, cut) in cuts {
        eprintln!("== cut {name}: {cut:?}");
        let data = tempfile::tempdir().unwrap();
        let server = ChildServer::start(data.path());
        let proxy = CutProxy::start(server.address, cut).await;
        let journal = inputs.path().join(format!("journal-{}", name.replace(' ', "-")));
        let run = upload(&[inputs.path()], &proxy.base(), &journal, &batch, None).await;
        assert!(proxy.was_cut(), "{name}: the cut happened");
        assert_eq!(run.code, 0, "{name}: the uploader finished after retrying");
        assert!(run.stdout.contains("sent 12, already present 0, failed 0"), "{name}: {}", run.stdout);
        let stows = proxy.stows();
        // An instance whose part was whole before a cut may have been stored without being
        // acknowledged: then a search finds it and it is not sent again (so not every instance
        // need be in a whole request). Arrival is checked on the server.
        let sent = assert_no_acknowledged_resent(&stows);
        assert!(sent.len() >= 9, "{name}: {} instances in whole requests", sent.len());
        assert_arrived_exact(&server.base, &files, None).await;
    }
}

/// With `--retries 0` a cut ends the run (exit 3); the next run resumes: the instances the
/// server holds are found by QIDO-RS (or in the journal) and not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_by_a_cut_is_resumed_by_the_next_run() {
    let inputs = tempfile::tempdir().unwrap();
    let files = write_study(inputs.path(), 5200, 12);
    let data = tempfile::tempdir().unwrap();
    let server = ChildServer::start(data.path());
    let proxy = CutProxy::start(server.address, Cut::Never).await;
    // Half of the instances' bytes: mid-study.
    let half: u64 = files.iter().map(|(_, bytes, _)| bytes.len() as u64).sum::<u64>() / 2;
    proxy.set_cut(Cut::AfterClientBytes(half));
    let journal = inputs.path().join("journal");
    let extra = ["--batch-instances", "3", "--retries", "0", "--quiet"];
    let first = upload(&[inputs.path()], &proxy.base(), &journal, &extra, None).await;
    assert!(proxy.was_cut());
    assert_eq!(first.code, 3, "gave up: {}", first.stderr);
    assert!(first.stderr.contains("gave up after 0 retries"), "{}", first.stderr);
    let acknowledged_first: usize = proxy.stows().iter().filter(|(_, acked)| *acked).map(|(uids, _)| uids.len()).sum();
    assert!((3..12).contains(&acknowledged_first), "mid-study: {acknowledged_first} acknowledged");

    let second = upload(&[inputs.path()], &proxy.base(), &journal, &extra, None).await;
    assert_eq!(second.code, 0, "{}", second.stderr);
    // What the server stored of the cut request without acknowledging it is found by the
    // search too: at least the acknowledged instances are present.
    let (sent, present) = sent_and_present(&second.stdout);
    assert_eq!(sent + present, 12, "{}", second.stdout);
    assert!(present >= acknowledged_first, "{}", second.stdout);
    assert_no_acknowledged_resent(&proxy.stows());
    assert_arrived_exact(&server.base, &files, None).await;

    // A third run finds everything present and sends nothing.
    let before = proxy.stows().len();
    let third = upload(&[inputs.path()], &proxy.base(), &journal, &extra, None).await;
    assert_eq!(third.code, 0);
    assert!(third.stdout.contains("sent 0, already present 12"), "{}", third.stdout);
    assert_eq!(proxy.stows().len(), before, "no STOW request at all");
}

/// An `uploader` key may store but not search (QIDO-RS answers 403): the uploader relies on its
/// journal, so a run after a cut still re-sends no acknowledged instance. The key is never
/// printed. A bad key stops the run with exit 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploader_key_without_search_resumes_from_the_journal() {
    let inputs = tempfile::tempdir().unwrap();
    let files = write_study(inputs.path(), 5300, 9);
    let data = tempfile::tempdir().unwrap();
    let (_, secret) = create_key(data.path(), "hospital", "uploader");
    let (_, reader) = create_key(data.path(), "hospital", "reader");
    let server = ChildServer::start_with(data.path(), &["--require-auth"]);
    let proxy = CutProxy::start(server.address, Cut::Never).await;

    let refused =
        upload(&[inputs.path()], &proxy.base(), &inputs.path().join("j0"), &["--quiet"], Some("kura_bad_key")).await;
    assert_eq!(refused.code, 4, "{}", refused.stderr);
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);

    let half: u64 = files.iter().map(|(_, bytes, _)| bytes.len() as u64).sum::<u64>() / 2;
    proxy.set_cut(Cut::AfterClientBytes(half));
    let journal = inputs.path().join("journal");
    let extra = ["--batch-instances", "2", "--retries", "0"];
    let first = upload(&[inputs.path()], &proxy.base(), &journal, &extra, Some(&secret)).await;
    assert_eq!(first.code, 3);
    assert!(first.stderr.contains("does not let this uploader search (403 Forbidden)"), "{}", first.stderr);
    let acknowledged: usize = proxy.stows().iter().filter(|(_, acked)| *acked).map(|(uids, _)| uids.len()).sum();
    assert!(acknowledged >= 2, "{acknowledged}");
    let second = upload(&[inputs.path()], &proxy.base(), &journal, &extra, Some(&secret)).await;
    assert_eq!(second.code, 0, "{}", second.stderr);
    // Without search only the journal counts: exactly the acknowledged instances are skipped
    // (one stored but unacknowledged is sent again, and the server takes it as a no-op).
    assert_eq!(sent_and_present(&second.stdout), (9 - acknowledged, acknowledged), "{}", second.stdout);
    for run in [&refused, &first, &second] {
        assert!(!run.stderr.contains(&secret) && !run.stdout.contains(&secret), "the key was printed");
    }
    let bearer = format!("Bearer {secret}");
    let searches: Vec<_> = proxy
        .exchanges()
        .into_iter()
        .filter(|e| e.method == "GET" && e.header("authorization") == Some(&bearer))
        .collect();
    assert!(
        !searches.is_empty() && searches.iter().all(|e| e.status == Some(403)),
        "QIDO-RS refused to the uploader key"
    );
    assert!(
        proxy
            .exchanges()
            .iter()
            .filter(|e| e.method == "POST")
            .all(|e| e.header("authorization") == Some(&format!("Bearer {secret}")))
    );
    assert_no_acknowledged_resent(&proxy.stows());
    assert_arrived_exact(&server.base, &files, Some(&reader)).await;
}

/// A ZIP archive (deflated and stored entries, a text file, a folder entry) and a DICOMDIR (one
/// record pointing outside its folder, refused): the instances arrive byte-exact, the text file
/// counts as not DICOM, the escaping record as a failure (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_archives_and_dicomdirs_are_read() {
    use std::io::Write;
    let inputs = tempfile::tempdir().unwrap();
    let staging = inputs.path().join("staging");
    let zipped = write_study(&staging, 5400, 4);
    let zip_path = inputs.path().join("study.zip");
    {
        let mut writer = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        let deflated = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        writer.add_directory("CT/", stored).unwrap();
        for (index, (path, bytes, _)) in zipped.iter().enumerate() {
            let name = format!("CT/{}", path.file_name().unwrap().to_str().unwrap());
            writer.start_file(name, if index % 2 == 0 { deflated } else { stored }).unwrap();
            writer.write_all(bytes).unwrap();
        }
        writer.start_file("README.txt", deflated).unwrap();
        writer.write_all(b"not an image").unwrap();
        writer.finish().unwrap();
    }
    std::fs::remove_dir_all(&staging).unwrap();

    // A DICOMDIR in its folder, its files under DICOM/ST1; one record points at ../outside.
    let media = inputs.path().join("media");
    let on_media = write_study(&media.join("DICOM").join("ST1"), 5401, 3);
    let outside = write_study(&inputs.path().join("elsewhere"), 5402, 1);
    let mut records: Vec<Vec<String>> = on_media
        .iter()
        .map(|(p, _, _)| vec!["DICOM".into(), "ST1".into(), p.file_name().unwrap().to_str().unwrap().into()])
        .collect();
    records.push(vec!["..".into(), "elsewhere".into(), "IM0001".into()]);
    let dicomdir = media.join("DICOMDIR");
    std::fs::write(&dicomdir, dicomdir_bytes(&records)).unwrap();

    let data = tempfile::tempdir().unwrap();
    let server = ChildServer::start(data.path());
    let proxy = CutProxy::start(server.address, Cut::Never).await;
    let run = upload(&[&zip_path, &dicomdir], &proxy.base(), &inputs.path().join("journal"), &["--quiet"], None).await;
    assert_eq!(run.code, 1, "the escaping record is a failure");
    assert!(run.stdout.contains("sent 7, already present 0, failed 1, not DICOM 1"), "{}", run.stdout);
    assert!(run.stderr.contains("is not a plain name"), "{}", run.stderr);
    assert_arrived_exact(&server.base, &zipped, None).await;
    assert_arrived_exact(&server.base, &on_media, None).await;
    let (_, _, escaped) = &outside[0];
    assert_eq!(get(&escaped.instance_url(&server.base), DICOM_ANY_TS).await.status, StatusCode::NOT_FOUND);
    assert_no_acknowledged_resent(&proxy.stows());
    // Brotli is the default coding.
    assert!(
        proxy.exchanges().iter().filter(|e| e.method == "POST").all(|e| e.header("content-encoding") == Some("br"))
    );
}

/// A DICOMDIR (PS3.10 §8, PS3.3 F.3) whose IMAGE records reference `records` (Referenced File ID
/// components).
fn dicomdir_bytes(records: &[Vec<String>]) -> Vec<u8> {
    let items: Vec<InMemDicomObject> = records
        .iter()
        .map(|components| {
            let mut item = InMemDicomObject::new_empty();
            put(&mut item, tags::DIRECTORY_RECORD_TYPE, VR::CS, "IMAGE");
            let value = dicom_core::PrimitiveValue::Strs(components.iter().cloned().collect());
            put(&mut item, tags::REFERENCED_FILE_ID, VR::CS, value);
            item
        })
        .collect();
    let mut object = InMemDicomObject::new_empty();
    put(&mut object, tags::FILE_SET_ID, VR::CS, "TEST");
    object.put(dicom_core::DataElement::new(
        tags::DIRECTORY_RECORD_SEQUENCE,
        VR::SQ,
        dicom_core::value::DataSetSequence::from(items),
    ));
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid("1.2.840.10008.1.3.10")
        .media_storage_sop_instance_uid(format!("{ROOT}.99.1"));
    let file = object.with_meta(meta).expect("meta");
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).expect("write");
    bytes
}

/// A ZIP entry of 100 MiB of zeros (about 100 KiB deflated): the archive is refused before any
/// byte is sent (exit 2), beside a good instance in the same archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zip_bomb_is_refused_and_nothing_is_sent() {
    use std::io::Write;
    let inputs = tempfile::tempdir().unwrap();
    let spec = Spec::new(5500, 1, 1);
    let zip_path = inputs.path().join("bomb.zip");
    {
        let mut writer = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        let deflated = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .large_file(false);
        writer.start_file("good.dcm", deflated).unwrap();
        writer.write_all(&instance(&spec)).unwrap();
        writer.start_file("bomb.dcm", deflated).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..100 {
            writer.write_all(&zeros).unwrap();
        }
        writer.finish().unwrap();
    }
    assert!(std::fs::metadata(&zip_path).unwrap().len() < 1 << 20);
    let data = tempfile::tempdir().unwrap();
    let server = ChildServer::start(data.path());
    let proxy = CutProxy::start(server.address, Cut::Never).await;
    let run = upload(&[&zip_path], &proxy.base(), &inputs.path().join("journal"), &["--quiet"], None).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("refused as a zip bomb") && run.stderr.contains("bomb.dcm"), "{}", run.stderr);
    assert!(proxy.exchanges().is_empty(), "nothing was sent");
    // The entry and total caps hold too, with the ratio check out of the way.
    let run = upload(
        &[&zip_path],
        &proxy.base(),
        &inputs.path().join("journal"),
        &["--quiet", "--zip-max-ratio", "100000", "--zip-max-total-bytes", "10000000"],
        None,
    )
    .await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("more than 10000000"), "{}", run.stderr);
    assert!(proxy.exchanges().is_empty(), "nothing was sent");
}

/// Refusals are reported and never retried: an instance the server refuses (a different object
/// under a stored SOP Instance UID: 409 with Failure Reason 0111), and a request over the
/// server's size limit (413). Exit 1; each sent exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_instances_are_reported_and_not_retried() {
    let inputs = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (_, secret) = create_key(data.path(), "hospital", "uploader");
    let server = ChildServer::start_with(data.path(), &["--require-auth", "--max-request-bytes", "4500000"]);
    let proxy = CutProxy::start(server.address, Cut::Never).await;
    // The server holds a different object under the first instance's UIDs.
    let mut stored = Spec::new(5600, 1, 1);
    stored.seed = 9;
    let bearer = format!("Bearer {secret}");
    let reply = send(
        Method::POST,
        &format!("{}/studies", server.base),
        &[("content-type", &stow_content_type()), ("authorization", &bearer)],
        multipart(&[instance(&stored)]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let files = write_study(inputs.path(), 5600, 2);
    let run = upload(
        &[inputs.path()],
        &proxy.base(),
        &inputs.path().join("journal"),
        &["--batch-instances", "1", "--quiet"],
        Some(&secret),
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.contains("sent 1, already present 0, failed 1"), "{}", run.stdout);
    assert!(run.stderr.contains(&files[0].2.sop_uid()) && run.stderr.contains("0111"), "{}", run.stderr);
    let sent = assert_no_acknowledged_resent(&proxy.stows());
    assert_eq!(sent.get(&files[0].2.sop_uid()), Some(&1), "the refused instance went once");

    // Ten slices (5.2 MB, about 4 MB coded) in one request inflate beyond
    // --max-request-bytes: 413 (the server reads the coded rest before it answers), once.
    let big = inputs.path().join("big");
    write_study(&big, 5601, 10);
    let before = proxy.exchanges().iter().filter(|e| e.method == "POST").count();
    let run = upload(&[&big], &proxy.base(), &inputs.path().join("journal"), &["--quiet"], Some(&secret)).await;
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("sent 0, already present 0, failed 10"), "{}", run.stdout);
    assert!(run.stderr.contains("413"), "{}", run.stderr);
    let posts: Vec<_> = proxy.exchanges().into_iter().filter(|e| e.method == "POST").skip(before).collect();
    assert_eq!(posts.len(), 1, "413 is not retried");
    assert_eq!(posts[0].status, Some(413));
}

/// The upload benchmark (benches/README.md, "Uploading over a slow link"), run only with
/// `KURA_UPLOAD_BENCH_DIR` naming a folder of instances (benches/make_ct_study.py): the
/// uploader → benches/slowlink.py (2 Mbit/s, 75 ms each way) → the recording proxy → Kura. A
/// whole upload, then on a fresh server a run cut at half of the first run's wire bytes
/// (`--retries 0`: it stops) and a second run that resumes; the recording shows no
/// acknowledged instance sent again, and every instance is read back byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_over_a_slow_link_bench() {
    let Some(dir) = std::env::var_os("KURA_UPLOAD_BENCH_DIR").map(PathBuf::from) else {
        eprintln!("KURA_UPLOAD_BENCH_DIR not set: the slow-link upload benchmark is skipped");
        return;
    };
    let extra: Vec<String> =
        std::env::var("KURA_UPLOAD_BENCH_ARGS").unwrap_or_default().split_whitespace().map(String::from).collect();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let native: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    let scratch = tempfile::tempdir().unwrap();
    let slowlink = |to: std::net::SocketAddr, cut: Option<u64>| {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut command = std::process::Command::new("python3");
        command.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/slowlink.py")).args([
            "--listen",
            &port.to_string(),
            "--to",
            &to.to_string(),
            "--rate-kbit",
            "2000",
            "--delay-ms",
            "75",
        ]);
        if let Some(cut) = cut {
            command.args(["--cut-after-bytes", &cut.to_string(), "--verbose"]);
        }
        let child = command.spawn().expect("python3 benches/slowlink.py");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "slowlink did not listen");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        (child, format!("http://127.0.0.1:{port}/dicomweb"))
    };
    let run_upload = |to: String, journal: PathBuf, more: Vec<String>| {
        let dir = dir.clone();
        let extra = extra.clone();
        async move {
            let started = std::time::Instant::now();
            let mut args: Vec<String> = extra;
            args.extend(more);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut command = tokio::process::Command::new(kura_binary());
            // Bytes are compared at the end: pixels as read (the codec's figures: benches/README.md).
            command.arg("upload").arg(&dir).args(["--to", &to, "--journal"]).arg(&journal).args(&args);
            command.args(["--pixel-codec", "none"]);
            let output = command.output().await.unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            eprintln!("{}{stdout}", String::from_utf8_lossy(&output.stderr));
            (output.status.code().unwrap_or(-1), stdout, started.elapsed())
        }
    };

    // 1. The whole study.
    let data = tempfile::tempdir().unwrap();
    let server = ChildServer::start(data.path());
    let proxy = CutProxy::start(server.address, Cut::Never).await;
    let (mut link, to) = slowlink(proxy.address, None);
    let (code, summary, elapsed) = run_upload(to, scratch.path().join("j1"), vec!["--quiet".into()]).await;
    let _ = link.kill();
    assert_eq!(code, 0);
    let wire: u64 = proxy.exchanges().iter().map(|e| e.request_bytes).sum();
    eprintln!(
        "BENCH whole: {} instances, {native} native bytes, {wire} request bytes on the wire ({:.1}%), {:.1} s; {summary}",
        files.len(),
        100.0 * wire as f64 / native as f64,
        elapsed.as_secs_f64()
    );
    drop(proxy);
    drop(server);

    // 2. Cut at half the wire bytes (the run stops), then resumed by a second run.
    let data = tempfile::tempdir().unwrap();
    let server = ChildServer::start(data.path());
    let proxy = CutProxy::start(server.address, Cut::Never).await;
    let (mut link, to) = slowlink(proxy.address, Some(wire / 2));
    let journal = scratch.path().join("j2");
    let (code, first, first_elapsed) =
        run_upload(to.clone(), journal.clone(), vec!["--quiet".into(), "--retries".into(), "0".into()]).await;
    assert_eq!(code, 3, "the cut stopped the run");
    let (code, second, second_elapsed) = run_upload(to, journal, vec!["--quiet".into()]).await;
    let _ = link.kill();
    assert_eq!(code, 0);
    let stows = proxy.stows();
    let sent = assert_no_acknowledged_resent(&stows);
    let acknowledged_first: usize =
        first.split("sent ").nth(1).and_then(|rest| rest.split(',').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    let wire_cut: u64 = proxy.exchanges().iter().map(|e| e.request_bytes).sum();
    eprintln!(
        "BENCH cut at {} bytes: first run {:.1} s ({acknowledged_first} acknowledged), resumed run {:.1} s; \
         {} distinct instances in whole requests, {wire_cut} request bytes in whole requests \
         (the uncut run: {wire}); no acknowledged instance sent again; second: {second}",
        wire / 2,
        first_elapsed.as_secs_f64(),
        second_elapsed.as_secs_f64(),
        sent.len(),
    );
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        let parsed = kura::dicom::part10::parse(std::io::Cursor::new(&bytes), bytes.len() as u64).unwrap();
        let url = format!(
            "{}/studies/{}/series/{}/instances/{}",
            server.base, parsed.study_uid, parsed.series_uid, parsed.sop_instance_uid
        );
        let reply = get(&url, DICOM_ANY_TS).await;
        assert_eq!(reply.status, StatusCode::OK);
        let parts = split_multipart(reply.content_type(), &reply.body);
        assert!(parts[0].1 == as_stored(&bytes), "{} arrived with other bytes", file.display());
    }
    eprintln!("BENCH all {} instances read back byte-exact", files.len());
}

/// Issue 19: uncompressed pixel data leaves re-encoded losslessly (JPEG-LS by default, each
/// instance checked to decode to its pixels before it is sent): the server holds JPEG-LS, the
/// request bodies are smaller than the files, and every frame decodes to the original pixels;
/// `--pixel-codec none` sends the files as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncompressed_pixels_leave_in_jpeg_ls_and_arrive_pixel_exact() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_study(dir.path(), 1931, 4);
    let data = tempfile::tempdir().unwrap();
    let server = ChildServer::start(data.path());
    let journal = dir.path().join("journal");
    let run = upload(&[dir.path()], &server.base, &journal, &["--pixel-codec", "jpeg-ls", "--no-compress"], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(sent_and_present(&run.stdout), (4, 0));
    let native: u64 = files.iter().map(|(_, bytes, _)| bytes.len() as u64).sum();
    let on_wire: f64 = run
        .stdout
        .split("; ")
        .nth(1)
        .and_then(|text| text.split(" MiB on the wire").next())
        .and_then(|mib| mib.parse().ok())
        .unwrap_or_else(|| panic!("no wire figure in {}", run.stdout));
    assert!(on_wire * 1024.0 * 1024.0 < native as f64 * 0.8, "{on_wire} MiB for {native} native bytes");
    for (path, bytes, spec) in &files {
        let stored =
            get(&spec.instance_url(&server.base), "multipart/related; type=\"application/dicom\"; transfer-syntax=*")
                .await;
        let parts = split_multipart(stored.content_type(), &stored.body);
        assert!(parts[0].0.contains("1.2.840.10008.1.2.4.80"), "{} is held as JPEG-LS: {}", path.display(), parts[0].0);
        // Decoded by the server to native, the frame is the original's Pixel Data.
        let frame = get(
            &format!("{}/frames/1", spec.instance_url(&server.base)),
            "multipart/related; type=\"application/octet-stream\"",
        )
        .await;
        let frames = split_multipart(frame.content_type(), &frame.body);
        let _ = bytes;
        let original = dataset(spec);
        let pixels = original.element(dicom_dictionary_std::tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
        assert!(frames[0].1 == pixels.as_ref(), "{} decodes to its original pixels", path.display());
    }
    // Without the codec the same files arrive byte for byte.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = write_study(plain_dir.path(), 1932, 2);
    let run = upload(&[plain_dir.path()], &server.base, &plain_dir.path().join("journal"), &[], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_arrived_exact(&server.base, &plain, None).await;
}
