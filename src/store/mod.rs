//! The store: the archive's source of truth (payload bytes, instance/series/study records, and
//! the change log the index replays). sled is the embedded backend; the trait keeps room for an
//! S3-compatible payload store and a PostgreSQL catalog later.
//!
//! # Durability contract
//! Writes become visible to readers of the same process at once, and become **durable** only
//! when a later [`Store::commit`] returns `Ok`. Every implementation must guarantee that after
//! `commit` returns, a process crash or a power loss cannot lose or tear anything written
//! before `commit` was called. [`Store::put_instance`] is atomic: after a crash either the whole
//! instance record (with its series, study and change-log updates) is there or none of it is.
//! Payload chunks are written before the record that references them, so a record never points
//! at missing chunks; chunks without a record are swept at [`Store::recover`].

pub mod group_commit;
pub mod keys;
pub mod payload;
pub mod record;
mod sled_store;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
pub use record::{Change, InstanceRecord, PayloadRef, SeriesRecord, StudyRecord};
pub use sled_store::{SledStore, SledStoreOptions};

/// Errors of the storage backend. Always a server-side failure for the client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("data directory has an unknown format version")]
    UnknownFormat,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What to do when an instance arrives whose SOP Instance UID is already stored with
/// different bytes. Identical bytes are always accepted as a no-op (safe client retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DuplicatePolicy {
    /// Refuse the new object; the stored one stays.
    #[default]
    Reject,
    /// Replace the stored object with the new one.
    Overwrite,
}

/// The result of [`Store::put_instance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// The instance is new, or replaced a different object under the Overwrite policy, or the
    /// same object whose records this version of Kura refreshed with more recorded values.
    Stored { replaced: bool },
    /// The same bytes were already stored; nothing changed and the new payload was discarded.
    AlreadyStored,
    /// Different bytes are stored under this SOP Instance UID and the policy is Reject.
    Conflict,
}

/// The largest metadata document stored with an instance (far below sled's blob threshold).
pub const MAX_METADATA_BYTES: usize = 512 * 1024;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The archive's persistent state. See the module docs for the durability contract.
pub trait Store: Send + Sync + 'static {
    /// Reserves a new payload id. Chunks written under it are orphans until a record names it.
    fn allocate_payload(&self) -> StoreResult<u64>;
    /// Writes chunk `index` of `payload`. Chunks must be at most [`SledStoreOptions::chunk_size`].
    fn write_chunk(&self, payload: u64, index: u32, bytes: &[u8]) -> StoreResult<()>;
    fn read_chunk(&self, payload: u64, index: u32) -> StoreResult<Option<Bytes>>;
    /// Removes every chunk of a payload that no record references.
    fn discard_payload(&self, payload: u64) -> StoreResult<()>;
    /// The chunk size this store writes payloads with.
    fn chunk_size(&self) -> u32;

    /// Atomically records an instance with its DICOM JSON metadata, updates its series and
    /// study, and logs a change. `metadata` must be at most [`MAX_METADATA_BYTES`].
    fn put_instance(&self, record: InstanceRecord, metadata: &[u8], policy: DuplicatePolicy)
    -> StoreResult<PutOutcome>;
    /// The DICOM JSON metadata stored with an instance.
    fn instance_metadata(&self, sop_uid: &str) -> StoreResult<Option<Bytes>>;

    fn instance(&self, sop_uid: &str) -> StoreResult<Option<InstanceRecord>>;
    fn series(&self, study_uid: &str, series_uid: &str) -> StoreResult<Option<SeriesRecord>>;
    fn study(&self, study_uid: &str) -> StoreResult<Option<StudyRecord>>;
    /// SOP Instance UIDs of a study, or of one series of it, in key order.
    fn instance_uids(&self, study_uid: &str, series_uid: Option<&str>) -> StoreResult<Vec<String>>;
    /// Series UIDs of a study, in key order.
    fn series_uids(&self, study_uid: &str) -> StoreResult<Vec<String>>;
    /// Every study UID, in key order (used by `reindex`).
    fn study_uids(&self) -> StoreResult<Vec<String>>;
    /// Number of stored instances.
    fn count_instances(&self) -> StoreResult<u64>;

    /// Changes not yet acknowledged by the index, in sequence order.
    fn pending_changes(&self) -> StoreResult<Vec<Change>>;
    /// Drops change-log entries the index has committed.
    fn forget_changes(&self, seqs: &[u64]) -> StoreResult<()>;

    /// Makes everything written so far durable. Concurrent callers share one flush.
    fn commit(&self) -> BoxFuture<'_, StoreResult<()>>;

    /// Crash recovery at open: discards payloads that were written but never recorded.
    fn recover(&self) -> StoreResult<RecoveryReport>;
}

/// What [`Store::recover`] found.
#[derive(Debug, Default, Clone, Copy)]
pub struct RecoveryReport {
    pub orphan_payloads: u64,
}
