//! STOW-RS ingest benchmark: N instances of about 512 KiB (512×512 16-bit CT slices, one per
//! request) at concurrency 1 and 8 against a `kura serve` child process, beside the same bytes
//! written as files with fsync on the same disk (the durable-write limit of the machine).
//!
//! `cargo bench --bench stow_ingest`; KURA_BENCH_INSTANCES (default 2000) and
//! KURA_BENCH_DIR (default: a temporary directory under the system temp dir) adjust it.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const BOUNDARY: &str = "kura-bench";
const SIDE: usize = 512;

/// A minimal Explicit VR Little Endian CT instance with distinct pixel data per `index`.
fn instance(index: usize) -> Vec<u8> {
    fn element(out: &mut Vec<u8>, group: u16, element: u16, vr: &[u8; 2], value: &[u8]) {
        let mut value = value.to_vec();
        if value.len() % 2 == 1 {
            value.push(if vr == b"UI" { 0 } else { b' ' });
        }
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(vr);
        if matches!(vr, b"OB" | b"OW") {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        }
        out.extend_from_slice(&value);
    }
    let root = "1.2.826.0.1.3680043.10.543.9";
    let (study, series, sop) =
        (format!("{root}.1.{}", index / 500), format!("{root}.2.{}", index / 100), format!("{root}.3.{index}"));
    let mut meta = Vec::new();
    element(&mut meta, 2, 1, b"OB", &[0, 1]);
    element(&mut meta, 2, 2, b"UI", b"1.2.840.10008.5.1.4.1.1.2");
    element(&mut meta, 2, 3, b"UI", sop.as_bytes());
    element(&mut meta, 2, 0x10, b"UI", b"1.2.840.10008.1.2.1");
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    element(&mut out, 2, 0, b"UL", &(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    element(&mut out, 8, 0x16, b"UI", b"1.2.840.10008.5.1.4.1.1.2");
    element(&mut out, 8, 0x18, b"UI", sop.as_bytes());
    element(&mut out, 8, 0x20, b"DA", b"20250101");
    element(&mut out, 8, 0x60, b"CS", b"CT");
    element(&mut out, 0x10, 0x10, b"PN", format!("Bench^Patient{}", index / 500).as_bytes());
    element(&mut out, 0x10, 0x20, b"LO", format!("BENCH{}", index / 500).as_bytes());
    element(&mut out, 0x20, 0x0D, b"UI", study.as_bytes());
    element(&mut out, 0x20, 0x0E, b"UI", series.as_bytes());
    element(&mut out, 0x20, 0x13, b"IS", (index % 100 + 1).to_string().as_bytes());
    element(&mut out, 0x28, 0x10, b"US", &(SIDE as u16).to_le_bytes());
    element(&mut out, 0x28, 0x11, b"US", &(SIDE as u16).to_le_bytes());
    element(&mut out, 0x28, 0x100, b"US", &16u16.to_le_bytes());
    let mut state = index as u64 * 0x9E37_79B9_7F4A_7C15 + 1;
    let pixels: Vec<u8> = (0..SIDE * SIDE * 2)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    element(&mut out, 0x7FE0, 0x10, b"OW", &pixels);
    out
}

fn multipart(part: &[u8]) -> Vec<u8> {
    let mut body = format!("--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").into_bytes();
    body.extend_from_slice(part);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn du(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let meta = entry.metadata().unwrap();
            total += if meta.is_dir() { du(&entry.path()) } else { meta.len() };
        }
    }
    total
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Figures {
    seconds: f64,
    bytes: u64,
    n: usize,
}

impl Figures {
    fn line(&self, name: &str, extra: &str) {
        println!(
            "{name:<34} {:>8.1} inst/s {:>8.1} MB/s  {:>6.2} s  {extra}",
            self.n as f64 / self.seconds,
            self.bytes as f64 / 1e6 / self.seconds,
            self.seconds
        );
    }
}

async fn kura_run(dir: &Path, n: usize, concurrency: usize) -> (Figures, u64, u64) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let data = dir.join(format!("kura-c{concurrency}"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_kura"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(&data)
        .env("RUST_LOG", std::env::var("KURA_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
        // KURA_BENCH_LOG (e.g. `kura::archive=debug`) shows the server's per-request timings.
        .stdout(if std::env::var_os("KURA_BENCH_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let next = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, bytes) = (client.clone(), next.clone(), bytes.clone());
        let url = format!("http://127.0.0.1:{port}/dicomweb/studies");
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= n {
                    break;
                }
                let part = instance(index);
                bytes.fetch_add(part.len(), Ordering::Relaxed);
                let request = http::Request::post(&url)
                    .header(
                        "content-type",
                        format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}"),
                    )
                    .body(Full::new(Bytes::from(multipart(&part))))
                    .unwrap();
                let response = client.request(request).await.unwrap();
                assert_eq!(response.status(), 200);
                response.into_body().collect().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    let rss = peak_rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let stored = bytes.load(Ordering::Relaxed) as u64;
    (Figures { seconds, bytes: stored, n }, rss, du(&data))
}

fn files_run(dir: &Path, n: usize, concurrency: usize) -> Figures {
    let target = dir.join(format!("files-c{concurrency}"));
    std::fs::create_dir_all(&target).unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..concurrency {
            let (next, bytes, target) = (next.clone(), bytes.clone(), target.clone());
            scope.spawn(move || {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= n {
                        break;
                    }
                    let part = instance(index);
                    bytes.fetch_add(part.len(), Ordering::Relaxed);
                    let temporary = target.join(format!("{index}.tmp"));
                    let mut file = std::fs::File::create(&temporary).unwrap();
                    file.write_all(&part).unwrap();
                    file.sync_all().unwrap();
                    std::fs::rename(&temporary, target.join(format!("{index}.dcm"))).unwrap();
                    std::fs::File::open(&target).unwrap().sync_all().unwrap();
                }
            });
        }
    });
    Figures { seconds: started.elapsed().as_secs_f64(), bytes: bytes.load(Ordering::Relaxed) as u64, n }
}

fn main() {
    let n: usize = std::env::var("KURA_BENCH_INSTANCES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let holder = tempfile::tempdir().unwrap();
    let dir = std::env::var("KURA_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or(holder.path().to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    println!("stow_ingest: {n} instances of {} bytes, one per request", instance(0).len());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    for concurrency in [1, 8] {
        let (figures, rss_kib, on_disk) = runtime.block_on(kura_run(&dir, n, concurrency));
        let extra = format!(
            "peak RSS {:.0} MiB, {:.2} bytes on disk per byte stored",
            rss_kib as f64 / 1024.0,
            on_disk as f64 / figures.bytes as f64
        );
        figures.line(&format!("stow_ingest_512k_c{concurrency}"), &extra);
        files_run(&dir, n, concurrency).line(&format!("files_fsync_512k_c{concurrency}"), "(limit)");
    }
}
