//! The domain core: the archive facade over the store (source of truth) and the index
//! (derived). HTTP handlers and, later, DIMSE services call only this.

mod costs;
pub mod encode_cache;
mod indexing;
pub mod ingest;
mod migrate;
pub mod reindex;
pub mod renditions;
pub mod shares;
pub mod tenancy;
mod visibility;
pub mod worklist;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;

pub use ingest::{IngestError, IngestLimits, InstanceFailure, StoredInstance};
pub use shares::{CreatedShare, Grantee, NewShare, ShareInfo, ShareStore};
pub use tenancy::Grants;

use crate::auth::Principal;
use crate::auth::keys::KeyStore;
use crate::blob::derived::DerivedStore;
use crate::blob::{BlobError, BlobStore, LocalBlobStore, SharedBlobStore};
use crate::dicom::attrs::Level;
use crate::dicom::encode::{Codec, PixelFormat};
use crate::dicom::frames::{FrameError, FrameMap};
use crate::dicom::part10::AttributeValue;
use crate::dicom::pixels::PixelDescription;
use crate::error::Error;
use crate::index::{Index, SearchHits, SearchQuery, TantivyIndex};
use crate::memory::{MemoryBudget, MemoryPermit};
use crate::store::{DuplicatePolicy, InstanceRecord, SeriesRecord, SledStore, SledStoreOptions, Store, StudyRecord};
use encode_cache::{CacheStats, EncodeCache};

/// Present while an index rebuild is under way.
const REBUILD_MARKER: &str = "index-rebuild-in-progress";

/// How the archive is set up.
#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    pub duplicate_policy: DuplicatePolicy,
    pub max_instance_bytes: u64,
    pub store: SledStoreOptions,
    /// Where payload blobs go; `None` means `{data}/blobs`.
    pub blob_dir: Option<PathBuf>,
    /// Free space below which new blobs are refused, so that the catalog and the index (which
    /// a full disk would stop) always have room.
    pub min_free_bytes: u64,
    /// The memory budget of parses, codec jobs, ZIP and metadata responses (`crate::memory`).
    pub memory_budget_bytes: u64,
    /// How long a reservation that fits waits for the budget (`memory::MemoryBudget::wait`).
    pub memory_wait: std::time::Duration,
    /// The UPS worklist's bounds and retention (`worklist`).
    pub worklist: worklist::WorklistOptions,
    /// Keep the audit trail (`crate::audit`); off only with --no-audit.
    pub audit: bool,
    /// The bytes of rendered images kept for the next reader (`renditions`); 0 keeps none.
    pub rendition_cache_bytes: u64,
    /// Make thumbnails and previews after each store (`renditions`).
    pub precompute_renditions: bool,
    /// Bytes the cache of encoded frames may hold (`encode_cache`); 0 disables it.
    pub encode_cache_bytes: u64,
    /// The lossless syntax new instances with native pixel data are stored in
    /// (`--store-compression`, `dicom::encode::stored`); `None`: stored as received.
    pub store_compression: Option<Codec>,
}

impl ArchiveOptions {
    /// Whether a stored instance can be replaced by a different object under its SOP Instance
    /// UID (`--duplicates overwrite`): then what an instance URL names can change.
    pub fn replaces_instances(&self) -> bool {
        self.duplicate_policy != DuplicatePolicy::Reject
    }
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions {
            duplicate_policy: DuplicatePolicy::Reject,
            max_instance_bytes: 4 * 1024 * 1024 * 1024,
            store: SledStoreOptions::default(),
            blob_dir: None,
            min_free_bytes: 1024 * 1024 * 1024,
            memory_budget_bytes: crate::memory::DEFAULT_BUDGET_MIB * 1024 * 1024,
            memory_wait: crate::memory::DEFAULT_WAIT,
            worklist: worklist::WorklistOptions::default(),
            audit: true,
            rendition_cache_bytes: 1024 * 1024 * 1024,
            precompute_renditions: true,
            encode_cache_bytes: encode_cache::DEFAULT_BYTES,
            store_compression: None,
        }
    }
}

pub struct Archive {
    data_dir: PathBuf,
    store: Arc<dyn Store>,
    blobs: SharedBlobStore,
    index: Arc<dyn Index>,
    limits: IngestLimits,
    /// Brings the index up to the store's changes (see `visibility`).
    follower: Arc<visibility::IndexFollower>,
    /// Pixel decoding is CPU-heavy: at most one job per core runs at a time, the others wait. A
    /// permit is owned by the blocking job until it ends, not by the request: a client that
    /// leaves does not free it early. Memory is the budget's business, not this one's.
    codec_permits: Arc<tokio::sync::Semaphore>,
    /// What memory-heavy work draws from (`crate::memory`).
    budget: Arc<MemoryBudget>,
    /// Codec jobs running on the blocking pool now.
    codec_jobs: Arc<std::sync::atomic::AtomicUsize>,
    /// The API keys, on the catalog's database (`auth::keys`).
    keys: Arc<KeyStore>,
    /// The UPS worklist, on the catalog's database (`worklist`).
    worklist: Arc<worklist::Worklist>,
    /// The shares, on the catalog's database (`shares`).
    shares: Arc<ShareStore>,
    /// The audit trail, on the catalog's database (`crate::audit`).
    audit: Arc<crate::audit::AuditLog>,
    /// Rendered images kept for the next reader (`renditions`).
    derived: Arc<DerivedStore>,
    /// Instances waiting for their store-time renditions.
    renditions: renditions::Queue,
    precompute_renditions: bool,
    /// Frames encoded on request, for the next reader (`encode_cache`).
    encode_cache: Arc<EncodeCache>,
}

