//! The sled backend of [`Store`]: the catalog only; payload bytes live in the blob store.
//!
//! Two facts about sled 0.34.7 shape this file (see ARCHITECTURE.md, "Why an acknowledged
//! instance survives a power cut"):
//! - `flush` makes the log stable with `sync_file_range`, which neither commits file metadata
//!   (the log's growth) nor flushes the drive's cache; a real `fsync` runs only in sled's
//!   background flusher. [`Store::commit`] therefore fsyncs the `db` file itself after the
//!   flush (any descriptor of the file will do), and the store's directory.
//! - A page larger than about a quarter of `segment_size` goes to a separate blob file that
//!   sled never fsyncs. Every catalog value is therefore kept small: instance records and
//!   metadata documents, which input can make large (fragment lists, per-frame functional
//!   groups of enhanced objects), are split into pieces of at most [`PIECE_BYTES`] under keys
//!   `{base}\0{n:u16}`, all written in the same atomic batch; with `segment_size` 8 MiB a leaf
//!   of 16 such pieces stays far below the 2 MiB threshold. The test
//!   `store_never_writes_blob_files` holds this to account.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sled::{Batch, Tree};

use super::group_commit::GroupCommit;
use super::keys;
use super::*;
use crate::dicom::attrs::Level;
use crate::dicom::part10::AttributeValue;
use crate::model::records::*;

const SEGMENT_SIZE: usize = 8 * 1024 * 1024;
/// The largest piece of a catalog value; see the module docs.
pub const PIECE_BYTES: usize = 16 * 1024;
/// The most pieces one value may have (a u16 numbers them); 1 GiB, far above any limit.
const MAX_PIECES: usize = u16::MAX as usize;

/// Tunables of the sled store.
#[derive(Debug, Clone)]
pub struct SledStoreOptions {
    /// sled's page cache, in bytes. Bounds the catalog's share of the server's memory.
    pub cache_capacity: u64,
}

impl Default for SledStoreOptions {
    fn default() -> Self {
        SledStoreOptions { cache_capacity: 32 * 1024 * 1024 }
    }
}

pub struct SledStore {
    db: sled::Db,
    catalog: Tree,
    /// Format 1's payload chunks; empty once migrated.
    legacy_payloads: Tree,
    /// Serialises catalog updates so that study and series aggregates are computed from a
    /// consistent view; payload writes happen outside it, in parallel.
    catalog_lock: Mutex<()>,
    group_commit: GroupCommit,
    legacy_format: bool,
}

fn backend(error: sled::Error) -> StoreError {
    StoreError::Backend(Box::new(error))
}

fn io(error: std::io::Error) -> StoreError {
    StoreError::Backend(Box::new(error))
}

/// First byte of a record in the binary encoding (postcard). Records written before it are
/// JSON objects, which start with `{`; both are read, only the binary one is written.
const BINARY_RECORD: u8 = 0xB1;

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    match bytes.split_first() {
        Some((&BINARY_RECORD, rest)) => postcard::from_bytes(rest).map_err(|e| StoreError::Corrupt(e.to_string())),
        Some((b'{', _)) => serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string())),
        _ => Err(StoreError::Corrupt("a catalog record in an unknown encoding".into())),
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![BINARY_RECORD];
    out.extend(postcard::to_stdvec(value).expect("records serialise"));
    out
}

/// What identifies the object an instance was received as: length and SHA-256 of its received
/// bytes (preamble zeroed), which for an instance stored re-encoded its original form keeps.
fn received_identity<'a>(record: &'a InstanceRecord, original: Option<&'a OriginalForm>) -> (u64, &'a str) {
    match original {
        Some(original) => (original.length, original.sha256.as_str()),
        None => (record.payload.length, record.payload.sha256.as_str()),
    }
}

