//! On-disk records of the catalog. Versioned, serialised as JSON, and never the API's JSON.

use serde::{Deserialize, Serialize};

/// What the catalog keeps, beside the record, of an instance stored re-encoded: see
/// `dicom::encode::stored`.
pub use crate::dicom::encode::stored::OriginalForm;
use crate::dicom::part10::AttributeValue;

/// Bumped whenever a record's meaning changes; readers refuse records they do not know.
/// Version 2: the payload is a blob in the blob store (version 1 kept it in sled chunks).
pub const RECORD_VERSION: u32 = 2;

/// Where an instance's bytes live: a blob of the blob store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadRef {
    /// The blob's id (`crate::blob::BlobId`).
    pub id: u64,
    pub length: u64,
    /// SHA-256 of the stored bytes (after preamble zeroing), lower-case hex.
    pub sha256: String,
}

/// One stored SOP instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub version: u32,
    /// The institution that owns the instance; access by others goes through shares.
    pub owner: String,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax_uid: String,
    pub payload: PayloadRef,
    /// Every attribute of the table in `dicom::attrs`, at all levels, as found in the instance.
    pub attributes: Vec<AttributeValue>,
    /// The change sequence number that stored this version of the instance.
    pub seq: u64,
    /// Where Pixel Data sits in the stored bytes (absent for objects without pixels and for
    /// deflated data sets).
    #[serde(default)]
    pub pixel_data: Option<crate::dicom::layout::PixelDataLayout>,
    /// Where the large top-level values sit in the stored bytes (bulk data).
    #[serde(default)]
    pub large_values: Vec<crate::dicom::layout::LargeValue>,
}

impl InstanceRecord {
    /// A numeric attribute the record keeps (Rows, Columns, Number of Frames, Instance Number…).
    pub fn number(&self, tag: dicom_core::Tag) -> Option<u64> {
        self.attributes.iter().find(|v| v.tag() == tag && v.sequence.is_none())?.values.first()?.trim().parse().ok()
    }

    /// Bits Allocated (0028,0100), when the instance has it.
    pub fn bits_allocated(&self) -> Option<u16> {
        self.number(dicom_dictionary_std::tags::BITS_ALLOCATED).and_then(|n| u16::try_from(n).ok())
    }
}

/// A series, with values kept up to date as instances arrive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesRecord {
    pub version: u32,
    pub study_uid: String,
    pub series_uid: String,
    /// Series-level attributes from the most recently stored instance.
    pub attributes: Vec<AttributeValue>,
    pub n_instances: u64,
    pub sop_classes: Vec<String>,
    /// Sequence number of the first instance stored in the series; fixes result order.
    pub created_seq: u64,
}

/// A study, with values kept up to date as instances arrive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyRecord {
    pub version: u32,
    pub owner: String,
    pub study_uid: String,
    /// Patient- and study-level attributes from the most recently stored instance.
    pub attributes: Vec<AttributeValue>,
    pub n_series: u64,
    pub n_instances: u64,
    pub modalities: Vec<String>,
    pub sop_classes: Vec<String>,
    pub created_seq: u64,
}

/// An entry of the change log: something the index has yet to reflect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub seq: u64,
    /// (study, series, instance) triples whose index documents must be refreshed.
    pub touched: Vec<(String, String, String)>,
}
