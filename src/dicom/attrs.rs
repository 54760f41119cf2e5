//! The one table of attributes that Kura records per level, indexes and returns from QIDO-RS.
//!
//! The store keeps these values in its study, series and instance records, the index derives
//! its tantivy schema from them, and QIDO-RS renders them. Required return keys come from
//! PS3.18 Tables 10.6.3-3 (study), 10.6.3-4 (series) and 10.6.3-5 (instance); the required
//! matching keys from Table 10.6.1-5.

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;

/// The query/retrieve level an attribute belongs to. Patient attributes live at study level,
/// since Kura answers the Study Root information model only (PS3.4 C.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Study,
    Series,
    Instance,
}

/// How a query key on the attribute is matched (PS3.4 C.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matching {
    /// Single value or a list of UIDs (C.2.2.2.1, C.2.2.2.2).
    Uid,
    /// Case-sensitive single value and wildcard matching (C.2.2.2.1, C.2.2.2.4).
    Text,
    /// Person name: case-insensitive, per component group (C.2.2.2.1.1).
    PersonName,
    /// DA range matching (C.2.2.2.5).
    Date,
    /// TM range matching (C.2.2.2.5).
    Time,
    /// Numbers (IS, US): single value only.
    Number,
}

/// When QIDO-RS returns an attribute that the query did not name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    /// Return key type R: always present, empty when unknown.
    Always,
    /// Type C, or commonly expected: present when the entity has a value.
    IfPresent,
    /// Only when named by a match key or `includefield`.
    OnRequest,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Attribute {
    pub tag: Tag,
    pub keyword: &'static str,
    pub level: Level,
    pub vr: VR,
    pub matching: Matching,
    /// Whether QIDO-RS returns it unasked (PS3.18 Tables 10.6.3-3 to 10.6.3-5).
    pub ret: Return,
    /// Computed by the archive from the study's series (never read from an instance).
    pub computed: bool,
}

const fn attr(tag: Tag, keyword: &'static str, level: Level, vr: VR, matching: Matching, ret: Return) -> Attribute {
    Attribute { tag, keyword, level, vr, matching, ret, computed: false }
}

const fn computed(tag: Tag, keyword: &'static str, vr: VR) -> Attribute {
    let matching = if matches!(vr, VR::UI) { Matching::Uid } else { Matching::Text };
    Attribute { tag, keyword, level: Level::Study, vr, matching, ret: Return::OnRequest, computed: true }
}

use Level::*;
use Matching::*;
use Return::*;

