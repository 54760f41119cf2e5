//! The sled backend of [`Store`].
//!
//! sled 0.34.7 writes any serialised page larger than about a quarter of `segment_size` to a
//! separate blob file, and never fsyncs blob files. Kura therefore raises `segment_size` to
//! 8 MiB (blob threshold about 2 MiB) and writes payloads in chunks of at most 64 KiB, so that
//! even a leaf node holding sled's maximum of 16 chunks stays far below the threshold: no blob
//! file is ever written, and `flush_async` (which fsyncs the main log) covers everything.
//! The test `store_never_writes_blob_files` holds this argument to account.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sled::{Batch, Tree};

use super::group_commit::GroupCommit;
use super::keys;
use super::record::*;
use super::*;
use crate::dicom::attrs::Level;
use crate::dicom::part10::AttributeValue;

/// The largest payload chunk; see the module docs for why it must stay small.
pub const MAX_CHUNK_SIZE: u32 = 64 * 1024;
const SEGMENT_SIZE: usize = 8 * 1024 * 1024;

/// Tunables of the sled store.
#[derive(Debug, Clone)]
pub struct SledStoreOptions {
    /// sled's page cache, in bytes. Bounds the store's share of the server's memory.
    pub cache_capacity: u64,
    /// Payload chunk size, at most [`MAX_CHUNK_SIZE`].
    pub chunk_size: u32,
}

impl Default for SledStoreOptions {
    fn default() -> Self {
        SledStoreOptions { cache_capacity: 128 * 1024 * 1024, chunk_size: MAX_CHUNK_SIZE }
    }
}

pub struct SledStore {
    db: sled::Db,
    catalog: Tree,
    payloads: Tree,
    chunk_size: u32,
    /// Serialises catalog updates so that study and series aggregates are computed from a
    /// consistent view; payload writes happen outside it, in parallel.
    catalog_lock: Mutex<()>,
    group_commit: GroupCommit,
}

fn backend(error: sled::Error) -> StoreError {
    StoreError::Backend(Box::new(error))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialise")
}

