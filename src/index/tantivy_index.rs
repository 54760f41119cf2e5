//! The tantivy backend of [`Index`], in two tiers.
//!
//! A tantivy commit on disk costs 15–20 ms here (new segment files, fsync), and STOW-RS must not
//! answer before its instances are searchable. So every change is first committed to a small
//! in-memory index (the *recent* tier: a commit there costs well under a millisecond) and
//! becomes visible at once; a checkpoint about once a second moves the recent documents into
//! the disk index with one fsynced commit and empties the recent tier. Searches read both tiers
//! from one snapshot: recent documents hide their older versions on disk (and tombstones hide
//! deleted ones), so no document is ever seen twice or missing.
//!
//! Durability: only checkpointed changes are reported by [`Index::take_durable`]; the archive
//! keeps the others in the store's change log and replays them after a crash.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tantivy::collector::{Count, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::{BooleanQuery, Occur, Query, TermSetQuery};
use tantivy::schema::Value;
use tantivy::{
    DocAddress, Index as TantivyRawIndex, IndexReader, IndexWriter, Order, ReloadPolicy, Searcher, TantivyDocument,
    Term,
};
use tokio::sync::oneshot;

use super::schema::{self, Fields, PN_TOKENIZER, SCHEMA_VERSION};
use super::search::{self, level_term, normalise_person_name};
use super::*;
use crate::dicom::attrs::{self, ATTRIBUTES, DATE_TIME_PAIRS, Matching};
use crate::model::search::{Hit, SearchHits, SearchQuery, date_time, parse_date, parse_time, parse_utc_offset};

const DISK_WRITER_MEMORY: usize = 32 * 1024 * 1024;
const RECENT_WRITER_MEMORY: usize = 16 * 1024 * 1024;
const VERSION_FILE: &str = "kura-index-version";
/// A checkpoint runs when the recent tier is this old…
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// …or holds this many documents.
const CHECKPOINT_DOCS: usize = 20_000;
/// `_level` of a recent-tier document that marks a key as deleted.
const TOMBSTONE: &str = "tombstone";

type Done = oneshot::Sender<Result<(), String>>;

enum Request {
    Apply(Vec<IndexOp>, Vec<u64>, Done),
    Clear(Done),
    Checkpoint(Done),
}

/// What searches read: both tiers at one moment, and the keys the recent tier overrides.
#[derive(Clone)]
struct Snapshot {
    disk: Searcher,
    recent: Searcher,
    recent_keys: Arc<HashSet<String>>,
}

pub struct TantivyIndex {
    fields: Arc<Fields>,
    snapshot: Arc<Mutex<Snapshot>>,
    durable: Arc<Mutex<Vec<u64>>>,
    requests: std_mpsc::Sender<Request>,
}

fn backend(error: impl std::error::Error + Send + Sync + 'static) -> IndexError {
    IndexError::Backend(Box::new(error))
}

struct Tier {
    writer: IndexWriter,
    reader: IndexReader,
}

fn open_tier(index: TantivyRawIndex, memory: usize) -> IndexResult<Tier> {
    index.tokenizers().register(PN_TOKENIZER, schema::pn_analyzer());
    let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().map_err(backend)?;
    let writer: IndexWriter = index.writer_with_num_threads(1, memory).map_err(backend)?;
    Ok(Tier { writer, reader })
}

