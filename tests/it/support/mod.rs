//! Shared test support.

pub mod client;
pub mod fixtures;
pub mod server;

pub use client::*;
pub use fixtures::*;
pub use server::*;
