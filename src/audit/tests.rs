//! The chain detects edits, removals, reorderings and a cut tail; queries filter and page.

use std::sync::Arc;

use super::*;
use crate::store::SledStore;

fn event(action: &str, subject: &str, study: Option<&str>) -> AuditEvent {
    AuditEvent {
        action: action.into(),
        outcome: 200,
        subject: Some(subject.into()),
        institution: Some("st-mary".into()),
        address: Some("192.0.2.7".into()),
        studies: study.map(|s| vec![s.to_string()]).unwrap_or_default(),
        ..Default::default()
    }
}

/// A trail of `n` records on a fresh store, and the tree it lives in.
async fn trail(n: u64) -> (tempfile::TempDir, Arc<SledStore>, AuditLog) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("store"), Default::default()).unwrap();
    let log = open_offline(&store, dir.path()).unwrap();
    for i in 0..n {
        log.record(event("wado", &format!("key:{i:016x}"), Some(&format!("1.2.{}", i % 3)))).await.unwrap();
    }
    (dir, store, log)
}

fn broken_at(log: &AuditLog) -> u64 {
    match log.verify() {
        Err(ChainError::Broken { seq, .. }) => seq,
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

#[tokio::test]
async fn an_intact_chain_verifies() {
    let (_dir, _store, log) = trail(5).await;
    let summary = log.verify().unwrap();
    assert_eq!(summary.records, 5);
    assert_ne!(summary.head, GENESIS);
    // Reopening continues the chain where it ended.
    let (dir, store, log) = trail(0).await;
    assert_eq!(log.verify().unwrap(), ChainSummary { records: 0, head: GENESIS.into() });
    log.record(event("qido", "local", None)).await.unwrap();
    drop(log);
    let log = open_offline(&store, dir.path()).unwrap();
    log.record(event("qido", "local", None)).await.unwrap();
    assert_eq!(log.verify().unwrap().records, 2);
}

#[tokio::test]
async fn a_modified_record_breaks_the_chain() {
    let (_dir, _store, log) = trail(5).await;
    let mut record: AuditRecord = serde_json::from_slice(&log.tree.get(record_key(3)).unwrap().unwrap()).unwrap();
    record.subject = Some("key:someone-else".into());
    log.tree.insert(record_key(3), serde_json::to_vec(&record).unwrap()).unwrap();
    assert_eq!(broken_at(&log), 4, "record 4 no longer names record 3's hash");
}

#[tokio::test]
async fn a_modified_last_record_disagrees_with_the_head() {
    let (_dir, _store, log) = trail(3).await;
    let mut record: AuditRecord = serde_json::from_slice(&log.tree.get(record_key(3)).unwrap().unwrap()).unwrap();
    record.outcome = 404;
    log.tree.insert(record_key(3), serde_json::to_vec(&record).unwrap()).unwrap();
    assert_eq!(broken_at(&log), 3);
}

#[tokio::test]
async fn a_removed_record_leaves_a_gap() {
    let (_dir, _store, log) = trail(5).await;
    log.tree.remove(record_key(2)).unwrap();
    assert_eq!(broken_at(&log), 3);
}

#[tokio::test]
async fn reordered_records_are_found() {
    let (_dir, _store, log) = trail(5).await;
    // Swap the values of records 2 and 3: each now sits under another number.
    let two = log.tree.get(record_key(2)).unwrap().unwrap();
    let three = log.tree.get(record_key(3)).unwrap().unwrap();
    log.tree.insert(record_key(2), three.clone()).unwrap();
    log.tree.insert(record_key(3), two.clone()).unwrap();
    assert_eq!(broken_at(&log), 2);
    // Renumbered to hide the move: the hashes still disagree.
    let mut moved: AuditRecord = serde_json::from_slice(&three).unwrap();
    moved.seq = 2;
    let mut other: AuditRecord = serde_json::from_slice(&two).unwrap();
    other.seq = 3;
    log.tree.insert(record_key(2), serde_json::to_vec(&moved).unwrap()).unwrap();
    log.tree.insert(record_key(3), serde_json::to_vec(&other).unwrap()).unwrap();
    assert_eq!(broken_at(&log), 2);
}

#[tokio::test]
async fn a_cut_tail_disagrees_with_the_head() {
    let (_dir, _store, log) = trail(5).await;
    log.tree.remove(record_key(5)).unwrap();
    assert_eq!(broken_at(&log), 4);
}

#[tokio::test]
async fn queries_filter_and_page() {
    let (_dir, _store, log) = trail(10).await;
    let all = log.query(&AuditQuery { limit: 100, ..Default::default() }).unwrap();
    assert_eq!(all.records.len(), 10);
    assert_eq!(all.next, None);
    let study = log.query(&AuditQuery { study: Some("1.2.1".into()), limit: 100, ..Default::default() }).unwrap();
    assert_eq!(study.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 5, 8]);
    let who = log
        .query(&AuditQuery { principal: Some(format!("key:{:016x}", 4)), limit: 100, ..Default::default() })
        .unwrap();
    assert_eq!(who.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [5]);
    let page = log.query(&AuditQuery { limit: 3, ..Default::default() }).unwrap();
    assert_eq!(page.records.len(), 3);
    assert_eq!(page.next, Some(3));
    let rest = log.query(&AuditQuery { limit: 100, after: page.next, ..Default::default() }).unwrap();
    assert_eq!(rest.records.first().map(|r| r.seq), Some(4));
    let future = log.query(&AuditQuery { since: Some(u64::MAX / 2), limit: 100, ..Default::default() }).unwrap();
    assert!(future.records.is_empty());
    let until = log.query(&AuditQuery { until: Some(1), limit: 100, ..Default::default() }).unwrap();
    assert!(until.records.is_empty());
}

#[tokio::test]
async fn many_studies_make_several_records_and_export_is_the_chain() {
    let (_dir, _store, log) = trail(0).await;
    let studies: Vec<String> = (0..150).map(|i| format!("1.2.840.{i}")).collect();
    let written = log.append(AuditEvent { studies, ..event("stow", "local", None) }).unwrap();
    assert_eq!(written.iter().map(|r| r.studies.len()).collect::<Vec<_>>(), [64, 64, 22]);
    let mut out = Vec::new();
    assert_eq!(log.export(None, &mut out).unwrap(), 3);
    let lines: Vec<&[u8]> = out.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    let second: AuditRecord = serde_json::from_slice(lines[1]).unwrap();
    assert_eq!(second.prev, hex_sha256(lines[0]), "an export verifies with sha256 alone");
}

/// The journal files of a data directory, oldest first.
fn journal_files(data_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(journal_dir(data_dir))
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// What a power cut leaves when the catalog's commit had not come yet: the journal, and a
/// catalog without the records. The records come back, in order, chain intact.
#[tokio::test]
async fn records_the_catalog_lost_come_back_from_the_journal() {
    let (dir, _store, log) = trail(7).await;
    let before: Vec<u8> = {
        let mut out = Vec::new();
        log.export(None, &mut out).unwrap();
        out
    };
    drop(log);
    // A catalog that never saw the records (its commit did not come before the cut).
    let empty = SledStore::open(&dir.path().join("other-store"), Default::default()).unwrap();
    let recovered = open_offline(&empty, dir.path()).unwrap();
    assert_eq!(recovered.verify().unwrap().records, 7);
    let mut after = Vec::new();
    recovered.export(None, &mut after).unwrap();
    assert_eq!(after, before, "the same bytes, so the same hashes");
    // The chain goes on from the recovered head; the journal files found at open are removed
    // once a catalog commit covers them.
    let old_files = journal_files(dir.path());
    assert_eq!(old_files.len(), 1);
    recovered.record(event("qido", "local", None)).await.unwrap();
    assert_eq!(recovered.verify().unwrap().records, 8);
    let files = journal_files(dir.path());
    assert!(!files.contains(&old_files[0]), "the replayed file is gone after the commit: {files:?}");
    assert_eq!(files.len(), 1, "one new file holds record 8");
}

/// A torn last line (the power went while it was written, so it was never acknowledged) is
/// left out; the records before it, and those of a later file, are kept.
#[tokio::test]
async fn a_torn_journal_line_is_left_out() {
    let (dir, _store, log) = trail(3).await;
    drop(log);
    let file = journal_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    // The file was filled with zeros; the last 40 bytes of its lines never reached the disk.
    let end = bytes.iter().position(|b| *b == 0).unwrap();
    bytes[end - 40..end].fill(0);
    std::fs::write(&file, &bytes).unwrap();
    let empty = SledStore::open(&dir.path().join("other-store"), Default::default()).unwrap();
    let recovered = open_offline(&empty, dir.path()).unwrap();
    assert_eq!(recovered.verify().unwrap().records, 2, "records 1 and 2; 3 was torn");
    recovered.record(event("qido", "local", None)).await.unwrap();
    assert_eq!(recovered.verify().unwrap().records, 3);
    // The next open reads the new file after the torn one is gone, and finds the chain whole.
    drop(recovered);
    let again = open_offline(&empty, dir.path()).unwrap();
    assert_eq!(again.verify().unwrap().records, 3);
}

/// A journal past its bound moves to a new file; the full one is removed after a commit, and
/// every record is still in the trail.
#[tokio::test]
async fn a_full_journal_file_is_retired_after_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("store"), Default::default()).unwrap();
    let tree = store.tree(TREE).unwrap();
    let log = AuditLog::open_with(tree, store.clone(), &journal_dir(dir.path()), true, 600).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..20 {
        log.record(event("wado", "local", Some(&format!("1.2.{i}")))).await.unwrap();
        seen.extend(journal_files(dir.path()));
    }
    assert!(seen.len() >= 5, "a 600-byte bound rotates every few records: {seen:?}");
    assert!(journal_files(dir.path()).len() <= 2, "retired files are removed: {:?}", journal_files(dir.path()));
    assert_eq!(log.verify().unwrap().records, 20);
}