impl TantivyIndex {
    /// Opens the index under `dir`, creating it if needed. An index written with another schema
    /// version is wiped; the returned flag says the caller must rebuild it from the store. In
    /// that case `rebuild_marker` is created (durably) before the new version is recorded, so a
    /// crash before the rebuild ends still finds the rebuild to do; the rebuild removes it.
    pub fn open(dir: &Path, rebuild_marker: &Path) -> IndexResult<(Arc<TantivyIndex>, bool)> {
        let version_path = dir.join(VERSION_FILE);
        let current = std::fs::read_to_string(&version_path).ok();
        // A missing or unreadable version file (a power cut can leave either) also means a
        // rebuild: the store may hold instances this index never saw. On an empty store a
        // rebuild costs nothing.
        let rebuild = current.as_deref().map(str::trim) != Some(&SCHEMA_VERSION.to_string());
        if rebuild {
            crate::durable_fs::write_file(rebuild_marker, b"").map_err(backend)?;
            if dir.exists() {
                std::fs::remove_dir_all(dir).map_err(backend)?;
            }
        }
        crate::durable_fs::create_dir_all(dir).map_err(backend)?;
        let fields = Arc::new(Fields::build());
        let directory = MmapDirectory::open(dir).map_err(backend)?;
        let disk = open_tier(
            TantivyRawIndex::open_or_create(directory, fields.schema.clone()).map_err(backend)?,
            DISK_WRITER_MEMORY,
        )?;
        crate::durable_fs::write_file(&version_path, SCHEMA_VERSION.to_string().as_bytes()).map_err(backend)?;
        let recent = open_tier(TantivyRawIndex::create_in_ram(fields.schema.clone()), RECENT_WRITER_MEMORY)?;

        let snapshot = Arc::new(Mutex::new(Snapshot {
            disk: disk.reader.searcher(),
            recent: recent.reader.searcher(),
            recent_keys: Arc::new(HashSet::new()),
        }));
        let durable = Arc::new(Mutex::new(Vec::new()));
        let (requests, receiver) = std_mpsc::channel();
        let writer = Writer {
            dir: dir.to_path_buf(),
            disk,
            recent,
            fields: fields.clone(),
            snapshot: snapshot.clone(),
            durable: durable.clone(),
            pending: HashMap::new(),
            recent_keys: HashSet::new(),
            pending_seqs: Vec::new(),
            oldest: None,
        };
        std::thread::Builder::new()
            .name("kura-index-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(backend)?;
        Ok((Arc::new(TantivyIndex { fields, snapshot, durable, requests }), rebuild))
    }

    async fn send(&self, make: impl FnOnce(Done) -> Request) -> IndexResult<()> {
        let (sender, receiver) = oneshot::channel();
        self.requests.send(make(sender)).map_err(|_| IndexError::Backend("index writer stopped".into()))?;
        receiver
            .await
            .map_err(|_| IndexError::Backend("index writer stopped".into()))?
            .map_err(|message| IndexError::Backend(message.into()))
    }
}

/// The writer thread's state.
struct Writer {
    /// The disk index's directory.
    dir: std::path::PathBuf,
    disk: Tier,
    recent: Tier,
    fields: Arc<Fields>,
    snapshot: Arc<Mutex<Snapshot>>,
    durable: Arc<Mutex<Vec<u64>>>,
    /// Latest operation per document key since the last checkpoint (`None` = delete).
    pending: HashMap<String, Option<IndexDoc>>,
    recent_keys: HashSet<String>,
    pending_seqs: Vec<u64>,
    oldest: Option<Instant>,
}

impl Writer {
    fn run(mut self, receiver: std_mpsc::Receiver<Request>) {
        loop {
            let wait = match self.oldest {
                Some(oldest) => CHECKPOINT_INTERVAL.saturating_sub(oldest.elapsed()),
                None => Duration::from_secs(3600),
            };
            let first = match receiver.recv_timeout(wait) {
                Ok(request) => Some(request),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.checkpoint();
                    return;
                }
            };
            let mut batch: Vec<Request> = first.into_iter().collect();
            while let Ok(next) = receiver.try_recv() {
                batch.push(next);
            }
            let mut waiters = Vec::new();
            let mut checkpoint_asked = Vec::new();
            let mut outcome: Result<(), String> = Ok(());
            for request in batch {
                match request {
                    Request::Apply(ops, seqs, done) => {
                        if let Err(error) = self.apply_recent(ops) {
                            outcome = Err(error.to_string());
                        }
                        self.pending_seqs.extend(seqs);
                        waiters.push(done);
                    }
                    Request::Clear(done) => {
                        if let Err(error) = self.clear() {
                            outcome = Err(error.to_string());
                        }
                        waiters.push(done);
                    }
                    Request::Checkpoint(done) => checkpoint_asked.push(done),
                }
            }
            if !waiters.is_empty() {
                if outcome.is_ok() {
                    outcome = self.commit_recent().map_err(|e| e.to_string());
                }
                if outcome.is_err() {
                    let _ = self.recent.writer.rollback();
                }
                for waiter in waiters {
                    let _ = waiter.send(outcome.clone());
                }
            }
            let due = self.oldest.is_some_and(|oldest| oldest.elapsed() >= CHECKPOINT_INTERVAL)
                || self.pending.len() >= CHECKPOINT_DOCS
                || !checkpoint_asked.is_empty();
            if due {
                let outcome = self.checkpoint().map_err(|e| e.to_string());
                if let Err(error) = &outcome {
                    tracing::warn!(%error, "index checkpoint failed; retrying later");
                    // Wait a full interval before the next try instead of spinning.
                    self.oldest = Some(Instant::now());
                }
                for waiter in checkpoint_asked {
                    let _ = waiter.send(outcome.clone());
                }
            }
        }
    }

