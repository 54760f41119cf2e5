//! The one table of attributes that Kura records per level, indexes and returns from QIDO-RS.
//!
//! The store keeps these values in its study, series and instance records, the index derives
//! its tantivy schema from them, and QIDO-RS renders them. Required return keys come from
//! PS3.18 Tables 10.6.3-3 (study), 10.6.3-4 (series) and 10.6.3-5 (instance); the required
//! matching keys from Table 10.6.1-5.
//!
//! A row may also name an attribute inside the items of a sequence (PS3.4 C.2.2.2.6), written as
//! the dotted path of PS3.18 §8.3.1 (`RequestAttributesSequence.RequestedProcedureID`). Kura
//! records such an attribute as one value per item of the sequence, so items stay apart.

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
    /// The keyword, or for an item attribute the dotted path `Sequence.Attribute`; unique, and the
    /// name of the attribute's index fields.
    pub keyword: &'static str,
    /// For an attribute of the items of a sequence: that sequence (VM 1 attributes only).
    pub sequence: Option<Tag>,
    pub level: Level,
    pub vr: VR,
    pub matching: Matching,
    /// Whether QIDO-RS returns it unasked (PS3.18 Tables 10.6.3-3 to 10.6.3-5).
    pub ret: Return,
    /// Computed by the archive from the study's series (never read from an instance).
    pub computed: bool,
}

const fn attr(tag: Tag, keyword: &'static str, level: Level, vr: VR, matching: Matching, ret: Return) -> Attribute {
    Attribute { tag, keyword, sequence: None, level, vr, matching, ret, computed: false }
}

const fn computed(tag: Tag, keyword: &'static str, vr: VR) -> Attribute {
    let matching = if matches!(vr, VR::UI) { Matching::Uid } else { Matching::Text };
    Attribute {
        tag,
        keyword,
        sequence: None,
        level: Level::Study,
        vr,
        matching,
        ret: Return::OnRequest,
        computed: true,
    }
}

/// An attribute of the items of `sequence`. `ret` says whether the items returned carry it
/// unasked (`IfPresent`: the sequence is then returned whenever the entity has items).
const fn item(sequence: Tag, tag: Tag, path: &'static str, level: Level, vr: VR, ret: Return) -> Attribute {
    let matching = if matches!(vr, VR::UI) { Matching::Uid } else { Matching::Text };
    Attribute { tag, keyword: path, sequence: Some(sequence), level, vr, matching, ret, computed: false }
}

use Level::*;
use Matching::*;
use Return::*;

const RAS: Tag = tags::REQUEST_ATTRIBUTES_SEQUENCE;

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
    // PS3.18 §10.6.1.2.1 gives `OtherPatientIDsSequence.00100020` as an example key.
    item(
        tags::OTHER_PATIENT_I_DS_SEQUENCE,
        tags::PATIENT_ID,
        "OtherPatientIDsSequence.PatientID",
        Study,
        VR::LO,
        OnRequest,
    ),
    item(
        tags::OTHER_PATIENT_I_DS_SEQUENCE,
        tags::ISSUER_OF_PATIENT_ID,
        "OtherPatientIDsSequence.IssuerOfPatientID",
        Study,
        VR::LO,
        OnRequest,
    ),
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
    // Table 10.6.1-5 (matching) and 10.6.3-4 (return, Type C with two Type R item attributes).
    item(RAS, tags::ACCESSION_NUMBER, "RequestAttributesSequence.AccessionNumber", Series, VR::SH, OnRequest),
    item(RAS, tags::STUDY_INSTANCE_UID, "RequestAttributesSequence.StudyInstanceUID", Series, VR::UI, OnRequest),
    item(
        RAS,
        tags::SCHEDULED_PROCEDURE_STEP_ID,
        "RequestAttributesSequence.ScheduledProcedureStepID",
        Series,
        VR::SH,
        IfPresent,
    ),
    item(
        RAS,
        tags::REQUESTED_PROCEDURE_ID,
        "RequestAttributesSequence.RequestedProcedureID",
        Series,
        VR::SH,
        IfPresent,
    ),
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

/// An 8-hex-digit tag (`00100010`).
pub fn hex_tag(name: &str) -> Option<Tag> {
    if name.len() != 8 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let value = u32::from_str_radix(name, 16).ok()?;
    Some(Tag((value >> 16) as u16, (value & 0xFFFF) as u16))
}

/// Looks an attribute up by keyword (`PatientName`) or 8-hex-digit tag (`00100010`), the two
/// spellings PS3.18 §8.3.1 allows in query parameters, or by a dotted path of those
/// (`RequestAttributesSequence.00401001`).
pub fn lookup(name: &str) -> Option<&'static Attribute> {
    let names =
        |component: &str, keyword: &str, tag: Tag| hex_tag(component).map_or(component == keyword, |t| t == tag);
    match name.split_once('.') {
        None => ATTRIBUTES.iter().filter(|a| a.sequence.is_none()).find(|a| names(name, a.keyword, a.tag)),
        Some((sequence, item)) => ATTRIBUTES.iter().find(|a| {
            let Some(sequence_tag) = a.sequence else { return false };
            let (sequence_keyword, item_keyword) = a.keyword.split_once('.').expect("a dotted path");
            names(sequence, sequence_keyword, sequence_tag) && names(item, item_keyword, a.tag)
        }),
    }
}

/// Looks a top-level attribute up by tag.
pub fn by_tag(tag: Tag) -> Option<&'static Attribute> {
    ATTRIBUTES.iter().find(|a| a.tag == tag && a.sequence.is_none())
}

/// Looks an attribute up by tag and, for an item attribute, its sequence.
pub fn find(tag: Tag, sequence: Option<Tag>) -> Option<&'static Attribute> {
    ATTRIBUTES.iter().find(|a| a.tag == tag && a.sequence == sequence)
}

/// The sequences of `level` whose item attributes the table records, in table order.
pub fn sequences_at(level: Level) -> Vec<Tag> {
    let mut out: Vec<Tag> = Vec::new();
    for sequence in at_level(level).filter_map(|a| a.sequence) {
        if !out.contains(&sequence) {
            out.push(sequence);
        }
    }
    out
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
        let path = lookup("RequestAttributesSequence.RequestedProcedureID").unwrap();
        assert_eq!(path.sequence, Some(tags::REQUEST_ATTRIBUTES_SEQUENCE));
        for spelling in ["00400275.00401001", "RequestAttributesSequence.00401001", "00400275.RequestedProcedureID"] {
            assert_eq!(lookup(spelling).unwrap().keyword, path.keyword, "{spelling}");
        }
        assert_eq!(lookup("00400275.00080050").unwrap().keyword, "RequestAttributesSequence.AccessionNumber");
        assert_eq!(lookup("00080050").unwrap().keyword, "AccessionNumber");
        assert!(lookup("RequestAttributesSequence.PatientID").is_none());
        assert!(lookup("RequestedProcedureID").is_none());
    }

    #[test]
    fn keywords_are_unique() {
        let mut keywords: Vec<_> = ATTRIBUTES.iter().map(|a| a.keyword).collect();
        keywords.sort();
        keywords.dedup();
        assert_eq!(keywords.len(), ATTRIBUTES.len());
    }
}
