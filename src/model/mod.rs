//! The archive's vocabulary: what is stored (instance, series and study records) and what is
//! searched (queries, criteria, hits). The HTTP edge, the archive and the storage and index
//! backends all speak these types, and none of them belongs to a backend: `dicomweb/` imports
//! from `archive` and `model`, never from `store` or `index`.

pub mod records;
pub mod search;

use std::future::Future;
use std::pin::Pin;

/// A boxed future, for the object-safe async methods of the backend traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
