//! The store: the archive's catalog and source of truth (instance/series/study records, the
//! DICOM JSON metadata, the change log the index replays, and which payload blobs are in use).
//! The payload bytes themselves live in the blob store (`crate::blob`). sled is the embedded
//! backend; the trait keeps room for a PostgreSQL catalog later.
//!
//! # Durability contract
//! Writes become visible to readers of the same process at once, and become **durable** only
//! when a later [`Store::commit`] returns `Ok`. Every implementation must guarantee that after
//! `commit` returns, a process crash or a power loss cannot lose or tear anything written
//! before `commit` was called. [`Store::put_instance`] and [`Store::delete`] are atomic: after a
//! crash either the whole change (records, series, study, payload references and change-log
//! entry) is there or none of it is. The caller writes (and makes durable) a payload blob
//! before the record that references it, so a record never points at a missing blob.
//!
//! Payloads a change stops referencing become *garbage* in the same atomic write; their blobs
//! are deleted once the change is durable, and [`Store::forget_garbage`] then drops the
//! entries. A crash in between leaves the entries, and the archive retries at the next open.
pub mod group_commit;
pub mod keys;
mod sled_store;
pub mod worklist;

pub use crate::model::BoxFuture;
pub use crate::model::records::{
    Change, InstanceRecord, OriginalForm, PayloadRef, RECORD_VERSION, SeriesRecord, StudyRecord,
};
use bytes::Bytes;
pub use sled_store::{LegacyPayload, SledStore, SledStoreOptions};

/// Errors of the storage backend. Always a server-side failure for the client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "the data directory has format {0:?}, which this version of Kura does not know (it reads \
         kura-catalog-1 to kura-catalog-3): start the Kura version that wrote it, or restore a backup"
    )]
    UnknownFormat(String),
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
    /// `garbage` names the replaced payload when the record now points at another one.
    Stored { replaced: bool, garbage: Option<u64> },
    /// The same bytes were already stored; nothing changed and the new payload is not used.
    AlreadyStored,
    /// Different bytes are stored under this SOP Instance UID and the policy is Reject.
    Conflict,
    /// The study belongs to another institution than the record's owner, or the SOP Instance
    /// UID is stored in a study of another institution: nothing changed.
    NotOwner,
}

/// The largest metadata document stored with an instance.
pub const MAX_METADATA_BYTES: usize = 512 * 1024;

/// The archive's catalog. See the module docs for the durability contract.
pub trait Store: Send + Sync + 'static {
    /// A new payload id, never handed out before (it names a blob).
    fn allocate_payload(&self) -> StoreResult<u64>;

    /// Atomically records an instance with its DICOM JSON metadata and, when its frames could
    /// only be found from its bytes, its frame map, and, when it is stored re-encoded, its
    /// original form (duplicates are then recognised by the received bytes); updates its series and study, marks its
    /// payload as referenced, and logs a change. `metadata` must be at most
    /// [`MAX_METADATA_BYTES`].
    fn put_instance(
        &self,
        record: InstanceRecord,
        metadata: &[u8],
        frame_map: Option<&[u8]>,
        original: Option<&OriginalForm>,
        policy: DuplicatePolicy,
    ) -> StoreResult<PutOutcome>;
    /// Atomically removes the instances of a study, of one series of it, or one instance
    /// (`sop_uid` must then be in that series), with their series and study updates and a
    /// change-log entry; their payloads become garbage. Returns the removed records (empty
    /// when nothing matched).
    fn delete(
        &self,
        study_uid: &str,
        series_uid: Option<&str>,
        sop_uid: Option<&str>,
    ) -> StoreResult<Vec<InstanceRecord>>;
    /// The DICOM JSON metadata stored with an instance.
    fn instance_metadata(&self, sop_uid: &str) -> StoreResult<Option<Bytes>>;
    /// The frame map stored with an instance (`dicom::frames::FrameMap::to_stored`), if any.
    fn frame_map(&self, sop_uid: &str) -> StoreResult<Option<Bytes>>;
    /// For an instance stored re-encoded (`--store-compression`), what gives back the bytes it
    /// was received as (`dicom::encode::stored`); `None` for one stored as received.
    fn original_form(&self, sop_uid: &str) -> StoreResult<Option<OriginalForm>>;

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

    /// Whether a record references this payload (the sweep after an unclean stop).
    fn is_referenced(&self, payload: u64) -> StoreResult<bool>;
    /// Payloads no record references any more whose blobs may still exist.
    fn garbage(&self) -> StoreResult<Vec<u64>>;
    /// Drops garbage entries whose blobs are deleted.
    fn forget_garbage(&self, payloads: &[u64]) -> StoreResult<()>;

    /// Changes not yet acknowledged by the index, in sequence order.
    fn pending_changes(&self) -> StoreResult<Vec<Change>>;
    /// Drops change-log entries the index has committed.
    fn forget_changes(&self, seqs: &[u64]) -> StoreResult<()>;

    /// Makes everything written so far durable. Concurrent callers share one flush.
    fn commit(&self) -> BoxFuture<'_, StoreResult<()>>;

    /// Records that the archive is open (durable after the next commit) and says whether the
    /// previous run ended without [`Store::mark_closed`]: then blobs may exist that no record
    /// references (written for instances whose records a crash lost).
    fn mark_open(&self) -> StoreResult<bool>;
    /// Records a clean stop (after the last commit); durable when it returns.
    fn mark_closed(&self) -> BoxFuture<'_, StoreResult<()>>;
}
