//! UPS event reports (PS3.4 CC.2.4, Table CC.2.4-1) as the DICOM JSON data sets PS3.18 §8.10.5
//! sends in WebSocket text frames: Affected SOP Class UID (0000,0002), Affected SOP Instance UID
//! (0000,1000), Event Type ID (0000,1002) and the event's attributes.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use serde_json::{Value, json};

use super::dataset::{self, Dataset, element, string_element};
use super::state::ProcedureStepState;
use super::{GLOBAL_SUBSCRIPTION_UID, UPS_PUSH_SOP_CLASS};

/// Event Type ID (0000,1002) values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    StateReport = 1,
    CancelRequested = 2,
    ProgressReport = 3,
    ScpStatusChange = 4,
    Assigned = 5,
}

fn header(workitem_uid: &str, event: EventType) -> Dataset {
    let mut report = Dataset::new();
    report.insert(dataset::key(tags::AFFECTED_SOP_CLASS_UID), string_element("UI", UPS_PUSH_SOP_CLASS));
    report.insert(dataset::key(tags::AFFECTED_SOP_INSTANCE_UID), string_element("UI", workitem_uid));
    report.insert(dataset::key(tags::EVENT_TYPE_ID), element("US", vec![json!(event as u16)]));
    report
}

/// Copies `tag` from `source` into `report` when it has a value.
fn copy(report: &mut Dataset, source: &Dataset, tag: Tag) {
    let name = dataset::key(tag);
    if let Some(value) = source.get(&name).filter(|_| dataset::has_value(source, tag)) {
        report.insert(name, value.clone());
    }
}

/// UPS State Report (type 1): the state, the Input Readiness State and, for a canceled step,
/// the reason for its cancellation.
pub fn state_report(uid: &str, state: ProcedureStepState, workitem: &Dataset) -> Value {
    let mut report = header(uid, EventType::StateReport);
    report.insert(dataset::key(tags::PROCEDURE_STEP_STATE), string_element("CS", state.as_str()));
    let readiness = dataset::key(tags::INPUT_READINESS_STATE);
    report.insert(readiness.clone(), workitem.get(&readiness).cloned().unwrap_or_else(|| element("CS", vec![])));
    if state == ProcedureStepState::Canceled {
        for item in dataset::items(workitem, tags::PROCEDURE_STEP_PROGRESS_INFORMATION_SEQUENCE) {
            copy(&mut report, item, tags::REASON_FOR_CANCELLATION);
            copy(&mut report, item, tags::PROCEDURE_STEP_DISCONTINUATION_REASON_CODE_SEQUENCE);
        }
    }
    Value::Object(report)
}

/// UPS Cancel Requested (type 2): who asks, why, and how to reach them (from the request).
pub fn cancel_requested(uid: &str, requesting_ae: &str, request: &Dataset) -> Value {
    let mut report = header(uid, EventType::CancelRequested);
    report.insert(dataset::key(tags::REQUESTING_AE), string_element("AE", requesting_ae));
    for tag in [
        tags::REASON_FOR_CANCELLATION,
        tags::PROCEDURE_STEP_DISCONTINUATION_REASON_CODE_SEQUENCE,
        tags::CONTACT_URI,
        tags::CONTACT_DISPLAY_NAME,
    ] {
        copy(&mut report, request, tag);
    }
    Value::Object(report)
}

/// UPS Progress Report (type 3): the Procedure Step Progress Information Sequence.
pub fn progress_report(uid: &str, workitem: &Dataset) -> Value {
    let mut report = header(uid, EventType::ProgressReport);
    let name = dataset::key(tags::PROCEDURE_STEP_PROGRESS_INFORMATION_SEQUENCE);
    report.insert(name.clone(), workitem.get(&name).cloned().unwrap_or_else(|| element("SQ", vec![])));
    Value::Object(report)
}

/// UPS Assigned (type 5): the scheduled station and the first scheduled human performer's code
/// and organization, where populated.
pub fn assigned(uid: &str, workitem: &Dataset) -> Value {
    let mut report = header(uid, EventType::Assigned);
    copy(&mut report, workitem, tags::SCHEDULED_STATION_NAME_CODE_SEQUENCE);
    if let Some(performer) = dataset::items(workitem, tags::SCHEDULED_HUMAN_PERFORMERS_SEQUENCE).next() {
        copy(&mut report, performer, tags::HUMAN_PERFORMER_CODE_SEQUENCE);
        copy(&mut report, performer, tags::HUMAN_PERFORMER_ORGANIZATION);
    }
    Value::Object(report)
}

/// Whether a workitem names a station or a performer (then its creation also sends Assigned).
pub fn has_assignment(workitem: &Dataset) -> bool {
    dataset::has_value(workitem, tags::SCHEDULED_STATION_NAME_CODE_SEQUENCE)
        || dataset::has_value(workitem, tags::SCHEDULED_HUMAN_PERFORMERS_SEQUENCE)
}

/// SCP Status Change (type 4), sent to every subscriber when the archive starts: it restarted
/// and kept its subscriptions and workitems (WARM START). Sent on the well-known worklist
/// instance, as it concerns no single workitem.
pub fn restarted() -> Value {
    let mut report = header(GLOBAL_SUBSCRIPTION_UID, EventType::ScpStatusChange);
    report.insert(dataset::key(tags::SCP_STATUS), string_element("CS", "RESTARTED"));
    report.insert(dataset::key(tags::SUBSCRIPTION_LIST_STATUS), string_element("CS", "WARM START"));
    report.insert(dataset::key(tags::UNIFIED_PROCEDURE_STEP_LIST_STATUS), string_element("CS", "WARM START"));
    Value::Object(report)
}
