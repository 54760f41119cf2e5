//! The audit trail: who did what to which study, when, from where, and with what outcome —
//! every STOW, QIDO, WADO (every retrieve form), delete, key change, share change and failed
//! authentication (issue 18; IHE ATNA's "who, what, when, where").
//!
//! # What a record holds, and what it never holds
//! The caller's subject (`key:{id}`, `oidc:{sub}`, `cert:{name}`, `local`), key id and
//! institution; the action (the endpoint's name); the study (and series) UIDs from the path or
//! of the instances stored; the client address; the HTTP status; a short detail (a key id, a
//! refusal reason). Never a patient attribute (the query string of a search is not recorded: it
//! may carry a patient name), never a token, key or share secret.
//!
//! # Durability
//! Records live in a sled tree of their own (`audit`) on the catalog's database, where queries,
//! `verify` and `export` read them, and each is also appended to the trail's journal
//! (`{data}/audit/`, [`journal`]) before it goes to the tree. The catalog's own commits make
//! the tree durable later; at open, the journal's lines that the tree lacks are put back, and a
//! journal file is removed only after a catalog commit covers it.
//!
//! A request is on record before it is answered, in two steps, so that the journal's
//! `fdatasync` runs beside the request's work instead of after it (issue 18 asks ≤ 10 % of a
//! search's cost; a sync after the work added 0.3–0.5 ms to a 0.2 ms search, benches/README.md):
//! 1. [`AuditLog::open_access`], as soon as the caller is known: an *access* line (who, what,
//!    which study, when, from where — everything but the outcome) goes to the journal and a
//!    pending entry to the tree; its sync starts at once.
//! 2. [`AuditLog::close_access`], when the answer is ready: the chained record with the outcome
//!    is appended (it names the access it closes, `opened`, and removes the pending entry in the
//!    same batch), and the answer waits until the *access* line is durable — by then usually long
//!    since. The record itself becomes durable with the journal's next sync, at most
//!    [`journal::LAZY_SYNC`] (5 ms) later: it starts no sync of its own, which would delay the
//!    next request's access line (one sync runs at a time).
//!
//! So a power cut never loses an answered access; in the few milliseconds after an answer it
//! can lose that access's outcome, and a request cut short by a crash has none. At the next
//! open, every access still pending becomes a chained record with outcome 0 and a detail saying
//! that the outcome was not recorded. Events that are not requests of a known caller (failed
//! authentications, the command line) use [`AuditLog::record`], which waits for their own line.
//!
//! # Tamper evidence
//! Records are numbered from 1 without gaps, and each carries the SHA-256 of the previous
//! record's stored bytes (`prev`; 64 zeros for the first). A head entry, written in the same
//! atomic batch as each record, holds the last sequence number and the hash of the last
//! record. [`AuditLog::verify`] walks the chain: an edited record breaks the next record's
//! `prev` (or the head, for the last one), a removed record leaves a gap, a moved record
//! carries another sequence number than its key, and a cut tail disagrees with the head. Whoever
//! can rewrite the whole database can rewrite the whole chain: the syslog copy (`syslog`) and
//! exports kept elsewhere are the outside witnesses.

pub mod atna;
pub mod journal;
pub mod syslog;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError};

/// The name of the sled tree that holds the trail.
pub const TREE: &str = "audit";
/// Version of [`AuditRecord`].
pub const RECORD_VERSION: u32 = 1;
const RECORD_PREFIX: u8 = b'r';
/// Accesses opened and not yet closed (see "Durability"); outside the chain.
const PENDING_PREFIX: u8 = b'p';
/// The detail of the record that closes an access whose outcome a crash took.
pub const INTERRUPTED: &str = "outcome not recorded: the server stopped before this request was answered or its \
                               outcome was synced";
const HEAD_KEY: &[u8] = b"head";
/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Study UIDs in one record; a STOW-RS request that touched more studies gets several records.
pub const MAX_STUDIES_PER_RECORD: usize = 64;
/// Results of one query at most.
pub const MAX_QUERY_LIMIT: usize = 1000;
/// Records one query looks at at most; beyond, the answer says where to go on (`next`).
pub const MAX_QUERY_SCAN: usize = 100_000;
/// Longest free-text field kept (detail, subject, institution).
const MAX_FIELD_CHARS: usize = 256;

