//! The index: tantivy documents for every study, series and instance, derived from the store.
//! It may be deleted at any time and rebuilt with `kura reindex`.
//!
//! # Durability contract
//! [`Index::apply`] returns once the operations are **visible to searches** (read-your-writes
//! for STOW-RS); they become durable later, at a checkpoint. [`Index::take_durable`] reports
//! the change sequence numbers whose operations are durable; until then the archive keeps them
//! in the store's change log and replays them after a crash. Every operation is an idempotent
//! upsert or delete by document key, so a replay is harmless.

mod schema;
pub mod search;
mod stored;
mod tantivy_index;

pub use crate::model::search::{Criterion, DocKey, Filter, Hit, SearchHits, SearchQuery, SearchScope};
pub use tantivy_index::TantivyIndex;

use crate::dicom::attrs::Level;
use crate::dicom::part10::AttributeValue;
use crate::model::BoxFuture;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("invalid search: {0}")]
    InvalidQuery(String),
}

pub type IndexResult<T> = Result<T, IndexError>;

/// A document to add or replace: the values of its level and of the levels above it, so that
/// relational searches (e.g. `/instances?PatientID=…`) need one query.
#[derive(Debug, Clone)]
pub struct IndexDoc {
    pub key: DocKey,
    /// The institution that owns the document's study (searches filter on it).
    pub owner: String,
    /// Result order: the store sequence number that created the entity.
    pub created: u64,
    pub values: Vec<AttributeValue>,
    /// What a search returns for the document: the values of its own level, computed ones
    /// included (counts, ModalitiesInStudy), kept in the doc store.
    pub row: Vec<AttributeValue>,
}

#[derive(Debug, Clone)]
pub enum IndexOp {
    Upsert(IndexDoc),
    Delete(DocKey),
}

/// A searchable index of the archive's entities.
pub trait Index: Send + Sync + 'static {
    /// Applies the operations of the store changes `seqs` and makes them visible. Concurrent
    /// callers share one commit (group commit).
    fn apply(&self, ops: Vec<IndexOp>, seqs: Vec<u64>) -> BoxFuture<'_, IndexResult<()>>;
    /// Makes everything applied so far durable.
    fn checkpoint(&self) -> BoxFuture<'_, IndexResult<()>>;
    /// The change sequence numbers made durable since the last call.
    fn take_durable(&self) -> Vec<u64>;
    /// Runs a search against the latest committed state.
    fn search(&self, query: &SearchQuery) -> IndexResult<SearchHits>;
    /// Removes every document (before a rebuild).
    fn clear(&self) -> BoxFuture<'_, IndexResult<()>>;
}