/// The durable flush: sled's flush, then a real `fdatasync` of its log (data and length; its
/// timestamps need not survive) and an fsync of its directory when a name in it changed.
fn durable_flush(db: &sled::Db, log: &File, dir: &crate::durable_fs::DirSync) -> Result<(), String> {
    db.flush().map_err(|e| e.to_string())?;
    log.sync_data().map_err(|e| e.to_string())?;
    dir.sync().map_err(|e| e.to_string())
}

impl SledStore {
    /// Opens (or creates) the store under `dir`. Must be called inside a tokio runtime.
    pub fn open(dir: &Path, options: SledStoreOptions) -> StoreResult<Arc<SledStore>> {
        crate::durable_fs::create_dir_all(dir).map_err(io)?;
        let db = sled::Config::new()
            .path(dir)
            .segment_size(SEGMENT_SIZE)
            .cache_capacity(options.cache_capacity)
            .open()
            .map_err(backend)?;
        let catalog = db.open_tree("catalog").map_err(backend)?;
        let legacy_payloads = db.open_tree("payloads").map_err(backend)?;
        let legacy_format = match catalog.get(keys::meta("format")).map_err(backend)? {
            Some(found) if found.as_ref() == keys::FORMAT_VERSION => false,
            Some(found) if found.as_ref() == keys::FORMAT_VERSION_3 || found.as_ref() == keys::FORMAT_VERSION_2 => {
                catalog.insert(keys::meta("format"), keys::FORMAT_VERSION).map_err(backend)?;
                false
            }
            Some(found) if found.as_ref() == keys::FORMAT_VERSION_1 => true,
            Some(found) => return Err(StoreError::UnknownFormat(String::from_utf8_lossy(&found).into_owned())),
            None => {
                catalog.insert(keys::meta("format"), keys::FORMAT_VERSION).map_err(backend)?;
                false
            }
        };
        // sled creates `conf`, `db` and `blobs/` without fsyncing them or the directory.
        let log = File::open(dir.join("db")).map_err(io)?;
        File::open(dir.join("conf")).and_then(|conf| conf.sync_all()).map_err(io)?;
        let dir = Arc::new(crate::durable_fs::DirSync::new(dir));
        let flush_db = db.clone();
        let log = Arc::new(log);
        let group_commit = GroupCommit::start(move || {
            let (db, log, dir) = (flush_db.clone(), log.clone(), dir.clone());
            async move {
                tokio::task::spawn_blocking(move || durable_flush(&db, &log, &dir)).await.map_err(|e| e.to_string())?
            }
        });
        Ok(Arc::new(SledStore {
            db,
            catalog,
            legacy_payloads,
            catalog_lock: Mutex::new(()),
            group_commit,
            legacy_format,
        }))
    }