impl Archive {
    /// Opens the archive in `data_dir` (`store/` and `index/` beneath it), sweeps what a crash
    /// left half-written, and brings the index up to date with the store.
    pub async fn open(data_dir: &Path, options: ArchiveOptions) -> Result<Archive, Error> {
        crate::durable_fs::create_dir_all(data_dir).map_err(Error::internal)?;
        let sled = SledStore::open(&data_dir.join("store"), options.store.clone())?;
        let key_tree = sled.tree(crate::auth::keys::TREE)?;
        let worklist_records: Arc<dyn crate::store::worklist::WorklistStore> =
            Arc::new(crate::store::worklist::SledWorklist::new(sled.tree(crate::store::worklist::TREE)?));
        let share_tree = sled.tree(shares::TREE)?;
        let audit_tree = sled.tree(crate::audit::TREE)?;
        let blob_dir = options.blob_dir.clone().unwrap_or_else(|| data_dir.join("blobs"));
        let blobs: SharedBlobStore = LocalBlobStore::open(&blob_dir, options.min_free_bytes)?;
        let unclean = sled.mark_open()?;
        sled.commit().await?;
        if sled.is_legacy_format() {
            migrate::payloads_out_of_sled(&sled, blobs.as_ref()).await?;
        }
        let store: Arc<dyn Store> = sled;
        let keys = Arc::new(KeyStore::new(key_tree, store.clone()));
        let worklist = worklist::Worklist::open(store.clone(), worklist_records, options.worklist.clone()).await?;
        spawn_worklist_sweep(&worklist);
        let shares = Arc::new(ShareStore::new(share_tree, store.clone()));
        let audit = Arc::new(crate::audit::AuditLog::open(
            audit_tree,
            store.clone(),
            &crate::audit::journal_dir(data_dir),
            options.audit,
        )?);
        if unclean {
            let swept = sweep_unreferenced(store.as_ref(), blobs.as_ref()).await?;
            if swept > 0 {
                tracing::info!(blobs = swept, "swept the blobs of instances a crash left unrecorded");
            }
        }
        collect_garbage(store.as_ref(), blobs.as_ref()).await?;
        let (index, needs_rebuild) = TantivyIndex::open(&data_dir.join("index"), &data_dir.join(REBUILD_MARKER))?;
        let needs_rebuild = needs_rebuild || data_dir.join(REBUILD_MARKER).exists();
        let budget = MemoryBudget::new(options.memory_budget_bytes, options.memory_wait);
        let encode_cache = Arc::new(
            EncodeCache::open(&data_dir.join("encode-cache"), options.encode_cache_bytes, options.min_free_bytes)
                .await?,
        );
        let archive = Archive {
            data_dir: data_dir.to_path_buf(),
            follower: visibility::IndexFollower::start(store.clone(), index.clone()),
            store,
            blobs,
            index,
            limits: IngestLimits {
                max_instance_bytes: options.max_instance_bytes,
                policy: options.duplicate_policy,
                budget: budget.clone(),
                store_compression: options.store_compression,
            },
            codec_permits: Arc::new(tokio::sync::Semaphore::new(codec_slots())),
            budget,
            codec_jobs: Default::default(),
            keys,
            worklist,
            shares,
            audit,
            derived: Arc::new(
                DerivedStore::open(&data_dir.join("derived"), options.rendition_cache_bytes)
                    .map_err(Error::internal)?,
            ),
            renditions: renditions::Queue::new(),
            precompute_renditions: options.precompute_renditions,
            encode_cache,
        };
        if needs_rebuild {
            tracing::info!("index schema changed; rebuilding from the store");
            archive.reindex().await?;
        } else {
            let replayed = archive.follower.apply().await?;
            if replayed > 0 {
                tracing::info!(changes = replayed, "replayed store changes into the index");
            }
        }
        Ok(archive)
    }

    /// Starts taking instances in (the parts of a STOW-RS request, later C-STOREs of an
    /// association). See [`StoreBatch`].
    pub fn begin_store<'a>(&'a self, principal: &'a Principal) -> StoreBatch<'a> {
        StoreBatch { archive: self, principal, prepared: Vec::new(), held: 0, results: Vec::new() }
    }

    /// The UPS worklist (PS3.4 Annex CC): workitems, subscriptions, event queues.
    pub fn worklist(&self) -> &Arc<worklist::Worklist> {
        &self.worklist
    }

    /// The API keys.
    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// The audit trail.
    pub fn audit(&self) -> &Arc<crate::audit::AuditLog> {
        &self.audit
    }

    /// Makes every instance stored so far durable (group commit). Every search that starts
    /// after this returns finds them: searches catch the index up first (see `visibility`),
    /// so the answer to a STOW-RS request does not wait for an index commit.
    pub async fn make_durable(&self) -> Result<(), Error> {
        let started = std::time::Instant::now();
        let garbage = self.commit_catalog().await?;
        delete_blobs(self.store.as_ref(), self.blobs.as_ref(), &garbage).await?;
        tracing::debug!(store_commit_us = started.elapsed().as_micros() as u64, "durable");
        Ok(())
    }

