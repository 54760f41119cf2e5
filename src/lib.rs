//! Kura (蔵, "storehouse"): a DICOMweb archive server.
//!
//! Codemap (see ARCHITECTURE.md): `server` speaks HTTP and knows nothing of storage;
//! `dicomweb` holds one module per PS3.18 transaction; `archive` is the domain core over the
//! `store` (sled, source of truth) and the `index` (tantivy, derived); `dicom`, `media`,
//! `auth` and `error` are leaves.

pub mod archive;
pub mod auth;
pub mod blob;
pub mod config;
pub mod dicom;
pub mod dicomweb;
pub mod durable_fs;
pub mod error;
pub mod index;
pub mod media;
pub mod server;
pub mod store;
pub mod telemetry;

pub use archive::{Archive, ArchiveOptions};
pub use config::Config;
pub use server::service::App;
