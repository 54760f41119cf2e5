//! WADO-RS retrieval benchmark: generates one CT series (by default 500 slices of 512×512
//! 16-bit native pixels, about 512 KiB each, Explicit VR Little Endian, seeded), stores it with
//! STOW-RS, then measures what a viewer does when it opens the series:
//!
//! - whole-series retrieval (`GET {root}/studies/{s}/series/{se}`, Accept `multipart/related;
//!   type="application/dicom"; transfer-syntax=*`): MB/s with 1 client and with N clients, each
//!   client fetching the full series `KURA_BENCH_ROUNDS` times;
//! - series metadata (`GET .../series/{se}/metadata`): latency cold (the first request after a
//!   server restart, `KURA_BENCH_COLD` restarts) and warm (p50/p95 over `KURA_BENCH_REPS`);
//! - frame retrieval (`GET .../instances/{i}/frames/1`, Accept `multipart/related;
//!   type="application/octet-stream"; transfer-syntax=*`): latency with 1 client over random
//!   instances, and throughput with N clients.
//!
//! Beside it, the loopback limit: the same Part 10 files served by a static file server (nginx,
//! started by `benches/wado_peers.sh`), downloaded as 500 GETs per "series" with 1 and N clients.
//!
//! Every figure is checked (outside the clock): one retrieval per target is parsed part by part
//! and each part compared byte for byte with the generated instances; each timed retrieval must
//! carry the expected byte count (plus at most a few hundred bytes of multipart framing per part);
//! the metadata must hold one entry per instance; every frame body must be Rows × Columns × 2
//! bytes, and the first frames are compared with the generated pixels.
//!
//! The same program measures any DICOMweb server: with `KURA_BENCH_URL` it talks to that root
//! (e.g. Orthanc at `http://127.0.0.1:8043/dicom-web`); without it, it starts a `kura serve` child
//! on `KURA_BENCH_DATA` (default: a temporary directory, removed afterwards).
//!
//! `cargo bench --bench wado_load`. Environment variables:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `KURA_BENCH_INSTANCES` | 500 | slices in the series |
//! | `KURA_BENCH_SEED` | 1 | generator seed (the same seed gives the same bytes) |
//! | `KURA_BENCH_MODE` | `all` | `all` (load, then measure), `load`, `measure` (the series is already stored), or `static` (only the static-file limit) |
//! | `KURA_BENCH_URL` | — | DICOMweb root of a running server; otherwise a kura child is started |
//! | `KURA_BENCH_RESTART` | — | shell command that restarts the server at `KURA_BENCH_URL` (needed for cold metadata there) |
//! | `KURA_BENCH_PID` | the child | process whose RSS and CPU time are reported |
//! | `KURA_BENCH_PID_FILE` | — | file holding that pid, read again after each restart |
//! | `KURA_BENCH_DATA` | temp dir | data directory of the kura child (kept when given) |
//! | `KURA_BENCH_BIN` | the built `kura` | kura binary for the child |
//! | `KURA_BENCH_STATIC_URL` | — | base URL of a static file server serving `{n}.dcm` (n from 0); measures the loopback limit |
//! | `KURA_BENCH_STATIC_DIR` | — | directory that server serves; the generated files are written there first |
//! | `KURA_BENCH_STATIC_PID` | — | pid of the static server (its children are counted too) for CPU time |
//! | `KURA_BENCH_CLIENTS` | 8 | concurrent clients of the throughput runs |
//! | `KURA_BENCH_ROUNDS` | 3 | whole-series retrievals per client (1-client run: twice that) |
//! | `KURA_BENCH_REPS` | 200 | warm metadata requests, and frame requests with 1 client |
//! | `KURA_BENCH_COLD` | 5 | cold metadata samples (server restarts) |
//! | `KURA_BENCH_SECONDS` | 10 | length of the N-client frame run |
//! | `KURA_BENCH_BATCH` | 25 | instances per STOW-RS request while loading |
//! | `KURA_BENCH_LABEL` | `kura` | name printed in the tables |
//!
//! CPU time comes from `/proc/PID/stat` (clock ticks of 10 ms) for the server and this process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

#[path = "support/mod.rs"]
mod support;

use support::{HttpClient, KuraChild, Rng, element, env_or, file_meta, proc_status_kib, stow};

