//! Rebuilding the index from the store: the index is derived state.

use crate::error::Error;
use crate::index::Index;
use crate::store::Store;

/// Studies whose documents are sent to the index in one batch.
const STUDIES_PER_BATCH: usize = 256;

/// Clears the index and re-adds a document for every study, series and instance in the store.
/// Pending change-log entries are covered by the rebuild and dropped.
pub async fn rebuild(store: &dyn Store, index: &dyn Index) -> Result<u64, Error> {
    let pending: Vec<u64> = store.pending_changes()?.iter().map(|c| c.seq).collect();
    index.clear().await?;
    let mut n_instances = 0;
    for studies in store.study_uids()?.chunks(STUDIES_PER_BATCH) {
        let mut ops = Vec::new();
        for study_uid in studies {
            let (study_ops, n) = super::indexing::ops_for_study(store, study_uid)?;
            ops.extend(study_ops);
            n_instances += n;
        }
        index.apply(ops, Vec::new()).await?;
    }
    index.checkpoint().await?;
    index.take_durable();
    store.forget_changes(&pending)?;
    Ok(n_instances)
}
