//! STOW-RS ingest benchmark: N instances of about 512 KiB (512×512 16-bit CT slices, one per
//! request) at concurrency 1 and 8 against a `kura serve` child process, beside the same bytes
//! written as files with fsync on the same disk (the durable-write limit of the machine) and,
//! when asked, Orthanc with its DICOMweb plugin started on loopback by `benches/wado_peers.sh`.
//!
//! `cargo bench --bench stow_ingest`. Settings (environment):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `KURA_BENCH_MODE` | `ingest` | `ingest` (the table above) or `delete` (a study deleted under load) |
//! | `KURA_BENCH_INSTANCES` | 2000 | instances per run (`ingest`) |
//! | `KURA_BENCH_CLIENTS` | `1,8` | concurrencies (`ingest`) |
//! | `KURA_BENCH_DIR` | temp dir | where the data of every run goes (the same disk for all) |
//! | `KURA_BENCH_BIN` | the built `kura` | kura binary for the child |
//! | `KURA_BENCH_ORTHANC` | unset | `1`: also measure Orthanc (needs the Debian packages `orthanc`, `orthanc-dicomweb`, `nginx`) |
//! | `KURA_BENCH_LOG` | unset | e.g. `kura::archive=debug`: the server's log on stdout (per-request durability timings) |
//! | `KURA_BENCH_DELETE_STUDY` | 1000 | instances of the study deleted (`delete`) |
//! | `KURA_BENCH_SECONDS` | 15 | length of each load phase (`delete`) |
//!
//! Orthanc 1.10 cannot bind to one address: it listens on every interface (and refuses non-loopback
//! peers with `RemoteAccessAllowed: false`). The bench therefore starts it only inside a network
//! namespace that has nothing but the loopback interface: run the bench under
//! `unshare -n sh -c 'ip link set lo up && exec …'` (benches/README.md); it refuses otherwise.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const BOUNDARY: &str = "kura-bench";
const SIDE: usize = 512;

/// A minimal Explicit VR Little Endian CT instance with distinct pixel data per `index`: 500
/// instances per study, 100 per series.
fn instance(index: usize) -> Vec<u8> {
    instance_in(index, index / 500, index / 100)
}

/// The same, in the given study and series (numbers that become the last UID component).
fn instance_in(index: usize, study: usize, series: usize) -> Vec<u8> {
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
    let (study_uid, series_uid, sop) =
        (format!("{root}.1.{study}"), format!("{root}.2.{series}"), format!("{root}.3.{index}"));
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
    element(&mut out, 0x10, 0x10, b"PN", format!("Bench^Patient{study}").as_bytes());
    element(&mut out, 0x10, 0x20, b"LO", format!("BENCH{study}").as_bytes());
    element(&mut out, 0x20, 0x0D, b"UI", study_uid.as_bytes());
    element(&mut out, 0x20, 0x0E, b"UI", series_uid.as_bytes());
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

/// Bytes of the files under `path` (apparent sizes, as the "bytes on disk per byte stored").
fn du(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            total += if meta.is_dir() { du(&entry.path()) } else { meta.len() };
        }
    }
    total
}

/// Allocated bytes under `path` (`du -s -B1`: what the file system really holds).
fn du_allocated(path: &Path) -> u64 {
    let output = Command::new("du").arg("-s").arg("-B1").arg(path).output().unwrap();
    String::from_utf8_lossy(&output.stdout).split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0)
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

fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(64).build_http()
}

/// Sends one STOW-RS request with one instance; panics on anything but 200.
async fn stow_one(client: &HttpClient, url: &str, part: &[u8]) {
    let request = http::Request::post(url)
        .header("content-type", format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}"))
        .header("accept", "application/dicom+json")
        .body(Full::new(Bytes::from(multipart(part))))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, 200, "STOW-RS answered {status}: {}", String::from_utf8_lossy(&body[..body.len().min(400)]));
}