/// UID root of the generated objects (the Kura benchmark arc).
const ROOT: &str = "1.2.826.0.1.3680043.10.543.21";
const SIDE: usize = 512;
const FRAME_BYTES: usize = SIDE * SIDE * 2;
const TIMEOUT: Duration = Duration::from_secs(600);
const ACCEPT_SERIES: &str = "multipart/related; type=\"application/dicom\"; transfer-syntax=*";
const ACCEPT_FRAMES: &str = "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*";
const ACCEPT_JSON: &str = "application/dicom+json";
/// Multipart framing allowed per part (boundary line, Content-Type, Content-Location, ...).
const FRAMING_PER_PART: u64 = 1024;

// ---------------------------------------------------------------------------------------------
// The series: PS3.10 encoding by hand

struct Series {
    seed: u64,
    study_uid: String,
    series_uid: String,
}

impl Series {
    fn new(seed: u64) -> Series {
        Series { seed, study_uid: format!("{ROOT}.{seed}.1"), series_uid: format!("{ROOT}.{seed}.1.2") }
    }

    fn sop_uid(&self, k: usize) -> String {
        format!("{}.{}", self.series_uid, k + 1)
    }

    /// Slice `k` of an axial chest/abdomen CT: stored values are HU + 1024 (12 bits used), an
    /// elliptic body of soft tissue with a spine, lungs and quantum noise, so the pixel data is
    /// as incompressible as a real scan's.
    fn pixels(&self, k: usize) -> Vec<u8> {
        let mut rng = Rng::new(self.seed, 7, k as u64);
        let z = k as f64 / 50.0;
        let mut out = Vec::with_capacity(FRAME_BYTES);
        for y in 0..SIDE {
            for x in 0..SIDE {
                let (dx, dy) = ((x as f64 - 256.0) / 230.0, (y as f64 - 270.0) / (160.0 + 10.0 * z.sin()));
                let body = dx * dx + dy * dy;
                let hu: f64 = if body > 1.0 {
                    -1000.0
                } else {
                    let (lx, ly) = ((x as f64 - 256.0).abs() - 95.0, y as f64 - 230.0);
                    let lung = (lx / 70.0).powi(2) + (ly / 90.0).powi(2);
                    let (sx, sy) = (x as f64 - 256.0, y as f64 - 360.0);
                    if sx * sx + sy * sy < 600.0 {
                        700.0
                    } else if lung < 1.0 {
                        -850.0
                    } else {
                        40.0
                    }
                };
                let noise = (rng.next() % 41) as f64 - 20.0;
                let value = (hu + 1024.0 + noise).clamp(0.0, 4095.0) as u16;
                out.extend_from_slice(&value.to_le_bytes());
            }
        }
        out
    }

