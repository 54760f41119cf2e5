//! What the load tools share: settings from the environment, a seeded generator, hand-made
//! PS3.10 elements, STOW-RS, and a `kura serve` child. Included by each bench with `#[path]`;
//! each uses a part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value.parse().unwrap_or_else(|_| panic!("{name}={value:?} is not valid")),
        Err(_) => default,
    }
}

// ---------------------------------------------------------------------------------------------
// A small deterministic generator (SplitMix64): the same seed gives the same data on every
// machine and with every version of every crate.

pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64, stream: u64, index: u64) -> Rng {
        Rng(mix(mix(seed ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93)) ^ index))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Picks with a skew towards the front of the list (common names are common).
    pub fn pick_skewed<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        &items[((u * u * items.len() as f64) as usize).min(items.len() - 1)]
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

// ---------------------------------------------------------------------------------------------
// PS3.10 encoding, by hand

/// One Explicit VR Little Endian element, padded to even length.
pub fn element(out: &mut Vec<u8>, group: u16, number: u16, vr: &[u8; 2], value: &[u8]) {
    let pad = value.len() % 2 == 1;
    let length = value.len() + pad as usize;
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&number.to_le_bytes());
    out.extend_from_slice(vr);
    if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT" | b"UC" | b"UR") {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(length as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(length as u16).to_le_bytes());
    }
    out.extend_from_slice(value);
    if pad {
        out.push(if vr == b"UI" || vr == b"OB" { 0 } else { b' ' });
    }
}

/// The preamble, `DICM` and the File Meta group of an Explicit VR Little Endian instance; the
/// data set elements follow.
pub fn file_meta(sop_class: &str, sop_uid: &str, implementation_uid: &str, version_name: &str) -> Vec<u8> {
    let mut meta = Vec::new();
    element(&mut meta, 2, 1, b"OB", &[0, 1]);
    element(&mut meta, 2, 2, b"UI", sop_class.as_bytes());
    element(&mut meta, 2, 3, b"UI", sop_uid.as_bytes());
    element(&mut meta, 2, 0x10, b"UI", b"1.2.840.10008.1.2.1");
    element(&mut meta, 2, 0x12, b"UI", implementation_uid.as_bytes());
    element(&mut meta, 2, 0x13, b"SH", version_name.as_bytes());
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    element(&mut out, 2, 0, b"UL", &(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    out
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// Stores `parts` in one STOW-RS request; anything but 200 is an error.
pub async fn stow(client: &HttpClient, url: &str, parts: &[Vec<u8>], timeout: Duration) -> Result<(), String> {
    const BOUNDARY: &str = "kura-bench-boundary";
    let mut body = Vec::with_capacity(parts.iter().map(|p| p.len() + 80).sum());
    for part in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes());
        body.extend_from_slice(part);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    let request = http::Request::post(url)
        .header("content-type", format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}"))
        .header("accept", "application/dicom+json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| format!("{e:?}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        if status != 200 {
            return Err(format!(
                "STOW-RS answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(600)])
            ));
        }
        Ok(())
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| "STOW-RS timed out".to_string())?
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A value in kB from `/proc/{pid}/status` (`VmRSS:`, `VmHWM:`).
pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}

/// A `kura serve` child on a free loopback port: the binary of this build, or `KURA_BENCH_BIN`.
pub struct KuraChild {
    pub child: Child,
    pub port: u16,
}

impl KuraChild {
    pub async fn start(data: &Path) -> KuraChild {
        let binary = std::env::var("KURA_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_kura").to_string());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&binary)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let started = Instant::now();
        // A large archive may reindex before it listens.
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(1800), "kura did not start listening");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("kura (pid {}) listening on port {port} after {:.1} s", child.id(), started.elapsed().as_secs_f64());
        KuraChild { child, port }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}/dicomweb", self.port)
    }

    /// SIGTERM (graceful shutdown checkpoints the index), then SIGKILL after 60 s.
    pub fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
