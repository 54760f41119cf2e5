//! Format 1 → 2 at open: payload chunks move out of sled into the blob store.
//!
//! Each instance is moved on its own: its blob is written and made durable, then one atomic
//! catalog write points the record at it and drops its chunks. A crash part-way leaves some
//! instances moved and the rest still in format 1; the next open goes on where this one
//! stopped (a blob written for an instance whose record was not yet rewritten is swept as
//! unreferenced). The format marker changes only when every instance has moved.

use crate::blob::BlobStore;
use crate::error::Error;
use crate::store::{PayloadRef, SledStore, Store, StoreError};

/// Instances moved between two catalog commits (and progress lines in the log).
const BATCH: usize = 1000;

pub async fn payloads_out_of_sled(store: &SledStore, blobs: &dyn BlobStore) -> Result<(), Error> {
    let legacy = store.legacy_payloads()?;
    tracing::info!(instances = legacy.len(), "migrating the data directory to format 2: payloads leave sled");
    for (n, payload) in legacy.iter().enumerate() {
        let id = store.allocate_payload()?;
        let mut writer = blobs.create(id).await?;
        let chunks = payload.length.div_ceil(u64::from(payload.chunk_size.max(1)));
        for index in 0..chunks {
            let chunk = store.legacy_chunk(payload.id, index as u32)?.ok_or_else(|| {
                Error::internal(StoreError::Corrupt(format!("format-1 payload {} lacks chunk {index}", payload.id)))
            })?;
            writer.write(&chunk).await?;
        }
        let finished = writer.finish().await?;
        blobs.make_durable(&[finished.id]).await?;
        let (id, length) = (finished.id, finished.length);
        if length != payload.length {
            return Err(Error::internal(StoreError::Corrupt(format!(
                "format-1 payload {} holds {length} bytes, its record says {}",
                payload.id, payload.length
            ))));
        }
        store.migrate_instance(payload, PayloadRef { id, length, sha256: payload.sha256.clone() })?;
        if (n + 1) % BATCH == 0 {
            store.commit().await?;
            tracing::info!(moved = n + 1, of = legacy.len(), "migration progress");
        }
    }
    store.commit().await?;
    store.finish_migration()?;
    store.commit().await?;
    tracing::info!(instances = legacy.len(), "migration to format 2 done");
    Ok(())
}