    fn instance(&self, k: usize) -> Vec<u8> {
        let class = "1.2.840.10008.5.1.4.1.1.2";
        let sop = self.sop_uid(k);
        let mut out = file_meta(class, &sop, &format!("{ROOT}.0.1"), "KURA_WADO_BENCH");
        let d = &mut out;
        let z = format!("{:.2}", -100.0 - k as f64 * 1.25);
        element(d, 8, 5, b"CS", b"ISO_IR 100");
        element(d, 8, 8, b"CS", b"ORIGINAL\\PRIMARY\\AXIAL");
        element(d, 8, 0x12, b"DA", b"20250314");
        element(d, 8, 0x13, b"TM", b"101502");
        element(d, 8, 0x16, b"UI", class.as_bytes());
        element(d, 8, 0x18, b"UI", sop.as_bytes());
        element(d, 8, 0x20, b"DA", b"20250314");
        element(d, 8, 0x21, b"DA", b"20250314");
        element(d, 8, 0x22, b"DA", b"20250314");
        element(d, 8, 0x23, b"DA", b"20250314");
        element(d, 8, 0x30, b"TM", b"100812");
        element(d, 8, 0x31, b"TM", b"101455");
        element(d, 8, 0x32, b"TM", format!("{:06}", 101455 + k / 40).as_bytes());
        element(d, 8, 0x33, b"TM", format!("{:06}", 101502 + k / 40).as_bytes());
        element(d, 8, 0x50, b"SH", b"25A0031415");
        element(d, 8, 0x60, b"CS", b"CT");
        element(d, 8, 0x70, b"LO", b"ACME Medical Systems");
        element(d, 8, 0x80, b"LO", b"General Hospital");
        element(d, 8, 0x90, b"PN", b"House^Gregory");
        element(d, 8, 0x1010, b"SH", b"CT01");
        element(d, 8, 0x1030, b"LO", b"CT CHEST ABDOMEN PELVIS W CONTRAST");
        element(d, 8, 0x103E, b"LO", b"AX 1.25mm SOFT TISSUE");
        element(d, 8, 0x1090, b"LO", b"Imager 3000");
        element(d, 0x10, 0x10, b"PN", b"Doe^Jane^Q");
        element(d, 0x10, 0x20, b"LO", b"00314159");
        element(d, 0x10, 0x30, b"DA", b"19640229");
        element(d, 0x10, 0x40, b"CS", b"F");
        element(d, 0x10, 0x1010, b"AS", b"061Y");
        element(d, 0x18, 0x15, b"CS", b"ABDOMEN");
        element(d, 0x18, 0x22, b"CS", b"HELICAL MODE");
        element(d, 0x18, 0x50, b"DS", b"1.25");
        element(d, 0x18, 0x60, b"DS", b"120");
        element(d, 0x18, 0x88, b"DS", b"1.25");
        element(d, 0x18, 0x90, b"DS", b"500");
        element(d, 0x18, 0x1020, b"LO", b"IMG3K 4.2");
        element(d, 0x18, 0x1100, b"DS", b"360");
        element(d, 0x18, 0x1120, b"DS", b"0");
        element(d, 0x18, 0x1130, b"DS", b"160");
        element(d, 0x18, 0x1150, b"IS", b"500");
        element(d, 0x18, 0x1151, b"IS", format!("{}", 180 + (k * 37) % 120).as_bytes());
        element(d, 0x18, 0x1152, b"IS", b"90");
        element(d, 0x18, 0x1160, b"SH", b"BODY FILTER");
        element(d, 0x18, 0x1170, b"IS", b"24");
        element(d, 0x18, 0x1190, b"DS", b"0.7");
        element(d, 0x18, 0x1210, b"SH", b"STANDARD");
        element(d, 0x18, 0x5100, b"CS", b"FFS");
        element(d, 0x20, 0x0D, b"UI", self.study_uid.as_bytes());
        element(d, 0x20, 0x0E, b"UI", self.series_uid.as_bytes());
        element(d, 0x20, 0x10, b"SH", b"4711");
        element(d, 0x20, 0x11, b"IS", b"2");
        element(d, 0x20, 0x12, b"IS", b"1");
        element(d, 0x20, 0x13, b"IS", (k + 1).to_string().as_bytes());
        element(d, 0x20, 0x32, b"DS", format!("-179.65\\-179.65\\{z}").as_bytes());
        element(d, 0x20, 0x37, b"DS", b"1\\0\\0\\0\\1\\0");
        element(d, 0x20, 0x52, b"UI", format!("{}.3", self.study_uid).as_bytes());
        element(d, 0x20, 0x1040, b"LO", b"");
        element(d, 0x20, 0x1041, b"DS", z.as_bytes());
        element(d, 0x28, 0x02, b"US", &1u16.to_le_bytes());
        element(d, 0x28, 0x04, b"CS", b"MONOCHROME2");
        element(d, 0x28, 0x10, b"US", &(SIDE as u16).to_le_bytes());
        element(d, 0x28, 0x11, b"US", &(SIDE as u16).to_le_bytes());
        element(d, 0x28, 0x30, b"DS", b"0.703125\\0.703125");
        element(d, 0x28, 0x100, b"US", &16u16.to_le_bytes());
        element(d, 0x28, 0x101, b"US", &12u16.to_le_bytes());
        element(d, 0x28, 0x102, b"US", &11u16.to_le_bytes());
        element(d, 0x28, 0x103, b"US", &0u16.to_le_bytes());
        element(d, 0x28, 0x1050, b"DS", b"40\\400");
        element(d, 0x28, 0x1051, b"DS", b"400\\1500");
        element(d, 0x28, 0x1052, b"DS", b"-1024");
        element(d, 0x28, 0x1053, b"DS", b"1");
        element(d, 0x28, 0x1054, b"LO", b"HU");
        element(d, 0x7FE0, 0x10, b"OW", &self.pixels(k));
        out
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

async fn get(client: &HttpClient, url: &str, accept: &str) -> Result<(u16, String, Bytes), String> {
    let request =
        http::Request::get(url).header("accept", accept).body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, content_type, body))
    };
    tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| format!("timeout: {url}"))?
}

