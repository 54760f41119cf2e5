//! Encoded frames kept for the next reader (issue 19): a frame encoded on request (JPEG-LS,
//! JPEG XL, JPEG 2000, HTJ2K) goes into a blob store of its own beside the instances' one, so a
//! second reader of the same frames in the same syntax pays no encoding.
//!
//! - Keyed by instance, the stored version of it (the record's change sequence number and
//!   payload blob: an overwritten instance has new ones, so its old frames are never found
//!   again), frame and codec. Deleting an instance drops its entries at once.
//! - Bounded by a byte budget (`--encode-cache-bytes`, 0 disables it): the least recently used
//!   entries are evicted, their blobs deleted, until the new one fits.
//! - The index is held in memory only and the cache's blobs are removed when the archive opens:
//!   a crash loses the cache, never serves a torn entry from it. Every entry also carries its
//!   length and SHA-256, checked on each read; a mismatch drops the entry and encodes anew.
//!
//! The cache is derived state: nothing in it is acknowledged to anyone, so it has no durability
//! contract to keep and no catalog records.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::blob::{BlobId, LocalBlobStore, SharedBlobStore};
use crate::dicom::encode::Codec;
use crate::model::records::InstanceRecord;

/// The default budget: a few studies' worth of frames (a 300-slice CT in JPEG-LS is ~45 MiB).
pub const DEFAULT_BYTES: u64 = 512 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    sop_instance_uid: String,
    seq: u64,
    payload: BlobId,
    frame: u32,
    codec: Codec,
}

impl Key {
    fn new(record: &InstanceRecord, frame: u32, codec: Codec) -> Key {
        Key {
            sop_instance_uid: record.sop_instance_uid.clone(),
            seq: record.seq,
            payload: record.payload.id,
            frame,
            codec,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    blob: BlobId,
    length: u64,
    sha256: [u8; 32],
    /// When it was last used (a tick of [`State::clock`]).
    used: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<Key, Entry>,
    /// Entries by last use, oldest first.
    by_use: BTreeMap<u64, Key>,
    bytes: u64,
    clock: u64,
}

impl State {
    fn touch(&mut self, key: &Key) -> Option<Entry> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.entries.get_mut(key)?;
        self.by_use.remove(&entry.used);
        entry.used = clock;
        self.by_use.insert(clock, key.clone());
        Some(entry.clone())
    }

    fn remove(&mut self, key: &Key) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.by_use.remove(&entry.used);
        self.bytes -= entry.length;
        Some(entry)
    }
}

/// What the cache did since the archive opened (for tests and operators).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Frames served from the cache.
    pub hits: u64,
    /// Frames that had to be encoded.
    pub misses: u64,
    /// Entries dropped to make room.
    pub evictions: u64,
    pub entries: u64,
    pub bytes: u64,
}

