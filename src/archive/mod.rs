//! The domain core: the archive facade over the store (source of truth) and the index
//! (derived). HTTP handlers and, later, DIMSE services call only this.

mod indexing;
pub mod ingest;
pub mod reindex;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;

pub use ingest::{IngestError, IngestLimits, InstanceFailure, StoredInstance};

use crate::auth::Principal;
use crate::dicom::attrs::Level;
use crate::dicom::part10::AttributeValue;
use crate::error::Error;
use crate::index::{Index, SearchHits, SearchQuery, TantivyIndex};
use crate::store::{
    DuplicatePolicy, InstanceRecord, SeriesRecord, SledStore, SledStoreOptions, Store, StoreError, StudyRecord,
};

/// Present while an index rebuild is under way.
const REBUILD_MARKER: &str = "index-rebuild-in-progress";

/// How the archive is set up.
#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    pub duplicate_policy: DuplicatePolicy,
    pub max_instance_bytes: u64,
    pub store: SledStoreOptions,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions {
            duplicate_policy: DuplicatePolicy::Reject,
            max_instance_bytes: 4 * 1024 * 1024 * 1024,
            store: SledStoreOptions::default(),
        }
    }
}

pub struct Archive {
    data_dir: PathBuf,
    store: Arc<dyn Store>,
    index: Arc<dyn Index>,
    limits: IngestLimits,
    /// One index refresh at a time: each one reads the store after the previous one applied,
    /// so an older view can never overwrite a newer one in the index.
    index_sync: tokio::sync::Mutex<()>,
    /// Changes applied to the index but not yet durable there (kept in the store's log).
    applied: std::sync::Mutex<std::collections::HashSet<u64>>,
    /// Pixel decoding is CPU- and memory-heavy (up to `transcode::MAX_DECODED_BYTES` each): at
    /// most one per core runs at a time, the others wait. A permit is owned by the blocking job
    /// until it ends, not by the request: a client that leaves does not free it early.
    codec_permits: Arc<tokio::sync::Semaphore>,
    /// Codec jobs running on the blocking pool now.
    codec_jobs: Arc<std::sync::atomic::AtomicUsize>,
}

impl Archive {
    /// Opens the archive in `data_dir` (`store/` and `index/` beneath it), sweeps what a crash
    /// left half-written, and brings the index up to date with the store.
    pub async fn open(data_dir: &Path, options: ArchiveOptions) -> Result<Archive, Error> {
        std::fs::create_dir_all(data_dir).map_err(Error::internal)?;
        let store = SledStore::open(&data_dir.join("store"), options.store.clone())?;
        let recovered = store.recover()?;
        if recovered.orphan_payloads > 0 {
            tracing::info!(orphans = recovered.orphan_payloads, "swept payloads of unacknowledged instances");
        }
        let (index, needs_rebuild) = TantivyIndex::open(&data_dir.join("index"))?;
        let needs_rebuild = needs_rebuild || data_dir.join(REBUILD_MARKER).exists();
        let archive = Archive {
            data_dir: data_dir.to_path_buf(),
            store,
            index,
            limits: IngestLimits { max_instance_bytes: options.max_instance_bytes, policy: options.duplicate_policy },
            index_sync: tokio::sync::Mutex::new(()),
            applied: Default::default(),
            codec_permits: Arc::new(tokio::sync::Semaphore::new(codec_slots())),
            codec_jobs: Default::default(),
        };
        if needs_rebuild {
            tracing::info!("index schema changed; rebuilding from the store");
            archive.reindex().await?;
        } else {
            let replayed = archive.sync_index().await?;
            if replayed > 0 {
                tracing::info!(changes = replayed, "replayed store changes into the index");
            }
        }
        Ok(archive)
    }

    /// Streams one instance into the store (STOW-RS part, later C-STORE). It is durable and
    /// searchable only after [`Archive::make_durable_and_visible`].
    pub async fn store_instance<S, E>(
        &self,
        principal: &Principal,
        expected_study: Option<&str>,
        body: S,
    ) -> Result<StoredInstance, IngestError<E>>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
    {
        ingest::ingest(&self.store, principal, expected_study, &self.limits, body).await
    }