    /// Commits the catalog, and returns the garbage payloads whose unreferencing that commit made
    /// durable: read before the commit, so only then may their blobs go.
    async fn commit_catalog(&self) -> Result<Vec<u64>, Error> {
        let garbage = self.store.garbage()?;
        self.store.commit().await?;
        Ok(garbage)
    }

    /// Waits until the index reflects every change made before this call (read-your-writes
    /// for searches); cheap when it already does.
    pub async fn catch_up_index(&self) -> Result<(), Error> {
        self.follower.catch_up().await
    }

    /// Makes the index durable up to everything applied (at shutdown).
    pub async fn checkpoint_index(&self) -> Result<(), Error> {
        self.follower.checkpoint().await
    }

    /// The shares.
    pub fn shares(&self) -> &Arc<ShareStore> {
        &self.shares
    }

    /// What `principal` may see now (read from the share store at every call).
    pub fn grants(&self, principal: &Principal) -> Result<Grants, Error> {
        Grants::of(principal, &self.shares)
    }

    /// Searches the index for what `principal` may see: the restriction is part of the index
    /// query, so the total (and with it paging and the "more results" Warning) counts visible
    /// matches only.
    pub fn search(&self, principal: &Principal, query: &SearchQuery) -> Result<SearchHits, Error> {
        let scope = self.grants(principal)?.search_scope();
        if scope.is_none() {
            return Ok(self.index.search(query)?);
        }
        let query = SearchQuery { scope, ..query.clone() };
        Ok(self.index.search(&query)?)
    }

    /// The values a search returns for a study (its attributes, the computed ones and counts),
    /// read from the store: for relational searches, whose hits are series or instances.
    pub fn study_row(&self, principal: &Principal, study_uid: &str) -> Result<Option<Vec<AttributeValue>>, Error> {
        Ok(self.study(principal, study_uid)?.as_ref().map(indexing::study_row))
    }

    /// The values a search returns for a series, read from the store.
    pub fn series_row(
        &self,
        principal: &Principal,
        study_uid: &str,
        series_uid: &str,
    ) -> Result<Option<Vec<AttributeValue>>, Error> {
        Ok(self.series(principal, study_uid, series_uid)?.as_ref().map(indexing::series_row))
    }

    /// A study `principal` may see (`None` when it does not exist or is not visible: the same).
    pub fn study(&self, principal: &Principal, study_uid: &str) -> Result<Option<StudyRecord>, Error> {
        let grants = self.grants(principal)?;
        Ok(self.store.study(study_uid)?.filter(|study| grants.study(&study.owner, study_uid)))
    }

    /// The owner of a study, if it exists.
    fn owner_of(&self, study_uid: &str) -> Result<Option<String>, Error> {
        Ok(self.store.study(study_uid)?.map(|study| study.owner))
    }

    pub fn series(
        &self,
        principal: &Principal,
        study_uid: &str,
        series_uid: &str,
    ) -> Result<Option<SeriesRecord>, Error> {
        let grants = self.grants(principal)?;
        let Some(owner) = self.owner_of(study_uid)? else { return Ok(None) };
        if !grants.series(&owner, study_uid, series_uid) {
            return Ok(None);
        }
        Ok(self.store.series(study_uid, series_uid)?)
    }

    /// An instance `principal` may see.
    pub fn instance(&self, principal: &Principal, sop_uid: &str) -> Result<Option<InstanceRecord>, Error> {
        let grants = self.grants(principal)?;
        let Some(record) = self.store.instance(sop_uid)? else { return Ok(None) };
        let owner = self.owner_of(&record.study_uid)?.unwrap_or_else(|| record.owner.clone());
        Ok(grants.series(&owner, &record.study_uid, &record.series_uid).then_some(record))
    }

    /// Shares a study, or a series of it, on behalf of an administrator of its owner;
    /// `NotFound`, as for an unknown study, when the caller's institution does not own it.
    pub async fn create_share(&self, principal: &Principal, share: NewShare) -> Result<CreatedShare, Error> {
        let grants = self.grants(principal)?;
        let owner = self
            .owner_of(&share.study_uid)?
            .filter(|owner| grants.owns(owner))
            .ok_or_else(|| Error::not_found("no such study"))?;
        if let Some(series_uid) = &share.series_uid
            && self.store.series(&share.study_uid, series_uid)?.is_none()
        {
            return Err(Error::not_found("no such series"));
        }
        Ok(self.shares.create(share, &owner, &principal.subject).await?)
    }

    /// The shares `principal` manages: those of its institution's studies (every share for the
    /// deployment-wide principal).
    pub fn list_shares(&self, principal: &Principal) -> Result<Vec<ShareInfo>, Error> {
        Ok(self.shares.list(self.managed_owner(principal))?)
    }

    /// Revokes a share of the caller's institution; `NotFound` for any other.
    pub async fn revoke_share(&self, principal: &Principal, id: &str) -> Result<ShareInfo, Error> {
        if matches!(principal.scope, crate::auth::Scope::Link(_)) {
            return Err(Error::not_found("no such share"));
        }
        Ok(self.shares.revoke(id, self.managed_owner(principal)).await?)
    }

