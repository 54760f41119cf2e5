//! Test support shared by the integration tests (tests/it) and the conformance tests
//! (conformance/): servers, HTTP helpers, generated DICOM fixtures. Each test binary uses a
//! different part of it.

#![allow(dead_code)]

pub mod client;
pub mod fixtures;
pub mod pki;
pub mod server;

pub use client::*;
pub use fixtures::*;
pub use server::*;

/// Every payload blob file under a data directory (`blobs/{fan}/{id}`).
pub fn blob_files(data_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for fan in std::fs::read_dir(data_dir.join("blobs")).into_iter().flatten().flatten() {
        for file in std::fs::read_dir(fan.path()).into_iter().flatten().flatten() {
            out.push(file.path());
        }
    }
    out.sort();
    out
}