    fn apply_recent(&mut self, ops: Vec<IndexOp>) -> tantivy::Result<()> {
        for op in ops {
            let (key, doc) = match op {
                IndexOp::Upsert(doc) => (doc.key.term(), Some(doc)),
                IndexOp::Delete(key) => (key.term(), None),
            };
            self.recent.writer.delete_term(Term::from_field_text(self.fields.key, &key));
            match &doc {
                Some(doc) => self.recent.writer.add_document(to_document(&self.fields, doc))?,
                None => {
                    let mut tombstone = TantivyDocument::default();
                    tombstone.add_text(self.fields.key, &key);
                    tombstone.add_text(self.fields.level, TOMBSTONE);
                    self.recent.writer.add_document(tombstone)?
                }
            };
            self.recent_keys.insert(key.clone());
            self.pending.insert(key, doc);
        }
        self.oldest.get_or_insert_with(Instant::now);
        Ok(())
    }

    fn commit_recent(&mut self) -> tantivy::Result<()> {
        self.recent.writer.commit()?;
        self.recent.reader.reload()?;
        self.publish();
        Ok(())
    }

    fn publish(&self) {
        let mut snapshot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        *snapshot = Snapshot {
            disk: self.disk.reader.searcher(),
            recent: self.recent.reader.searcher(),
            recent_keys: Arc::new(self.recent_keys.clone()),
        };
    }

    /// Moves the recent tier into the disk index with one durable commit.
    fn checkpoint(&mut self) -> tantivy::Result<()> {
        if self.pending.is_empty() && self.pending_seqs.is_empty() {
            self.oldest = None;
            return Ok(());
        }
        for (key, doc) in self.pending.drain() {
            self.disk.writer.delete_term(Term::from_field_text(self.fields.key, &key));
            if let Some(doc) = doc {
                self.disk.writer.add_document(to_document(&self.fields, &doc))?;
            }
        }
        self.disk.writer.commit()?;
        // tantivy 0.27 fsyncs the directory *before* it renames the new meta.json into place
        // (`save_metas`), so the commit itself is not durable against a power cut until the
        // directory is fsynced once more; the change log may forget these changes only then.
        crate::durable_fs::sync_dir(&self.dir)?;
        self.disk.reader.reload()?;
        // The disk now holds every recent document: publish it before emptying the recent tier,
        // so that a search sees each document in at least one tier.
        self.publish();
        self.recent.writer.delete_all_documents()?;
        self.recent_keys.clear();
        self.recent.writer.commit()?;
        self.recent.reader.reload()?;
        self.publish();
        self.durable.lock().unwrap_or_else(|p| p.into_inner()).append(&mut self.pending_seqs);
        self.oldest = None;
        Ok(())
    }

    fn clear(&mut self) -> tantivy::Result<()> {
        self.pending.clear();
        self.recent_keys.clear();
        self.recent.writer.delete_all_documents()?;
        self.disk.writer.delete_all_documents()?;
        self.disk.writer.commit()?;
        self.disk.reader.reload()?;
        Ok(())
    }
}