pub struct EncodeCache {
    blobs: SharedBlobStore,
    budget: u64,
    state: Mutex<State>,
    next_blob: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl EncodeCache {
    /// Opens the cache's blob store in `dir`, emptied of what an earlier run left.
    pub async fn open(dir: &Path, budget: u64, min_free: u64) -> Result<EncodeCache, crate::error::Error> {
        let blobs: SharedBlobStore = LocalBlobStore::open(dir, min_free)?;
        let stale = blobs.list()?;
        if !stale.is_empty() {
            blobs.delete(stale).await?;
        }
        Ok(EncodeCache {
            blobs,
            budget,
            state: Mutex::default(),
            next_blob: AtomicU64::new(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        })
    }

    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// The cached codestream of a frame, checked against its length and hash.
    pub async fn get(&self, record: &InstanceRecord, frame: u32, codec: Codec) -> Option<Bytes> {
        if !self.enabled() {
            return None;
        }
        let key = Key::new(record, frame, codec);
        let entry = self.state.lock().expect("cache lock").touch(&key)?;
        let mut chunks = self.blobs.read_range(entry.blob, 0, entry.length);
        let mut bytes = BytesMut::with_capacity(entry.length as usize);
        let mut intact = true;
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(_) => {
                    intact = false;
                    break;
                }
            }
        }
        let intact = intact && bytes.len() as u64 == entry.length && Sha256::digest(&bytes)[..] == entry.sha256[..];
        if !intact {
            tracing::warn!(blob = entry.blob, "an encoded-frame cache entry failed its check; encoding anew");
            self.drop_entries(vec![key]).await;
            return None;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(bytes.freeze())
    }

    /// Counts frames that had to be encoded.
    pub fn missed(&self, frames: usize) {
        self.misses.fetch_add(frames as u64, Ordering::Relaxed);
    }

    /// Keeps a frame's codestream, evicting the least recently used entries to stay within the
    /// budget. Failing to write (a full disk) only means the frame is not cached.
    pub async fn put(&self, record: &InstanceRecord, frame: u32, codec: Codec, codestream: &[u8]) {
        let length = codestream.len() as u64;
        if !self.enabled() || length > self.budget || length == 0 {
            return;
        }
        let key = Key::new(record, frame, codec);
        if self.state.lock().expect("cache lock").entries.contains_key(&key) {
            return;
        }
        let id = self.next_blob.fetch_add(1, Ordering::Relaxed);
        let finished = async {
            let mut write = self.blobs.create(id).await?;
            write.write(codestream).await?;
            write.finish().await
        }
        .await;
        let blob = match finished {
            Ok(finished) => finished.id,
            Err(error) => {
                tracing::debug!(%error, "encoded frame not cached");
                return;
            }
        };
        let sha256: [u8; 32] = Sha256::digest(codestream).into();
        let (evicted, duplicate) = {
            let mut state = self.state.lock().expect("cache lock");
            if state.entries.contains_key(&key) {
                (Vec::new(), true)
            } else {
                let mut evicted = Vec::new();
                while state.bytes + length > self.budget {
                    let Some((_, oldest)) = state.by_use.pop_first() else { break };
                    if let Some(entry) = state.entries.remove(&oldest) {
                        state.bytes -= entry.length;
                        evicted.push(entry.blob);
                    }
                }
                state.clock += 1;
                let used = state.clock;
                state.by_use.insert(used, key.clone());
                state.entries.insert(key, Entry { blob, length, sha256, used });
                state.bytes += length;
                (evicted, false)
            }
        };
        let mut garbage = evicted;
        self.evictions.fetch_add(garbage.len() as u64, Ordering::Relaxed);
        if duplicate {
            garbage.push(blob);
        }
        if !garbage.is_empty()
            && let Err(error) = self.blobs.delete(garbage).await
        {
            tracing::warn!(%error, "evicted encoded frames could not be deleted");
        }
    }

    /// Drops every entry of these instances (deleted, or replaced by a new version).
    pub async fn forget(&self, sop_instance_uids: &[&str]) {
        if !self.enabled() {
            return;
        }
        let keys: Vec<Key> = {
            let state = self.state.lock().expect("cache lock");
            state
                .entries
                .keys()
                .filter(|key| sop_instance_uids.contains(&key.sop_instance_uid.as_str()))
                .cloned()
                .collect()
        };
        self.drop_entries(keys).await;
    }

    async fn drop_entries(&self, keys: Vec<Key>) {
        let blobs: Vec<BlobId> = {
            let mut state = self.state.lock().expect("cache lock");
            keys.iter().filter_map(|key| state.remove(key)).map(|entry| entry.blob).collect()
        };
        if !blobs.is_empty()
            && let Err(error) = self.blobs.delete(blobs).await
        {
            tracing::warn!(%error, "encoded frames could not be deleted");
        }
    }

    pub fn stats(&self) -> CacheStats {
        let state = self.state.lock().expect("cache lock");
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            entries: state.entries.len() as u64,
            bytes: state.bytes,
        }
    }
}
