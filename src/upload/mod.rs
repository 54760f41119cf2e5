//! `kura upload`: the resumable uploader a hospital runs over a slow link. It reads files,
//! folders, DICOMDIRs and ZIP archives (`inputs`), groups the instances by study, asks the
//! server which of them it already holds (QIDO-RS, PS3.18 §10.6) and skips those and those its
//! journal says the server acknowledged (`journal`), then sends the rest per study
//! (`POST {root}/studies/{study}`, §10.5) in bounded multi-instance requests with a
//! `Content-Encoding` (`stow`), over one keep-alive connection (`client`), retrying with
//! backoff on what may pass (connection errors, timeouts, 429, 5xx) and never on other 4xx.
//! Every instance goes through `prepare::prepare` before it leaves: the one place where
//! lossless re-encoding will plug in.
//!
//! No `server`, `archive` or `store` type is used here: the uploader talks to any DICOMweb
//! server, and shares only the PS3.10 parser (`dicom::part10`) with Kura.

pub mod client;
pub mod inputs;
pub mod journal;
pub mod prepare;
pub mod progress;
pub mod stow;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{Method, StatusCode, header};

use crate::config::UploadArgs;
use client::{Client, Reply, Target};
use inputs::{InputLimits, Scanned, SourceReader};
pub use prepare::PixelCodec;
use prepare::{PrepareLimits, Prepared};
pub use stow::Coding;

/// Chosen on the 2 Mbit/s + 150 ms RTT link (benches/README.md): a request of about 8 MiB
/// takes half a minute there, so a cut loses little, and the round trip and the server's
/// durable commit per request cost under 1% of it.
pub const DEFAULT_BATCH_BYTES: u64 = 8 * 1024 * 1024;
pub const DEFAULT_BATCH_INSTANCES: usize = 64;
pub const DEFAULT_RETRIES: u32 = 10;
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_MAX_INSTANCE_BYTES: u64 = 1024 * 1024 * 1024;
/// Results asked per QIDO-RS page (a server may answer fewer; paging goes on while it says
/// more remain).
const QIDO_PAGE: usize = 1000;
/// Pages asked per study at most (10 million instances).
const MAX_QIDO_PAGES: usize = 10_000;
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A Retry-After larger than this is held to it.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// A credential: its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(text: &str) -> Result<Secret, String> {
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be printable ASCII without spaces".into());
        }
        Ok(Secret(text.to_string()))
    }
}

/// Validated `kura upload` settings.
#[derive(Debug)]
pub struct UploadOptions {
    pub paths: Vec<PathBuf>,
    pub target: Target,
    pub token: Option<Secret>,
    pub ca_cert: Option<PathBuf>,
    pub batch_bytes: u64,
    pub batch_instances: usize,
    /// The body's content coding and its level; `None`: sent as it is.
    pub coding: Option<(Coding, u32)>,
    /// The lossless syntax uncompressed pixel data is re-encoded in (`prepare`); `None`: as read.
    pub pixel_codec: Option<crate::dicom::encode::Codec>,
    pub journal: PathBuf,
    pub retries: u32,
    pub timeout: Duration,
    pub limits: InputLimits,
    pub quiet: bool,
}

impl UploadOptions {
    pub fn from_args(args: UploadArgs) -> Result<UploadOptions, String> {
        let target = Target::parse(&args.to)?;
        if args.batch_bytes == 0 || args.batch_instances == 0 {
            return Err("--batch-bytes and --batch-instances must be at least 1".into());
        }
        if args.timeout_secs == 0 || args.timeout_secs > 3600 {
            return Err("--timeout-secs must be between 1 and 3600".into());
        }
        if args.max_instance_bytes == 0 || args.max_instance_bytes > 16 * 1024 * 1024 * 1024 {
            return Err("--max-instance-bytes must be between 1 and 16 GiB".into());
        }
        let journal = match args.journal {
            Some(path) => path,
            None => journal::default_path().ok_or("no home directory for the journal: give --journal PATH")?,
        };
        Ok(UploadOptions {
            paths: args.paths,
            target,
            token: args.token,
            ca_cert: args.ca_cert,
            batch_bytes: args.batch_bytes,
            batch_instances: args.batch_instances,
            coding: (!args.no_compress)
                .then(|| (args.coding, args.compression_level.unwrap_or_else(|| args.coding.default_level()))),
            pixel_codec: args.pixel_codec.codec(),
            journal,
            retries: args.retries,
            timeout: Duration::from_secs(args.timeout_secs),
            limits: InputLimits {
                max_instance_bytes: args.max_instance_bytes,
                zip_max_entries: args.zip_max_entries,
                zip_max_total_bytes: args.zip_max_total_bytes,
                zip_max_ratio: args.zip_max_ratio,
            },
            quiet: args.quiet,
        })
    }
}

