//! Wire formats that are not DICOM: media types and multipart/related.

pub mod mime;
pub mod multipart;
