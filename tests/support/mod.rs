//! Test support shared by the integration tests (tests/it) and the conformance tests
//! (conformance/): servers, HTTP helpers, generated DICOM fixtures. Each test binary uses a
//! different part of it.

#![allow(dead_code)]

pub mod client;
pub mod fixtures;
pub mod server;

pub use client::*;
pub use fixtures::*;
pub use server::*;