/// A GET whose body is counted as it arrives and dropped (a 260 MB series is never held).
async fn get_counted(client: &HttpClient, url: &str, accept: &str) -> Result<u64, String> {
    let request =
        http::Request::get(url).header("accept", accept).body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame.map_err(|e| e.to_string())?.data_ref() {
                n += data.len() as u64;
            }
        }
        if status != 200 {
            return Err(format!("HTTP {status} ({n} bytes) from {url}"));
        }
        Ok(n)
    };
    tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| format!("timeout: {url}"))?
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = needle[0];
    let mut at = from;
    while at + needle.len() <= haystack.len() {
        let offset = haystack[at..=haystack.len() - needle.len()].iter().position(|b| *b == first)?;
        at += offset;
        if &haystack[at..at + needle.len()] == needle {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// The bodies of a `multipart/related` response (PS3.18 §8.6.1.2; RFC 2046 §5.1.1).
fn multipart_parts<'a>(content_type: &str, body: &'a [u8]) -> Result<Vec<&'a [u8]>, String> {
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .ok_or_else(|| format!("no boundary in {content_type:?}"))?;
    let delimiter = format!("--{boundary}").into_bytes();
    let mut parts = Vec::new();
    let mut at = find(body, &delimiter, 0).ok_or("no opening delimiter")?;
    loop {
        at += delimiter.len();
        if body[at..].starts_with(b"--") {
            return Ok(parts);
        }
        let headers_end = find(body, b"\r\n\r\n", at).ok_or("part without a header end")? + 4;
        let next = find(body, &[b"\r\n".as_slice(), &delimiter].concat(), headers_end).ok_or("unterminated part")?;
        parts.push(&body[headers_end..next]);
        at = next + 2;
    }
}

// ---------------------------------------------------------------------------------------------
// Figures

#[derive(Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    fn mean(&self) -> f64 {
        self.0.iter().sum::<f64>() / self.0.len().max(1) as f64
    }

    fn row(&self) -> String {
        format!(
            "{} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}",
            self.0.len(),
            self.percentile(50.0),
            self.percentile(95.0),
            self.mean(),
            self.percentile(0.0),
            self.percentile(100.0)
        )
    }
}

/// utime + stime of a process and, with `children`, of its live direct children (nginx's
/// workers), in seconds (100 ticks/s).
fn cpu_seconds(pid: u32, children: bool) -> f64 {
    let ticks = |pid: &str| -> u64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
        let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else { return 0 };
        let fields: Vec<&str> = after.split_whitespace().collect();
        fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    let children = if children {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default()
    } else {
        String::new()
    };
    let total = ticks(&pid.to_string()) + children.split_whitespace().map(ticks).sum::<u64>();
    total as f64 / 100.0
}

/// CPU seconds of the server (if known) and of this process (without the kura child), from when
/// it was made.
struct CpuMeter {
    server: Option<u32>,
    started: (f64, f64),
}

impl CpuMeter {
    fn start(server: Option<u32>) -> CpuMeter {
        let server_seconds = server.map(|pid| cpu_seconds(pid, true)).unwrap_or(0.0);
        CpuMeter { server, started: (server_seconds, cpu_seconds(std::process::id(), false)) }
    }

    /// "server x.x s, client y.y s" of CPU since `start`.
    fn report(&self) -> String {
        let client = cpu_seconds(std::process::id(), false) - self.started.1;
        match self.server {
            Some(pid) => format!("server {:.1} s, client {client:.1} s", cpu_seconds(pid, true) - self.started.0),
            None => format!("server ?, client {client:.1} s"),
        }
    }
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn rustc_running() -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|comm| comm.trim() == "rustc"))
}

/// The machine's state, printed before and after each measurement.
fn conditions() -> String {
    format!("load {}, rustc {}", load_avg(), if rustc_running() { "RUNNING" } else { "none" })
}

// ---------------------------------------------------------------------------------------------
// The servers