    /// A tree of its own on the catalog's database (the API keys: `auth::keys`); what is
    /// written to it is made durable by [`Store::commit`] like the catalog.
    pub fn tree(&self, name: &str) -> StoreResult<Tree> {
        self.db.open_tree(name).map_err(backend)
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> StoreResult<Option<T>> {
        match self.catalog.get(key).map_err(backend)? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// A value stored in pieces under `base`, joined.
    fn get_pieces(&self, base: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        let mut out: Option<Vec<u8>> = None;
        for item in self.catalog.scan_prefix(keys::pieces_prefix(base)) {
            let (key, value) = item.map_err(backend)?;
            if key.len() != base.len() + 3 {
                continue; // A longer UID that shares the prefix.
            }
            out.get_or_insert_with(Vec::new).extend_from_slice(&value);
        }
        Ok(out)
    }

    fn piece_keys(&self, base: &[u8]) -> StoreResult<Vec<sled::IVec>> {
        let mut out = Vec::new();
        for item in self.catalog.scan_prefix(keys::pieces_prefix(base)) {
            let (key, _) = item.map_err(backend)?;
            if key.len() == base.len() + 3 {
                out.push(key);
            }
        }
        Ok(out)
    }

    /// Writes `bytes` in pieces under `base` into `batch`, removing pieces of an older, longer
    /// value.
    fn put_pieces(&self, batch: &mut Batch, base: &[u8], bytes: &[u8]) -> StoreResult<()> {
        let pieces: Vec<&[u8]> = if bytes.is_empty() { vec![&[][..]] } else { bytes.chunks(PIECE_BYTES).collect() };
        if pieces.len() > MAX_PIECES {
            return Err(StoreError::Corrupt(format!("a catalog value of {} bytes is over the limit", bytes.len())));
        }
        for key in self.piece_keys(base)?.into_iter().skip(pieces.len()) {
            batch.remove(key);
        }
        for (n, piece) in pieces.into_iter().enumerate() {
            batch.insert(keys::piece(base, n as u16), piece);
        }
        Ok(())
    }

    fn remove_pieces(&self, batch: &mut Batch, base: &[u8]) -> StoreResult<()> {
        for key in self.piece_keys(base)? {
            batch.remove(key);
        }
        Ok(())
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

    fn all_series(&self, study: &str) -> StoreResult<Vec<SeriesRecord>> {
        let mut out = Vec::new();
        for item in self.catalog.scan_prefix(keys::series_prefix(study)) {
            let (_, value) = item.map_err(backend)?;
            out.push(decode(&value)?);
        }
        Ok(out)
    }

    /// A study record recomputed from all its series (with `pending` overriding the stored
    /// records of the series changed in the same batch). Used when instances leave a study;
    /// adding one updates the study record incrementally instead (see `put_instance`).
    fn recomputed_study(
        &self,
        previous: StudyRecord,
        pending: &[(String, Option<SeriesRecord>)],
    ) -> StoreResult<Option<StudyRecord>> {
        let mut series: Vec<SeriesRecord> = self
            .all_series(&previous.study_uid)?
            .into_iter()
            .filter(|record| !pending.iter().any(|(uid, _)| *uid == record.series_uid))
            .collect();
        series.extend(pending.iter().filter_map(|(_, record)| record.clone()));
        if series.is_empty() {
            return Ok(None);
        }
        let mut modalities = BTreeSet::new();
        let mut sop_classes = BTreeSet::new();
        for record in &series {
            modalities.extend(series_modalities(record));
            sop_classes.extend(record.sop_classes.iter().cloned());
        }
        Ok(Some(StudyRecord {
            n_series: series.len() as u64,
            n_instances: series.iter().map(|s| s.n_instances).sum(),
            modalities: modalities.into_iter().collect(),
            sop_classes: sop_classes.into_iter().collect(),
            ..previous
        }))
    }

    fn instance_record(&self, sop_uid: &str) -> StoreResult<Option<InstanceRecord>> {
        match self.get_pieces(&keys::instance(sop_uid))? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Removes one instance's keys into `batch`; its payload becomes garbage.
    fn remove_instance_into(&self, batch: &mut Batch, record: &InstanceRecord) -> StoreResult<()> {
        let sop = &record.sop_instance_uid;
        batch.remove(keys::hierarchy(&record.study_uid, &record.series_uid, sop));
        self.remove_pieces(batch, &keys::instance(sop))?;
        self.remove_pieces(batch, &keys::metadata(sop))?;
        self.remove_pieces(batch, &keys::frame_map(sop))?;
        batch.remove(keys::original_form(sop));
        batch.remove(keys::payload_ref(record.payload.id));
        batch.insert(keys::garbage(record.payload.id), &[]);
        Ok(())
    }

    // ----- Format 1 → 2 migration (payload chunks leave sled) -----

    /// Whether the catalog is still in format 1 (payload chunks in sled).
    pub fn is_legacy_format(&self) -> bool {
        self.legacy_format
    }

    /// The format-1 instances whose payloads are still chunks in sled.
    pub fn legacy_payloads(&self) -> StoreResult<Vec<LegacyPayload>> {
        let mut out = Vec::new();
        for item in self.catalog.scan_prefix([keys::INSTANCE]) {
            let (key, value) = item.map_err(backend)?;
            // Format-2 values are pieces, whose keys end in `\0{n}` (a UID never holds a 0).
            if key.contains(&0) {
                continue;
            }
            // A format-1 record: one JSON value under `i{sop}`.
            let record: serde_json::Value = decode(&value)?;
            let payload = &record["payload"];
            let field = |name: &str| payload[name].as_u64();
            let (Some(id), Some(length), Some(chunk_size)) = (field("id"), field("length"), field("chunk_size")) else {
                return Err(StoreError::Corrupt("a format-1 record lacks its payload".into()));
            };
            let sop_uid = String::from_utf8_lossy(&key[1..]).into_owned();
            let sha256 = payload["sha256"].as_str().unwrap_or_default().to_string();
            out.push(LegacyPayload { sop_uid, id, length, chunk_size: chunk_size as u32, sha256 });
        }
        Ok(out)
    }

    /// Chunk `index` of a format-1 payload.
    pub fn legacy_chunk(&self, payload: u64, index: u32) -> StoreResult<Option<sled::IVec>> {
        self.legacy_payloads.get(keys::chunk(payload, index)).map_err(backend)
    }

    /// Rewrites one format-1 instance to point at its payload's new blob (atomic), and drops
    /// its chunks. Durable after the next commit.
    pub fn migrate_instance(&self, legacy: &LegacyPayload, blob: PayloadRef) -> StoreResult<()> {
        let _guard = self.catalog_lock.lock().unwrap_or_else(|p| p.into_inner());
        let old_key = keys::instance(&legacy.sop_uid);
        let Some(value) = self.catalog.get(&old_key).map_err(backend)? else { return Ok(()) };
        let mut record: serde_json::Value = decode(&value)?;
        record["version"] = RECORD_VERSION.into();
        record["payload"] = serde_json::to_value(&blob).expect("serialises");
        let record: InstanceRecord = serde_json::from_value(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let metadata_key = keys::metadata(&legacy.sop_uid);
        let metadata = self.catalog.get(&metadata_key).map_err(backend)?.unwrap_or_default();
        let mut batch = Batch::default();
        batch.remove(old_key.clone());
        batch.remove(metadata_key.clone());
        self.put_pieces(&mut batch, &old_key, &encode(&record))?;
        self.put_pieces(&mut batch, &metadata_key, &metadata)?;
        batch.insert(keys::payload_ref(blob.id), &[]);
        self.catalog.apply_batch(batch).map_err(backend)?;
        self.drop_legacy_chunks(legacy.id)
    }

    fn drop_legacy_chunks(&self, payload: u64) -> StoreResult<()> {
        let mut batch = Batch::default();
        for item in self.legacy_payloads.scan_prefix(keys::chunk_prefix(payload)) {
            batch.remove(item.map_err(backend)?.0);
        }
        self.legacy_payloads.apply_batch(batch).map_err(backend)
    }

    /// Ends the migration: drops what is left of format 1 and records format 2.
    pub fn finish_migration(&self) -> StoreResult<()> {
        let mut batch = Batch::default();
        for item in self.catalog.scan_prefix([keys::PENDING_PAYLOAD]) {
            let (key, _) = item.map_err(backend)?;
            if let Some(id) = keys::u64_suffix(&key) {
                self.drop_legacy_chunks(id)?;
            }
            batch.remove(key);
        }
        batch.insert(keys::meta("format"), keys::FORMAT_VERSION);
        self.catalog.apply_batch(batch).map_err(backend)?;
        self.legacy_payloads.clear().map_err(backend)?;
        Ok(())
    }
}

/// A format-1 payload to move into the blob store.
#[derive(Debug, Clone)]
pub struct LegacyPayload {
    pub sop_uid: String,
    pub id: u64,
    pub length: u64,
    pub chunk_size: u32,
    pub sha256: String,
}

/// The attributes of `level` among an instance's values.
pub(crate) fn level_attributes(values: &[AttributeValue], level: Level) -> Vec<AttributeValue> {
    values.iter().filter(|v| v.attribute().is_some_and(|a| a.level == level)).cloned().collect()
}

fn series_modalities(series: &SeriesRecord) -> impl Iterator<Item = String> + '_ {
    series
        .attributes
        .iter()
        .filter(|a| a.sequence.is_none() && a.tag() == dicom_dictionary_std::tags::MODALITY)
        .flat_map(|a| a.values.iter().filter(|v| !v.is_empty()).cloned())
}

fn put_or_remove<T: serde::Serialize>(batch: &mut Batch, key: Vec<u8>, value: Option<&T>) {
    match value {
        Some(value) => batch.insert(key, encode(value)),
        None => batch.remove(key),
    }
}

/// A series record after one of its instances was added (`latest`, `delta` 1), replaced in
/// place (`latest`, `delta` 0) or removed (`None`, `delta` -1); `None` when it is empty.
fn series_after(
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

/// A study record after `instance` was added to `series` (incremental: no scan of the study's
/// other series, so a study with 100,000 series costs the same per instance as one with one).
fn study_after_add(
    previous: Option<StudyRecord>,
    instance: &InstanceRecord,
    series: &SeriesRecord,
    new_instance: bool,
    new_series: bool,
    seq: u64,
) -> StudyRecord {
    let mut record = previous.unwrap_or(StudyRecord {
        version: RECORD_VERSION,
        owner: instance.owner.clone(),
        study_uid: instance.study_uid.clone(),
        attributes: Vec::new(),
        n_series: 0,
        n_instances: 0,
        modalities: Vec::new(),
        sop_classes: Vec::new(),
        created_seq: seq,
    });
    record.attributes = level_attributes(&instance.attributes, Level::Study);
    record.n_instances += u64::from(new_instance);
    record.n_series += u64::from(new_series);
    for modality in series_modalities(series) {
        if let Err(at) = record.modalities.binary_search(&modality) {
            record.modalities.insert(at, modality);
        }
    }
    if let Err(at) = record.sop_classes.binary_search(&instance.sop_class_uid) {
        record.sop_classes.insert(at, instance.sop_class_uid.clone());
    }
    record
}

impl Store for SledStore {
    fn allocate_payload(&self) -> StoreResult<u64> {
        self.db.generate_id().map_err(backend)
    }

    fn put_instance(
        &self,
        mut record: InstanceRecord,
        metadata: &[u8],
        frame_map: Option<&[u8]>,
        original: Option<&OriginalForm>,
        policy: DuplicatePolicy,
    ) -> StoreResult<PutOutcome> {
        if metadata.len() > MAX_METADATA_BYTES {
            return Err(StoreError::Corrupt(format!("metadata of {} bytes is over the limit", metadata.len())));
        }
        let _guard = self.catalog_lock.lock().unwrap_or_else(|p| p.into_inner());
        // A study belongs to the institution that first stored into it. Checked under the
        // catalog lock, so two institutions racing to start one study cannot both win.
        let study_owner = |study_uid: &str| -> StoreResult<Option<String>> {
            Ok(self.get::<StudyRecord>(&keys::study(study_uid))?.map(|study| study.owner))
        };
        if study_owner(&record.study_uid)?.is_some_and(|owner| owner != record.owner) {
            return Ok(PutOutcome::NotOwner);
        }
        let previous = self.instance_record(&record.sop_instance_uid)?;
        if let Some(previous) = &previous {
            let previous_owner = study_owner(&previous.study_uid)?.unwrap_or_else(|| previous.owner.clone());
            if previous_owner != record.owner {
                return Ok(PutOutcome::NotOwner);
            }
            // An instance stored re-encoded is the object it was received as: a re-sent copy is
            // recognised whether either was stored re-encoded or not (`--store-compression`).
            let previous_original = self.get::<OriginalForm>(&keys::original_form(&previous.sop_instance_uid))?;
            let same_object =
                received_identity(previous, previous_original.as_ref()) == received_identity(&record, original);
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
        let mut garbage = None;
        let same_place = previous.as_ref().is_some_and(|o| o.study_uid == study && o.series_uid == series);
        // Where the instance was, when a replacement moves it: that series loses it.
        let mut moved_from: Option<(String, Option<SeriesRecord>)> = None;
        if let Some(old) = &previous {
            batch.remove(keys::hierarchy(&old.study_uid, &old.series_uid, &sop));
            if old.payload.id != record.payload.id {
                batch.remove(keys::payload_ref(old.payload.id));
                batch.insert(keys::garbage(old.payload.id), &[]);
                garbage = Some(old.payload.id);
            }
            if !same_place {
                let old_series = self.get(&keys::series(&old.study_uid, &old.series_uid))?;
                let updated = series_after(old_series, &old.study_uid, &old.series_uid, None, -1, seq);
                put_or_remove(&mut batch, keys::series(&old.study_uid, &old.series_uid), updated.as_ref());
                touched.push((old.study_uid.clone(), old.series_uid.clone(), sop.clone()));
                if old.study_uid != study {
                    if let Some(old_study) = self.get::<StudyRecord>(&keys::study(&old.study_uid))? {
                        let recomputed = self.recomputed_study(old_study, &[(old.series_uid.clone(), updated)])?;
                        put_or_remove(&mut batch, keys::study(&old.study_uid), recomputed.as_ref());
                    }
                } else {
                    moved_from = Some((old.series_uid.clone(), updated));
                }
            }
        }
        let current_series: Option<SeriesRecord> = self.get(&keys::series(&study, &series))?;
        let new_series = current_series.is_none();
        let delta = if same_place { 0 } else { 1 };
        let series_record =
            series_after(current_series, &study, &series, Some(&record), delta, seq).expect("holds the new instance");
        let previous_study: Option<StudyRecord> = self.get(&keys::study(&study))?;
        let study_record = match (moved_from, previous_study) {
            // Moved between two series of this study (rare): recount from the series records.
            (Some(from), Some(previous_study)) => {
                let pending = [from, (series.clone(), Some(series_record.clone()))];
                let mut recounted = self.recomputed_study(previous_study, &pending)?.expect("holds the new instance");
                recounted.attributes = level_attributes(&record.attributes, Level::Study);
                recounted
            }
            (_, previous_study) => {
                study_after_add(previous_study, &record, &series_record, !same_place, new_series, seq)
            }
        };
        batch.insert(keys::study(&study), encode(&study_record));
        batch.insert(keys::series(&study, &series), encode(&series_record));
        batch.insert(keys::hierarchy(&study, &series, &sop), &[]);
        self.put_pieces(&mut batch, &keys::instance(&sop), &encode(&record))?;
        self.put_pieces(&mut batch, &keys::metadata(&sop), metadata)?;
        match frame_map {
            Some(map) => self.put_pieces(&mut batch, &keys::frame_map(&sop), map)?,
            None => self.remove_pieces(&mut batch, &keys::frame_map(&sop))?,
        }
        match original {
            Some(original) => batch.insert(keys::original_form(&sop), encode(original)),
            None => batch.remove(keys::original_form(&sop)),
        }
        batch.insert(keys::payload_ref(record.payload.id), &[]);
        batch.insert(keys::change(seq), encode(&Change { seq, touched }));
        self.catalog.apply_batch(batch).map_err(backend)?;
        Ok(PutOutcome::Stored { replaced: previous.is_some(), garbage })
    }

    fn delete(
        &self,
        study_uid: &str,
        series_uid: Option<&str>,
        sop_uid: Option<&str>,
    ) -> StoreResult<Vec<InstanceRecord>> {
        let _guard = self.catalog_lock.lock().unwrap_or_else(|p| p.into_inner());
        let sops = match (series_uid, sop_uid) {
            (Some(series), Some(sop)) => {
                let inside =
                    self.instance_record(sop)?.is_some_and(|r| r.study_uid == study_uid && r.series_uid == series);
                if inside { vec![sop.to_string()] } else { Vec::new() }
            }
            (series, _) => self.instance_uids(study_uid, series)?,
        };
        let mut removed = Vec::with_capacity(sops.len());
        for sop in sops {
            if let Some(record) = self.instance_record(&sop)? {
                removed.push(record);
            }
        }
        if removed.is_empty() {
            return Ok(removed);
        }
        let seq = self.db.generate_id().map_err(backend)?;
        let mut batch = Batch::default();
        let mut per_series: std::collections::BTreeMap<String, i64> = Default::default();
        let mut touched = Vec::with_capacity(removed.len());
        for record in &removed {
            self.remove_instance_into(&mut batch, record)?;
            *per_series.entry(record.series_uid.clone()).or_default() -= 1;
            touched.push((record.study_uid.clone(), record.series_uid.clone(), record.sop_instance_uid.clone()));
        }
        let mut pending = Vec::new();
        for (series, delta) in per_series {
            let previous = self.get(&keys::series(study_uid, &series))?;
            let updated = series_after(previous, study_uid, &series, None, delta, seq);
            put_or_remove(&mut batch, keys::series(study_uid, &series), updated.as_ref());
            pending.push((series, updated));
        }
        let study_record = match self.get::<StudyRecord>(&keys::study(study_uid))? {
            Some(previous) => self.recomputed_study(previous, &pending)?,
            None => None,
        };
        put_or_remove(&mut batch, keys::study(study_uid), study_record.as_ref());
        batch.insert(keys::change(seq), encode(&Change { seq, touched }));
        self.catalog.apply_batch(batch).map_err(backend)?;
        Ok(removed)
    }

    fn instance(&self, sop_uid: &str) -> StoreResult<Option<InstanceRecord>> {
        self.instance_record(sop_uid)
    }

    fn instance_metadata(&self, sop_uid: &str) -> StoreResult<Option<Bytes>> {
        Ok(self.get_pieces(&keys::metadata(sop_uid))?.map(Bytes::from))
    }

    fn frame_map(&self, sop_uid: &str) -> StoreResult<Option<Bytes>> {
        Ok(self.get_pieces(&keys::frame_map(sop_uid))?.map(Bytes::from))
    }

    fn original_form(&self, sop_uid: &str) -> StoreResult<Option<OriginalForm>> {
        self.get(&keys::original_form(sop_uid))
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
        for item in self.catalog.scan_prefix([keys::HIERARCHY]) {
            item.map_err(backend)?;
            n += 1;
        }
        Ok(n)
    }

    fn is_referenced(&self, payload: u64) -> StoreResult<bool> {
        self.catalog.contains_key(keys::payload_ref(payload)).map_err(backend)
    }

    fn garbage(&self) -> StoreResult<Vec<u64>> {
        let mut out = Vec::new();
        for item in self.catalog.scan_prefix([keys::GARBAGE]) {
            let (key, _) = item.map_err(backend)?;
            out.extend(keys::u64_suffix(&key));
        }
        Ok(out)
    }

    fn forget_garbage(&self, payloads: &[u64]) -> StoreResult<()> {
        let mut batch = Batch::default();
        for id in payloads {
            batch.remove(keys::garbage(*id));
        }
        self.catalog.apply_batch(batch).map_err(backend)
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

    fn mark_open(&self) -> StoreResult<bool> {
        let was_open = self.catalog.insert(keys::meta("open"), &[]).map_err(backend)?.is_some();
        Ok(was_open)
    }

    fn mark_closed(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            self.catalog.remove(keys::meta("open")).map_err(backend)?;
            self.commit().await
        })
    }
}