impl SledStore {
    /// Opens (or creates) the store under `dir`. Must be called inside a tokio runtime.
    pub fn open(dir: &Path, options: SledStoreOptions) -> StoreResult<Arc<SledStore>> {
        let chunk_size = options.chunk_size.clamp(1024, MAX_CHUNK_SIZE);
        let db = sled::Config::new()
            .path(dir)
            .segment_size(SEGMENT_SIZE)
            .cache_capacity(options.cache_capacity)
            .open()
            .map_err(backend)?;
        let catalog = db.open_tree("catalog").map_err(backend)?;
        let payloads = db.open_tree("payloads").map_err(backend)?;
        match catalog.get(keys::meta("format")).map_err(backend)? {
            Some(found) if found.as_ref() != keys::FORMAT_VERSION => {
                return Err(StoreError::UnknownFormat);
            }
            Some(_) => {}
            None => {
                catalog.insert(keys::meta("format"), keys::FORMAT_VERSION).map_err(backend)?;
            }
        }
        let flush_db = db.clone();
        let group_commit = GroupCommit::start(move || {
            let db = flush_db.clone();
            async move { db.flush_async().await.map(|_| ()).map_err(|e| e.to_string()) }
        });
        Ok(Arc::new(SledStore { db, catalog, payloads, chunk_size, catalog_lock: Mutex::new(()), group_commit }))
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> StoreResult<Option<T>> {
        match self.catalog.get(key).map_err(backend)? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn scan_suffixes(&self, prefix: &[u8]) -> StoreResult<Vec<String>> {
        let mut out = Vec::new();
        for item in self.catalog.scan_prefix(prefix) {
            let (key, _) = item.map_err(backend)?;
            let rest = &key[prefix.len()..];
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            let uid = String::from_utf8_lossy(&rest[..end]).into_owned();
            if out.last() != Some(&uid) {
                out.push(uid);
            }
        }
        Ok(out)
    }

    /// Recomputes a series record after one of its instances was added or removed.
    fn refreshed_series(
        &self,
        previous: Option<SeriesRecord>,
        study: &str,
        series: &str,
        latest: Option<&InstanceRecord>,
        delta: i64,
        seq: u64,
    ) -> Option<SeriesRecord> {
        let mut record = previous.unwrap_or(SeriesRecord {
            version: RECORD_VERSION,
            study_uid: study.to_string(),
            series_uid: series.to_string(),
            attributes: Vec::new(),
            n_instances: 0,
            sop_classes: Vec::new(),
            created_seq: seq,
        });
        record.n_instances = (record.n_instances as i64 + delta).max(0) as u64;
        if record.n_instances == 0 {
            return None;
        }
        if let Some(instance) = latest {
            record.attributes = level_attributes(&instance.attributes, Level::Series);
            if !record.sop_classes.contains(&instance.sop_class_uid) {
                record.sop_classes.push(instance.sop_class_uid.clone());
                record.sop_classes.sort();
            }
        }
        Some(record)
    }

    /// Recomputes a study record from its series records (with `pending` overriding the
    /// stored value of the series being changed in the same batch).
    fn refreshed_study(
        &self,
        study: &str,
        pending: &[(String, Option<SeriesRecord>)],
        latest: Option<&InstanceRecord>,
        seq: u64,
    ) -> StoreResult<Option<StudyRecord>> {
        let mut all_series: Vec<SeriesRecord> = Vec::new();
        for item in self.catalog.scan_prefix(keys::series_prefix(study)) {
            let (_, value) = item.map_err(backend)?;
            let record: SeriesRecord = decode(&value)?;
            if pending.iter().any(|(uid, _)| *uid == record.series_uid) {
                continue;
            }
            all_series.push(record);
        }
        all_series.extend(pending.iter().filter_map(|(_, record)| record.clone()));
        if all_series.is_empty() {
            return Ok(None);
        }
        let previous: Option<StudyRecord> = self.get(&keys::study(study))?;
        let mut modalities = BTreeSet::new();
        let mut sop_classes = BTreeSet::new();
        for series in &all_series {
            for attribute in &series.attributes {
                if attribute.sequence.is_none() && attribute.tag() == dicom_dictionary_std::tags::MODALITY {
                    modalities.extend(attribute.values.iter().filter(|v| !v.is_empty()).cloned());
                }
            }
            sop_classes.extend(series.sop_classes.iter().cloned());
        }
        let (owner, attributes, created_seq) = match (&previous, latest) {
            (_, Some(instance)) => (
                instance.owner.clone(),
                level_attributes(&instance.attributes, Level::Study),
                previous.as_ref().map_or(seq, |p| p.created_seq),
            ),
            (Some(previous), None) => (previous.owner.clone(), previous.attributes.clone(), previous.created_seq),
            (None, None) => return Ok(None),
        };
        Ok(Some(StudyRecord {
            version: RECORD_VERSION,
            owner,
            study_uid: study.to_string(),
            attributes,
            n_series: all_series.len() as u64,
            n_instances: all_series.iter().map(|s| s.n_instances).sum(),
            modalities: modalities.into_iter().collect(),
            sop_classes: sop_classes.into_iter().collect(),
            created_seq,
        }))
    }
}

/// The attributes of `level` among an instance's values.
pub(crate) fn level_attributes(values: &[AttributeValue], level: Level) -> Vec<AttributeValue> {
    values.iter().filter(|v| v.attribute().is_some_and(|a| a.level == level)).cloned().collect()
}

fn put_or_remove<T: serde::Serialize>(batch: &mut Batch, key: Vec<u8>, value: Option<&T>) {
    match value {
        Some(value) => batch.insert(key, encode(value)),
        None => batch.remove(key),
    }
}

impl Store for SledStore {
    fn allocate_payload(&self) -> StoreResult<u64> {
        let id = self.db.generate_id().map_err(backend)?;
        // The marker makes a crash between chunk writes and the record sweepable.
        self.catalog.insert(keys::pending_payload(id), &[]).map_err(backend)?;
        Ok(id)
    }

    fn write_chunk(&self, payload: u64, index: u32, bytes: &[u8]) -> StoreResult<()> {
        debug_assert!(bytes.len() <= self.chunk_size as usize);
        self.payloads.insert(keys::chunk(payload, index), bytes).map_err(backend)?;
        Ok(())
    }

    fn read_chunk(&self, payload: u64, index: u32) -> StoreResult<Option<Bytes>> {
        Ok(self.payloads.get(keys::chunk(payload, index)).map_err(backend)?.map(|v| Bytes::copy_from_slice(&v)))
    }

    fn discard_payload(&self, payload: u64) -> StoreResult<()> {
        let mut batch = Batch::default();
        for item in self.payloads.scan_prefix(keys::chunk_prefix(payload)) {
            let (key, _) = item.map_err(backend)?;
            batch.remove(key);
        }
        self.payloads.apply_batch(batch).map_err(backend)?;
        self.catalog.remove(keys::pending_payload(payload)).map_err(backend)?;
        Ok(())
    }

    fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    fn put_instance(
        &self,
        mut record: InstanceRecord,
        metadata: &[u8],
        policy: DuplicatePolicy,
    ) -> StoreResult<PutOutcome> {
        if metadata.len() > MAX_METADATA_BYTES {
            return Err(StoreError::Corrupt(format!("metadata of {} bytes is over the limit", metadata.len())));
        }
        let _guard = self.catalog_lock.lock().unwrap_or_else(|p| p.into_inner());
        let previous: Option<InstanceRecord> = self.get(&keys::instance(&record.sop_instance_uid))?;
        if let Some(previous) = &previous {
            let same_object =
                previous.payload.sha256 == record.payload.sha256 && previous.payload.length == record.payload.length;
            // The same object again changes nothing, unless this version of Kura records more of
            // it than the one that stored it (e.g. the values of sequence items): then the
            // records are refreshed as for a replacement, whatever the policy.
            if same_object && previous.attributes == record.attributes {
                return Ok(PutOutcome::AlreadyStored);
            }
            if !same_object && policy == DuplicatePolicy::Reject {
                return Ok(PutOutcome::Conflict);
            }
        }
        let seq = self.db.generate_id().map_err(backend)?;
        record.seq = seq;
        let (study, series, sop) =
            (record.study_uid.clone(), record.series_uid.clone(), record.sop_instance_uid.clone());

        let mut batch = Batch::default();
        let mut touched = vec![(study.clone(), series.clone(), sop.clone())];
        let mut series_updates: Vec<(String, String, Option<SeriesRecord>)> = Vec::new();

        if let Some(old) = &previous {
            batch.remove(keys::hierarchy(&old.study_uid, &old.series_uid, &sop));
            // The old payload is swept once the batch is durable; the marker survives a crash.
            if old.payload.id != record.payload.id {
                batch.insert(keys::pending_payload(old.payload.id), &[]);
            }
            let moved = old.study_uid != study || old.series_uid != series;
            if moved {
                let old_series = self.get(&keys::series(&old.study_uid, &old.series_uid))?;
                let updated = self.refreshed_series(old_series, &old.study_uid, &old.series_uid, None, -1, seq);
                series_updates.push((old.study_uid.clone(), old.series_uid.clone(), updated));
                touched.push((old.study_uid.clone(), old.series_uid.clone(), sop.clone()));
            }
        }
        let same_place = previous.as_ref().is_some_and(|o| o.study_uid == study && o.series_uid == series);
        let current_series = self.get(&keys::series(&study, &series))?;
        let delta = if same_place { 0 } else { 1 };
        let updated = self.refreshed_series(current_series, &study, &series, Some(&record), delta, seq);
        series_updates.push((study.clone(), series.clone(), updated));

        let mut studies: Vec<&str> = series_updates.iter().map(|(st, _, _)| st.as_str()).collect();
        studies.dedup();
        for study_uid in studies {
            let pending: Vec<(String, Option<SeriesRecord>)> = series_updates
                .iter()
                .filter(|(st, _, _)| st == study_uid)
                .map(|(_, se, rec)| (se.clone(), rec.clone()))
                .collect();
            let latest = (study_uid == study).then_some(&record);
            let study_record = self.refreshed_study(study_uid, &pending, latest, seq)?;
            put_or_remove(&mut batch, keys::study(study_uid), study_record.as_ref());
        }
        for (study_uid, series_uid, series_record) in &series_updates {
            put_or_remove(&mut batch, keys::series(study_uid, series_uid), series_record.as_ref());
        }
        batch.insert(keys::hierarchy(&study, &series, &sop), &[]);
        batch.insert(keys::instance(&sop), encode(&record));
        batch.insert(keys::metadata(&sop), metadata);
        batch.remove(keys::pending_payload(record.payload.id));
        batch.insert(keys::change(seq), encode(&Change { seq, touched }));
        self.catalog.apply_batch(batch).map_err(backend)?;

        if let Some(old) = previous {
            // Best effort: if this fails or the process dies, `recover` sweeps the marker.
            if old.payload.id != record.payload.id {
                let _ = self.discard_payload(old.payload.id);
            }
            return Ok(PutOutcome::Stored { replaced: true });
        }
        Ok(PutOutcome::Stored { replaced: false })
    }

    fn instance(&self, sop_uid: &str) -> StoreResult<Option<InstanceRecord>> {
        self.get(&keys::instance(sop_uid))
    }

    fn instance_metadata(&self, sop_uid: &str) -> StoreResult<Option<Bytes>> {
        Ok(self.catalog.get(keys::metadata(sop_uid)).map_err(backend)?.map(|v| Bytes::copy_from_slice(&v)))
    }

    fn series(&self, study_uid: &str, series_uid: &str) -> StoreResult<Option<SeriesRecord>> {
        self.get(&keys::series(study_uid, series_uid))
    }

    fn study(&self, study_uid: &str) -> StoreResult<Option<StudyRecord>> {
        self.get(&keys::study(study_uid))
    }

    fn instance_uids(&self, study_uid: &str, series_uid: Option<&str>) -> StoreResult<Vec<String>> {
        let mut out = Vec::new();
        for item in self.catalog.scan_prefix(keys::hierarchy_prefix(study_uid, series_uid)) {
            let (key, _) = item.map_err(backend)?;
            if let Some(sop) = keys::sop_from_hierarchy(&key) {
                out.push(sop.to_string());
            }
        }
        Ok(out)
    }

    fn series_uids(&self, study_uid: &str) -> StoreResult<Vec<String>> {
        self.scan_suffixes(&keys::series_prefix(study_uid))
    }

    fn study_uids(&self) -> StoreResult<Vec<String>> {
        self.scan_suffixes(&[keys::STUDY])
    }

    fn count_instances(&self) -> StoreResult<u64> {
        let mut n = 0;
        for item in self.catalog.scan_prefix([keys::INSTANCE]) {
            item.map_err(backend)?;
            n += 1;
        }
        Ok(n)
    }

    fn pending_changes(&self) -> StoreResult<Vec<Change>> {
        let mut out = Vec::new();
        for item in self.catalog.scan_prefix([keys::CHANGE]) {
            let (_, value) = item.map_err(backend)?;
            out.push(decode(&value)?);
        }
        Ok(out)
    }

    fn forget_changes(&self, seqs: &[u64]) -> StoreResult<()> {
        let mut batch = Batch::default();
        for seq in seqs {
            batch.remove(keys::change(*seq));
        }
        self.catalog.apply_batch(batch).map_err(backend)
    }

    fn commit(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            self.group_commit.commit().await.map_err(|message| StoreError::Backend(message.to_string().into()))
        })
    }

    fn recover(&self) -> StoreResult<RecoveryReport> {
        let mut orphans = Vec::new();
        for item in self.catalog.scan_prefix([keys::PENDING_PAYLOAD]) {
            let (key, _) = item.map_err(backend)?;
            if let Some(id) = keys::u64_suffix(&key) {
                orphans.push(id);
            }
        }
        for id in &orphans {
            self.discard_payload(*id)?;
        }
        Ok(RecoveryReport { orphan_payloads: orphans.len() as u64 })
    }
}