    /// The owner whose shares (and keys) `principal` manages; `None`: all of them.
    pub fn managed_owner<'p>(&self, principal: &'p Principal) -> Option<&'p str> {
        match principal.scope {
            crate::auth::Scope::Deployment => None,
            _ => Some(principal.institution.as_str()),
        }
    }

    /// The instances of a study, series or single instance, in store order; `NotFound` when
    /// the target does not exist (PS3.18 §10.4.3).
    pub fn instances_of(
        &self,
        principal: &Principal,
        level: Level,
        study_uid: &str,
        series_uid: Option<&str>,
        sop_uid: Option<&str>,
    ) -> Result<Vec<InstanceRecord>, Error> {
        let not_found = || Error::not_found(format!("no such {}", level_name(level)));
        let grants = self.grants(principal)?;
        let owner = self.owner_of(study_uid)?.ok_or_else(not_found)?;
        if !grants.study(&owner, study_uid) {
            return Err(not_found());
        }
        let uids = match (level, series_uid, sop_uid) {
            (Level::Instance, Some(series), Some(sop)) => {
                let record = self.instance(principal, sop)?.ok_or_else(not_found)?;
                if record.study_uid != study_uid || record.series_uid != series {
                    return Err(not_found());
                }
                return Ok(vec![record]);
            }
            (Level::Series, Some(series), _) => self.store.instance_uids(study_uid, Some(series))?,
            _ => self.store.instance_uids(study_uid, None)?,
        };
        let mut records = Vec::with_capacity(uids.len());
        for uid in uids {
            // A study visible through a shared series gives that series' instances only.
            if let Some(record) = self.store.instance(&uid)?
                && grants.series(&owner, study_uid, &record.series_uid)
            {
                records.push(record);
            }
        }
        if records.is_empty() {
            return Err(not_found());
        }
        Ok(records)
    }

    /// The instance `sop_uid` if it belongs to that study and series; `NotFound` otherwise.
    pub fn instance_in(
        &self,
        principal: &Principal,
        study_uid: &str,
        series_uid: &str,
        sop_uid: &str,
    ) -> Result<InstanceRecord, Error> {
        self.instance(principal, sop_uid)?
            .filter(|record| record.study_uid == study_uid && record.series_uid == series_uid)
            .ok_or_else(|| Error::not_found("no such instance"))
    }

    /// The DICOM JSON metadata computed when the instance was stored; `None` when the instance
    /// was deleted after `record` was read (a record and its metadata go in one atomic batch).
    pub fn instance_metadata(&self, record: &InstanceRecord) -> Result<Option<Bytes>, Error> {
        Ok(self.store.instance_metadata(&record.sop_instance_uid)?)
    }

    /// `length` stored bytes of an instance from `offset` (clamped to its end), as a stream.
    pub fn payload_range(
        &self,
        record: &InstanceRecord,
        offset: u64,
        length: u64,
    ) -> impl Stream<Item = Result<Bytes, BlobError>> + Send + 'static + use<> {
        let end = offset.saturating_add(length).min(record.payload.length);
        self.blobs.read_range(record.payload.id, offset.min(end), end - offset.min(end))
    }

    /// A few stored bytes of an instance (offset tables, markers); at most `length` bytes.
    pub fn read_bytes(&self, record: &InstanceRecord, offset: u64, length: usize) -> Result<Vec<u8>, Error> {
        use std::io::{Read, Seek, SeekFrom};
        let mut reader = self.blobs.reader(record.payload.id)?;
        reader.seek(SeekFrom::Start(offset)).map_err(Error::internal)?;
        let mut bytes = Vec::with_capacity(length.min(1 << 20));
        reader.take(length as u64).read_to_end(&mut bytes).map_err(Error::internal)?;
        Ok(bytes)
    }

    /// Where each frame of an instance is: the map worked out when the instance was stored, or
    /// (for maps that follow from the record alone, and records of an older Kura) worked out now
    /// on the blocking pool.
    pub async fn frame_map(
        &self,
        record: &InstanceRecord,
        description: &PixelDescription,
    ) -> Result<Result<FrameMap, FrameError>, Error> {
        let Some(layout) = record.pixel_data.as_ref() else { return Ok(Err(FrameError::NoPixelData)) };
        if let Some(stored) = self.store.frame_map(&record.sop_instance_uid)?
            && let Some(map) =
                FrameMap::from_stored(&stored, description.frames, layout.fragments.len().saturating_sub(1))
        {
            return Ok(Ok(map));
        }
        let (blobs, record, description) = (self.blobs.clone(), record.clone(), *description);
        tokio::task::spawn_blocking(move || map_frames(blobs.as_ref(), &record, &description))
            .await
            .map_err(Error::internal)?
    }

    /// Where a value inside a sequence is stored (offset, length), found by its path (sequence
    /// tag, item number, …, tag: `dicom::json::Context::nested_bulk_values`) by walking the
    /// stored element framing again: nothing per nested value is kept in the catalog, and a path
    /// that names no hidden value finds nothing.
    pub async fn nested_value(&self, record: &InstanceRecord, path: Vec<u32>) -> Result<Option<(u64, u64)>, Error> {
        let mut reader = self.blobs.reader(record.payload.id)?;
        let total = record.payload.length;
        // The walk keeps the fragment list of encapsulated Pixel Data: 12 bytes a fragment.
        let fragments = record.pixel_data.as_ref().map_or(0, |layout| layout.fragments.len() as u64);
        let _permit = self.reserve_memory(64 * 1024 + fragments * 16).await?;
        tokio::task::spawn_blocking(move || {
            let layout = crate::dicom::layout::walk(&mut reader, total, false).map_err(Error::internal)?;
            Ok(layout
                .nested_values
                .into_iter()
                .find(|value| value.path == path)
                .map(|value| (value.offset, value.length)))
        })
        .await
        .map_err(Error::internal)?
    }

    /// What gives back the received bytes of an instance stored re-encoded; `None` for one
    /// stored as received (only an encapsulated stored syntax can be a re-encoding).
    pub fn original_form(&self, record: &InstanceRecord) -> Result<Option<crate::store::OriginalForm>, Error> {
        if record.pixel_data.as_ref().is_none_or(|layout| layout.length.is_some()) {
            return Ok(None);
        }
        Ok(self.store.original_form(&record.sop_instance_uid)?)
    }

    /// The instance re-encoded in Explicit VR Little Endian, its pixel data decoded when it was
    /// compressed (see `dicom::transcode`). The bytes hold their share of the memory budget until
    /// they are dropped.
    ///
    /// An instance stored re-encoded (`--store-compression`) that was received in Explicit VR
    /// Little Endian gives back exactly the bytes it was received as (`dicom::encode::stored`).
    pub async fn explicit_little_endian(&self, record: &InstanceRecord) -> Result<Bytes, Error> {
        if let Some(original) = self.original_form(record)? {
            let mut reader = self.blobs.reader(record.payload.id)?;
            let estimate = record.payload.length.saturating_add(original.length.saturating_mul(2));
            let (bytes, permit) = self
                .run_codec(estimate, move || {
                    let mut stored = Vec::new();
                    std::io::Read::read_to_end(&mut reader, &mut stored)
                        .map_err(|e| crate::dicom::transcode::TranscodeError::Failed(e.to_string()))?;
                    crate::dicom::encode::stored::restore(&stored, &original)
                })
                .await?;
            return Ok(crate::memory::attach_all(permit, vec![bytes]).swap_remove(0));
        }
        let reader = self.blobs.reader(record.payload.id)?;
        let bits_allocated = record.bits_allocated();
        let (bytes, permit) = self
            .run_codec(costs::transcode(record), move || {
                crate::dicom::transcode::to_explicit_vr_little_endian(reader, bits_allocated)
            })
            .await?;
        Ok(crate::memory::attach_all(permit, vec![bytes]).swap_remove(0))
    }

    /// Native bytes of the given frames (0-based) of a compressed instance, holding their share
    /// of the memory budget.
    /// Frames of an instance stored re-encoded are given as they were received.
    pub async fn decoded_frames(&self, record: &InstanceRecord, frames: Vec<u32>) -> Result<Vec<Bytes>, Error> {
        let estimate = costs::decode(record, frames.len());
        if let Some(original) = self.original_form(record)? {
            let mut reader = self.blobs.reader(record.payload.id)?;
            let estimate = estimate.saturating_add(record.payload.length);
            let (decoded, permit) = self
                .run_codec(estimate, move || {
                    let mut stored = Vec::new();
                    std::io::Read::read_to_end(&mut reader, &mut stored)
                        .map_err(|e| crate::dicom::transcode::TranscodeError::Failed(e.to_string()))?;
                    crate::dicom::encode::stored::decode(&stored, &original, &frames)
                })
                .await?;
            return Ok(crate::memory::attach_all(permit, decoded));
        }
        let reader = self.blobs.reader(record.payload.id)?;
        let (decoded, permit) =
            self.run_codec(estimate, move || crate::dicom::transcode::decode_frames(reader, &frames)).await?;
        Ok(crate::memory::attach_all(permit, decoded))
    }

    /// Pixel Data's value as received, for an instance stored re-encoded (its bulk data, as a
    /// server without `--store-compression` gives it); `None` for one stored as received.
    pub async fn received_pixel_data(&self, record: &InstanceRecord) -> Result<Option<Bytes>, Error> {
        let Some(original) = self.original_form(record)? else { return Ok(None) };
        let mut reader = self.blobs.reader(record.payload.id)?;
        let estimate = record.payload.length.saturating_add(u64::from(original.pixel_length).saturating_mul(2));
        let (value, permit) = self
            .run_codec(estimate, move || {
                let mut stored = Vec::new();
                std::io::Read::read_to_end(&mut reader, &mut stored)
                    .map_err(|e| crate::dicom::transcode::TranscodeError::Failed(e.to_string()))?;
                crate::dicom::encode::stored::pixel_value(&stored, &original)
            })
            .await?;
        Ok(Some(crate::memory::attach_all(permit, vec![value]).swap_remove(0)))
    }

    /// The Image Pixel attributes of each instance as an encoder would see them (read from the
    /// stored header, not from Pixel Data), for deciding which lossless syntaxes can be offered
    /// before a response starts. `None` for an instance without usable ones.
    pub async fn pixel_formats(&self, records: &[InstanceRecord]) -> Result<Vec<Option<PixelFormat>>, Error> {
        let readers: Vec<Option<Box<dyn crate::blob::BlobRead>>> =
            records.iter().map(|r| r.pixel_data.as_ref().and_then(|_| self.blobs.reader(r.payload.id).ok())).collect();
        // The header reads keep no more than one object's elements before Pixel Data at a time.
        let _memory = self.reserve_memory(4 * 1024 * 1024).await?;
        tokio::task::spawn_blocking(move || {
            readers
                .into_iter()
                .map(|reader| reader.and_then(|r| crate::dicom::encode::read_pixel_format(r).map(|(_, f)| f)))
                .collect()
        })
        .await
        .map_err(Error::internal)
    }

    /// Frames (0-based) of an instance encoded losslessly with `codec`: from the cache of encoded
    /// frames when it holds them, else encoded under the codec discipline (`run_codec`) and
    /// cached. Each holds its share of the memory budget.
    pub async fn encoded_frames(
        &self,
        record: &InstanceRecord,
        frames: Vec<u32>,
        codec: Codec,
    ) -> Result<Vec<Bytes>, Error> {
        let mut found: Vec<Option<Bytes>> = Vec::with_capacity(frames.len());
        for frame in &frames {
            found.push(self.encode_cache.get(record, *frame, codec).await);
        }
        let missing: Vec<u32> = frames.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(n, _)| *n).collect();
        if missing.is_empty() {
            // Served from the cache: only what the bytes themselves take.
            return Ok(found.into_iter().flatten().collect());
        }
        self.encode_cache.missed(missing.len());
        let reader = self.blobs.reader(record.payload.id)?;
        let estimate = costs::encode(record, missing.len(), false);
        let wanted = missing.clone();
        let (encoded, permit) =
            self.run_codec(estimate, move || crate::dicom::encode::encode_frames(reader, &wanted, codec)).await?;
        for (frame, codestream) in missing.iter().zip(&encoded) {
            self.encode_cache.put(record, *frame, codec, codestream).await;
        }
        let mut encoded = encoded.into_iter();
        let all: Vec<Vec<u8>> = found
            .into_iter()
            .map(|f| f.map_or_else(|| encoded.next().expect("one per missing frame"), |b| b.to_vec()))
            .collect();
        Ok(crate::memory::attach_all(permit, all))
    }

    /// The whole instance in a lossless encapsulated syntax (`dicom::encode::encode_instance`),
    /// its frames taken from the cache of encoded frames where it has them.
    pub async fn encoded_instance(&self, record: &InstanceRecord, codec: Codec) -> Result<Bytes, Error> {
        let frames = record.number(dicom_dictionary_std::tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
        let mut known = Vec::new();
        if self.encode_cache.enabled() && frames <= u64::from(u16::MAX) {
            for frame in 0..frames as u32 {
                known.push(self.encode_cache.get(record, frame, codec).await.map(|b| b.to_vec()));
            }
        }
        let missing = frames as usize - known.iter().filter(|k| k.is_some()).count();
        if missing > 0 {
            self.encode_cache.missed(missing);
        }
        let reader = self.blobs.reader(record.payload.id)?;
        let estimate = costs::encode(record, missing, true);
        let ((bytes, encoded), permit) =
            self.run_codec(estimate, move || crate::dicom::encode::encode_instance(reader, codec, known)).await?;
        for (frame, codestream) in &encoded {
            self.encode_cache.put(record, *frame, codec, codestream).await;
        }
        Ok(crate::memory::attach_all(permit, vec![bytes]).swap_remove(0))
    }

    /// What the cache of encoded frames did since the archive opened.
    pub fn encode_cache_stats(&self) -> CacheStats {
        self.encode_cache.stats()
    }

    /// Reserves `bytes` of the memory budget for work the caller does itself (ZIP and metadata
    /// responses); 406 when they can never fit, 503 when the budget stays busy.
    pub async fn reserve_memory(&self, bytes: u64) -> Result<MemoryPermit, Error> {
        Ok(self.budget.reserve(bytes).await?)
    }

    /// The memory budget.
    pub fn memory_budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// Runs a transcoding job on the blocking pool, after reserving `estimate` bytes of the
    /// memory budget (406 if they can never fit, 503 if the budget stays busy), one job per core
    /// at a time. The reservation and the CPU permit move into the job, so they are released when
    /// the job ends, even if the request that started it was dropped (a client that disconnects
    /// cannot start decodes beyond the caps); the reservation comes back with the result for the
    /// caller to attach to it. The stored object failing to parse whole, or a codec panicking on
    /// it, is a 406 for this request only: the stored form is still available.
    async fn run_codec<T: Send + 'static>(
        &self,
        estimate: u64,
        job: impl FnOnce() -> Result<T, crate::dicom::transcode::TranscodeError> + Send + 'static,
    ) -> Result<(T, MemoryPermit), Error> {
        use crate::dicom::transcode::TranscodeError;
        use std::sync::atomic::Ordering;
        let memory = self.budget.reserve(estimate).await?;
        let permit = self.codec_permits.clone().acquire_owned().await.map_err(Error::internal)?;
        let running = self.codec_jobs.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            running.fetch_add(1, Ordering::SeqCst);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            running.fetch_sub(1, Ordering::SeqCst);
            outcome.map(|result| result.map(|value| (value, memory)))
        })
        .await
        .map_err(Error::internal)?;
        let stored_form = "; the stored form is available with transfer-syntax=*";
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error @ (TranscodeError::TooLarge(_) | TranscodeError::Unsupported(_)))) => {
                Err(Error::new(crate::error::ErrorKind::NotAcceptable, error.to_string()))
            }
            Ok(Err(error @ TranscodeError::Undecodable(_))) => {
                tracing::warn!(%error, "pixel data not decodable");
                Err(Error::new(crate::error::ErrorKind::NotAcceptable, format!("{error}{stored_form}")))
            }
            Ok(Err(error)) => Err(Error::internal(error)),
            Err(_) => {
                tracing::warn!("a codec panicked on stored pixel data");
                let message = format!("the pixel data could not be decoded (the decoder failed){stored_form}");
                Err(Error::new(crate::error::ErrorKind::NotAcceptable, message))
            }
        }
    }

    /// Codec jobs running on the blocking pool now (at most one per core).
    pub fn codec_jobs_running(&self) -> usize {
        self.codec_jobs.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The stored bytes of an instance, as a stream.
    pub fn payload(
        &self,
        record: &InstanceRecord,
    ) -> impl Stream<Item = Result<Bytes, BlobError>> + Send + 'static + use<> {
        self.blobs.read_range(record.payload.id, 0, record.payload.length)
    }

    /// Deletes the instances of a study, of a series of it, or one instance (PS3.18 has no
    /// DELETE transaction; this is the form dcm4chee, Google's and Microsoft's archives and
    /// dicomweb-client use). Durable, and gone from searches and retrievals, when it returns;
    /// the payload blobs are removed after that. `NotFound` when nothing matched.
    /// Only the owner's administrators delete (shares are read-only); a study of another
    /// institution is `NotFound`, as an unknown one.
    pub async fn delete(
        &self,
        principal: &Principal,
        study_uid: &str,
        series_uid: Option<&str>,
        sop_uid: Option<&str>,
    ) -> Result<usize, Error> {
        let grants = self.grants(principal)?;
        let owned = self.owner_of(study_uid)?.is_some_and(|owner| grants.owns(&owner));
        let removed = if !owned {
            Vec::new()
        } else {
            let store = self.store.clone();
            let (study, series, sop) =
                (study_uid.to_string(), series_uid.map(str::to_string), sop_uid.map(str::to_string));
            tokio::task::spawn_blocking(move || store.delete(&study, series.as_deref(), sop.as_deref()))
                .await
                .map_err(Error::internal)??
        };
        if removed.is_empty() {
            let level = match (series_uid, sop_uid) {
                (_, Some(_)) => Level::Instance,
                (Some(_), None) => Level::Series,
                _ => Level::Study,
            };
            return Err(Error::not_found(format!("no such {}", level_name(level))));
        }
        self.follower.changed();
        let garbage = self.commit_catalog().await?;
        self.follower.catch_up().await?;
        delete_blobs(self.store.as_ref(), self.blobs.as_ref(), &garbage).await?;
        let derived = self.derived.clone();
        let gone: Vec<String> = removed.iter().map(|record| record.sop_instance_uid.clone()).collect();
        tokio::task::spawn_blocking(move || gone.iter().for_each(|sop_uid| derived.forget_instance(sop_uid)))
            .await
            .map_err(Error::internal)?;
        let uids: Vec<&str> = removed.iter().map(|r| r.sop_instance_uid.as_str()).collect();
        self.encode_cache.forget(&uids).await;
        Ok(removed.len())
    }

    /// Records a clean stop: the next open needs no sweep of unreferenced blobs.
    pub async fn close(&self) -> Result<(), Error> {
        self.checkpoint_index().await?;
        Ok(self.store.mark_closed().await?)
    }

    /// Number of instances in the store.
    pub fn count_instances(&self) -> Result<u64, Error> {
        Ok(self.store.count_instances()?)
    }

    /// Rebuilds the index from the store. Returns the number of instances indexed.
    pub async fn reindex(&self) -> Result<u64, Error> {
        self.follower.rebuild(&self.data_dir.join(REBUILD_MARKER)).await
    }
}

