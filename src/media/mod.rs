//! Wire formats that are not DICOM: media types, multipart/related, content codings.

pub mod compress;
pub mod mime;
pub mod multipart;
