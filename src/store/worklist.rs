//! The worklist's records in the catalog: UPS workitems, subscriptions and the per-subscriber
//! event queues (`archive::worklist` owns their meaning). They live in a sled tree of their own
//! (`worklist`) on the catalog's database, so [`Store::commit`](super::Store::commit) makes them
//! durable with the same group commit as instances; [`WorklistStore::apply`] is atomic, so a
//! state change and the events it queues for every subscriber survive a crash together or not
//! at all.
//!
//! Keys: `w{workitem uid}` a workitem record; `G{subscriber}` a worklist (global or filtered)
//! subscription; `S{subscriber}\0{workitem uid}` a subscription to one workitem;
//! `Q{subscriber}\0{seq:be64}` a queued event; `m` + name: counters. A subscriber is
//! `{institution length:be16}{institution}{ae}` (an AE title holds no NUL; an institution is
//! length-prefixed, so it may hold anything). Keys of the format before subscribers had an
//! institution (`g{ae}`, `s{ae}\0{uid}`, `q{ae}\0{seq}`) are moved under an institution once, at
//! open ([`WorklistStore::adopt_legacy`]). Every value is small (a workitem is at most
//! `archive::worklist::MAX_WORKITEM_BYTES`), far below sled's blob-file threshold (see
//! `sled_store`).

use sled::{Batch, Tree};

use super::{StoreError, StoreResult};

/// The name of the sled tree.
pub const TREE: &str = "worklist";

const WORKITEM: u8 = b'w';
const GLOBAL: u8 = b'G';
const SUBSCRIPTION: u8 = b'S';
const QUEUE: u8 = b'Q';
const META: u8 = b'm';
const LEGACY_GLOBAL: u8 = b'g';
const LEGACY_SUBSCRIPTION: u8 = b's';
const LEGACY_QUEUE: u8 = b'q';

/// Who subscribes: an AE title of an institution. Two institutions using the same AE title are
/// two subscribers, with queues of their own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subscriber {
    pub institution: String,
    pub ae: String,
}

impl Subscriber {
    pub fn new(institution: &str, ae: &str) -> Subscriber {
        Subscriber { institution: institution.to_string(), ae: ae.to_string() }
    }
}