/// An instance that did not get onto the server.
#[derive(Debug, Clone)]
pub struct Failure {
    pub origin: String,
    pub sop_uid: Option<String>,
    pub reason: String,
}

/// How the upload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every instance is on the server.
    Complete,
    /// Some instances were refused (by the server, or by the prepare step).
    SomeFailed,
    /// The input could not be read (or a ZIP archive was refused): nothing was sent.
    BadInput,
    /// The server stayed unreachable or kept answering 5xx after every retry.
    GaveUp,
    /// The server refused the credentials (401) or the role (403) for storing.
    Unauthorized,
}

impl Ending {
    /// The process exit code (README.md, "Uploading from a hospital").
    pub fn exit_code(self) -> i32 {
        match self {
            Ending::Complete => 0,
            Ending::SomeFailed => 1,
            Ending::BadInput => 2,
            Ending::GaveUp => 3,
            Ending::Unauthorized => 4,
        }
    }
}

/// What the upload did; [`Summary::line`] is the last line it prints.
#[derive(Debug, Default)]
pub struct Summary {
    pub found: u64,
    pub sent: u64,
    /// Already on the server: found by QIDO-RS or in the journal.
    pub present: u64,
    pub not_dicom: u64,
    pub failures: Vec<Failure>,
    /// Request-body bytes on the wire (coded), and the same bodies before coding.
    pub wire_bytes: u64,
    pub raw_bytes: u64,
    pub requests: u64,
    pub retries: u64,
    pub connections: u64,
    pub elapsed: Duration,
    /// Set when the upload stopped early.
    pub stopped: Option<(Ending, String)>,
}

impl Summary {
    pub fn ending(&self) -> Ending {
        match (&self.stopped, self.failures.is_empty()) {
            (Some((ending, _)), _) => *ending,
            (None, true) => Ending::Complete,
            (None, false) => Ending::SomeFailed,
        }
    }

    pub fn line(&self) -> String {
        let ratio = if self.raw_bytes == 0 { 0.0 } else { 100.0 * self.wire_bytes as f64 / self.raw_bytes as f64 };
        format!(
            "kura upload: sent {}, already present {}, failed {}, not DICOM {} (of {} instances found); \
             {:.1} MiB on the wire for {:.1} MiB of request bodies before coding ({ratio:.1}%), {} requests, {} retries, {} connections, {}",
            self.sent,
            self.present,
            self.failures.len(),
            self.not_dicom,
            self.found,
            progress::mib(self.wire_bytes),
            progress::mib(self.raw_bytes),
            self.requests,
            self.retries,
            self.connections,
            progress::duration_text(self.elapsed),
        )
    }
}

/// Runs an upload to its end; the summary says how it went.
pub async fn run(options: UploadOptions) -> Summary {
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut upload = match Upload::start(&options, &mut summary).await {
        Ok(upload) => upload,
        Err((ending, message)) => {
            summary.stopped = Some((ending, message));
            summary.elapsed = started.elapsed();
            return summary;
        }
    };
    let printer = progress::Printer::start(upload.progress.clone(), upload.client.wire_bytes.clone(), options.quiet);
    let studies = std::mem::take(&mut upload.studies);
    for (study_uid, instances) in studies {
        if let Err(stop) = upload.study(&study_uid, instances, &mut summary).await {
            summary.stopped = Some(stop);
            break;
        }
    }
    printer.stop().await;
    summary.wire_bytes = upload.client.wire_bytes.load(Ordering::Relaxed);
    summary.connections = upload.client.connections_opened;
    summary.elapsed = started.elapsed();
    summary
}

type Stop = (Ending, String);