/// An access opened and closed is one chained record naming the access; nothing stays pending.
#[tokio::test]
async fn an_access_closed_is_one_record_and_nothing_pending() {
    let (_dir, _store, log) = trail(2).await;
    let opened = log.open_access(&event("qido", "key:abc", Some("1.2.3"))).unwrap().unwrap();
    assert_eq!(log.tree.scan_prefix([PENDING_PREFIX]).count(), 1, "pending while the request runs");
    log.close_access(opened, AuditEvent { outcome: 404, ..event("qido", "key:abc", Some("1.2.3")) }).await.unwrap();
    assert_eq!(log.tree.scan_prefix([PENDING_PREFIX]).count(), 0);
    assert_eq!(log.verify().unwrap().records, 3);
    let record = log.get(3).unwrap().unwrap();
    assert_eq!((record.outcome, record.opened), (404, Some(opened.id)));
    // Records without an access keep the bytes of the first format (no `opened` key).
    assert!(!String::from_utf8(log.tree.get(record_key(1)).unwrap().unwrap().to_vec()).unwrap().contains("opened"));
}

/// A crash between the access and its outcome: at the next open the access becomes a chained
/// record with outcome 0, from the catalog's pending entry or, if the catalog lost it too, from
/// the journal; an access whose closing record reached only the journal is closed by it.
#[tokio::test]
async fn accesses_without_an_outcome_are_closed_as_interrupted_at_open() {
    let (dir, store, log) = trail(1).await;
    let cut_short = log.open_access(&event("wado", "key:cut", Some("1.2.9"))).unwrap().unwrap();
    let answered = log.open_access(&event("qido", "key:done", None)).unwrap().unwrap();
    log.close_access(answered, event("qido", "key:done", None)).await.unwrap();
    log.journal.sync_now().unwrap();
    drop(log);
    // The same catalog: the pending entry is there.
    let reopened = open_offline(&store, dir.path()).unwrap();
    assert_eq!(reopened.verify().unwrap().records, 3);
    let record = reopened.get(3).unwrap().unwrap();
    assert_eq!((record.outcome, record.opened), (0, Some(cut_short.id)));
    assert_eq!(record.detail.as_deref(), Some(INTERRUPTED));
    assert_eq!(record.studies, vec!["1.2.9".to_string()]);
    assert_eq!(reopened.tree.scan_prefix([PENDING_PREFIX]).count(), 0);
    drop(reopened);
    // A catalog that saw none of it: the journal alone gives the same trail.
    let empty = SledStore::open(&dir.path().join("other-store"), Default::default()).unwrap();
    let recovered = open_offline(&empty, dir.path()).unwrap();
    assert_eq!(recovered.verify().unwrap().records, 3, "closed once, not again");
    let outcomes: Vec<(String, u16)> =
        (1..=3).map(|seq| recovered.get(seq).unwrap().map(|r| (r.action, r.outcome)).unwrap()).collect();
    assert_eq!(outcomes, [("wado".to_string(), 200), ("qido".to_string(), 200), ("wado".to_string(), 0)]);
    // Access numbers never repeat after a restart.
    let next = recovered.open_access(&event("qido", "local", None)).unwrap().unwrap();
    assert!(next.id > cut_short.id && next.id > answered.id);
}

/// A line nobody waits for is synced by the syncer's timer, without another line to carry it.
#[tokio::test]
async fn a_lazy_journal_line_becomes_durable_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let journal = journal::Journal::open(dir.path(), journal::ROTATE_BYTES).unwrap();
    let first = journal.append(b"{\"a\":1}", journal::Sync::Soon).unwrap();
    let second = journal.append(b"{\"a\":2}", journal::Sync::Soon).unwrap();
    let waited = std::time::Instant::now();
    tokio::time::timeout(std::time::Duration::from_secs(5), journal.wait_durable(second)).await.unwrap().unwrap();
    assert!(second > first);
    assert!(waited.elapsed() >= journal::LAZY_SYNC / 2, "synced by the timer, not at once: {:?}", waited.elapsed());
    // A line someone waits for is synced at once, and so again after the timer fired.
    let third = journal.append(b"{\"a\":3}", journal::Sync::Soon).unwrap();
    let fourth = journal.append(b"{\"a\":4}", journal::Sync::Now).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), journal.wait_durable(fourth)).await.unwrap().unwrap();
    assert!(fourth > third);
}
