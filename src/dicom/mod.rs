//! DICOM helpers over dicom-rs. Nothing here knows about HTTP.

pub mod attrs;
pub mod charset;
pub mod encode;
pub mod frames;
pub mod json;
pub mod layout;
pub mod part10;
pub mod pixels;
pub mod render;
pub mod transcode;
pub mod uid;