struct Upload<'a> {
    options: &'a UploadOptions,
    client: Client,
    journal: journal::Journal,
    studies: BTreeMap<String, Vec<Scanned>>,
    /// False once QIDO-RS answered 401 or 403: the journal alone tells what was acknowledged.
    may_search: bool,
    progress: Arc<progress::Progress>,
    reader: Arc<std::sync::Mutex<SourceReader>>,
}

impl<'a> Upload<'a> {
    async fn start(options: &'a UploadOptions, summary: &mut Summary) -> Result<Upload<'a>, Stop> {
        let client =
            Client::new(options.target.clone(), options.ca_cert.as_ref(), options.token.clone(), options.timeout)
                .map_err(|e| (Ending::BadInput, e))?;
        let journal = journal::Journal::open(&options.journal, &options.target.root)
            .map_err(|e| (Ending::BadInput, format!("journal {}: {e}", options.journal.display())))?;
        let (paths, limits) = (options.paths.clone(), options.limits);
        let gathered = tokio::task::spawn_blocking(move || inputs::gather(&paths, &limits))
            .await
            .map_err(|e| (Ending::BadInput, e.to_string()))?
            .map_err(|e| (Ending::BadInput, e.to_string()))?;
        summary.not_dicom = gathered.not_dicom;
        summary.failures.extend(gathered.failures.into_iter().map(|f| Failure {
            origin: f.origin,
            sop_uid: f.sop_uid,
            reason: f.reason,
        }));
        let progress = Arc::new(progress::Progress::default());
        let mut studies: BTreeMap<String, Vec<Scanned>> = BTreeMap::new();
        let mut seen = HashSet::new();
        for instance in gathered.instances {
            summary.found += 1;
            // The same SOP Instance twice in the input (a copy in a ZIP and in a folder): once.
            if !seen.insert(instance.sop_uid.clone()) {
                summary.present += 1;
                continue;
            }
            progress.total_instances.fetch_add(1, Ordering::Relaxed);
            progress.total_bytes.fetch_add(instance.size, Ordering::Relaxed);
            studies.entry(instance.study_uid.clone()).or_default().push(instance);
        }
        Ok(Upload { options, client, journal, studies, may_search: true, progress, reader: Arc::default() })
    }

    fn settle(&self, instances: u64, bytes: u64) {
        self.progress.done_instances.fetch_add(instances, Ordering::Relaxed);
        self.progress.done_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Sends what of one study the server does not hold yet.
    async fn study(&mut self, study_uid: &str, instances: Vec<Scanned>, summary: &mut Summary) -> Result<(), Stop> {
        let present = self.present(study_uid).await?;
        let mut pending = Vec::new();
        for instance in instances {
            if self.journal.contains(&instance.sop_uid) || present.contains(&instance.sop_uid) {
                summary.present += 1;
                self.settle(1, instance.size);
            } else {
                pending.push(instance);
            }
        }
        let mut queue = batches(pending, self.options.batch_bytes, self.options.batch_instances).into_iter();
        let mut next = queue.next().map(|batch| self.spawn_build(batch));
        while let Some(building) = next.take() {
            let built = building.await.map_err(|e| (Ending::BadInput, e.to_string()))?;
            next = queue.next().map(|batch| self.spawn_build(batch));
            self.batch(study_uid, built, summary).await?;
        }
        Ok(())
    }

    /// The SOP Instance UIDs of `study_uid` the server holds (PS3.18 §10.6: the study's
    /// instances, only SOPInstanceUID asked, paged with limit and offset). Empty when the
    /// server may not be searched by this uploader (401, 403): the journal then decides.
    async fn present(&mut self, study_uid: &str) -> Result<HashSet<String>, Stop> {
        let mut present = HashSet::new();
        if !self.may_search {
            return Ok(present);
        }
        let mut offset = 0usize;
        for _ in 0..MAX_QIDO_PAGES {
            let path =
                format!("/studies/{study_uid}/instances?includefield=00080018&limit={QIDO_PAGE}&offset={offset}");
            let headers = [(header::ACCEPT, "application/dicom+json".to_string())];
            let reply = self.with_retries(Method::GET, &path, &headers, bytes::Bytes::new(), "search").await?;
            match reply.status {
                StatusCode::OK => {}
                // No match: 204 (§10.6.3), or 404 from servers that treat the study as a resource.
                StatusCode::NO_CONTENT | StatusCode::NOT_FOUND => break,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    eprintln!(
                        "kura upload: the server does not let this uploader search ({}); relying on the journal {}",
                        reply.status,
                        self.journal.path().display()
                    );
                    self.may_search = false;
                    return Ok(HashSet::new());
                }
                status => {
                    eprintln!("kura upload: searching the study answered {status}; relying on the journal");
                    return Ok(present);
                }
            }
            let rows: Vec<serde_json::Value> = serde_json::from_slice(&reply.body).unwrap_or_default();
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                if let Some(uid) = row.pointer("/00080018/Value/0").and_then(|v| v.as_str()) {
                    present.insert(uid.to_string());
                }
            }
            offset += rows.len();
            // §8.3.4.4.1: a Warning says when more results remain; a short page without one ends.
            let more = reply
                .headers
                .get_all(header::WARNING)
                .iter()
                .any(|w| w.to_str().is_ok_and(|w| w.contains("additional results")));
            if rows.len() < QIDO_PAGE && !more {
                break;
            }
        }
        Ok(present)
    }

