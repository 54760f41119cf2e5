//! The worklist's records in the catalog: UPS workitems, subscriptions and the per-subscriber
//! event queues (`archive::worklist` owns their meaning). They live in a sled tree of their own
//! (`worklist`) on the catalog's database, so [`Store::commit`](super::Store::commit) makes them
//! durable with the same group commit as instances; [`WorklistStore::apply`] is atomic, so a
//! state change and the events it queues for every subscriber survive a crash together or not
//! at all.
//!
//! Keys: `w{workitem uid}` a workitem record; `g{ae}` a worklist (global or filtered)
//! subscription; `s{ae}\0{workitem uid}` a subscription to one workitem; `q{ae}\0{seq:be64}` a
//! queued event; `m` + name: counters. Every value is small (a workitem is at most
//! `archive::worklist::MAX_WORKITEM_BYTES`), far below sled's blob-file threshold (see
//! `sled_store`).

use sled::{Batch, Tree};

use super::{StoreError, StoreResult};

/// The name of the sled tree.
pub const TREE: &str = "worklist";

const WORKITEM: u8 = b'w';
const GLOBAL: u8 = b'g';
const SUBSCRIPTION: u8 = b's';
const QUEUE: u8 = b'q';
const META: u8 = b'm';

/// One write of an atomic [`WorklistBatch`].
#[derive(Debug, Clone)]
enum Op {
    PutWorkitem(String, Vec<u8>),
    RemoveWorkitem(String),
    PutGlobal(String, Vec<u8>),
    RemoveGlobal(String),
    PutSubscription(String, String),
    RemoveSubscription(String, String),
    Enqueue(String, u64, Vec<u8>),
    Dequeue(String, u64),
    SetCounter(&'static str, u64),
}

/// Writes applied together or not at all.
#[derive(Debug, Default, Clone)]
pub struct WorklistBatch {
    ops: Vec<Op>,
}

impl WorklistBatch {
    pub fn put_workitem(&mut self, uid: &str, record: Vec<u8>) {
        self.ops.push(Op::PutWorkitem(uid.into(), record));
    }
    pub fn remove_workitem(&mut self, uid: &str) {
        self.ops.push(Op::RemoveWorkitem(uid.into()));
    }
    pub fn put_global(&mut self, ae: &str, record: Vec<u8>) {
        self.ops.push(Op::PutGlobal(ae.into(), record));
    }
    pub fn remove_global(&mut self, ae: &str) {
        self.ops.push(Op::RemoveGlobal(ae.into()));
    }
    pub fn put_subscription(&mut self, ae: &str, uid: &str) {
        self.ops.push(Op::PutSubscription(ae.into(), uid.into()));
    }
    pub fn remove_subscription(&mut self, ae: &str, uid: &str) {
        self.ops.push(Op::RemoveSubscription(ae.into(), uid.into()));
    }
    pub fn enqueue(&mut self, ae: &str, seq: u64, event: Vec<u8>) {
        self.ops.push(Op::Enqueue(ae.into(), seq, event));
    }
    pub fn dequeue(&mut self, ae: &str, seq: u64) {
        self.ops.push(Op::Dequeue(ae.into(), seq));
    }
    pub fn set_counter(&mut self, name: &'static str, value: u64) {
        self.ops.push(Op::SetCounter(name, value));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The worklist's catalog. Durability: as [`super::Store`] (visible at once, durable after the
/// next `Store::commit`).
pub trait WorklistStore: Send + Sync + 'static {
    fn workitem(&self, uid: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Every workitem record, in UID order (the archive caps how many exist).
    fn workitems(&self) -> StoreResult<Vec<(String, Vec<u8>)>>;
    /// Every worklist subscription: (AE title, record).
    fn globals(&self) -> StoreResult<Vec<(String, Vec<u8>)>>;
    /// Every workitem subscription: (AE title, workitem UID).
    fn subscriptions(&self) -> StoreResult<Vec<(String, String)>>;
    /// Sequence numbers of every queued event: (AE title, seq), in key order.
    fn queued_seqs(&self) -> StoreResult<Vec<(String, u64)>>;
    /// At most `max` queued events of `ae` with a sequence number above `after`, in order.
    fn queued(&self, ae: &str, after: u64, max: usize) -> StoreResult<Vec<(u64, Vec<u8>)>>;
    fn counter(&self, name: &str) -> StoreResult<u64>;
    /// Applies every write of `batch` atomically.
    fn apply(&self, batch: WorklistBatch) -> StoreResult<()>;
}

/// The sled implementation over the `worklist` tree.
pub struct SledWorklist {
    tree: Tree,
}

fn backend(error: sled::Error) -> StoreError {
    StoreError::Backend(Box::new(error))
}

fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut key = vec![prefix];
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(0);
        }
        key.extend_from_slice(part);
    }
    key
}