fn to_document(fields: &Fields, doc: &IndexDoc) -> TantivyDocument {
    let mut out = TantivyDocument::default();
    out.add_text(fields.key, doc.key.term());
    out.add_text(fields.level, level_term(doc.key.level));
    out.add_text(fields.study_uid, &doc.key.study_uid);
    out.add_text(fields.owner, &doc.owner);
    if let Some(series) = &doc.key.series_uid {
        out.add_text(fields.series_uid, series);
        out.add_text(fields.series_key, schema::series_key(&doc.key.study_uid, series));
    }
    if let Some(sop) = &doc.key.sop_uid {
        out.add_text(fields.sop_uid, sop);
    }
    out.add_u64(fields.created, doc.created);
    out.add_bytes(fields.row, &super::stored::encode(&doc.row));
    let first = |tag| {
        let top_level = |v: &&AttributeValue| v.tag() == tag && v.sequence.is_none();
        doc.values.iter().find(top_level).and_then(|v| v.values.first()).map(String::as_str).unwrap_or("")
    };
    for (date_tag, time_tag) in DATE_TIME_PAIRS {
        let date_attribute = attrs::by_tag(*date_tag).expect("pairs are table attributes");
        if date_attribute.level > doc.key.level {
            continue;
        }
        let Some((local_field, utc_field)) = fields.date_time_of(date_attribute) else { continue };
        let local = parse_date(first(*date_tag)).zip(parse_time(first(*time_tag)));
        let local = local.map(|(date, time)| date_time(date, time));
        if let Some(local) = local {
            out.add_u64(local_field, local);
        }
        match (local, parse_utc_offset(first(dicom_dictionary_std::tags::TIMEZONE_OFFSET_FROM_UTC))) {
            (Some(local), Some(offset)) => out.add_u64(utc_field, local.saturating_add_signed(-offset)),
            _ => out.add_text(fields.empty, search::utc_marker(date_attribute)),
        }
    }
    for attribute in ATTRIBUTES.iter().filter(|a| a.level <= doc.key.level) {
        let field = fields.of(attribute);
        let values: Vec<&str> = doc
            .values
            .iter()
            .filter(|v| v.is(attribute))
            .flat_map(|v| v.values.iter().map(String::as_str))
            .filter(|v| !v.is_empty())
            .collect();
        if let Some(items_field) = fields.items_of(attribute) {
            let item_values = doc.values.iter().filter(|v| v.is(attribute)).flat_map(|v| v.values.iter());
            for (index, value) in item_values.enumerate().take(search::MAX_ITEMS) {
                if !value.is_empty() {
                    out.add_text(items_field, search::item_term(index, value));
                }
            }
        }
        if values.is_empty() {
            out.add_text(fields.empty, attribute.keyword);
        }
        for value in values {
            match attribute.matching {
                Matching::Uid | Matching::Text => out.add_text(field, value),
                Matching::PersonName => {
                    out.add_text(field, normalise_person_name(value));
                    for group in value.split('=').filter(|g| !g.is_empty()) {
                        out.add_text(field, normalise_person_name(group));
                    }
                    if let Some(words) = fields.words_of(attribute) {
                        for word in search::name_words(value) {
                            out.add_text(words, word);
                        }
                    }
                }
                Matching::Date => {
                    if let Some(date) = parse_date(value) {
                        out.add_u64(field, date);
                    }
                }
                Matching::Time => {
                    if let Some(time) = parse_time(value) {
                        out.add_u64(field, time);
                    }
                }
                Matching::Number => {
                    if let Ok(number) = value.trim().parse::<i64>() {
                        out.add_i64(field, number);
                    }
                }
            }
        }
    }
    out
}

/// Offsets from which a search collects every match instead of the top `offset + limit`.
const DEEP_OFFSET: usize = 10_000;

/// Every matching document with its `_created` value: what a deep page sorts. Its memory
/// grows with the matches, never with the offset asked for.
struct CreatedOrder;

struct CreatedOrderSegment {
    segment: tantivy::SegmentOrdinal,
    created: tantivy::columnar::Column<u64>,
    found: Vec<(u64, DocAddress)>,
}

impl tantivy::collector::Collector for CreatedOrder {
    type Fruit = Vec<(u64, DocAddress)>;
    type Child = CreatedOrderSegment;

    fn for_segment(
        &self,
        segment: tantivy::SegmentOrdinal,
        reader: &tantivy::SegmentReader,
    ) -> tantivy::Result<CreatedOrderSegment> {
        Ok(CreatedOrderSegment { segment, created: reader.fast_fields().u64("_created")?, found: Vec::new() })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Vec<(u64, DocAddress)>>) -> tantivy::Result<Vec<(u64, DocAddress)>> {
        Ok(fruits.concat())
    }
}

impl tantivy::collector::SegmentCollector for CreatedOrderSegment {
    type Fruit = Vec<(u64, DocAddress)>;

    fn collect(&mut self, doc: tantivy::DocId, _score: tantivy::Score) {
        self.found.push((self.created.first(doc).unwrap_or(0), DocAddress::new(self.segment, doc)));
    }

    fn harvest(self) -> Vec<(u64, DocAddress)> {
        self.found
    }
}