    /// Sends a request, retrying what may pass on a later attempt.
    async fn with_retries(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(header::HeaderName, String)],
        body: bytes::Bytes,
        what: &str,
    ) -> Result<Reply, Stop> {
        let mut attempt = 0u32;
        loop {
            let (wait, why) = match self.client.send(method.clone(), path, headers, body.clone()).await {
                Ok(reply) if is_retryable(reply.status) => (retry_after(&reply), format!("answered {}", reply.status)),
                Ok(reply) => return Ok(reply),
                Err(error) => (None, error.to_string()),
            };
            attempt += 1;
            if attempt > self.options.retries {
                return Err((Ending::GaveUp, format!("{what}: {why}; gave up after {} retries", self.options.retries)));
            }
            let wait = wait.unwrap_or_else(|| backoff(attempt));
            // Printed under --quiet too: a retry is worth knowing about, and rare.
            eprintln!("kura upload: {what}: {why}; retry {attempt} in {}", progress::duration_text(wait));
            tokio::time::sleep(wait).await;
        }
    }

    /// Starts preparing and coding `batch` on the blocking pool, while the previous batch is
    /// on the wire.
    fn spawn_build(&self, batch: Vec<Scanned>) -> tokio::task::JoinHandle<Built> {
        let reader = self.reader.clone();
        let limits = PrepareLimits {
            max_instance_bytes: self.options.limits.max_instance_bytes,
            zip_max_ratio: self.options.limits.zip_max_ratio,
            pixel_codec: self.options.pixel_codec,
        };
        let coding = self.options.coding;
        tokio::task::spawn_blocking(move || {
            let mut reader = reader.lock().unwrap_or_else(|p| p.into_inner());
            let mut prepared = Vec::new();
            let mut failures = Vec::new();
            for instance in &batch {
                match prepare::prepare(&mut reader, instance, limits) {
                    Ok(ready) => prepared.push(ready),
                    Err(reason) => failures.push((instance.clone(), reason)),
                }
            }
            drop(reader);
            let body = (!prepared.is_empty()).then(|| stow::build_body(&prepared, coding));
            Built { batch, prepared, failures, body }
        })
    }

    /// Sends and records one prepared batch of a study.
    async fn batch(&mut self, study_uid: &str, built: Built, summary: &mut Summary) -> Result<(), Stop> {
        let Built { batch, mut prepared, failures, body } = built;
        for (instance, reason) in failures {
            self.settle(1, instance.size);
            summary.failures.push(Failure {
                origin: instance.origin.to_string(),
                sop_uid: Some(instance.sop_uid.clone()),
                reason,
            });
        }
        let mut pending_body = body;
        let origins: BTreeMap<String, (String, u64)> =
            batch.iter().map(|i| (i.sop_uid.clone(), (i.origin.to_string(), i.size))).collect();
        let mut attempt = 0u32;
        while !prepared.is_empty() {
            let body = match pending_body.take() {
                Some(body) => body,
                None => {
                    // Rebuilt after a retry left fewer instances to send.
                    let coding = self.options.coding;
                    let to_send = std::mem::take(&mut prepared);
                    let (body, to_send) =
                        tokio::task::spawn_blocking(move || (stow::build_body(&to_send, coding), to_send))
                            .await
                            .map_err(|e| (Ending::BadInput, e.to_string()))?;
                    prepared = to_send;
                    body
                }
            };
            let body = body.map_err(|e| (Ending::BadInput, format!("building the request: {e}")))?;
            let mut headers = vec![
                (header::CONTENT_TYPE, body.content_type.clone()),
                (header::ACCEPT, "application/dicom+json".to_string()),
            ];
            if let Some(coding) = body.coding {
                headers.push((header::CONTENT_ENCODING, coding.token().to_string()));
            }
            self.progress.batch_raw.store(prepared.iter().map(|p| p.original_size).sum(), Ordering::Relaxed);
            self.progress.batch_wire.store(body.bytes.len() as u64, Ordering::Relaxed);
            self.progress.batch_wire_start.store(self.client.wire_bytes.load(Ordering::Relaxed), Ordering::Relaxed);
            summary.requests += 1;
            summary.raw_bytes += body.raw_len;
            let path = format!("/studies/{study_uid}");
            let body_sent = body.clone();
            let (wait, why) = match self.client.send(Method::POST, &path, &headers, body.bytes).await {
                Ok(reply) if is_retryable(reply.status) => (retry_after(&reply), format!("answered {}", reply.status)),
                Ok(reply) => {
                    self.progress.batch_wire.store(0, Ordering::Relaxed);
                    return self.settle_reply(study_uid, reply, &prepared, &origins, summary);
                }
                Err(error) => (None, error.to_string()),
            };
            self.progress.batch_wire.store(0, Ordering::Relaxed);
            attempt += 1;
            summary.retries += 1;
            if attempt > self.options.retries {
                return Err((
                    Ending::GaveUp,
                    format!("storing: {why}; gave up after {} retries", self.options.retries),
                ));
            }
            let wait = wait.unwrap_or_else(|| backoff(attempt));
            if !self.options.quiet {
                eprintln!(
                    "kura upload: storing {} instances: {why}; retry {attempt} in {}",
                    prepared.len(),
                    progress::duration_text(wait)
                );
            }
            tokio::time::sleep(wait).await;
            // The answer may have been lost after the server stored the batch: what it holds
            // now is not sent again.
            let present = self.present(study_uid).await?;
            let (held, rest): (Vec<Prepared>, Vec<Prepared>) =
                prepared.into_iter().partition(|p| present.contains(&p.sop_uid));
            if held.is_empty() {
                // Nothing changed: the same body goes again.
                pending_body = Some(Ok(body_sent));
            } else {
                let uids: Vec<String> = held.iter().map(|p| p.sop_uid.clone()).collect();
                self.journal.record(study_uid, &uids).map_err(|e| (Ending::GaveUp, format!("journal: {e}")))?;
                summary.sent += held.len() as u64;
                self.settle(held.len() as u64, held.iter().map(|p| p.original_size).sum());
            }
            prepared = rest;
        }
        Ok(())
    }

    /// Records what a final answer to a Store request says.
    fn settle_reply(
        &mut self,
        study_uid: &str,
        reply: Reply,
        sent: &[Prepared],
        origins: &BTreeMap<String, (String, u64)>,
        summary: &mut Summary,
    ) -> Result<(), Stop> {
        let status = reply.status;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err((Ending::Unauthorized, format!("the server refused to store: {status} {}", reply.text())));
        }
        let sent_uids: HashSet<&str> = sent.iter().map(|p| p.sop_uid.as_str()).collect();
        // 200, 202 and 409 carry a Store Instances Response (§10.5.3, Table 10.5.3-1).
        let outcome = if matches!(status, StatusCode::OK | StatusCode::ACCEPTED | StatusCode::CONFLICT) {
            stow::parse_response(&reply.body).ok()
        } else {
            None
        };
        let mut settled: HashSet<String> = HashSet::new();
        if let Some(outcome) = outcome {
            let stored: Vec<String> =
                outcome.stored.into_iter().filter(|uid| sent_uids.contains(uid.as_str())).collect();
            self.journal.record(study_uid, &stored).map_err(|e| (Ending::GaveUp, format!("journal: {e}")))?;
            summary.sent += stored.len() as u64;
            settled.extend(stored);
            for (uid, reason) in outcome.failed {
                if sent_uids.contains(uid.as_str()) && settled.insert(uid.clone()) {
                    let origin = origins.get(&uid).map_or_else(String::new, |(o, _)| o.clone());
                    summary.failures.push(Failure {
                        origin,
                        sop_uid: Some(uid),
                        reason: format!("{status}: {reason}"),
                    });
                }
            }
            for reason in outcome.other_failures {
                eprintln!("kura upload: the server reports a failure not tied to an instance: {reason}");
            }
        }
        for instance in sent.iter().filter(|p| !settled.contains(&p.sop_uid)) {
            let origin = origins.get(&instance.sop_uid).map_or_else(String::new, |(o, _)| o.clone());
            let reason = if status.is_success() || status == StatusCode::CONFLICT {
                format!("{status}: not acknowledged in the Store Instances Response")
            } else {
                format!("{status}: {}", reply.text())
            };
            summary.failures.push(Failure { origin, sop_uid: Some(instance.sop_uid.clone()), reason });
        }
        self.settle(sent.len() as u64, sent.iter().map(|p| p.original_size).sum());
        Ok(())
    }
}

