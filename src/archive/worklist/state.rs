//! The UPS state machine of PS3.4 CC.1.1 (Table CC.1.1-2) as a pure function: what a Change
//! State request does in each state, and the Final State requirements (CC.2.5.1.1).

use dicom_dictionary_std::tags;

use super::UpsError;
use super::dataset::{self, Dataset};

/// Procedure Step State (0074,1000), PS3.4 CC.1.1. One L in CANCELED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ProcedureStepState {
    Scheduled,
    InProgress,
    Completed,
    Canceled,
}

impl ProcedureStepState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcedureStepState::Scheduled => "SCHEDULED",
            ProcedureStepState::InProgress => "IN PROGRESS",
            ProcedureStepState::Completed => "COMPLETED",
            ProcedureStepState::Canceled => "CANCELED",
        }
    }

    pub fn parse(text: &str) -> Option<ProcedureStepState> {
        match text.trim_end() {
            "SCHEDULED" => Some(ProcedureStepState::Scheduled),
            "IN PROGRESS" => Some(ProcedureStepState::InProgress),
            "COMPLETED" => Some(ProcedureStepState::Completed),
            "CANCELED" => Some(ProcedureStepState::Canceled),
            _ => None,
        }
    }

    /// COMPLETED and CANCELED are final: nothing changes them any more.
    pub fn is_final(self) -> bool {
        matches!(self, ProcedureStepState::Completed | ProcedureStepState::Canceled)
    }
}

/// What a valid Change State request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// SCHEDULED → IN PROGRESS: the request's Transaction UID becomes the lock.
    Claim,
    /// IN PROGRESS → COMPLETED or CANCELED (the Final State requirements still to be checked).
    Finish(ProcedureStepState),
    /// Already in the requested final state: success with a warning (B306 / B304).
    AlreadyThere(ProcedureStepState),
}

/// Table CC.1.1-2 for a Change State request to `target` with `transaction_uid`, on a
/// workitem in `current` whose lock is `lock`. Order of the checks: only Create makes
/// SCHEDULED (C303, whatever the UID), then a missing UID (C301), then the state's row.
pub fn change_state(
    current: ProcedureStepState,
    lock: Option<&str>,
    target: ProcedureStepState,
    transaction_uid: Option<&str>,
) -> Result<Transition, UpsError> {
    use ProcedureStepState::*;
    if target == Scheduled {
        return Err(UpsError::StateInconsistent("only the creation of a workitem makes it SCHEDULED (C303)".into()));
    }
    let Some(given) = transaction_uid else { return Err(UpsError::TransactionUidMissing) };
    match current {
        Scheduled => match target {
            InProgress => Ok(Transition::Claim),
            _ => Err(UpsError::StateInconsistent(format!(
                "a SCHEDULED workitem must be claimed (IN PROGRESS) before it becomes {} (C310)",
                target.as_str()
            ))),
        },
        _ if lock != Some(given) => Err(UpsError::TransactionUidIncorrect),
        InProgress => match target {
            InProgress => Err(UpsError::StateInconsistent("the workitem is already IN PROGRESS (C302)".into())),
            _ => Ok(Transition::Finish(target)),
        },
        Completed | Canceled if target == current => Ok(Transition::AlreadyThere(current)),
        _ => Err(UpsError::StateInconsistent(format!(
            "the workitem is {} and may no longer be changed (C300)",
            current.as_str()
        ))),
    }
}

/// The Final State requirements of Table CC.2.5-3 that Kura checks before COMPLETED (type P):
/// the UPS Performed Procedure Sequence (0074,1216) with an item carrying the Performed
/// Procedure Step End DateTime (0040,4051) and an Output Information Sequence (0040,4033),
/// which may be empty when the step produced nothing. Returns what is missing.
pub fn missing_for_completion(dataset: &Dataset) -> Vec<&'static str> {
    let mut missing = Vec::new();
    let performed: Vec<&Dataset> =
        dataset::items(dataset, tags::UNIFIED_PROCEDURE_STEP_PERFORMED_PROCEDURE_SEQUENCE).collect();
    let Some(item) = performed.first() else {
        return vec!["UnifiedProcedureStepPerformedProcedureSequence (0074,1216)"];
    };
    if !dataset::has_value(item, tags::PERFORMED_PROCEDURE_STEP_END_DATE_TIME) {
        missing.push("PerformedProcedureStepEndDateTime (0040,4051)");
    }
    if !item.contains_key(&dataset::key(tags::OUTPUT_INFORMATION_SEQUENCE)) {
        missing.push("OutputInformationSequence (0040,4033)");
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::ProcedureStepState::*;
    use super::*;

    #[test]
    fn table_cc_1_1_2() {
        let t = Some("1.2.3");
        assert_eq!(change_state(Scheduled, None, InProgress, t).unwrap(), Transition::Claim);
        assert!(matches!(change_state(Scheduled, None, InProgress, None), Err(UpsError::TransactionUidMissing)));
        assert!(matches!(change_state(Scheduled, None, Completed, t), Err(UpsError::StateInconsistent(_))));
        assert!(matches!(change_state(Scheduled, None, Scheduled, t), Err(UpsError::StateInconsistent(_))));
        assert!(matches!(change_state(InProgress, t, InProgress, t), Err(UpsError::StateInconsistent(_))));
        assert!(matches!(change_state(InProgress, t, Completed, Some("9")), Err(UpsError::TransactionUidIncorrect)));
        assert_eq!(change_state(InProgress, t, Canceled, t).unwrap(), Transition::Finish(Canceled));
        assert_eq!(change_state(Completed, t, Completed, t).unwrap(), Transition::AlreadyThere(Completed));
        assert!(matches!(change_state(Completed, t, Canceled, t), Err(UpsError::StateInconsistent(_))));
        assert!(matches!(change_state(Canceled, t, Canceled, Some("9")), Err(UpsError::TransactionUidIncorrect)));
        assert_eq!(ProcedureStepState::parse("CANCELED"), Some(Canceled));
        assert_eq!(ProcedureStepState::parse("CANCELLED"), None);
    }
}