    /// Makes every instance stored so far durable (group commit), then visible to searches.
    pub async fn make_durable_and_visible(&self) -> Result<(), Error> {
        let started = std::time::Instant::now();
        self.store.commit().await?;
        let durable = started.elapsed();
        self.sync_index().await?;
        tracing::debug!(
            store_commit_us = durable.as_micros() as u64,
            index_us = (started.elapsed() - durable).as_micros() as u64,
            "durable and visible"
        );
        Ok(())
    }

    /// Applies the store's pending changes to the index, and drops from the store's change log
    /// those the index has made durable. Returns how many changes it applied.
    async fn sync_index(&self) -> Result<usize, Error> {
        let _guard = self.index_sync.lock().await;
        self.forget_durable_changes()?;
        let applied = self.applied.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let changes: Vec<_> =
            self.store.pending_changes()?.into_iter().filter(|change| !applied.contains(&change.seq)).collect();
        if changes.is_empty() {
            return Ok(0);
        }
        let ops = indexing::ops_for_changes(self.store.as_ref(), &changes)?;
        let seqs: Vec<u64> = changes.iter().map(|c| c.seq).collect();
        self.index.apply(ops, seqs.clone()).await?;
        self.applied.lock().unwrap_or_else(|p| p.into_inner()).extend(seqs);
        Ok(changes.len())
    }

    fn forget_durable_changes(&self) -> Result<(), Error> {
        let durable = self.index.take_durable();
        if !durable.is_empty() {
            self.store.forget_changes(&durable)?;
            let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
            for seq in &durable {
                applied.remove(seq);
            }
        }
        Ok(())
    }

    /// Makes the index durable up to everything applied (at shutdown).
    pub async fn checkpoint_index(&self) -> Result<(), Error> {
        let _guard = self.index_sync.lock().await;
        self.index.checkpoint().await?;
        self.forget_durable_changes()
    }