/// A batch read, checked and coded, ready to send.
struct Built {
    batch: Vec<Scanned>,
    prepared: Vec<Prepared>,
    failures: Vec<(Scanned, String)>,
    body: Option<std::io::Result<stow::StowBody>>,
}

/// Worth another attempt: 408, 429 and every 5xx (503 among them). Other 4xx say the request
/// itself is wrong, and would be again.
fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Retry-After in seconds (RFC 9110 §10.2.3; the HTTP-date form falls back to the backoff).
fn retry_after(reply: &Reply) -> Option<Duration> {
    let seconds: u64 = reply.headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// Exponential backoff with jitter: a random wait between half and all of base·2^(attempt-1),
/// capped, so that uploaders cut off together do not come back together.
fn backoff(attempt: u32) -> Duration {
    let full = BACKOFF_BASE.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(BACKOFF_CAP);
    let jitter = getrandom::u32().unwrap_or(0) as f64 / u32::MAX as f64;
    full.mul_f64(0.5 + 0.5 * jitter)
}

/// Splits one study's instances into requests of at most `max_bytes` (a larger instance goes
/// alone) and `max_instances`.
fn batches(instances: Vec<Scanned>, max_bytes: u64, max_instances: usize) -> Vec<Vec<Scanned>> {
    let mut batches: Vec<Vec<Scanned>> = Vec::new();
    let mut bytes = 0u64;
    for instance in instances {
        let fits = batches.last().is_some_and(|last| last.len() < max_instances && bytes + instance.size <= max_bytes);
        if !fits {
            batches.push(Vec::new());
            bytes = 0;
        }
        bytes += instance.size;
        batches.last_mut().expect("pushed above").push(instance);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(size: u64) -> Scanned {
        Scanned { origin: inputs::Origin::File("x".into()), size, study_uid: "1".into(), sop_uid: "2".into() }
    }

    #[test]
    fn batches_hold_their_bounds() {
        let sizes = |batches: Vec<Vec<Scanned>>| -> Vec<Vec<u64>> {
            batches.into_iter().map(|b| b.into_iter().map(|i| i.size).collect()).collect()
        };
        let instances = [5, 5, 5, 20, 1, 1, 1].map(scanned).to_vec();
        assert_eq!(sizes(batches(instances, 10, 2)), vec![vec![5, 5], vec![5], vec![20], vec![1, 1], vec![1]]);
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        for attempt in 1..20 {
            let full = BACKOFF_BASE.saturating_mul(1 << (attempt - 1).min(16)).min(BACKOFF_CAP);
            let wait = backoff(attempt);
            assert!(wait >= full / 2 && wait <= full, "{attempt}: {wait:?}");
        }
        assert!(is_retryable(StatusCode::SERVICE_UNAVAILABLE) && is_retryable(StatusCode::TOO_MANY_REQUESTS));
        assert!(!is_retryable(StatusCode::CONFLICT) && !is_retryable(StatusCode::PAYLOAD_TOO_LARGE));
    }

    #[test]
    fn the_token_never_shows() {
        let secret: Secret = "kura_abc_def".parse().unwrap();
        assert!(!format!("{secret:?}").contains("abc"));
        assert!("with space".parse::<Secret>().is_err());
    }
}