fn backend(error: sled::Error) -> StoreError {
    StoreError::Backend(Box::new(error))
}

/// What happened, as the code that saw it describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditEvent {
    /// The endpoint's name (`stow`, `qido`, `wado-metadata`, `delete`, `key-create`,
    /// `share-create`, `auth-failure`, …).
    pub action: String,
    /// The HTTP status answered.
    pub outcome: u16,
    pub subject: Option<String>,
    pub key_id: Option<String>,
    pub institution: Option<String>,
    /// The client's address.
    pub address: Option<String>,
    /// Study Instance UIDs concerned (validated UIDs only).
    pub studies: Vec<String>,
    pub series: Option<String>,
    /// A key or share id, a refusal reason; never a secret or a patient attribute.
    pub detail: Option<String>,
}

/// What a handler adds to its response for the trail (a response extension that
/// `server::service` takes out): the studies it touched beyond the path's, and a detail.
#[derive(Debug, Clone, Default)]
pub struct AuditNote {
    pub studies: Vec<String>,
    pub detail: Option<String>,
}

/// One record as stored (format [`RECORD_VERSION`]); its serialised bytes are what the chain
/// hashes. Field order is the serialisation order: never reorder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditRecord {
    pub v: u32,
    pub seq: u64,
    /// SHA-256 (hex) of the previous record's stored bytes.
    pub prev: String,
    /// Unix milliseconds; never less than the previous record's.
    pub time: u64,
    pub action: String,
    pub outcome: u16,
    pub subject: Option<String>,
    pub key_id: Option<String>,
    pub institution: Option<String>,
    pub address: Option<String>,
    pub studies: Vec<String>,
    pub series: Option<String>,
    pub detail: Option<String>,
    /// The access this record closes (see "Durability"); absent on records written without one
    /// (and on every record of earlier versions, whose bytes stay as they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened: Option<u64>,
}

/// The journal line and pending entry of an access opened by [`AuditLog::open_access`]: the
/// record to come, without its outcome.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct AccessLine {
    access: u64,
    time: u64,
    action: String,
    subject: Option<String>,
    key_id: Option<String>,
    institution: Option<String>,
    address: Option<String>,
    studies: Vec<String>,
    series: Option<String>,
}

/// An access on record (or on its way to be durable), to be closed with its outcome.
#[derive(Debug, Clone, Copy)]
#[must_use = "an opened access is closed with its outcome"]
pub struct OpenAccess {
    id: u64,
    /// The journal ticket of the access line.
    ticket: u64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Head {
    seq: u64,
    hash: String,
    time: u64,
}

/// Why `verify` failed: where, and what it found.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("audit record {seq}: {problem}")]
    Broken { seq: u64, problem: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A good chain's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    pub records: u64,
    /// Hash of the last record (the genesis value for an empty trail).
    pub head: String,
}

/// A query of the trail (`GET /admin/audit`); every filter optional.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only records of callers acting for this institution; set from the caller, never from
    /// the query string: an administrator reads its own institution's part of the trail.
    pub institution: Option<String>,
    pub study: Option<String>,
    /// A subject (`key:…`, `oidc:…`) or a key id.
    pub principal: Option<String>,
    pub action: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since: Option<u64>,
    /// Unix milliseconds, exclusive.
    pub until: Option<u64>,
    /// Only records after this sequence number (the `next` of a previous page).
    pub after: Option<u64>,
    pub limit: usize,
}

/// One page of results, oldest first.
#[derive(Debug, Clone)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    /// Where to go on (`after`), when more records may match.
    pub next: Option<u64>,
}

struct State {
    seq: u64,
    hash: String,
    time: u64,
}

pub struct AuditLog {
    tree: sled::Tree,
    store: Arc<dyn Store>,
    journal: journal::Journal,
    enabled: bool,
    state: Mutex<State>,
    /// Copies for the syslog collector, when one is configured.
    forward: Mutex<Option<syslog::Forwarder>>,
    /// The last access number handed out; an access is numbered from the time it opened (unix
    /// microseconds) or one past the last, so numbers never repeat across restarts.
    next_access: AtomicU64,
}