async fn wait_listening(address: (&str, u16)) {
    let started = Instant::now();
    while std::net::TcpStream::connect(address).is_err() {
        assert!(started.elapsed() < Duration::from_secs(600), "nothing listens on {address:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Host and port of an `http://host:port/...` URL.
fn host_port(url: &str) -> (String, u16) {
    let authority = url.trim_start_matches("http://").split('/').next().unwrap_or_default();
    match authority.rsplit_once(':') {
        Some((host, port)) => (host.to_string(), port.parse().expect("port")),
        None => (authority.to_string(), 80),
    }
}

/// The server under test: a kura child, or a server at `KURA_BENCH_URL`.
enum Server {
    Kura { child: Option<KuraChild>, data: PathBuf },
    External { base: String, restart: Option<String>, pid: Option<u32>, pid_file: Option<String> },
}

impl Server {
    fn base(&self) -> String {
        match self {
            Server::Kura { child, .. } => child.as_ref().expect("running").base(),
            Server::External { base, .. } => base.clone(),
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Server::Kura { child, .. } => child.as_ref().map(|c| c.child.id()),
            Server::External { pid, pid_file, .. } => pid_file
                .as_ref()
                .and_then(|f| std::fs::read_to_string(f).ok())
                .and_then(|p| p.trim().parse().ok())
                .or(*pid),
        }
    }

    fn can_restart(&self) -> bool {
        matches!(self, Server::Kura { .. } | Server::External { restart: Some(_), .. })
    }

    /// Stops and starts the server; returns once it accepts connections.
    async fn restart(&mut self) {
        match self {
            Server::Kura { child, data } => {
                child.take().expect("running").stop();
                *child = Some(KuraChild::start(data).await);
            }
            Server::External { base, restart, .. } => {
                let command = restart.as_ref().expect("KURA_BENCH_RESTART");
                let status = Command::new("sh").args(["-c", command]).status().expect("restart command");
                assert!(status.success(), "{command:?} failed: {status}");
                let (host, port) = host_port(base);
                wait_listening((&host, port)).await;
            }
        }
    }

    fn rss(&self) -> String {
        match self.pid() {
            Some(pid) => format!(
                "VmRSS {:.0} MiB, VmHWM {:.0} MiB (pid {pid})",
                proc_status_kib(pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0,
                proc_status_kib(pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0
            ),
            None => "unknown".into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements

/// What every instance is expected to be.
struct Expected {
    series: Series,
    instances: Vec<Vec<u8>>,
    digests: HashMap<[u8; 32], usize>,
}

impl Expected {
    fn total(&self) -> u64 {
        self.instances.iter().map(|i| i.len() as u64).sum()
    }

    fn series_url(&self, base: &str) -> String {
        format!("{base}/studies/{}/series/{}", self.series.study_uid, self.series.series_uid)
    }

    fn frame_url(&self, base: &str, k: usize) -> String {
        format!("{}/instances/{}/frames/1", self.series_url(base), self.series.sop_uid(k))
    }

    fn pixels(&self, k: usize) -> &[u8] {
        let instance = &self.instances[k];
        &instance[instance.len() - FRAME_BYTES..]
    }

    /// Whether `count` bytes of a multipart response can carry the whole series.
    fn plausible(&self, count: u64) -> bool {
        let n = self.instances.len() as u64;
        count >= self.total() && count <= self.total() + FRAMING_PER_PART * (n + 1)
    }
}

/// One untimed retrieval of the whole series, every part compared with the generated bytes.
async fn verify_series(client: &HttpClient, expected: &Expected, base: &str) {
    let (status, content_type, body) = get(client, &expected.series_url(base), ACCEPT_SERIES).await.unwrap();
    assert_eq!(status, 200, "series retrieval: {}", String::from_utf8_lossy(&body[..body.len().min(300)]));
    let parts = multipart_parts(&content_type, &body).unwrap();
    let mut seen = vec![false; expected.instances.len()];
    let mut foreign = 0;
    for part in &parts {
        match expected.digests.get(<&[u8; 32]>::try_from(Sha256::digest(part).as_slice()).unwrap()) {
            Some(&k) => seen[k] = true,
            None => foreign += 1,
        }
    }
    let identical = seen.iter().filter(|s| **s).count();
    println!(
        "- verified: series retrieval {} bytes (expected {} + {} of framing), {} parts, {identical} identical to \
         the stored instances, {foreign} different",
        body.len(),
        expected.total(),
        body.len() as i64 - expected.total() as i64,
        parts.len()
    );
    assert_eq!(parts.len(), expected.instances.len(), "wrong number of parts");
    if foreign > 0 {
        println!("  **{foreign} parts are not byte-identical to the instances stored** (sizes of the first: {})", {
            let sizes: Vec<String> = parts.iter().take(3).map(|p| p.len().to_string()).collect();
            sizes.join(", ")
        });
    }
}

async fn verify_frames(client: &HttpClient, expected: &Expected, base: &str) {
    for k in [0, expected.instances.len() / 2, expected.instances.len() - 1] {
        let (status, content_type, body) = get(client, &expected.frame_url(base, k), ACCEPT_FRAMES).await.unwrap();
        assert_eq!(status, 200, "frame of {k}: {}", String::from_utf8_lossy(&body[..body.len().min(300)]));
        let parts = multipart_parts(&content_type, &body).unwrap();
        assert_eq!(parts.len(), 1, "frame of {k}: {} parts", parts.len());
        assert_eq!(parts[0].len(), FRAME_BYTES, "frame of {k}: {} bytes", parts[0].len());
        assert!(parts[0] == expected.pixels(k), "frame of instance {k} differs from its pixel data");
    }
    println!("- verified: frames of 3 instances byte-identical to the generated pixels ({FRAME_BYTES} bytes each)");
}

async fn verify_static(client: &HttpClient, expected: &Expected, base: &str) {
    for (k, instance) in expected.instances.iter().enumerate() {
        let (status, _, body) = get(client, &format!("{base}/{k}.dcm"), "*/*").await.unwrap();
        assert!(status == 200 && body == instance.as_slice(), "static file {k}: HTTP {status}, {} bytes", body.len());
    }
    println!("- verified: all {} static files byte-identical", expected.instances.len());
}

/// What "retrieving the series once" means for a target.
#[derive(Clone, Copy)]
enum Retrieval {
    /// One WADO-RS request for the whole series.
    Series,
    /// One GET per file from a static server, in order, on one connection.
    Files,
}

async fn retrieve_once(client: &HttpClient, expected: &Expected, base: &str, how: Retrieval) -> u64 {
    match how {
        Retrieval::Series => {
            let n = get_counted(client, &expected.series_url(base), ACCEPT_SERIES).await.unwrap();
            assert!(
                expected.plausible(n),
                "series retrieval returned {n} bytes, expected {} + framing",
                expected.total()
            );
            n
        }
        Retrieval::Files => {
            let mut total = 0;
            for (k, instance) in expected.instances.iter().enumerate() {
                let n = get_counted(client, &format!("{base}/{k}.dcm"), "*/*").await.unwrap();
                assert_eq!(n, instance.len() as u64, "static file {k}");
                total += n;
            }
            total
        }
    }
}

/// `clients` clients each retrieving the series `rounds` times; prints and returns MB/s.
async fn series_throughput(
    expected: &Arc<Expected>,
    base: &str,
    how: Retrieval,
    clients: usize,
    rounds: usize,
    pid: Option<u32>,
    label: &str,
) -> f64 {
    println!("  conditions before: {}", conditions());
    let meter = CpuMeter::start(pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        // Each client its own connection pool: one keep-alive connection per client.
        let own: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let (expected, base) = (expected.clone(), base.to_string());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut bytes = 0;
            for _ in 0..rounds {
                let at = Instant::now();
                bytes += retrieve_once(&own, &expected, &base, how).await;
                samples.push(at.elapsed().as_secs_f64());
            }
            (bytes, samples)
        }));
    }
    let mut bytes = 0;
    let mut seconds = Samples::default();
    for task in tasks {
        let (b, s) = task.await.expect("client failed");
        bytes += b;
        seconds.0.extend(s);
    }
    let wall = started.elapsed().as_secs_f64();
    let mbps = bytes as f64 / 1e6 / wall;
    println!(
        "| {label} | {clients} | {} | {:.1} | {wall:.2} | **{mbps:.1}** | {:.2} / {:.2} | {} |",
        clients * rounds,
        bytes as f64 / 1e6,
        seconds.percentile(50.0),
        seconds.percentile(100.0),
        meter.report()
    );
    println!("  conditions after: {}", conditions());
    mbps
}

async fn metadata_once(client: &HttpClient, expected: &Expected, base: &str) -> (f64, usize) {
    let url = format!("{}/metadata", expected.series_url(base));
    let started = Instant::now();
    let (status, _, body) = get(client, &url, ACCEPT_JSON).await.unwrap();
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(status, 200, "metadata: {}", String::from_utf8_lossy(&body[..body.len().min(300)]));
    let entries = serde_json::from_slice::<Vec<serde_json::Value>>(&body).expect("metadata is a JSON array");
    assert_eq!(entries.len(), expected.instances.len(), "metadata entries");
    (millis, body.len())
}

async fn frame_once(client: &HttpClient, expected: &Expected, base: &str, k: usize) -> f64 {
    let started = Instant::now();
    let n = get_counted(client, &expected.frame_url(base, k), ACCEPT_FRAMES).await.unwrap();
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    assert!(
        n >= FRAME_BYTES as u64 && n <= FRAME_BYTES as u64 + FRAMING_PER_PART,
        "frame of instance {k}: {n} bytes with framing"
    );
    millis
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let n: usize = env_or("KURA_BENCH_INSTANCES", 500);
    let seed: u64 = env_or("KURA_BENCH_SEED", 1);
    let mode: String = env_or("KURA_BENCH_MODE", "all".to_string());
    let label: String = env_or("KURA_BENCH_LABEL", "kura".to_string());
    let clients: usize = env_or("KURA_BENCH_CLIENTS", 8);
    let rounds: usize = env_or("KURA_BENCH_ROUNDS", 3);
    let reps: usize = env_or("KURA_BENCH_REPS", 200);
    let cold: usize = env_or("KURA_BENCH_COLD", 5);
    let seconds: f64 = env_or("KURA_BENCH_SECONDS", 10.0);
    let batch: usize = env_or("KURA_BENCH_BATCH", 25);
    let static_url = std::env::var("KURA_BENCH_STATIC_URL").ok().map(|u| u.trim_end_matches('/').to_string());
    assert!(["all", "load", "measure", "static"].contains(&mode.as_str()), "KURA_BENCH_MODE={mode:?}");
    assert!(n > 0, "KURA_BENCH_INSTANCES must not be 0");

    let generated = Instant::now();
    let series = Series::new(seed);
    let instances: Vec<Vec<u8>> = (0..n).map(|k| series.instance(k)).collect();
    let digests = instances.iter().enumerate().map(|(k, i)| (Sha256::digest(i).into(), k)).collect();
    let expected = Arc::new(Expected { series, instances, digests });
    println!(
        "wado_load [{label}]: one CT series of {n} instances of {} bytes ({:.1} MB in all, {FRAME_BYTES} bytes of \
         pixels each; seed {seed}; generated in {:.1} s)\nstudy {} series {}",
        expected.instances[0].len(),
        expected.total() as f64 / 1e6,
        generated.elapsed().as_secs_f64(),
        expected.series.study_uid,
        expected.series.series_uid
    );
    println!("conditions at start: {}", conditions());

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let client: HttpClient =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(64).build(HttpConnector::new());

    if let Some(static_url) = &static_url {
        if let Ok(dir) = std::env::var("KURA_BENCH_STATIC_DIR") {
            std::fs::create_dir_all(&dir).unwrap();
            for (k, instance) in expected.instances.iter().enumerate() {
                std::fs::write(PathBuf::from(&dir).join(format!("{k}.dcm")), instance).unwrap();
            }
        }
        let pid = std::env::var("KURA_BENCH_STATIC_PID").ok().and_then(|p| p.parse().ok());
        runtime.block_on(async {
            println!("\n### Static files at {static_url} (the loopback limit)\n");
            verify_static(&client, &expected, static_url).await;
            // One untimed pass, so that the files are in the page cache like the archives' data.
            retrieve_once(&client, &expected, static_url, Retrieval::Files).await;
            println!("\n| target | clients | series fetched | MB | seconds | MB/s | s per series p50 / max | CPU |");
            println!("|---|---:|---:|---:|---:|---:|---|---|");
            for c in [1, clients] {
                let r = if c == 1 { rounds * 2 } else { rounds };
                series_throughput(&expected, static_url, Retrieval::Files, c, r, pid, "static").await;
            }
        });
    }
    if mode == "static" {
        return;
    }

    let holder = tempfile::tempdir().unwrap();
    let mut server = match std::env::var("KURA_BENCH_URL") {
        Ok(url) => Server::External {
            base: url.trim_end_matches('/').to_string(),
            restart: std::env::var("KURA_BENCH_RESTART").ok(),
            pid: std::env::var("KURA_BENCH_PID").ok().and_then(|p| p.parse().ok()),
            pid_file: std::env::var("KURA_BENCH_PID_FILE").ok(),
        },
        Err(_) => {
            let data = std::env::var("KURA_BENCH_DATA").map(PathBuf::from).unwrap_or(holder.path().join("data"));
            let child = runtime.block_on(KuraChild::start(&data));
            Server::Kura { child: Some(child), data }
        }
    };
    println!("\n### [{label}] DICOMweb at {}\n", server.base());

    if mode == "all" || mode == "load" {
        let base = server.base();
        let started = Instant::now();
        runtime.block_on(async {
            for (i, chunk) in expected.instances.chunks(batch.max(1)).enumerate() {
                stow(&client, &format!("{base}/studies"), chunk, TIMEOUT)
                    .await
                    .unwrap_or_else(|e| panic!("STOW-RS of batch {i}: {e}"));
            }
        });
        let secs = started.elapsed().as_secs_f64();
        println!(
            "- loaded: {n} instances with STOW-RS ({batch} per request, 1 client) in {secs:.1} s = {:.1} MB/s; {}",
            expected.total() as f64 / 1e6 / secs,
            server.rss()
        );
        // Let the index checkpoint what the load left in its in-memory tier.
        std::thread::sleep(Duration::from_secs(3));
    }
    if mode == "load" {
        if let Server::Kura { child, .. } = &mut server {
            child.take().unwrap().stop();
        }
        return;
    }

    runtime.block_on(async {
        let base = server.base();
        verify_series(&client, &expected, &base).await;
        verify_frames(&client, &expected, &base).await;
        let (_, size) = metadata_once(&client, &expected, &base).await;
        println!(
            "- verified: series metadata has {n} entries, {size} bytes ({:.0} bytes per instance)",
            size as f64 / n as f64
        );
        println!("- server after the checks: {}", server.rss());

        println!("\n#### [{label}] Whole-series retrieval (`transfer-syntax=*`)\n");
        println!("| target | clients | series fetched | MB | seconds | MB/s | s per series p50 / max | CPU |");
        println!("|---|---:|---:|---:|---:|---:|---|---|");
        for c in [1, clients] {
            let r = if c == 1 { rounds * 2 } else { rounds };
            series_throughput(&expected, &base, Retrieval::Series, c, r, server.pid(), &label).await;
        }
        println!("- server after the series retrievals: {}", server.rss());

        println!("\n#### [{label}] Frame retrieval (`frames/1`, random instances)\n");
        let mut rng = Rng::new(seed, 11, 0);
        for _ in 0..5 {
            frame_once(&client, &expected, &base, rng.below(n)).await;
        }
        println!("  conditions before: {}", conditions());
        let meter = CpuMeter::start(server.pid());
        let mut single = Samples::default();
        for _ in 0..reps {
            single.0.push(frame_once(&client, &expected, &base, rng.below(n)).await);
        }
        println!("| clients | requests | p50 ms | p95 ms | mean ms | min ms | max ms | frames/s | MB/s | CPU |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        let total: f64 = single.0.iter().sum::<f64>() / 1000.0;
        println!(
            "| 1 | {} | {:.0} | {:.1} | {} |",
            single.row(),
            reps as f64 / total,
            (reps * FRAME_BYTES) as f64 / 1e6 / total,
            meter.report()
        );
        let meter = CpuMeter::start(server.pid());
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (client, expected, base) = (client.clone(), expected.clone(), base.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng::new(seed, 12, c as u64);
                let mut samples = Samples::default();
                while Instant::now() < deadline {
                    samples.0.push(frame_once(&client, &expected, &base, rng.below(n)).await);
                }
                samples
            }));
        }
        let mut under_load = Samples::default();
        for task in tasks {
            under_load.0.extend(task.await.expect("client failed").0);
        }
        let wall = started.elapsed().as_secs_f64();
        println!(
            "| {clients} | {} | {:.0} | {:.1} | {} |",
            under_load.row(),
            under_load.0.len() as f64 / wall,
            (under_load.0.len() * FRAME_BYTES) as f64 / 1e6 / wall,
            meter.report()
        );
        println!("  conditions after: {}", conditions());

        println!("\n#### [{label}] Series metadata ({n} instances)\n");
        for _ in 0..5 {
            metadata_once(&client, &expected, &base).await;
        }
        println!("  conditions before: {}", conditions());
        let mut warm = Samples::default();
        for _ in 0..reps {
            warm.0.push(metadata_once(&client, &expected, &base).await.0);
        }
        println!("| kind | requests | p50 ms | p95 ms | mean ms | min ms | max ms |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        println!("| warm | {} |", warm.row());
        println!("  conditions after: {}", conditions());
        println!("- server after the warm runs: {}", server.rss());
        if server.can_restart() && cold > 0 {
            let mut samples = Samples::default();
            let mut restarts = Samples::default();
            for _ in 0..cold {
                let at = Instant::now();
                server.restart().await;
                restarts.0.push(at.elapsed().as_secs_f64() * 1000.0);
                // A fresh client: no connection survives the restart.
                let fresh: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
                samples.0.push(metadata_once(&fresh, &expected, &server.base()).await.0);
            }
            println!("| cold (first request after a restart) | {} |", samples.row());
            println!("- restart until listening: {} ms (n / p50 / p95 / mean / min / max)", restarts.row());
            println!("- samples: {:?}", samples.0.iter().map(|m| format!("{m:.1}")).collect::<Vec<_>>());
            println!("  conditions after: {}", conditions());
        } else {
            println!("(no cold samples: set KURA_BENCH_RESTART to measure them on an external server)");
        }
    });
    println!("- server at the end: {}", server.rss());
    if let Server::Kura { child: Some(child), .. } = server {
        child.stop();
    }
    drop(runtime);
}