/// Every attribute Kura records for search and return, in ascending tag order within a level.
pub static ATTRIBUTES: &[Attribute] = &[
    // Study level (including the Patient module, Study Root).
    attr(tags::STUDY_DATE, "StudyDate", Study, VR::DA, Date, Always),
    attr(tags::STUDY_TIME, "StudyTime", Study, VR::TM, Time, Always),
    attr(tags::ACCESSION_NUMBER, "AccessionNumber", Study, VR::SH, Text, Always),
    computed(tags::MODALITIES_IN_STUDY, "ModalitiesInStudy", VR::CS),
    computed(tags::SOP_CLASSES_IN_STUDY, "SOPClassesInStudy", VR::UI),
    attr(tags::REFERRING_PHYSICIAN_NAME, "ReferringPhysicianName", Study, VR::PN, PersonName, Always),
    attr(tags::TIMEZONE_OFFSET_FROM_UTC, "TimezoneOffsetFromUTC", Study, VR::SH, Text, IfPresent),
    attr(tags::STUDY_DESCRIPTION, "StudyDescription", Study, VR::LO, Text, IfPresent),
    attr(tags::PATIENT_NAME, "PatientName", Study, VR::PN, PersonName, Always),
    attr(tags::PATIENT_ID, "PatientID", Study, VR::LO, Text, Always),
    attr(tags::PATIENT_BIRTH_DATE, "PatientBirthDate", Study, VR::DA, Date, Always),
    attr(tags::PATIENT_SEX, "PatientSex", Study, VR::CS, Text, Always),
    attr(tags::STUDY_INSTANCE_UID, "StudyInstanceUID", Study, VR::UI, Uid, Always),
    attr(tags::STUDY_ID, "StudyID", Study, VR::SH, Text, Always),
    // Series level.
    attr(tags::MODALITY, "Modality", Series, VR::CS, Text, Always),
    attr(tags::INSTITUTION_NAME, "InstitutionName", Series, VR::LO, Text, OnRequest),
    attr(tags::STATION_NAME, "StationName", Series, VR::SH, Text, OnRequest),
    attr(tags::SERIES_DESCRIPTION, "SeriesDescription", Series, VR::LO, Text, IfPresent),
    attr(tags::BODY_PART_EXAMINED, "BodyPartExamined", Series, VR::CS, Text, IfPresent),
    attr(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID", Series, VR::UI, Uid, Always),
    attr(tags::SERIES_NUMBER, "SeriesNumber", Series, VR::IS, Number, Always),
    attr(tags::PERFORMED_PROCEDURE_STEP_START_DATE, "PerformedProcedureStepStartDate", Series, VR::DA, Date, IfPresent),
    attr(tags::PERFORMED_PROCEDURE_STEP_START_TIME, "PerformedProcedureStepStartTime", Series, VR::TM, Time, IfPresent),
    // Instance level.
    attr(tags::SOP_CLASS_UID, "SOPClassUID", Instance, VR::UI, Uid, Always),
    attr(tags::SOP_INSTANCE_UID, "SOPInstanceUID", Instance, VR::UI, Uid, Always),
    attr(tags::INSTANCE_NUMBER, "InstanceNumber", Instance, VR::IS, Number, Always),
    attr(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel", Instance, VR::US, Number, OnRequest),
    attr(tags::NUMBER_OF_FRAMES, "NumberOfFrames", Instance, VR::IS, Number, IfPresent),
    attr(tags::ROWS, "Rows", Instance, VR::US, Number, IfPresent),
    attr(tags::COLUMNS, "Columns", Instance, VR::US, Number, IfPresent),
    attr(tags::BITS_ALLOCATED, "BitsAllocated", Instance, VR::US, Number, IfPresent),
];

/// DA and TM attributes that PS3.4 C.2.2.2.5.1 matches together as one date-time range when a
/// query carries both: (date, time). The index keeps their combined value per document.
pub static DATE_TIME_PAIRS: &[(Tag, Tag)] = &[
    (tags::STUDY_DATE, tags::STUDY_TIME),
    (tags::PERFORMED_PROCEDURE_STEP_START_DATE, tags::PERFORMED_PROCEDURE_STEP_START_TIME),
];

/// The attributes of one level, in table order.
pub fn at_level(level: Level) -> impl Iterator<Item = &'static Attribute> {
    ATTRIBUTES.iter().filter(move |a| a.level == level)
}

/// Looks an attribute up by keyword (`PatientName`) or 8-hex-digit tag (`00100010`),
/// the two spellings PS3.18 §8.3.1 allows in query parameters.
pub fn lookup(name: &str) -> Option<&'static Attribute> {
    if name.len() == 8 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        let value = u32::from_str_radix(name, 16).ok()?;
        let tag = Tag((value >> 16) as u16, (value & 0xFFFF) as u16);
        return ATTRIBUTES.iter().find(|a| a.tag == tag);
    }
    ATTRIBUTES.iter().find(|a| a.keyword == name)
}

/// Looks an attribute up by tag.
pub fn by_tag(tag: Tag) -> Option<&'static Attribute> {
    ATTRIBUTES.iter().find(|a| a.tag == tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_keyword_and_tag_agree() {
        let by_keyword = lookup("PatientName").unwrap();
        let by_hex = lookup("00100010").unwrap();
        assert_eq!(by_keyword.tag, by_hex.tag);
        assert!(lookup("NoSuchKeyword").is_none());
    }

    #[test]
    fn keywords_are_unique() {
        let mut keywords: Vec<_> = ATTRIBUTES.iter().map(|a| a.keyword).collect();
        keywords.sort();
        keywords.dedup();
        assert_eq!(keywords.len(), ATTRIBUTES.len());
    }
}