/// Maps the frames of a stored instance from its bytes (offset tables, fragment markers), with
/// one reader. Blocking.
pub(crate) fn map_frames(
    blobs: &dyn BlobStore,
    record: &InstanceRecord,
    description: &PixelDescription,
) -> Result<Result<FrameMap, FrameError>, Error> {
    use std::io::{Read, Seek, SeekFrom};
    let Some(layout) = record.pixel_data.as_ref() else { return Ok(Err(FrameError::NoPixelData)) };
    let mut reader = blobs.reader(record.payload.id)?;
    let read = |offset: u64, length: usize| -> Vec<u8> {
        let mut bytes = Vec::with_capacity(length.min(1 << 20));
        if reader.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = (&mut reader).take(length as u64).read_to_end(&mut bytes);
        }
        bytes
    };
    Ok(crate::dicom::frames::map_stored(layout, description, &record.large_values, read))
}

/// Instances taken in together: each is streamed into the blob store and parsed as it arrives;
/// they are recorded in groups, each group's payloads made durable by one blob-store sync; and
/// the caller acknowledges them after [`Archive::make_durable`]. A group is recorded when it
/// holds [`StoreBatch::MAX_PENDING`] instances or [`StoreBatch::MAX_HELD_BYTES`] of metadata,
/// so a request of thousands of instances holds a bounded amount of memory.
pub struct StoreBatch<'a> {
    archive: &'a Archive,
    principal: &'a Principal,
    prepared: Vec<ingest::PreparedInstance>,
    held: usize,
    results: Vec<Result<StoredInstance, InstanceFailure>>,
}