fn record_key(seq: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = RECORD_PREFIX;
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn pending_key(access: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = PENDING_PREFIX;
    key[1..].copy_from_slice(&access.to_be_bytes());
    key
}

/// Writes a record's stored bytes and the head that names it, and removes the pending entry of
/// the access it closes, atomically.
fn insert(tree: &sled::Tree, bytes: &[u8], state: &State, closes: Option<u64>) -> Result<(), StoreError> {
    let head = Head { seq: state.seq, hash: state.hash.clone(), time: state.time };
    let mut batch = sled::Batch::default();
    if let Some(access) = closes {
        batch.remove(&pending_key(access));
    }
    batch.insert(&record_key(state.seq), bytes);
    batch.insert(HEAD_KEY, serde_json::to_vec(&head).expect("head serialises"));
    tree.apply_batch(batch).map_err(backend)
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A field cut to its bound, control characters dropped (a record is one JSON line anyway,
/// but a syslog reader should not be fooled either).
fn bounded(text: Option<String>) -> Option<String> {
    text.map(|t| t.chars().filter(|c| !c.is_control()).take(MAX_FIELD_CHARS).collect())
}

impl AuditLog {
    /// The trail on `tree`, with its journal in `journal_dir`, the tree made durable by `store`'s
    /// commit (the catalog on the same database). The journal's records that the tree lacks (a
    /// power cut came before the catalog's commit) are put back first. `enabled: false`
    /// (--no-audit) records nothing.
    pub fn open(
        tree: sled::Tree,
        store: Arc<dyn Store>,
        journal_dir: &std::path::Path,
        enabled: bool,
    ) -> Result<AuditLog, StoreError> {
        Self::open_with(tree, store, journal_dir, enabled, journal::ROTATE_BYTES)
    }

    /// [`AuditLog::open`] with journal files retired past `rotate_bytes`.
    pub fn open_with(
        tree: sled::Tree,
        store: Arc<dyn Store>,
        journal_dir: &std::path::Path,
        enabled: bool,
        rotate_bytes: u64,
    ) -> Result<AuditLog, StoreError> {
        let mut state = match tree.get(HEAD_KEY).map_err(backend)? {
            Some(bytes) => {
                let head: Head =
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(format!("audit head: {e}")))?;
                State { seq: head.seq, hash: head.hash, time: head.time }
            }
            None => State { seq: 0, hash: GENESIS.into(), time: 0 },
        };
        let journal = journal::Journal::open(journal_dir, rotate_bytes).map_err(StoreError::Corrupt)?;
        let mut recovered = 0u64;
        let mut closed = std::collections::HashSet::new();
        let mut accesses = Vec::new();
        for line in journal.replay().map_err(StoreError::Corrupt)? {
            if let Ok(record) = serde_json::from_slice::<AuditRecord>(&line) {
                closed.extend(record.opened);
                // Only the records that continue the chain: older ones are in the tree already,
                // and a torn or foreign line was never acknowledged.
                if record.seq != state.seq + 1 || record.prev != state.hash {
                    continue;
                }
                let next = State { seq: record.seq, hash: hex_sha256(&line), time: record.time.max(state.time) };
                insert(&tree, &line, &next, record.opened)?;
                state = next;
                recovered += 1;
            } else if let Ok(access) = serde_json::from_slice::<AccessLine>(&line) {
                accesses.push((access.access, line));
            }
        }
        // Accesses whose closing record the journal does not hold: pending (closed just below).
        for (access, line) in accesses {
            if !closed.contains(&access) {
                tree.insert(pending_key(access), line).map_err(backend)?;
            }
        }
        if recovered > 0 {
            tracing::info!(records = recovered, "audit records recovered from the journal");
        }
        let log = AuditLog {
            tree,
            store,
            journal,
            enabled,
            state: Mutex::new(state),
            forward: Mutex::new(None),
            next_access: AtomicU64::new(0),
        };
        log.close_interrupted()?;
        Ok(log)
    }

    /// Closes every access still pending at open — its request was cut short by a crash, or
    /// its outcome was not synced — with outcome 0 and [`INTERRUPTED`], and makes those records
    /// durable before anything else is recorded.
    fn close_interrupted(&self) -> Result<(), StoreError> {
        let mut interrupted = Vec::new();
        let mut last = 0;
        for entry in self.tree.scan_prefix([PENDING_PREFIX]) {
            let (key, value) = entry.map_err(backend)?;
            let id = key.get(1..).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes);
            last = last.max(id);
            match serde_json::from_slice::<AccessLine>(&value) {
                Ok(access) => interrupted.push(access),
                // Never written by Kura: drop it rather than stop the trail.
                Err(_) => self.tree.remove(key).map(drop).map_err(backend)?,
            }
        }
        self.next_access.fetch_max(last, Ordering::Relaxed);
        if interrupted.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            accesses = interrupted.len(),
            "audit: accesses without a recorded outcome closed as interrupted"
        );
        for access in interrupted {
            let event = AuditEvent {
                action: access.action,
                outcome: 0,
                subject: access.subject,
                key_id: access.key_id,
                institution: access.institution,
                address: access.address,
                studies: access.studies,
                series: access.series,
                detail: Some(INTERRUPTED.into()),
            };
            self.append_closing(event, Some(access.access))?;
        }
        self.journal.sync_now().map_err(|e| StoreError::Backend(e.into()))
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Sends a copy of every later record to a syslog collector (best effort: the trail in the
    /// store is the record of truth).
    pub fn forward_to(&self, forwarder: syslog::Forwarder) {
        *self.forward.lock().unwrap_or_else(|p| p.into_inner()) = Some(forwarder);
    }

    /// Records `event` and returns once it is durable (its journal line synced).
    pub async fn record(&self, event: AuditEvent) -> Result<(), StoreError> {
        if !self.enabled {
            return Ok(());
        }
        let ticket = self.append_closing(event, None)?;
        self.wait_durable(ticket).await
    }

    /// Puts a request's access on record before its work starts (see "Durability"): `event`'s
    /// outcome is ignored; [`AuditLog::close_access`] gives it. `None` when the trail is off.
    pub fn open_access(&self, event: &AuditEvent) -> Result<Option<OpenAccess>, StoreError> {
        if !self.enabled {
            return Ok(None);
        }
        let time = now_ms();
        let next = |last: u64| last.max(time * 1000) + 1;
        let previous = self.next_access.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(next(last)));
        let id = next(previous.unwrap_or_else(|last| last));
        let line = AccessLine {
            access: id,
            time,
            action: event.action.chars().take(64).collect(),
            subject: bounded(event.subject.clone()),
            key_id: bounded(event.key_id.clone()),
            institution: bounded(event.institution.clone()),
            address: bounded(event.address.clone()),
            studies: event.studies.iter().take(MAX_STUDIES_PER_RECORD).cloned().collect(),
            series: bounded(event.series.clone()),
        };
        let bytes = serde_json::to_vec(&line).expect("access lines serialise");
        let ticket = self.journal.append(&bytes, journal::Sync::Now).map_err(|e| StoreError::Backend(e.into()))?;
        if let Err(error) = self.tree.insert(pending_key(id), bytes) {
            self.journal.fail(format!("audit tree: {error}"));
            return Err(backend(error));
        }
        Ok(Some(OpenAccess { id, ticket }))
    }

    /// Records the outcome of an access opened by [`AuditLog::open_access`] and returns once
    /// the access is durable (its record follows with the journal's next sync).
    pub async fn close_access(&self, access: OpenAccess, event: AuditEvent) -> Result<(), StoreError> {
        self.append_closing(event, Some(access.id))?;
        self.wait_durable(access.ticket).await
    }

    async fn wait_durable(&self, ticket: u64) -> Result<(), StoreError> {
        self.journal.wait_durable(ticket).await.map_err(|e| StoreError::Backend(e.into()))?;
        self.checkpoint().await;
        Ok(())
    }

    /// Removes the journal files that a catalog commit starting now covers (every record in
    /// them is in the tree already); nothing to do, and no commit, when none is retired.
    async fn checkpoint(&self) {
        let files = self.journal.take_retired();
        if files.is_empty() {
            return;
        }
        let outcome = match self.store.commit().await {
            Ok(()) => self.journal.remove(&files),
            Err(error) => {
                self.journal.keep(files);
                Err(error.to_string())
            }
        };
        if let Err(error) = outcome {
            tracing::warn!(%error, "retired audit journal files are kept for now");
        }
    }

    /// Appends `event` (several records when it names more than [`MAX_STUDIES_PER_RECORD`]
    /// studies) to the journal and the tree; durable once the journal is synced.
    pub fn append(&self, event: AuditEvent) -> Result<Vec<AuditRecord>, StoreError> {
        self.append_records(event, None).map(|(records, _)| records)
    }

    /// [`AuditLog::append`] of the records that close `access`; returns the journal ticket of
    /// the last.
    fn append_closing(&self, event: AuditEvent, access: Option<u64>) -> Result<u64, StoreError> {
        self.append_records(event, access).map(|(_, ticket)| ticket)
    }

    fn append_records(&self, event: AuditEvent, access: Option<u64>) -> Result<(Vec<AuditRecord>, u64), StoreError> {
        let mut chunks: Vec<Vec<String>> =
            event.studies.chunks(MAX_STUDIES_PER_RECORD).map(|chunk| chunk.to_vec()).collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let mut written = Vec::with_capacity(chunks.len());
        let mut ticket = 0;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for studies in chunks {
            let record = AuditRecord {
                v: RECORD_VERSION,
                seq: state.seq + 1,
                prev: state.hash.clone(),
                time: now_ms().max(state.time),
                action: event.action.chars().take(64).collect(),
                outcome: event.outcome,
                subject: bounded(event.subject.clone()),
                key_id: bounded(event.key_id.clone()),
                institution: bounded(event.institution.clone()),
                address: bounded(event.address.clone()),
                studies,
                series: bounded(event.series.clone()),
                detail: bounded(event.detail.clone()),
                // The first record closes the access (and removes its pending entry).
                opened: if written.is_empty() { access } else { None },
            };
            let bytes = serde_json::to_vec(&record).expect("records serialise");
            let next = State { seq: record.seq, hash: hex_sha256(&bytes), time: record.time };
            // A record that closes an access is waited for by nobody (see "Durability").
            let sync = if access.is_some() { journal::Sync::Soon } else { journal::Sync::Now };
            ticket = self.journal.append(&bytes, sync).map_err(|e| StoreError::Backend(e.into()))?;
            if let Err(error) = insert(&self.tree, &bytes, &next, record.opened) {
                // The journal holds a record the tree does not: the next one would reuse its
                // number. Refuse every later record rather than fork the chain.
                self.journal.fail(format!("audit tree: {error}"));
                return Err(error);
            }
            *state = next;
            written.push(record);
        }
        drop(state);
        if let Some(forwarder) = self.forward.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            for record in &written {
                forwarder.send(record);
            }
        }
        Ok((written, ticket))
    }

    /// Walks the whole chain (see the module docs).
    pub fn verify(&self) -> Result<ChainSummary, ChainError> {
        let mut expected = 1u64;
        let mut prev = GENESIS.to_string();
        for entry in self.tree.scan_prefix([RECORD_PREFIX]) {
            let (key, value) = entry.map_err(backend)?;
            let key_seq = u64::from_be_bytes(key[1..].try_into().map_err(|_| ChainError::Broken {
                seq: expected,
                problem: "a record key of the wrong length".into(),
            })?);
            let record: AuditRecord = serde_json::from_slice(&value)
                .map_err(|e| ChainError::Broken { seq: key_seq, problem: format!("unreadable ({e})") })?;
            if key_seq != expected {
                return Err(ChainError::Broken {
                    seq: key_seq,
                    problem: format!("records {expected} to {} are missing (removed)", key_seq.saturating_sub(1)),
                });
            }
            if record.seq != key_seq {
                return Err(ChainError::Broken {
                    seq: key_seq,
                    problem: format!("it carries sequence number {} (records were moved or reordered)", record.seq),
                });
            }
            if record.prev != prev {
                return Err(ChainError::Broken {
                    seq: key_seq,
                    problem: "its previous-record hash does not match: the record before it was modified, or \
                              records were removed or reordered"
                        .into(),
                });
            }
            prev = hex_sha256(&value);
            expected += 1;
        }
        let records = expected - 1;
        match self.tree.get(HEAD_KEY).map_err(backend)? {
            Some(bytes) => {
                let head: Head = serde_json::from_slice(&bytes)
                    .map_err(|e| ChainError::Broken { seq: records, problem: format!("unreadable head ({e})") })?;
                if head.seq != records || head.hash != prev {
                    return Err(ChainError::Broken {
                        seq: records,
                        problem: format!(
                            "the head names record {} but the chain ends at {records} with another hash: the last \
                             record was modified, or the tail was cut",
                            head.seq
                        ),
                    });
                }
            }
            None if records > 0 => {
                return Err(ChainError::Broken { seq: records, problem: "the head entry is missing".into() });
            }
            None => {}
        }
        Ok(ChainSummary { records, head: prev })
    }

    /// The stored bytes of every record from `since` (unix ms) on, oldest first: one JSON
    /// object per line, exactly as hashed (an export can be verified without Kura).
    pub fn export(&self, since: Option<u64>, out: &mut dyn std::io::Write) -> Result<u64, StoreError> {
        let start = self.first_at_or_after(since.unwrap_or(0))?;
        let mut n = 0;
        for entry in self.tree.range(record_key(start)..) {
            let (key, value) = entry.map_err(backend)?;
            if key.first() != Some(&RECORD_PREFIX) {
                break;
            }
            out.write_all(&value).and_then(|_| out.write_all(b"\n")).map_err(|e| StoreError::Backend(Box::new(e)))?;
            n += 1;
        }
        Ok(n)
    }

    fn get(&self, seq: u64) -> Result<Option<AuditRecord>, StoreError> {
        match self.tree.get(record_key(seq)).map_err(backend)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("audit record {seq}: {e}"))),
            None => Ok(None),
        }
    }

    /// The first sequence number whose record is at or after `time` (times never decrease
    /// along the chain, so a binary search finds it in O(log n) reads).
    fn first_at_or_after(&self, time: u64) -> Result<u64, StoreError> {
        let last = self.state.lock().unwrap_or_else(|p| p.into_inner()).seq;
        let (mut low, mut high) = (1u64, last + 1);
        while low < high {
            let middle = low + (high - low) / 2;
            match self.get(middle)? {
                Some(record) if record.time < time => low = middle + 1,
                _ => high = middle,
            }
        }
        Ok(low)
    }

    /// Records matching `query`, oldest first, at most `query.limit` (bounded by
    /// [`MAX_QUERY_LIMIT`]), looking at no more than [`MAX_QUERY_SCAN`] records.
    pub fn query(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let limit = query.limit.clamp(1, MAX_QUERY_LIMIT);
        let mut start = self.first_at_or_after(query.since.unwrap_or(0))?;
        if let Some(after) = query.after {
            start = start.max(after.saturating_add(1));
        }
        let mut records = Vec::new();
        let mut last_seen = None;
        for (scanned, entry) in self.tree.range(record_key(start)..).enumerate() {
            let (key, value) = entry.map_err(backend)?;
            if key.first() != Some(&RECORD_PREFIX) {
                break;
            }
            if scanned == MAX_QUERY_SCAN || records.len() == limit {
                return Ok(AuditPage { records, next: last_seen });
            }
            let record: AuditRecord =
                serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt(format!("audit record: {e}")))?;
            last_seen = Some(record.seq);
            if query.until.is_some_and(|until| record.time >= until) {
                break;
            }
            let principal_ok = query
                .principal
                .as_ref()
                .is_none_or(|p| record.subject.as_ref() == Some(p) || record.key_id.as_ref() == Some(p));
            let study_ok = query.study.as_ref().is_none_or(|s| record.studies.contains(s));
            let action_ok = query.action.as_ref().is_none_or(|a| &record.action == a);
            // Records that act for no institution (failed authentications, the command line)
            // are the deployment's: only the export and the local caller read them.
            let institution_ok = query.institution.as_ref().is_none_or(|i| record.institution.as_ref() == Some(i));
            if principal_ok && study_ok && action_ok && institution_ok {
                records.push(record);
            }
        }
        Ok(AuditPage { records, next: None })
    }
}

/// Where the trail's journal lives in a data directory.
pub fn journal_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("audit")
}

/// `kura audit …` while the server is stopped: the trail of `data_dir`, whose catalog `store` is.
pub fn open_offline(store: &Arc<crate::store::SledStore>, data_dir: &std::path::Path) -> Result<AuditLog, StoreError> {
    let tree = store.tree(TREE)?;
    AuditLog::open(tree, store.clone(), &journal_dir(data_dir), true)
}

#[cfg(test)]
mod tests;
