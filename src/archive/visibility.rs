//! The index follows the store.
//!
//! A STOW-RS answer waits for durability only; it does not pay for making its instances
//! searchable (a tantivy commit of the in-memory tier, 10–15 ms, measured in benches/README.md).
//! Instead:
//! - every catalog write that logs a change bumps `written`;
//! - a background task applies pending changes to the index whenever there are some, so
//!   concurrent and successive stores share one index commit;
//! - a search first *catches up*: if changes were written that the index has not applied yet,
//!   it applies them (or waits for the run in progress) before it searches.
//!
//! So read-your-writes holds: a search that starts after a STOW-RS answer (or a delete) sees
//! it, and the work of making changes visible is done once per batch, not once per request.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::{indexing, reindex};
use crate::error::Error;
use crate::index::Index;
use crate::store::Store;

pub(super) struct IndexFollower {
    store: Arc<dyn Store>,
    index: Arc<dyn Index>,
    /// One application at a time: each one reads the store after the previous one applied, so
    /// an older view can never overwrite a newer one in the index.
    lock: tokio::sync::Mutex<()>,
    /// Changes applied to the index but not yet durable there (kept in the store's log).
    applied: Mutex<HashSet<u64>>,
    /// Catalog writes that logged a change, counted.
    written: AtomicU64,
    /// The value of `written` that the index has caught up with.
    visible: AtomicU64,
    wakeup: Arc<Notify>,
}

impl IndexFollower {
    /// A follower with its background task running.
    pub fn start(store: Arc<dyn Store>, index: Arc<dyn Index>) -> Arc<IndexFollower> {
        let follower = Arc::new(IndexFollower {
            store,
            index,
            lock: tokio::sync::Mutex::new(()),
            applied: Mutex::new(HashSet::new()),
            written: AtomicU64::new(0),
            visible: AtomicU64::new(0),
            wakeup: Arc::new(Notify::new()),
        });
        let weak = Arc::downgrade(&follower);
        let wakeup = follower.wakeup.clone();
        tokio::spawn(async move {
            loop {
                wakeup.notified().await;
                let Some(follower) = weak.upgrade() else { return };
                if let Err(error) = follower.catch_up().await {
                    tracing::warn!(%error, "applying store changes to the index failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    follower.wakeup.notify_one();
                }
            }
        });
        follower
    }

    /// A catalog write logged a change: the index has something to apply.
    pub fn changed(&self) {
        self.written.fetch_add(1, Ordering::SeqCst);
        self.wakeup.notify_one();
    }

    /// Returns once the index reflects every change logged before this call.
    pub async fn catch_up(&self) -> Result<(), Error> {
        let target = self.written.load(Ordering::SeqCst);
        if self.visible.load(Ordering::SeqCst) >= target {
            return Ok(());
        }
        self.apply().await.map(|_| ())
    }

    /// Applies the store's pending changes to the index, and drops from the store's change log
    /// those the index has made durable. Returns how many changes it applied.
    pub async fn apply(&self) -> Result<usize, Error> {
        let _guard = self.lock.lock().await;
        // Every change counted before this read is in the store already (the count follows the
        // write), so the pending changes read below include it.
        let target = self.written.load(Ordering::SeqCst);
        if self.visible.load(Ordering::SeqCst) >= target && target > 0 {
            return Ok(0); // Another caller caught up while this one waited for the lock.
        }
        self.forget_durable_changes()?;
        let applied = self.applied.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let changes: Vec<_> =
            self.store.pending_changes()?.into_iter().filter(|change| !applied.contains(&change.seq)).collect();
        if !changes.is_empty() {
            let ops = indexing::ops_for_changes(self.store.as_ref(), &changes)?;
            let seqs: Vec<u64> = changes.iter().map(|c| c.seq).collect();
            self.index.apply(ops, seqs.clone()).await?;
            self.applied.lock().unwrap_or_else(|p| p.into_inner()).extend(seqs);
        }
        self.visible.fetch_max(target, Ordering::SeqCst);
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
    pub async fn checkpoint(&self) -> Result<(), Error> {
        let _guard = self.lock.lock().await;
        self.index.checkpoint().await?;
        self.forget_durable_changes()
    }

    /// Rebuilds the index from the store. `marker` exists while the rebuild runs, so that an
    /// interrupted one starts again at the next open.
    pub async fn rebuild(&self, marker: &Path) -> Result<u64, Error> {
        let _guard = self.lock.lock().await;
        crate::durable_fs::write_file(marker, b"").map_err(Error::internal)?;
        let n = reindex::rebuild(self.store.as_ref(), self.index.as_ref()).await?;
        self.applied.lock().unwrap_or_else(|p| p.into_inner()).clear();
        crate::durable_fs::remove_file(marker).map_err(Error::internal)?;
        Ok(n)
    }
}

impl Drop for IndexFollower {
    fn drop(&mut self) {
        // Wakes the background task, which then finds the follower gone and ends.
        self.wakeup.notify_one();
    }
}