impl StoreBatch<'_> {
    pub const MAX_PENDING: usize = 64;
    pub const MAX_HELD_BYTES: usize = 8 * 1024 * 1024;

    /// Streams one instance in. A failure of this instance is kept for [`StoreBatch::finish`];
    /// an error of the body stream itself is returned (the request cannot go on).
    pub async fn add<S, E>(&mut self, expected_study: Option<&str>, body: S) -> Result<(), E>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
    {
        let archive = self.archive;
        match ingest::prepare(&archive.store, &archive.blobs, self.principal, expected_study, &archive.limits, body)
            .await
        {
            Ok(prepared) => {
                self.held += prepared.held_bytes();
                self.prepared.push(prepared);
                if self.prepared.len() >= Self::MAX_PENDING || self.held >= Self::MAX_HELD_BYTES {
                    self.record().await;
                }
                Ok(())
            }
            Err(IngestError::Instance(failure)) => {
                self.results.push(Err(failure));
                Ok(())
            }
            Err(IngestError::Stream(error)) => Err(error),
        }
    }

    async fn record(&mut self) {
        let archive = self.archive;
        let batch = std::mem::take(&mut self.prepared);
        self.held = 0;
        let results = ingest::record(&archive.store, &archive.blobs, &archive.limits, batch).await;
        if results.iter().any(|r| r.as_ref().is_ok_and(|stored| !stored.already_stored)) {
            archive.follower.changed();
        }
        for stored in results.iter().flatten().filter(|stored| !stored.already_stored) {
            archive.queue_renditions(&stored.sop_instance_uid);
        }
        self.results.extend(results);
    }

    /// Records what is still pending and returns what happened to every instance, in order of
    /// arrival within each kind. They are durable, and searchable, after
    /// [`Archive::make_durable`].
    pub async fn finish(mut self) -> Vec<Result<StoredInstance, InstanceFailure>> {
        self.record().await;
        self.results
    }
}

