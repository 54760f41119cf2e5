//! Audit records as DICOM audit messages (PS3.15 Annex A.5, the format of IHE ATNA, ITI-20):
//! an `AuditMessage` with the event (EventID and action from PS3.15 A.5.3), the requesting
//! participant (subject, address), Kura as the audit source, and the studies as participant
//! objects (Study Instance UIDs only: never a patient name or id).
//!
//! | action                    | EventID                             | EventActionCode | EventTypeCode |
//! |---------------------------|-------------------------------------|-----------------|---------------|
//! | stow                      | 110104 DICOM Instances Transferred  | C               |               |
//! | qido                      | 110112 Query                        | E               |               |
//! | wado, wado-*              | 110103 DICOM Instances Accessed     | R               |               |
//! | delete                    | 110103 DICOM Instances Accessed     | D               |               |
//! | auth-failure              | 110114 User Authentication          | E               | 110122 Login  |
//! | key-*, share-*            | 110113 Security Alert               | E               | 110137 User Security Attributes Changed |
//! | audit-query               | 110101 Audit Log Used               | R               |               |
//!
//! EventOutcomeIndicator: 0 for a 1xx–3xx status, 4 (minor failure) for 4xx, 8 (serious
//! failure) for 5xx.

use super::AuditRecord;

struct Event {
    code: &'static str,
    meaning: &'static str,
    action: &'static str,
    type_code: Option<(&'static str, &'static str)>,
}

fn event(action: &str) -> Event {
    let (code, meaning, action_code, type_code) = match action {
        "stow" => ("110104", "DICOM Instances Transferred", "C", None),
        "qido" => ("110112", "Query", "E", None),
        "delete" => ("110103", "DICOM Instances Accessed", "D", None),
        "auth-failure" => ("110114", "User Authentication", "E", Some(("110122", "Login"))),
        "audit-query" => ("110101", "Audit Log Used", "R", None),
        // A UPS-RS request reads or changes a scheduled procedure step (the reading work).
        "ups" | "ups-notifications" => ("110111", "Procedure Record", "E", None),
        a if a.starts_with("key") || a.starts_with("share") => {
            ("110113", "Security Alert", "E", Some(("110137", "User Security Attributes Changed")))
        }
        _ => ("110103", "DICOM Instances Accessed", "R", None),
    };
    Event { code, meaning, action: action_code, type_code }
}

/// XML-escapes an attribute value.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for unix milliseconds.
pub fn timestamp(ms: u64) -> String {
    let seconds = crate::auth::keys::format_time(ms / 1000);
    format!("{}.{:03}Z", seconds.trim_end_matches('Z'), ms % 1000)
}

/// The DICOM audit message of `record`; `source` names this Kura (AuditSourceID).
pub fn message(record: &AuditRecord, source: &str) -> String {
    let event = event(&record.action);
    let outcome = match record.outcome {
        // No outcome recorded: a crash cut the request short (PS3.15 A.5.1 "Serious failure
        // (action terminated prematurely)").
        0 => 8,
        1..=399 => 0,
        400..=499 => 4,
        _ => 8,
    };
    let mut xml = String::with_capacity(1024);
    xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    xml.push_str("<AuditMessage>");
    xml.push_str(&format!(
        "<EventIdentification EventActionCode=\"{}\" EventDateTime=\"{}\" EventOutcomeIndicator=\"{outcome}\">",
        event.action,
        timestamp(record.time)
    ));
    xml.push_str(&format!(
        "<EventID csd-code=\"{}\" codeSystemName=\"DCM\" originalText=\"{}\"/>",
        event.code, event.meaning
    ));
    if let Some((code, meaning)) = event.type_code {
        xml.push_str(&format!(
            "<EventTypeCode csd-code=\"{code}\" codeSystemName=\"DCM\" originalText=\"{meaning}\"/>"
        ));
    }
    if let Some(detail) = &record.detail {
        xml.push_str(&format!("<EventOutcomeDescription>{}</EventOutcomeDescription>", escape(detail)));
    }
    xml.push_str("</EventIdentification>");
    // The requestor: who called, from where (NetworkAccessPointTypeCode 2: an IP address).
    let user = record.subject.as_deref().unwrap_or("unauthenticated");
    xml.push_str(&format!("<ActiveParticipant UserID=\"{}\" UserIsRequestor=\"true\"", escape(user)));
    if let Some(address) = &record.address {
        xml.push_str(&format!(" NetworkAccessPointID=\"{}\" NetworkAccessPointTypeCode=\"2\"", escape(address)));
    }
    xml.push_str("><RoleIDCode csd-code=\"110153\" codeSystemName=\"DCM\" originalText=\"Source Role ID\"/>");
    xml.push_str("</ActiveParticipant>");
    xml.push_str(&format!(
        "<ActiveParticipant UserID=\"{}\" UserIsRequestor=\"false\"><RoleIDCode csd-code=\"110152\" \
         codeSystemName=\"DCM\" originalText=\"Destination Role ID\"/></ActiveParticipant>",
        escape(source)
    ));
    xml.push_str(&format!(
        "<AuditSourceIdentification AuditSourceID=\"{}\"><AuditSourceTypeCode csd-code=\"4\"/></AuditSourceIdentification>",
        escape(source)
    ));
    // Studies: ParticipantObjectTypeCode 2 (system object), role 3 (report), ID type 110180.
    for study in &record.studies {
        xml.push_str(&format!(
            "<ParticipantObjectIdentification ParticipantObjectID=\"{}\" ParticipantObjectTypeCode=\"2\" \
             ParticipantObjectTypeCodeRole=\"3\"><ParticipantObjectIDTypeCode csd-code=\"110180\" \
             codeSystemName=\"DCM\" originalText=\"Study Instance UID\"/></ParticipantObjectIdentification>",
            escape(study)
        ));
    }
    // The institution the caller acts for, and the chain position (so a collector can tell a
    // gap): ParticipantObjectTypeCode 2, ID type "Kura audit record".
    xml.push_str(&format!(
        "<ParticipantObjectIdentification ParticipantObjectID=\"{}\" ParticipantObjectTypeCode=\"2\" \
         ParticipantObjectTypeCodeRole=\"13\"><ParticipantObjectIDTypeCode csd-code=\"seq\" \
         codeSystemName=\"KURA\" originalText=\"Kura audit record sequence number\"/>\
         <ParticipantObjectName>{}</ParticipantObjectName></ParticipantObjectIdentification>",
        record.seq,
        escape(record.institution.as_deref().unwrap_or(""))
    ));
    xml.push_str("</AuditMessage>");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retrieve_message() {
        let record = AuditRecord {
            v: 1,
            seq: 7,
            prev: super::super::GENESIS.into(),
            time: 1_798_761_599_123,
            action: "wado-metadata".into(),
            outcome: 200,
            subject: Some("oidc:dr <x>".into()),
            key_id: None,
            institution: Some("st-mary".into()),
            address: Some("192.0.2.1".into()),
            studies: vec!["1.2.3".into()],
            series: None,
            detail: None,
            opened: None,
        };
        let xml = message(&record, "kura");
        assert!(
            xml.contains(
                "EventActionCode=\"R\" EventDateTime=\"2026-12-31T23:59:59.123Z\" EventOutcomeIndicator=\"0\""
            )
        );
        assert!(xml.contains("csd-code=\"110103\""));
        assert!(xml.contains("UserID=\"oidc:dr &lt;x&gt;\""));
        assert!(xml.contains("ParticipantObjectID=\"1.2.3\""));
    }
}
