//! Wire formats that are not DICOM: media types, multipart/related, content codings,
//! ZIP archives.

pub mod compress;
pub mod inflate;
pub mod mime;
pub mod multipart;
pub mod zip;
