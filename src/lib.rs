//! Kura (蔵, "storehouse"): a DICOMweb archive server.
//!
//! Codemap (see ARCHITECTURE.md): `server` speaks HTTP and knows nothing of storage;
//! `dicomweb` holds one module per PS3.18 transaction; `archive` is the domain core over the
//! `store` (the sled catalog, source of truth), the `blob` store (instance bytes) and the
//! `index` (tantivy, derived); `model` holds the types they all speak; `dicom`, `media`,
//! `auth`, `error`, `memory` (the memory budget) and `durable_fs` are leaves.

pub mod archive;
pub mod audit;
pub mod auth;
pub mod blob;
pub mod civil;
pub mod config;
pub mod dicom;
pub mod dicomweb;
pub mod durable_fs;
pub mod error;
pub mod index;
pub mod media;
pub mod memory;
pub mod model;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod upload;

pub use archive::{Archive, ArchiveOptions};
pub use config::Config;
pub use server::service::App;
