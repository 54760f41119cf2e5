//! The audit trail's journal: the records, in order, appended to a plain file and made durable
//! by one `fdatasync` per group, ahead of the catalog.
//!
//! # Why a journal of its own
//! Every answered request waits until its record is durable (issue 18: "durable like
//! instances"). Through the catalog that costs a whole sled flush — a new log buffer written,
//! `sync_file_range`, then `fdatasync`, behind a task and a blocking-pool hop. Appending ~300
//! bytes to a file and `fdatasync`ing it from a thread of its own costs about half of that
//! (measured from outside: +0.30 against +0.55 ms on a 0.2 ms QIDO-RS search; benches/README.md,
//! "Authentication and the audit trail"). The records still go to the catalog's `audit` tree,
//! where queries, `verify` and `export` read them; the catalog makes them durable at its own
//! pace, and the journal covers the gap.
//!
//! # Pre-zeroed files
//! A journal file is filled with zeros a mebibyte at a time, and fsynced, ahead of the lines,
//! which are then written over the zeros in place. `fdatasync` of a file that grows must
//! also commit its new size (a file-system journal commit); of bytes overwritten inside a file
//! whose size and blocks are already durable, only the data. Measured here (benches/README.md):
//! 2.27 ms against 0.074 ms p50 for a 181-byte line under load — the trick of PostgreSQL's
//! pre-allocated WAL segments. Recovery reads a file up to its first zero byte.
//!
//! # Durability contract
//! [`Journal::append`] writes a line and returns its ticket (lines are numbered in the order
//! written, from 1 in each run); [`Journal::wait_durable`] returns once a `fdatasync` that
//! started after that write has finished (concurrent waiters share one: the
//! syncer thread syncs whatever was written while the previous sync ran). A new
//! journal file's name is made durable (directory fsync) before any line is written to it.
//! A file is retired when it grows past its bound: it is synced, a new file takes over, and the
//! retired file is removed only after a catalog commit that started after the switch, so every
//! record lives in a durable journal file or in the durable catalog at every instant.
//!
//! # Recovery
//! [`Journal::replay`] reads the files in order and hands back every line; the trail keeps those
//! that continue its chain (the next sequence number, the previous record's hash) and stops at the
//! first that does not — a torn tail, never acknowledged — so what a power cut left in the
//! catalog plus the journal is exactly the chain of every acknowledged record.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::watch;

/// A journal file is retired past this size.
pub const ROTATE_BYTES: u64 = 16 << 20;
/// A file is read at most this far at recovery (a retired file is at most one line longer than
/// [`ROTATE_BYTES`]; a record line is a few KiB).
const MAX_READ_BYTES: u64 = 2 * ROTATE_BYTES;
const PREFIX: &str = "journal.";

/// How far the journal is durable: every line of a ticket up to `ticket`; `error` once a
/// sync failed (after a failed `fdatasync` nothing written before it can be trusted, so the
/// journal refuses every later record: a request whose access cannot be recorded is refused).
#[derive(Debug, Clone, Default)]
struct Synced {
    ticket: u64,
    error: Option<Arc<str>>,
}

/// A line appended without [`Sync::Now`] is durable at most this long after it was written (or
/// with the next line that is synced now, if sooner).
pub const LAZY_SYNC: std::time::Duration = std::time::Duration::from_millis(5);

/// When a line's `fdatasync` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// At once: someone waits for it.
    Now,
    /// With the next line synced now, or after [`LAZY_SYNC`]: nobody waits for it, and an extra
    /// sync would only delay the next line someone does wait for (one sync runs at a time).
    Soon,
}

/// Zeros added to a journal file at a time (see "Pre-zeroed files").
const FILL_BYTES: u64 = 1 << 20;

struct Writer {
    file: Arc<File>,
    path: PathBuf,
    len: u64,
    /// How far the file holds durable zeros (or lines).
    filled: u64,
    /// The ticket of the last line written.
    ticket: u64,
}

pub struct Journal {
    dir: PathBuf,
    rotate_bytes: u64,
    /// The file lines go to, once the first is written; shared with the syncer thread.
    writer: Arc<Mutex<Option<Writer>>>,
    /// Tells the syncer that lines were written.
    wake: mpsc::Sender<Sync>,
    /// A [`Sync::Soon`] line waits for the syncer's timer.
    lazy_armed: Arc<AtomicBool>,
    /// The files of earlier runs and retired ones, removed after the next catalog commit.
    retired: Mutex<Vec<PathBuf>>,
    next_number: Mutex<u64>,
    /// The last ticket handed out (taken under the writer's lock, so tickets follow file order).
    tickets: AtomicU64,
    synced: Arc<watch::Sender<Synced>>,
}

fn file_number(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?.parse().ok()
}

