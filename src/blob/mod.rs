//! The blob store: where an instance's bytes live, beside the catalog that points at them.
//!
//! The archive names every blob by a number the catalog allocated ([`BlobId`]); the blob
//! store maps it to a file (the embedded default, [`LocalBlobStore`]) or, later, to an object
//! key in S3-compatible storage. The write side is shaped after `object_store`'s multipart
//! upload (`put_part`, `complete`, `abort`) so that such a backend implements it without
//! changes to the archive.
//!
//! # Durability contract
//! - [`BlobWrite::finish`] returns the blob's final id (a store may name a blob anew when it
//!   finishes, for example by where it landed in a shared log) and makes it readable.
//! - [`BlobStore::make_durable`] returns only when the bytes, the length and the name of every
//!   blob it is given are durable: a process crash **or a power loss** after it returns cannot
//!   lose or tear them. Only then may a catalog record that points at one be committed. A store
//!   whose `finish` is already durable (one file per blob, an S3 multipart upload) has nothing
//!   left to do here; one that appends small blobs to a shared log syncs that log once for every
//!   blob appended before the call, so concurrent uploads share one sync (group commit).
//! - A blob that was written but never finished may or may not survive a crash, whole or in
//!   part; the archive treats it as garbage (it is not referenced) and sweeps it.
//! - [`BlobStore::delete`] returns when the removals are durable; deleting a blob that does not
//!   exist succeeds (deletes are retried after a crash).
//! - Blobs are immutable once finished: readers never see a blob change.

pub mod derived;
mod local;
mod pack;

use std::io::{Read, Seek};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;

pub use local::LocalBlobStore;

use crate::store::BoxFuture;

/// A blob's name: the number the catalog allocated for it, or one the store gave it when it was
/// finished (see [`FinishedBlob`]); never reused while the blob exists.
pub type BlobId = u64;

/// A blob whose bytes are all written: readable now, durable after [`BlobStore::make_durable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinishedBlob {
    pub id: BlobId,
    pub length: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} does not exist")]
    Missing(BlobId),
    #[error("blob {0} is shorter than its record says")]
    Short(BlobId),
    #[error("the storage is full: less than the reserved {reserve_mib} MiB are free")]
    Full { reserve_mib: u64 },
    #[error("blob storage failed: {0}")]
    Io(#[from] std::io::Error),
}

impl BlobError {
    /// The storage has no room: the client may retry later (FailureReason A700), the archive is
    /// otherwise fine.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            BlobError::Full { .. } => true,
            BlobError::Io(e) => matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)),
            _ => false,
        }
    }
}

pub type BlobResult<T> = Result<T, BlobError>;

/// A blob being written. A store may refuse a write with [`BlobError::Full`] before the disk is
/// full, to keep room for the catalog. Dropping it without [`BlobWrite::finish`] leaves garbage that
/// [`BlobWrite::abort`] or the archive's sweep removes.
pub trait BlobWrite: Send {
    /// Appends bytes. They are not durable before `finish`.
    fn write(&mut self, bytes: &[u8]) -> BoxFuture<'_, BlobResult<()>>;
    /// Completes the blob and returns its final id and length (see the module docs).
    fn finish(self: Box<Self>) -> BoxFuture<'static, BlobResult<FinishedBlob>>;
    /// Gives the blob up and removes what was written of it.
    fn abort(self: Box<Self>) -> BoxFuture<'static, BlobResult<()>>;
}

/// Blocking random access to a blob, for parsing and decoding on the blocking pool.
pub trait BlobRead: Read + Seek + Send {}
impl<T: Read + Seek + Send> BlobRead for T {}

/// Where instance bytes live. See the module docs for the durability contract.
pub trait BlobStore: Send + Sync + 'static {
    /// Starts writing blob `id`, which must not exist yet.
    fn create(&self, id: BlobId) -> BoxFuture<'_, BlobResult<Box<dyn BlobWrite>>>;
    /// Makes finished blobs durable (see the module docs).
    fn make_durable<'a>(&'a self, ids: &'a [BlobId]) -> BoxFuture<'a, BlobResult<()>>;
    /// A blocking reader over the blob (call it from the blocking pool).
    fn reader(&self, id: BlobId) -> BlobResult<Box<dyn BlobRead>>;
    /// Streams `length` bytes from `offset`; an error if the blob holds fewer.
    fn read_range(&self, id: BlobId, offset: u64, length: u64) -> BoxStream<'static, BlobResult<Bytes>>;
    /// Removes blobs durably; a missing blob is not an error.
    fn delete(&self, ids: Vec<BlobId>) -> BoxFuture<'_, BlobResult<()>>;
    /// Every blob that exists, finished or not (the sweep after an unclean stop).
    fn list(&self) -> BlobResult<Vec<BlobId>>;
}

pub type SharedBlobStore = Arc<dyn BlobStore>;