    /// Searches the index. Results are filtered to what `principal` may see.
    pub fn search(&self, _principal: &Principal, query: &SearchQuery) -> Result<SearchHits, Error> {
        Ok(self.index.search(query)?)
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

    pub fn study(&self, _principal: &Principal, study_uid: &str) -> Result<Option<StudyRecord>, Error> {
        Ok(self.store.study(study_uid)?)
    }

    pub fn series(
        &self,
        _principal: &Principal,
        study_uid: &str,
        series_uid: &str,
    ) -> Result<Option<SeriesRecord>, Error> {
        Ok(self.store.series(study_uid, series_uid)?)
    }

    pub fn instance(&self, _principal: &Principal, sop_uid: &str) -> Result<Option<InstanceRecord>, Error> {
        Ok(self.store.instance(sop_uid)?)
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
            if let Some(record) = self.store.instance(&uid)? {
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

    /// The DICOM JSON metadata computed when the instance was stored.
    pub fn instance_metadata(&self, record: &InstanceRecord) -> Result<Bytes, Error> {
        self.store
            .instance_metadata(&record.sop_instance_uid)?
            .ok_or_else(|| Error::internal(StoreError::Corrupt("instance has no metadata".into())))
    }

    /// `length` stored bytes of an instance from `offset`, as a stream of chunks.
    pub fn payload_range(
        &self,
        record: &InstanceRecord,
        offset: u64,
        length: u64,
    ) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static + use<> {
        crate::store::payload::stream_range(self.store.clone(), record.payload.clone(), offset, length)
    }

    /// A few stored bytes of an instance (offset tables, markers); at most `length` bytes.
    pub fn read_bytes(&self, record: &InstanceRecord, offset: u64, length: usize) -> Result<Vec<u8>, Error> {
        use std::io::{Read, Seek, SeekFrom};
        let mut reader = crate::store::payload::PayloadReader::new(self.store.clone(), record.payload.clone());
        reader.seek(SeekFrom::Start(offset)).map_err(Error::internal)?;
        let mut bytes = Vec::with_capacity(length);
        reader.take(length as u64).read_to_end(&mut bytes).map_err(Error::internal)?;
        Ok(bytes)
    }

    /// The instance re-encoded in Explicit VR Little Endian, its pixel data decoded when it was
    /// compressed (see `dicom::transcode`).
    pub async fn explicit_little_endian(&self, record: &InstanceRecord) -> Result<Bytes, Error> {
        let reader = crate::store::payload::PayloadReader::new(self.store.clone(), record.payload.clone());
        let bits_allocated = record.bits_allocated();
        let bytes = self
            .run_codec(move || crate::dicom::transcode::to_explicit_vr_little_endian(reader, bits_allocated))
            .await?;
        Ok(Bytes::from(bytes))
    }

    /// Native bytes of the given frames (0-based) of a compressed instance.
    pub async fn decoded_frames(&self, record: &InstanceRecord, frames: Vec<u32>) -> Result<Vec<Vec<u8>>, Error> {
        let reader = crate::store::payload::PayloadReader::new(self.store.clone(), record.payload.clone());
        self.run_codec(move || crate::dicom::transcode::decode_frames(reader, &frames)).await
    }

    /// The given frames (0-based) of an instance rendered as consumer images.
    pub async fn rendered_frames(
        &self,
        record: &InstanceRecord,
        frames: Vec<u32>,
        options: crate::dicom::render::RenderOptions,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let reader = crate::store::payload::PayloadReader::new(self.store.clone(), record.payload.clone());
        self.run_codec(move || crate::dicom::render::render_frames(reader, &frames, &options)).await
    }

    /// Runs a transcoding job on the blocking pool, one per core at a time. The permit moves into
    /// the job and is released when the job ends, even if the request that started it was
    /// dropped (a client that disconnects cannot start decodes beyond the cap). The stored object
    /// failing to parse whole, or a codec panicking on it, is a 406 for this request only: the
    /// stored form is still available.
    async fn run_codec<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> Result<T, crate::dicom::transcode::TranscodeError> + Send + 'static,
    ) -> Result<T, Error> {
        use crate::dicom::transcode::TranscodeError;
        use std::sync::atomic::Ordering;
        let permit = self.codec_permits.clone().acquire_owned().await.map_err(Error::internal)?;
        let running = self.codec_jobs.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            running.fetch_add(1, Ordering::SeqCst);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            running.fetch_sub(1, Ordering::SeqCst);
            outcome
        })
        .await
        .map_err(Error::internal)?;
        let stored_form = "; the stored form is available with transfer-syntax=*";
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error @ TranscodeError::TooLarge(_))) => {
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

    /// The stored bytes of an instance, as a stream of chunks.
    pub fn payload(
        &self,
        record: &InstanceRecord,
    ) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static + use<> {
        crate::store::payload::stream(self.store.clone(), record.payload.clone())
    }

    /// Number of instances in the store.
    pub fn count_instances(&self) -> Result<u64, Error> {
        Ok(self.store.count_instances()?)
    }

    /// Rebuilds the index from the store. Returns the number of instances indexed.
    pub async fn reindex(&self) -> Result<u64, Error> {
        let _guard = self.index_sync.lock().await;
        // A rebuild spans several index commits; the marker makes an interrupted one restart.
        let marker = self.data_dir.join(REBUILD_MARKER);
        std::fs::write(&marker, b"").map_err(Error::internal)?;
        let n = reindex::rebuild(self.store.as_ref(), self.index.as_ref()).await?;
        self.applied.lock().unwrap_or_else(|p| p.into_inner()).clear();
        std::fs::remove_file(&marker).map_err(Error::internal)?;
        Ok(n)
    }
}

/// Codec jobs (and, separately, store-time parses) that run at once: one per core.
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