/// `n` instances, one per request, from `concurrency` clients against the STOW-RS URL `url`.
async fn stow_run(url: &str, n: usize, concurrency: usize) -> Figures {
    let client = client();
    let next = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, bytes, url) = (client.clone(), next.clone(), bytes.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= n {
                    break;
                }
                let part = instance(index);
                bytes.fetch_add(part.len(), Ordering::Relaxed);
                stow_one(&client, &url, &part).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Figures { seconds: started.elapsed().as_secs_f64(), bytes: bytes.load(Ordering::Relaxed) as u64, n }
}

fn start_kura(data: &Path, port: u16) -> Child {
    let binary = std::env::var("KURA_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_kura").to_string());
    let child = Command::new(&binary)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .env("RUST_LOG", std::env::var("KURA_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
        // KURA_BENCH_LOG (e.g. `kura::archive=debug`) shows the server's per-request timings.
        .stdout(if std::env::var_os("KURA_BENCH_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn stop(mut child: Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// (figures, peak RSS in KiB, apparent bytes on disk, allocated bytes on disk)
async fn kura_run(dir: &Path, n: usize, concurrency: usize) -> (Figures, u64, u64, u64) {
    let port = free_port();
    let data = dir.join(format!("kura-c{concurrency}"));
    let child = start_kura(&data, port);
    let figures = stow_run(&format!("http://127.0.0.1:{port}/dicomweb/studies"), n, concurrency).await;
    let rss = peak_rss_kib(child.id());
    // Disk figures after a clean stop (the index checkpoints its in-memory tier on SIGTERM).
    stop(child);
    (figures, rss, du(&data), du_allocated(&data))
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

/// The network interfaces this process sees (its network namespace).
fn interfaces() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default();
    text.lines().skip(2).filter_map(|l| l.split(':').next()).map(|s| s.trim().to_string()).collect()
}

/// Orthanc + DICOMweb started by benches/wado_peers.sh in its own directory (fresh per run).
struct Orthanc {
    dir: PathBuf,
    port: u16,
    script: PathBuf,
    nginx_port: u16,
}

impl Orthanc {
    fn start(dir: &Path) -> Orthanc {
        let others: Vec<String> = interfaces().into_iter().filter(|i| i != "lo").collect();
        assert!(
            others.is_empty(),
            "Orthanc 1.10 listens on every interface; run the bench in a loopback-only network namespace \
             (unshare -n, see benches/README.md); this one also has {others:?}"
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/wado_peers.sh");
        let (port, nginx_port) = (free_port(), free_port());
        let orthanc = Orthanc { dir: dir.to_path_buf(), port, script, nginx_port };
        let status = orthanc.script("start").stdout(Stdio::null()).status().unwrap();
        assert!(status.success(), "wado_peers.sh start failed (see {}/orthanc.log)", dir.display());
        let version = Command::new("dpkg-query")
            .args(["-W", "-f", "${Package} ${Version}  ", "orthanc", "orthanc-dicomweb"])
            .output();
        if let Ok(version) = version {
            eprintln!("orthanc (pid {}) on port {port}: {}", orthanc.pid(), String::from_utf8_lossy(&version.stdout));
        }
        orthanc
    }

    fn script(&self, verb: &str) -> Command {
        let mut command = Command::new("sh");
        command
            .arg(&self.script)
            .arg(verb)
            .env("WADO_PEERS_DIR", &self.dir)
            .env("ORTHANC_PORT", self.port.to_string())
            .env("NGINX_PORT", self.nginx_port.to_string());
        command
    }

    fn pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("orthanc.pid")).unwrap().trim().parse().unwrap()
    }

    fn stop(self) {
        let _ = self.script("stop").status();
    }
}

/// (figures, peak RSS in KiB, apparent bytes on disk, allocated bytes on disk)
async fn orthanc_run(dir: &Path, n: usize, concurrency: usize) -> (Figures, u64, u64, u64) {
    let holder = dir.join(format!("orthanc-c{concurrency}"));
    let orthanc = Orthanc::start(&holder);
    let figures = stow_run(&format!("http://127.0.0.1:{}/dicom-web/studies", orthanc.port), n, concurrency).await;
    let rss = peak_rss_kib(orthanc.pid());
    orthanc.stop();
    let storage = holder.join("orthanc-storage");
    (figures, rss, du(&storage), du_allocated(&storage))
}

fn ingest(dir: &Path) {
    let n: usize = std::env::var("KURA_BENCH_INSTANCES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let concurrencies: Vec<usize> = std::env::var("KURA_BENCH_CLIENTS")
        .unwrap_or_else(|_| "1,8".into())
        .split(',')
        .map(|c| c.trim().parse().expect("KURA_BENCH_CLIENTS: numbers separated by commas"))
        .collect();
    let with_orthanc = std::env::var("KURA_BENCH_ORTHANC").is_ok_and(|v| v == "1");
    println!("stow_ingest: {n} instances of {} bytes, one per request", instance(0).len());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let disk = |name: &str, figures: &Figures, rss_kib: u64, apparent: u64, allocated: u64| {
        let extra = format!(
            "peak RSS {:.0} MiB, {:.3} bytes on disk per byte stored ({:.3} allocated), load {}",
            rss_kib as f64 / 1024.0,
            apparent as f64 / figures.bytes as f64,
            allocated as f64 / figures.bytes as f64,
            loadavg()
        );
        figures.line(name, &extra);
    };
    for concurrency in concurrencies {
        println!("-- {concurrency} client(s), load before: {}", loadavg());
        let files = files_run(dir, n, concurrency);
        let target = dir.join(format!("files-c{concurrency}"));
        files.line(
            &format!("files_fsync_512k_c{concurrency}"),
            &format!(
                "(limit) {:.3} allocated per byte, load {}",
                du_allocated(&target) as f64 / files.bytes as f64,
                loadavg()
            ),
        );
        let _ = std::fs::remove_dir_all(&target);
        let (figures, rss, apparent, allocated) = runtime.block_on(kura_run(dir, n, concurrency));
        disk(&format!("stow_ingest_512k_c{concurrency}"), &figures, rss, apparent, allocated);
        let _ = std::fs::remove_dir_all(dir.join(format!("kura-c{concurrency}")));
        if with_orthanc {
            let (figures, rss, apparent, allocated) = runtime.block_on(orthanc_run(dir, n, concurrency));
            disk(&format!("orthanc_stow_512k_c{concurrency}"), &figures, rss, apparent, allocated);
            let _ = std::fs::remove_dir_all(dir.join(format!("orthanc-c{concurrency}")));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Delete under load

/// Latencies in ms of one kind of request, each with its start time (s since the phase began).
#[derive(Default)]
struct Samples {
    points: Vec<(f64, f64)>,
    errors: usize,
}

fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[((p / 100.0 * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1]
}

const KINDS: [&str; 3] = ["STOW-RS 1 instance", "WADO-RS 1 instance", "QIDO-RS studies (limit=100)"];

async fn get_status(client: &HttpClient, url: &str, accept: &str) -> (u16, usize) {
    let request = http::Request::get(url).header("accept", accept).body(Full::new(Bytes::new())).unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body.len())
}

/// 8 clients, each cycling STOW-RS (a new instance), WADO-RS (an instance of the read set) and
/// QIDO-RS, until `stop` is set. Returns the samples per kind and the bytes stored.
async fn mixed_load(
    base: String,
    clients: usize,
    readable: usize,
    first_new: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    origin: Instant,
) -> (Vec<Samples>, u64) {
    let client = client();
    let stored = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, base, first_new, stop, stored) =
            (client.clone(), base.clone(), first_new.clone(), stop.clone(), stored.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples: Vec<Samples> = (0..KINDS.len()).map(|_| Samples::default()).collect();
            let mut round = c;
            while !stop.load(Ordering::Relaxed) {
                let kind = round % KINDS.len();
                let started = Instant::now();
                let ok = match kind {
                    0 => {
                        let index = first_new.fetch_add(1, Ordering::Relaxed);
                        let part = instance(index);
                        stored.fetch_add(part.len() as u64, Ordering::Relaxed);
                        stow_one(&client, &format!("{base}/studies"), &part).await;
                        true
                    }
                    1 => {
                        let k = (round * 7919) % readable;
                        let root = "1.2.826.0.1.3680043.10.543.9";
                        let url = format!(
                            "{base}/studies/{root}.1.{}/series/{root}.2.{}/instances/{root}.3.{k}",
                            k / 500,
                            k / 100
                        );
                        let (status, length) = get_status(
                            &client,
                            &url,
                            "multipart/related; type=\"application/dicom\"; transfer-syntax=*",
                        )
                        .await;
                        status == 200 && length > SIDE * SIDE * 2
                    }
                    _ => {
                        get_status(&client, &format!("{base}/studies?limit=100"), "application/dicom+json").await.0
                            == 200
                    }
                };
                let at = started.duration_since(origin).as_secs_f64();
                if ok {
                    samples[kind].points.push((at, started.elapsed().as_secs_f64() * 1000.0));
                } else {
                    samples[kind].errors += 1;
                }
                round += 1;
            }
            samples
        }));
    }
    let mut merged: Vec<Samples> = (0..KINDS.len()).map(|_| Samples::default()).collect();
    for task in tasks {
        for (into, from) in merged.iter_mut().zip(task.await.unwrap()) {
            into.points.extend(from.points);
            into.errors += from.errors;
        }
    }
    (merged, stored.load(Ordering::Relaxed))
}

fn delete(dir: &Path) {
    let size: usize = std::env::var("KURA_BENCH_DELETE_STUDY").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let seconds: f64 = std::env::var("KURA_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(15.0);
    const CLIENTS: usize = 8;
    const READABLE: usize = 500;
    // The deleted study: numbers far from those of the read set and of the writers.
    const DOOMED_STUDY: usize = 900_000;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let data = dir.join("kura-delete");
    let port = free_port();
    let server = start_kura(&data, port);
    let pid = server.id();
    let base = format!("http://127.0.0.1:{port}/dicomweb");
    let root = "1.2.826.0.1.3680043.10.543.9";
    runtime.block_on(async {
        let client = client();
        // The read set (one study of 500) and the study to delete, 8 clients.
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let (client, next, base) = (client.clone(), next.clone(), base.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= READABLE + size {
                        break;
                    }
                    let part = if i < READABLE {
                        instance(i)
                    } else {
                        let k = i - READABLE;
                        instance_in(10_000_000 + k, DOOMED_STUDY, DOOMED_STUDY + k / 100)
                    };
                    stow_one(&client, &format!("{base}/studies"), &part).await;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    println!(
        "delete_under_load: read set {READABLE} instances, deleted study {size} instances of {} bytes, \
         {CLIENTS} clients, phases of {seconds} s",
        instance(0).len()
    );
    let first_new = Arc::new(AtomicUsize::new(20_000_000));
    let report = |label: &str, samples: &[Samples], window: Option<(f64, f64)>| {
        for (kind, s) in KINDS.iter().zip(samples) {
            let all: Vec<f64> = s.points.iter().map(|p| p.1).collect();
            let mut line = format!(
                "{label:<16} {kind:<28} n {:>5}  p50 {:>8.2} ms  p95 {:>8.2} ms  max {:>8.2} ms  errors {}",
                all.len(),
                percentile(all.clone(), 50.0),
                percentile(all.clone(), 95.0),
                percentile(all, 100.0),
                s.errors
            );
            if let Some((from, to)) = window {
                // Requests that started while the delete ran, or that were under way when it began.
                let during: Vec<f64> =
                    s.points.iter().filter(|(at, ms)| *at <= to && at + ms / 1000.0 >= from).map(|p| p.1).collect();
                line += &format!(
                    "  | overlapping the delete: n {} p95 {:.2} ms max {:.2} ms",
                    during.len(),
                    percentile(during.clone(), 95.0),
                    percentile(during, 100.0)
                );
            }
            println!("{line}");
        }
    };

    // Phase A: the load alone.
    let settle = || std::thread::sleep(Duration::from_secs(3));
    settle();
    let before_a = du(&data);
    println!("load before phase A: {}", loadavg());
    let stop_a = Arc::new(AtomicBool::new(false));
    let origin = Instant::now();
    let load = runtime.spawn(mixed_load(base.clone(), CLIENTS, READABLE, first_new.clone(), stop_a.clone(), origin));
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop_a.store(true, Ordering::Relaxed);
    let (samples_a, stored_a) = runtime.block_on(load).unwrap();
    println!("load after phase A: {}", loadavg());
    report("without delete", &samples_a, None);
    settle();
    let before = du(&data);
    let before_allocated = du_allocated(&data);
    println!(
        "disk before the delete: {before} bytes ({before_allocated} allocated); phase A stored {stored_a} bytes \
         (disk grew {} bytes)",
        before as i64 - before_a as i64
    );

    // Phase B: the same load, and the delete 3 s in.
    let stop_b = Arc::new(AtomicBool::new(false));
    let origin = Instant::now();
    println!("load before phase B: {}", loadavg());
    let load = runtime.spawn(mixed_load(base.clone(), CLIENTS, READABLE, first_new.clone(), stop_b.clone(), origin));
    std::thread::sleep(Duration::from_secs(3));
    let study_url = format!("{base}/studies/{root}.1.{DOOMED_STUDY}");
    let (from, to, status, header) = runtime.block_on(async {
        let client = client();
        let request = http::Request::delete(&study_url).body(Full::new(Bytes::new())).unwrap();
        let from = origin.elapsed().as_secs_f64();
        let response = client.request(request).await.unwrap();
        let status = response.status().as_u16();
        let header = response
            .headers()
            .get("x-kura-deleted-instances")
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default();
        response.into_body().collect().await.unwrap();
        (from, origin.elapsed().as_secs_f64(), status, header)
    });
    let remaining = (seconds - origin.elapsed().as_secs_f64()).max(1.0);
    std::thread::sleep(Duration::from_secs_f64(remaining));
    stop_b.store(true, Ordering::Relaxed);
    let (samples_b, stored_b) = runtime.block_on(load).unwrap();
    println!("load after phase B: {}", loadavg());
    println!(
        "DELETE study ({size} instances): {status}, X-Kura-Deleted-Instances {header}, latency {:.1} ms",
        (to - from) * 1000.0
    );
    report("with delete", &samples_b, Some((from, to)));
    // What is gone must be gone everywhere the bench can see cheaply.
    let (metadata, qido) = runtime.block_on(async {
        let client = client();
        let metadata = get_status(&client, &format!("{study_url}/metadata"), "application/dicom+json").await.0;
        let qido = get_status(
            &client,
            &format!("{base}/studies?StudyInstanceUID={root}.1.{DOOMED_STUDY}"),
            "application/dicom+json",
        )
        .await;
        (metadata, qido)
    });
    println!("after the delete: study metadata {metadata}, QIDO for the study {} ({} bytes)", qido.0, qido.1);
    settle();
    let after = du(&data);
    let after_allocated = du_allocated(&data);
    let doomed_bytes = instance_in(10_000_000, DOOMED_STUDY, DOOMED_STUDY).len() as u64 * size as u64;
    println!(
        "disk after the delete: {after} bytes ({after_allocated} allocated); phase B stored {stored_b} bytes; \
         the deleted study held {doomed_bytes} bytes; before + stored in B - deleted = {}",
        before as i64 + stored_b as i64 - doomed_bytes as i64
    );
    println!("server peak RSS {:.0} MiB", peak_rss_kib(pid) as f64 / 1024.0);
    stop(server);
}

fn main() {
    let holder = tempfile::tempdir().unwrap();
    let dir = std::env::var("KURA_BENCH_DIR").map(PathBuf::from).unwrap_or(holder.path().to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    match std::env::var("KURA_BENCH_MODE").unwrap_or_else(|_| "ingest".into()).as_str() {
        "ingest" => ingest(&dir),
        "delete" => delete(&dir),
        other => panic!("KURA_BENCH_MODE={other}: ingest or delete"),
    }
}