/// One write of an atomic [`WorklistBatch`].
#[derive(Debug, Clone)]
enum Op {
    PutWorkitem(String, Vec<u8>),
    RemoveWorkitem(String),
    PutGlobal(Subscriber, Vec<u8>),
    RemoveGlobal(Subscriber),
    PutSubscription(Subscriber, String),
    RemoveSubscription(Subscriber, String),
    Enqueue(Subscriber, u64, Vec<u8>),
    Dequeue(Subscriber, u64),
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
    pub fn put_global(&mut self, subscriber: &Subscriber, record: Vec<u8>) {
        self.ops.push(Op::PutGlobal(subscriber.clone(), record));
    }
    pub fn remove_global(&mut self, subscriber: &Subscriber) {
        self.ops.push(Op::RemoveGlobal(subscriber.clone()));
    }
    pub fn put_subscription(&mut self, subscriber: &Subscriber, uid: &str) {
        self.ops.push(Op::PutSubscription(subscriber.clone(), uid.into()));
    }
    pub fn remove_subscription(&mut self, subscriber: &Subscriber, uid: &str) {
        self.ops.push(Op::RemoveSubscription(subscriber.clone(), uid.into()));
    }
    pub fn enqueue(&mut self, subscriber: &Subscriber, seq: u64, event: Vec<u8>) {
        self.ops.push(Op::Enqueue(subscriber.clone(), seq, event));
    }
    pub fn dequeue(&mut self, subscriber: &Subscriber, seq: u64) {
        self.ops.push(Op::Dequeue(subscriber.clone(), seq));
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
    /// Every worklist subscription: (subscriber, record).
    fn globals(&self) -> StoreResult<Vec<(Subscriber, Vec<u8>)>>;
    /// Every workitem subscription: (subscriber, workitem UID).
    fn subscriptions(&self) -> StoreResult<Vec<(Subscriber, String)>>;
    /// Sequence numbers of every queued event: (subscriber, seq), in key order.
    fn queued_seqs(&self) -> StoreResult<Vec<(Subscriber, u64)>>;
    /// At most `max` queued events of `subscriber` with a sequence number above `after`, in
    /// order.
    fn queued(&self, subscriber: &Subscriber, after: u64, max: usize) -> StoreResult<Vec<(u64, Vec<u8>)>>;
    fn counter(&self, name: &str) -> StoreResult<u64>;
    /// Applies every write of `batch` atomically.
    fn apply(&self, batch: WorklistBatch) -> StoreResult<()>;
    /// Moves the subscriptions and queues of the format keyed by AE title alone under
    /// `institution`, in one atomic batch (not committed: the caller commits). Returns how many
    /// records moved.
    fn adopt_legacy(&self, institution: &str) -> StoreResult<usize>;
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

/// `{prefix}{institution length:be16}{institution}{ae}`, then `\0` and each further part.
fn subscriber_key(prefix: u8, subscriber: &Subscriber, rest: &[&[u8]]) -> Vec<u8> {
    let institution = subscriber.institution.as_bytes();
    // Institutions are short (the key and token code bound them far below this).
    let length = u16::try_from(institution.len()).unwrap_or(u16::MAX);
    let mut key = vec![prefix];
    key.extend_from_slice(&length.to_be_bytes());
    key.extend_from_slice(&institution[..usize::from(length)]);
    key.extend_from_slice(subscriber.ae.as_bytes());
    for part in rest {
        key.push(0);
        key.extend_from_slice(part);
    }
    key
}

/// Splits a key of [`subscriber_key`] into the subscriber and what follows its `\0` (empty
/// when none).
fn split_subscriber_key(key: &[u8]) -> StoreResult<(Subscriber, &[u8])> {
    let corrupt = || StoreError::Corrupt("a worklist subscriber key".into());
    let length = key.get(1..3).ok_or_else(corrupt)?;
    let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
    let institution = key.get(3..3 + length).ok_or_else(corrupt)?;
    let rest = &key[3 + length..];
    let (ae, tail) = match rest.iter().position(|b| *b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    Ok((Subscriber { institution: text(institution)?, ae: text(ae)? }, tail))
}

fn sequence(bytes: &[u8]) -> StoreResult<u64> {
    Ok(u64::from_be_bytes(bytes.try_into().map_err(|_| StoreError::Corrupt("a queue key without its number".into()))?))
}

fn text(bytes: &[u8]) -> StoreResult<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| StoreError::Corrupt("a worklist key is not UTF-8".into()))
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

    fn globals(&self) -> StoreResult<Vec<(Subscriber, Vec<u8>)>> {
        self.scan(&[GLOBAL]).map(|item| item.and_then(|(k, v)| Ok((split_subscriber_key(&k)?.0, v.to_vec())))).collect()
    }

    fn subscriptions(&self) -> StoreResult<Vec<(Subscriber, String)>> {
        self.scan(&[SUBSCRIPTION])
            .map(|item| {
                let (k, _) = item?;
                let (subscriber, uid) = split_subscriber_key(&k)?;
                Ok((subscriber, text(uid)?))
            })
            .collect()
    }

    fn queued_seqs(&self) -> StoreResult<Vec<(Subscriber, u64)>> {
        self.scan(&[QUEUE])
            .map(|item| {
                let (k, _) = item?;
                let (subscriber, seq) = split_subscriber_key(&k)?;
                Ok((subscriber, sequence(seq)?))
            })
            .collect()
    }

    fn queued(&self, subscriber: &Subscriber, after: u64, max: usize) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        let start = subscriber_key(QUEUE, subscriber, &[&after.saturating_add(1).to_be_bytes()]);
        let end = subscriber_key(QUEUE, subscriber, &[&u64::MAX.to_be_bytes()]);
        let mut out = Vec::new();
        for item in self.tree.range(start..=end).take(max) {
            let (k, v) = item.map_err(backend)?;
            let (_, seq) = split_subscriber_key(&k)?;
            out.push((sequence(seq)?, v.to_vec()));
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
                Op::PutGlobal(who, record) => sled_batch.insert(subscriber_key(GLOBAL, &who, &[]), record),
                Op::RemoveGlobal(who) => sled_batch.remove(subscriber_key(GLOBAL, &who, &[])),
                Op::PutSubscription(who, uid) => {
                    sled_batch.insert(subscriber_key(SUBSCRIPTION, &who, &[uid.as_bytes()]), &[][..])
                }
                Op::RemoveSubscription(who, uid) => {
                    sled_batch.remove(subscriber_key(SUBSCRIPTION, &who, &[uid.as_bytes()]))
                }
                Op::Enqueue(who, seq, event) => {
                    sled_batch.insert(subscriber_key(QUEUE, &who, &[&seq.to_be_bytes()]), event)
                }
                Op::Dequeue(who, seq) => sled_batch.remove(subscriber_key(QUEUE, &who, &[&seq.to_be_bytes()])),
                Op::SetCounter(name, value) => {
                    sled_batch.insert(key(META, &[name.as_bytes()]), &value.to_be_bytes()[..])
                }
            }
        }
        self.tree.apply_batch(sled_batch).map_err(backend)
    }

    fn adopt_legacy(&self, institution: &str) -> StoreResult<usize> {
        let mut sled_batch = Batch::default();
        let mut moved = 0;
        for prefix in [LEGACY_GLOBAL, LEGACY_SUBSCRIPTION, LEGACY_QUEUE] {
            for item in self.scan(&[prefix]) {
                let (k, v) = item?;
                let rest = &k[1..];
                let (ae, tail) = match rest.iter().position(|b| *b == 0) {
                    Some(at) => (&rest[..at], Some(&rest[at + 1..])),
                    None => (rest, None),
                };
                let subscriber = Subscriber { institution: institution.to_string(), ae: text(ae)? };
                let new_prefix = match prefix {
                    LEGACY_GLOBAL => GLOBAL,
                    LEGACY_SUBSCRIPTION => SUBSCRIPTION,
                    _ => QUEUE,
                };
                let tail: Vec<&[u8]> = tail.into_iter().collect();
                sled_batch.insert(subscriber_key(new_prefix, &subscriber, &tail), v);
                sled_batch.remove(k);
                moved += 1;
            }
        }
        if moved > 0 {
            self.tree.apply_batch(sled_batch).map_err(backend)?;
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriber_keys_round_trip_and_keep_institutions_apart() {
        let one = Subscriber::new("hosp", "WATCH");
        let other = Subscriber::new("hos", "pWATCH");
        let key = subscriber_key(SUBSCRIPTION, &one, &[b"1.2.3"]);
        let (back, tail) = split_subscriber_key(&key).unwrap();
        assert_eq!((back, tail), (one.clone(), &b"1.2.3"[..]));
        assert_ne!(subscriber_key(GLOBAL, &one, &[]), subscriber_key(GLOBAL, &other, &[]));
        assert_eq!(split_subscriber_key(&subscriber_key(GLOBAL, &other, &[])).unwrap().0, other);
    }

    #[test]
    fn legacy_records_move_under_an_institution() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree(TREE).unwrap();
        tree.insert(key(LEGACY_GLOBAL, &[b"ALL"]), &b"{}"[..]).unwrap();
        tree.insert(key(LEGACY_SUBSCRIPTION, &[b"ONE", b"2.25.1"]), &[][..]).unwrap();
        tree.insert(key(LEGACY_QUEUE, &[b"ONE", &7u64.to_be_bytes()]), &b"event"[..]).unwrap();
        let store = SledWorklist::new(tree);
        assert_eq!(store.adopt_legacy("local").unwrap(), 3);
        assert_eq!(store.adopt_legacy("local").unwrap(), 0, "once");
        let local = |ae: &str| Subscriber::new("local", ae);
        assert_eq!(store.globals().unwrap(), [(local("ALL"), b"{}".to_vec())]);
        assert_eq!(store.subscriptions().unwrap(), [(local("ONE"), "2.25.1".to_string())]);
        assert_eq!(store.queued(&local("ONE"), 0, 10).unwrap(), [(7, b"event".to_vec())]);
        assert!(store.queued(&Subscriber::new("other", "ONE"), 0, 10).unwrap().is_empty());
    }
}