/// Deletes the blobs of garbage payloads (whose unreferencing is durable), then forgets them.
async fn delete_blobs(store: &dyn Store, blobs: &dyn BlobStore, garbage: &[u64]) -> Result<(), Error> {
    if garbage.is_empty() {
        return Ok(());
    }
    blobs.delete(garbage.to_vec()).await?;
    Ok(store.forget_garbage(garbage)?)
}

/// At open: the garbage a crash left before its blobs were deleted.
async fn collect_garbage(store: &dyn Store, blobs: &dyn BlobStore) -> Result<(), Error> {
    let garbage = store.garbage()?;
    delete_blobs(store, blobs, &garbage).await?;
    store.commit().await?;
    Ok(())
}

/// After an unclean stop: blobs that no record references were written for instances that were
/// never acknowledged (their records were not durable, or their ingest was cut off).
async fn sweep_unreferenced(store: &dyn Store, blobs: &dyn BlobStore) -> Result<u64, Error> {
    let mut unreferenced = Vec::new();
    for id in blobs.list()? {
        if !store.is_referenced(id)? {
            unreferenced.push(id);
        }
    }
    let swept = unreferenced.len() as u64;
    blobs.delete(unreferenced).await?;
    Ok(swept)
}

/// Codec jobs (and, separately, store-time parses) that run at once: one per core. These bound
/// CPU; memory is bounded by the budget, which both also draw from.
fn codec_slots() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

