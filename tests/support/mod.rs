//! Test support shared by the integration tests (tests/it) and the conformance tests
//! (conformance/): servers, HTTP helpers, generated DICOM fixtures. Each test binary uses a
//! different part of it.

#![allow(dead_code)]

pub mod client;
pub mod fixtures;
pub mod oidc;
pub mod pki;
pub mod proxy;
pub mod server;

pub use client::*;
pub use fixtures::*;
pub use server::*;

/// Every payload blob under a data directory (files of their own and live pack entries), read
/// through Kura's blob store: (id, bytes), in id order.
pub fn stored_blobs(data_dir: &std::path::Path) -> Vec<(u64, Vec<u8>)> {
    use kura::blob::BlobStore;
    use std::io::Read;
    let store = kura::blob::LocalBlobStore::open(&data_dir.join("blobs"), 0).unwrap();
    let mut ids = store.list().unwrap();
    ids.sort();
    ids.into_iter()
        .map(|id| {
            let mut bytes = Vec::new();
            store.reader(id).unwrap().read_to_end(&mut bytes).unwrap();
            (id, bytes)
        })
        .collect()
}