fn io_text(what: &str, path: &Path, error: std::io::Error) -> String {
    format!("audit journal: {what} {}: {error}", path.display())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Writer {
    /// Adds [`FILL_BYTES`] of zeros to the file and makes them, and the new size, durable. Zeros
    /// are written (not a hole, nor fallocate's unwritten extents: the first write into either
    /// is still a change the file system must journal).
    fn fill(&mut self) -> Result<(), String> {
        let zeros = vec![0u8; FILL_BYTES as usize];
        self.file.write_all_at(&zeros, self.filled).map_err(|e| io_text("cannot fill", &self.path, e))?;
        self.file.sync_all().map_err(|e| io_text("cannot sync", &self.path, e))?;
        self.filled += FILL_BYTES;
        Ok(())
    }
}

/// The syncer: one thread that `fdatasync`s the current file when woken by a line someone waits
/// for ([`Sync::Now`]), or [`LAZY_SYNC`] after the first [`Sync::Soon`] line since its last sync
/// (every line written before a sync starts is covered by it, so waiters share syncs), and
/// tells every waiter how far the journal is durable. Idle, it sleeps. It ends with the journal.
///
/// Measured here (benches/README.md), a thread of its own beat running the sync on the
/// caller's worker, plain or in `block_in_place`, and a catalog commit cost half as much again.
fn spawn_syncer(
    writer: Arc<Mutex<Option<Writer>>>,
    synced: Arc<watch::Sender<Synced>>,
    wakes: mpsc::Receiver<Sync>,
    lazy_armed: Arc<AtomicBool>,
) {
    std::thread::Builder::new()
        .name("kura-audit-sync".into())
        .spawn(move || {
            let mut deadline: Option<Instant> = None;
            loop {
                let wake = match deadline {
                    None => wakes.recv().ok(),
                    Some(at) => match wakes.recv_timeout(at.saturating_duration_since(Instant::now())) {
                        Ok(wake) => Some(wake),
                        Err(mpsc::RecvTimeoutError::Timeout) => Some(Sync::Now),
                        Err(mpsc::RecvTimeoutError::Disconnected) => None,
                    },
                };
                let Some(mut wake) = wake else { break };
                while let Ok(more) = wakes.try_recv() {
                    if more == Sync::Now {
                        wake = Sync::Now;
                    }
                }
                if wake == Sync::Soon {
                    deadline.get_or_insert_with(|| Instant::now() + LAZY_SYNC);
                    continue;
                }
                deadline = None;
                // Lines written from here on are not covered by this sync: a lazy one arms again.
                lazy_armed.store(false, Ordering::SeqCst);
                let Some((file, ticket)) = lock(&writer).as_ref().map(|w| (w.file.clone(), w.ticket)) else {
                    continue;
                };
                if ticket <= synced.borrow().ticket {
                    continue;
                }
                let outcome = file.sync_data();
                synced.send_modify(|state| match &outcome {
                    Ok(()) => state.ticket = state.ticket.max(ticket),
                    Err(e) => state.error = Some(format!("audit journal: fdatasync failed: {e}").into()),
                });
            }
        })
        .expect("the audit syncer thread starts");
}

impl Journal {
    /// The journal in `dir` (the directory is created with the first file). The files found now
    /// are read by [`Journal::replay`] and retired at the first [`Journal::take_retired`].
    pub fn open(dir: &Path, rotate_bytes: u64) -> Result<Journal, String> {
        let files = Self::files(dir)?;
        let next_number = files.last().map_or(1, |(n, _)| n + 1);
        let writer: Arc<Mutex<Option<Writer>>> = Arc::default();
        let synced = Arc::new(watch::channel(Synced::default()).0);
        let (wake, wakes) = mpsc::channel();
        let lazy_armed = Arc::new(AtomicBool::new(false));
        spawn_syncer(writer.clone(), synced.clone(), wakes, lazy_armed.clone());
        Ok(Journal {
            dir: dir.to_path_buf(),
            rotate_bytes,
            writer,
            wake,
            lazy_armed,
            retired: Mutex::new(files.into_iter().map(|(_, path)| path).collect()),
            next_number: Mutex::new(next_number),
            tickets: AtomicU64::new(0),
            synced,
        })
    }

    /// The journal files in `dir`, oldest first.
    fn files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, String> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_text("cannot list", dir, e)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_text("cannot list", dir, e))?;
            if let Some(number) = entry.file_name().to_str().and_then(file_number) {
                files.push((number, entry.path()));
            }
        }
        files.sort();
        Ok(files)
    }

    /// Every line of the files found at open, oldest first (the trail keeps those that continue
    /// its chain). A file is read up to [`MAX_READ_BYTES`].
    pub fn replay(&self) -> Result<Vec<Vec<u8>>, String> {
        let mut lines = Vec::new();
        for path in lock(&self.retired).iter() {
            let mut bytes = Vec::new();
            File::open(path)
                .and_then(|file| file.take(MAX_READ_BYTES).read_to_end(&mut bytes))
                .map_err(|e| io_text("cannot read", path, e))?;
            // The zeros a file was filled with end its lines (a line never holds a zero byte:
            // it is JSON).
            let written = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
            lines.extend(bytes[..written].split(|b| *b == b'\n').filter(|line| !line.is_empty()).map(<[u8]>::to_vec));
        }
        Ok(lines)
    }

    /// Appends `line` (which holds no newline and no zero byte) and returns its ticket. On an
    /// error nothing of the line stays in the journal, or the journal refuses every later line.
    pub fn append(&self, line: &[u8], sync: Sync) -> Result<u64, String> {
        if let Some(error) = &self.synced.borrow().error {
            return Err(error.to_string());
        }
        let mut writer = lock(&self.writer);
        if writer.as_ref().is_none_or(|w| w.len >= self.rotate_bytes) {
            let next = self.next_file()?;
            if let Some(old) = writer.replace(next) {
                // Everything in the old file becomes durable before the switch, so a sync, which
                // covers only the current file, never leaves a line of it behind.
                old.file.sync_data().map_err(|e| self.fail(io_text("cannot sync", &old.path, e)))?;
                self.synced.send_modify(|state| state.ticket = state.ticket.max(old.ticket));
                lock(&self.retired).push(old.path);
            }
        }
        let current = writer.as_mut().expect("a journal file is open");
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line);
        bytes.push(b'\n');
        while current.len + bytes.len() as u64 > current.filled {
            current.fill()?;
        }
        if let Err(error) = current.file.write_all_at(&bytes, current.len) {
            // A partial line would hide every later one from recovery: zero it again.
            let text = io_text("cannot write", &current.path, error);
            return match current.file.write_all_at(&vec![0; bytes.len()], current.len) {
                Ok(()) => Err(text),
                Err(_) => Err(self.fail(text)),
            };
        }
        current.len += bytes.len() as u64;
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed) + 1;
        current.ticket = ticket;
        drop(writer);
        // A lazy line wakes the syncer only when none is waiting for its timer already.
        if sync == Sync::Now || !self.lazy_armed.swap(true, Ordering::SeqCst) {
            let _ = self.wake.send(sync);
        }
        Ok(ticket)
    }

    /// Makes every line written so far durable now, on the caller's thread (start-up work that
    /// has no request to answer).
    pub fn sync_now(&self) -> Result<(), String> {
        let writer = lock(&self.writer);
        let Some(current) = writer.as_ref() else { return Ok(()) };
        current.file.sync_data().map_err(|e| self.fail(io_text("cannot sync", &current.path, e)))?;
        let ticket = current.ticket;
        drop(writer);
        self.synced.send_modify(|state| state.ticket = state.ticket.max(ticket));
        Ok(())
    }

    /// Marks the journal failed for good and returns the reason.
    pub fn fail(&self, text: String) -> String {
        self.synced.send_modify(|state| state.error = Some(text.clone().into()));
        text
    }

    /// A new journal file, its name durable before anything is written to it.
    fn next_file(&self) -> Result<Writer, String> {
        crate::durable_fs::create_dir_all(&self.dir).map_err(|e| io_text("cannot create", &self.dir, e))?;
        let mut number = lock(&self.next_number);
        let path = self.dir.join(format!("{PREFIX}{:020}", *number));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_text("cannot create", &path, e))?;
        let mut writer = Writer { file: Arc::new(file), path, len: 0, filled: 0, ticket: 0 };
        writer.fill()?;
        crate::durable_fs::sync_dir(&self.dir).map_err(|e| io_text("cannot sync", &self.dir, e))?;
        *number += 1;
        Ok(writer)
    }

    /// Waits until the line of `ticket` is durable.
    pub async fn wait_durable(&self, ticket: u64) -> Result<(), String> {
        let mut synced = self.synced.subscribe();
        let state = synced
            .wait_for(|state| state.ticket >= ticket || state.error.is_some())
            .await
            .map_err(|_| "audit journal: the syncer stopped".to_string())?;
        match &state.error {
            _ if state.ticket >= ticket => Ok(()),
            Some(error) => Err(error.to_string()),
            None => unreachable!("wait_for returns once the condition holds"),
        }
    }

    /// The files that a catalog commit starting now makes unnecessary (taken: the caller removes
    /// them after that commit, or gives them back with [`Journal::keep`]).
    pub fn take_retired(&self) -> Vec<PathBuf> {
        std::mem::take(&mut *lock(&self.retired))
    }

    pub fn keep(&self, files: Vec<PathBuf>) {
        lock(&self.retired).extend(files);
    }

    /// Removes retired files after the catalog commit that covers them.
    pub fn remove(&self, files: &[PathBuf]) -> Result<(), String> {
        for path in files {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_text("cannot remove", path, e)),
            }
        }
        // Not needed for the trail (a file that comes back holds only records the catalog
        // has), but a removal should not come back either.
        crate::durable_fs::sync_dir(&self.dir).map_err(|e| io_text("cannot sync", &self.dir, e))
    }
}