/// A permit for one store-time parse on the blocking pool (one per core in the process): a
/// parse reads a data set up to Pixel Data and builds its DICOM JSON, which costs CPU and memory
/// that must not grow with the number of concurrent uploads. The caller moves it into the
/// blocking job, so that it is held until the parse ends.
pub(crate) async fn parse_permit() -> tokio::sync::OwnedSemaphorePermit {
    static PERMITS: std::sync::LazyLock<Arc<tokio::sync::Semaphore>> =
        std::sync::LazyLock::new(|| Arc::new(tokio::sync::Semaphore::new(codec_slots())));
    PERMITS.clone().acquire_owned().await.expect("the parse semaphore is never closed")
}

pub fn level_name(level: Level) -> &'static str {
    match level {
        Level::Study => "study",
        Level::Series => "series",
        Level::Instance => "instance",
    }
}

/// Removes expired COMPLETED and CANCELED workitems in the background, as long as the worklist
/// exists (the task holds only a weak reference).
fn spawn_worklist_sweep(worklist: &Arc<worklist::Worklist>) {
    let weak = Arc::downgrade(worklist);
    let interval = worklist.sweep_interval();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let Some(worklist) = weak.upgrade() else { return };
            match worklist.sweep().await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(workitems = removed, "removed workitems past their retention"),
                Err(error) => tracing::warn!(%error, "worklist retention sweep failed"),
            }
        }
    });
}