impl Index for TantivyIndex {
    fn apply(&self, ops: Vec<IndexOp>, seqs: Vec<u64>) -> BoxFuture<'_, IndexResult<()>> {
        Box::pin(async move {
            if ops.is_empty() && seqs.is_empty() {
                return Ok(());
            }
            self.send(|done| Request::Apply(ops, seqs, done)).await
        })
    }

    fn clear(&self) -> BoxFuture<'_, IndexResult<()>> {
        Box::pin(self.send(Request::Clear))
    }

    fn checkpoint(&self) -> BoxFuture<'_, IndexResult<()>> {
        Box::pin(self.send(Request::Checkpoint))
    }

    fn take_durable(&self) -> Vec<u64> {
        std::mem::take(&mut *self.durable.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn search(&self, query: &SearchQuery) -> IndexResult<SearchHits> {
        let snapshot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let matching = search::build_query(&self.fields, query)?;
        // Disk documents whose key the recent tier holds are older versions (or deleted).
        let keys = snapshot.recent_keys.iter().map(|k| Term::from_field_text(self.fields.key, k));
        let disk_query: Box<dyn Query> = if snapshot.recent_keys.is_empty() {
            matching.box_clone()
        } else {
            Box::new(BooleanQuery::new(vec![
                (Occur::Must, matching.box_clone()),
                (Occur::MustNot, Box::new(TermSetQuery::new(keys))),
            ]))
        };
        // Newest studies first; series and instances in the order they were stored.
        let order = if query.level == Level::Study { Order::Desc } else { Order::Asc };
        // The collector allocates for every hit it may keep, so `offset + limit` (both from the
        // request) must never size it: an offset of 10^13 aborted the process, one near 2^64
        // overflowed the capacity. A shallow page keeps at most `offset + limit` hits (below
        // `DEEP_OFFSET + limit`, and at most what the tier holds); a deep page collects the
        // matches themselves (16 bytes each, growing with what matches, nothing up front), so
        // a page past the end allocates nothing beyond the matches.
        let wanted = query.offset.saturating_add(query.limit);
        let deep = query.offset >= DEEP_OFFSET;
        let count_only = query.limit == 0;
        let mut total = 0;
        let mut hits: Vec<(u64, bool, DocAddress)> = Vec::new();
        for (searcher, query, is_recent) in [(&snapshot.disk, &disk_query, false), (&snapshot.recent, &matching, true)]
        {
            let holds = usize::try_from(searcher.num_docs()).unwrap_or(usize::MAX);
            let keep = wanted.min(holds);
            if keep == 0 || count_only {
                total += searcher.search(query.as_ref(), &Count).map_err(backend)?;
            } else if deep {
                let all = searcher.search(query.as_ref(), &CreatedOrder).map_err(backend)?;
                total += all.len();
                hits.extend(all.into_iter().map(|(created, address)| (created, is_recent, address)));
            } else {
                let collector = TopDocs::with_limit(keep).order_by_u64_field("_created", order);
                let (count, top) = searcher.search(query.as_ref(), &(Count, collector)).map_err(backend)?;
                total += count;
                hits.extend(top.into_iter().map(|(created, address)| (created.unwrap_or(0), is_recent, address)));
            }
        }
        if query.offset >= total {
            return Ok(SearchHits { total, hits: Vec::new() });
        }
        hits.sort_by_key(|(created, _, _)| *created);
        if order == Order::Desc {
            hits.reverse();
        }
        let mut rows = Vec::with_capacity(query.limit.min(hits.len()));
        for (_, is_recent, address) in hits.into_iter().skip(query.offset).take(query.limit) {
            let searcher = if is_recent { &snapshot.recent } else { &snapshot.disk };
            let doc: TantivyDocument = searcher.doc(address).map_err(backend)?;
            let text = |field| doc.get_first(field).and_then(|v| v.as_str()).map(str::to_string);
            let row = doc.get_first(self.fields.row).and_then(|v| v.as_bytes()).and_then(super::stored::decode);
            rows.push(Hit {
                key: DocKey {
                    level: query.level,
                    study_uid: text(self.fields.study_uid).unwrap_or_default(),
                    series_uid: text(self.fields.series_uid),
                    sop_uid: text(self.fields.sop_uid),
                },
                row: row.ok_or_else(|| IndexError::Backend("index document without a result row".into()))?,
            });
        }
        Ok(SearchHits { total, hits: rows })
    }
}