fn text(bytes: &[u8]) -> StoreResult<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| StoreError::Corrupt("a worklist key is not UTF-8".into()))
}

/// Splits `{prefix}{a}\0{b}` into (a, b).
fn two_parts(key: &[u8]) -> StoreResult<(&[u8], &[u8])> {
    let rest = &key[1..];
    let separator = rest
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| StoreError::Corrupt("a worklist key without its separator".into()))?;
    Ok((&rest[..separator], &rest[separator + 1..]))
}

impl SledWorklist {
    pub fn new(tree: Tree) -> SledWorklist {
        SledWorklist { tree }
    }

    fn scan(&self, prefix: &[u8]) -> impl Iterator<Item = StoreResult<(sled::IVec, sled::IVec)>> + '_ {
        self.tree.scan_prefix(prefix).map(|item| item.map_err(backend))
    }
}

impl WorklistStore for SledWorklist {
    fn workitem(&self, uid: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.tree.get(key(WORKITEM, &[uid.as_bytes()])).map_err(backend)?.map(|v| v.to_vec()))
    }

    fn workitems(&self) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.scan(&[WORKITEM]).map(|item| item.and_then(|(k, v)| Ok((text(&k[1..])?, v.to_vec())))).collect()
    }

    fn globals(&self) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.scan(&[GLOBAL]).map(|item| item.and_then(|(k, v)| Ok((text(&k[1..])?, v.to_vec())))).collect()
    }

    fn subscriptions(&self) -> StoreResult<Vec<(String, String)>> {
        self.scan(&[SUBSCRIPTION])
            .map(|item| {
                let (k, _) = item?;
                let (ae, uid) = two_parts(&k)?;
                Ok((text(ae)?, text(uid)?))
            })
            .collect()
    }

    fn queued_seqs(&self) -> StoreResult<Vec<(String, u64)>> {
        self.scan(&[QUEUE])
            .map(|item| {
                let (k, _) = item?;
                let (ae, seq) = two_parts(&k)?;
                let seq = u64::from_be_bytes(
                    seq.try_into().map_err(|_| StoreError::Corrupt("a queue key without its number".into()))?,
                );
                Ok((text(ae)?, seq))
            })
            .collect()
    }

    fn queued(&self, ae: &str, after: u64, max: usize) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        let start = key(QUEUE, &[ae.as_bytes(), &after.saturating_add(1).to_be_bytes()]);
        let end = key(QUEUE, &[ae.as_bytes(), &u64::MAX.to_be_bytes()]);
        let mut out = Vec::new();
        for item in self.tree.range(start..=end).take(max) {
            let (k, v) = item.map_err(backend)?;
            let (_, seq) = two_parts(&k)?;
            let seq = u64::from_be_bytes(
                seq.try_into().map_err(|_| StoreError::Corrupt("a queue key without its number".into()))?,
            );
            out.push((seq, v.to_vec()));
        }
        Ok(out)
    }

    fn counter(&self, name: &str) -> StoreResult<u64> {
        Ok(match self.tree.get(key(META, &[name.as_bytes()])).map_err(backend)? {
            Some(value) => u64::from_be_bytes(
                value.as_ref().try_into().map_err(|_| StoreError::Corrupt("a worklist counter".into()))?,
            ),
            None => 0,
        })
    }

    fn apply(&self, batch: WorklistBatch) -> StoreResult<()> {
        let mut sled_batch = Batch::default();
        for op in batch.ops {
            match op {
                Op::PutWorkitem(uid, record) => sled_batch.insert(key(WORKITEM, &[uid.as_bytes()]), record),
                Op::RemoveWorkitem(uid) => sled_batch.remove(key(WORKITEM, &[uid.as_bytes()])),
                Op::PutGlobal(ae, record) => sled_batch.insert(key(GLOBAL, &[ae.as_bytes()]), record),
                Op::RemoveGlobal(ae) => sled_batch.remove(key(GLOBAL, &[ae.as_bytes()])),
                Op::PutSubscription(ae, uid) => {
                    sled_batch.insert(key(SUBSCRIPTION, &[ae.as_bytes(), uid.as_bytes()]), &[][..])
                }
                Op::RemoveSubscription(ae, uid) => {
                    sled_batch.remove(key(SUBSCRIPTION, &[ae.as_bytes(), uid.as_bytes()]))
                }
                Op::Enqueue(ae, seq, event) => {
                    sled_batch.insert(key(QUEUE, &[ae.as_bytes(), &seq.to_be_bytes()]), event)
                }
                Op::Dequeue(ae, seq) => sled_batch.remove(key(QUEUE, &[ae.as_bytes(), &seq.to_be_bytes()])),
                Op::SetCounter(name, value) => {
                    sled_batch.insert(key(META, &[name.as_bytes()]), &value.to_be_bytes()[..])
                }
            }
        }
        self.tree.apply_batch(sled_batch).map_err(backend)
    }
}
