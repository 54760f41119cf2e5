//! UPS-RS (PS3.18 Chapter 11, PS3.4 Annex CC) through the running server: every allowed and
//! forbidden state transition with its status and Warning, Transaction UID secrecy, search
//! matching, subscriptions at the three scopes with events over WebSocket (tokio-tungstenite as
//! the client), order and redelivery after a reconnect and after a restart.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::client::{Reply, get, send};
use crate::support::server::{ChildServer, Server, create_key};

const JSON: &str = "application/dicom+json";
const GLOBAL: &str = "1.2.840.10008.5.1.4.34.5";
const FILTERED: &str = "1.2.840.10008.5.1.4.34.5.1";

/// A workitem data set with the N-CREATE attributes Kura requires.
fn workitem(priority: &str, label: &str, start: &str, study: &str) -> Value {
    json!({
        "00741000": {"vr": "CS", "Value": ["SCHEDULED"]},
        "00741200": {"vr": "CS", "Value": [priority]},
        "00741204": {"vr": "LO", "Value": [label]},
        "00404005": {"vr": "DT", "Value": [start]},
        "00404041": {"vr": "CS", "Value": ["READY"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "00404021": {"vr": "SQ", "Value": [{"0020000D": {"vr": "UI", "Value": [study]}}]}
    })
}

async fn create(base: &str, uid: &str, dataset: &Value) -> Reply {
    send(Method::POST, &format!("{base}/workitems?{uid}"), &[("content-type", JSON)], dataset.to_string()).await
}

async fn change_state(base: &str, uid: &str, state: &str, transaction: Option<&str>) -> Reply {
    let mut body = json!({"00741000": {"vr": "CS", "Value": [state]}});
    if let Some(transaction) = transaction {
        body["00081195"] = json!({"vr": "UI", "Value": [transaction]});
    }
    send(Method::PUT, &format!("{base}/workitems/{uid}/state"), &[("content-type", JSON)], body.to_string()).await
}

async fn update(base: &str, uid: &str, transaction: Option<&str>, changes: &Value) -> Reply {
    let url = match transaction {
        Some(t) => format!("{base}/workitems/{uid}?transaction-uid={t}"),
        None => format!("{base}/workitems/{uid}"),
    };
    send(Method::POST, &url, &[("content-type", JSON)], changes.to_string()).await
}

async fn cancel_request(base: &str, uid: &str) -> Reply {
    let body = json!({"00741238": {"vr": "LT", "Value": ["patient transferred"]}});
    send(Method::POST, &format!("{base}/workitems/{uid}/cancelrequest"), &[("content-type", JSON)], body.to_string())
        .await
}

/// What COMPLETED needs (PS3.4 Table CC.2.5-3, Final State P): the performed procedure item with
/// its end date-time and output references.
fn final_state_attributes(outputs: Value) -> Value {
    json!({"00741216": {"vr": "SQ", "Value": [{
        "00404050": {"vr": "DT", "Value": ["20260101100000"]},
        "00404051": {"vr": "DT", "Value": ["20260101110000"]},
        "00404033": {"vr": "SQ", "Value": outputs}
    }]}})
}

fn state_of(base_reply: &Reply) -> String {
    base_reply.json()[0]["00741000"]["Value"][0].as_str().unwrap_or_default().to_string()
}

/// Asserts the status and that the Warning header carries `warning` (or none when empty).
#[track_caller]
fn expect(reply: &Reply, status: StatusCode, warning: &str, what: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.text());
    if warning.is_empty() {
        assert!(reply.warnings().is_empty(), "{what}: unexpected warning {}", reply.warnings());
    } else {
        assert!(reply.warnings().contains(warning), "{what}: warning {:?}, wanted {warning:?}", reply.warnings());
        assert!(reply.warnings().starts_with("299 "), "{what}: the warn-code is 299: {}", reply.warnings());
    }
}

const MISSING: &str = "The Transaction UID is missing.";
const INCORRECT: &str = "The Transaction UID is incorrect.";
const INCONSISTENT: &str = "The submitted request is inconsistent with the state of the UPS Instance.";
const NOT_CLAIMED: &str = "The target URI did not reference a claimed Workitem.";
const UPDATE_INCONSISTENT: &str = "The submitted request is inconsistent with the current state of the Workitem.";

#[tokio::test]
async fn ups_create_rules_and_transaction_uid_secrecy() {
    let server = Server::start().await;
    let base = &server.base;
    let item = workitem("HIGH", "Read CT", "20260301100000", "1.2.3");
    let created = create(base, "2.25.100", &item).await;
    expect(&created, StatusCode::CREATED, "", "create");
    assert_eq!(created.header("location"), Some(format!("{base}/workitems/2.25.100").as_str()));
    expect(&create(base, "2.25.100", &item).await, StatusCode::CONFLICT, "", "duplicate UID");
    // The UID may come in the data set instead (SOP Instance UID).
    let mut in_body = item.clone();
    in_body["00080018"] = json!({"vr": "UI", "Value": ["2.25.101"]});
    let reply = send(Method::POST, &format!("{base}/workitems"), &[("content-type", JSON)], in_body.to_string()).await;
    expect(&reply, StatusCode::CREATED, "", "UID in the data set");
    // A different SOP Class UID is corrected, with the Warning of §11.4.3.2.
    let mut other_class = item.clone();
    other_class["00080016"] = json!({"vr": "UI", "Value": ["1.2.840.10008.5.1.4.34.6.3"]});
    expect(
        &create(base, "2.25.102", &other_class).await,
        StatusCode::CREATED,
        "The Workitem was created with modifications.",
        "modified",
    );
    let mut not_scheduled = item.clone();
    not_scheduled["00741000"] = json!({"vr": "CS", "Value": ["IN PROGRESS"]});
    expect(&create(base, "2.25.103", &not_scheduled).await, StatusCode::BAD_REQUEST, "", "not SCHEDULED (C309)");
    let mut no_label = item.clone();
    no_label.as_object_mut().unwrap().remove("00741204");
    let reply = create(base, "2.25.104", &no_label).await;
    expect(&reply, StatusCode::BAD_REQUEST, "", "missing label");
    assert!(reply.text().contains("ProcedureStepLabel"), "{}", reply.text());
    let mut with_lock = item.clone();
    with_lock["00081195"] = json!({"vr": "UI", "Value": ["2.25.9"]});
    expect(&create(base, "2.25.105", &with_lock).await, StatusCode::BAD_REQUEST, "", "Transaction UID at create");
    let no_uid = send(Method::POST, &format!("{base}/workitems"), &[("content-type", JSON)], item.to_string()).await;
    expect(&no_uid, StatusCode::BAD_REQUEST, "", "no UID anywhere");
    let xml = send(Method::POST, &format!("{base}/workitems?2.25.106"), &[("content-type", "text/plain")], "x").await;
    expect(&xml, StatusCode::UNSUPPORTED_MEDIA_TYPE, "", "not DICOM JSON");
    let big = json!({"00741204": {"vr": "LO", "Value": ["x".repeat(70_000)]}});
    expect(&create(base, "2.25.107", &big).await, StatusCode::PAYLOAD_TOO_LARGE, "", "over the size limit");
    for uid in ["2.25.103", "2.25.104", "2.25.105", "2.25.106", "2.25.107"] {
        expect(
            &get(&format!("{base}/workitems/{uid}"), JSON).await,
            StatusCode::NOT_FOUND,
            "",
            "nothing stored half-way",
        );
    }

    // Retrieve: the data set as created, with the SCP's SOP Class UID.
    let retrieved = get(&format!("{base}/workitems/2.25.100"), JSON).await;
    expect(&retrieved, StatusCode::OK, "", "retrieve");
    assert_eq!(retrieved.content_type(), JSON);
    assert_eq!(retrieved.json()[0]["00080016"]["Value"][0], "1.2.840.10008.5.1.4.34.6.1");
    assert_eq!(state_of(&retrieved), "SCHEDULED");
    expect(
        &get(&format!("{base}/workitems/2.25.100"), "application/dicom+xml").await,
        StatusCode::NOT_ACCEPTABLE,
        "",
        "xml",
    );

    // Claim; the lock is never disclosed by Retrieve or Search (CC.2.7.3, PS3.18 §11.5.2).
    let lock = "2.25.424242424242";
    expect(&change_state(base, "2.25.100", "IN PROGRESS", Some(lock)).await, StatusCode::OK, "", "claim");
    let retrieved = get(&format!("{base}/workitems/2.25.100"), JSON).await;
    assert_eq!(state_of(&retrieved), "IN PROGRESS");
    assert!(retrieved.json()[0].get("00081195").is_none());
    assert!(!retrieved.text().contains(lock), "the Transaction UID leaked: {}", retrieved.text());
    let found = get(&format!("{base}/workitems?ProcedureStepState=IN%20PROGRESS"), JSON).await;
    expect(&found, StatusCode::OK, "", "search");
    assert_eq!(found.json().as_array().unwrap().len(), 1);
    assert!(!found.text().contains(lock), "the Transaction UID leaked in search: {}", found.text());
    let guessed = get(&format!("{base}/workitems?TransactionUID={lock}"), JSON).await;
    expect(&guessed, StatusCode::BAD_REQUEST, "", "the lock is no match key");
}

#[tokio::test]
async fn ups_every_state_transition_and_update_rule() {
    let server = Server::start().await;
    let base = &server.base;
    let lock = Some("2.25.77");
    let wrong = Some("2.25.78");
    for (i, uid) in ["2.25.1", "2.25.2", "2.25.3", "2.25.4", "2.25.5"].iter().enumerate() {
        expect(
            &create(base, uid, &workitem("LOW", &format!("item {i}"), "20260301", "1.2.3")).await,
            StatusCode::CREATED,
            "",
            uid,
        );
    }
    let changes = json!({"00741204": {"vr": "LO", "Value": ["relabelled"]}});
    let ok = StatusCode::OK;
    let bad = StatusCode::BAD_REQUEST;

    // SCHEDULED (CC.1.1-2 column SCHEDULED).
    let u = "2.25.1";
    expect(&change_state(base, u, "SCHEDULED", lock).await, bad, INCONSISTENT, "SCHEDULED → SCHEDULED (C303)");
    expect(&change_state(base, u, "IN PROGRESS", None).await, bad, MISSING, "claim without UID (C301)");
    expect(&change_state(base, u, "COMPLETED", lock).await, bad, INCONSISTENT, "SCHEDULED → COMPLETED (C310)");
    expect(&change_state(base, u, "CANCELED", lock).await, bad, INCONSISTENT, "SCHEDULED → CANCELED (C310)");
    expect(&change_state(base, u, "DONE", lock).await, bad, "", "not a state");
    expect(&update(base, u, lock, &changes).await, bad, NOT_CLAIMED, "update SCHEDULED with a UID");
    expect(&update(base, u, None, &changes).await, ok, "", "update SCHEDULED without a UID");
    assert_eq!(get(&format!("{base}/workitems/{u}"), JSON).await.json()[0]["00741204"]["Value"][0], "relabelled");
    expect(&change_state(base, u, "IN PROGRESS", lock).await, ok, "", "SCHEDULED → IN PROGRESS");

    // IN PROGRESS.
    expect(&change_state(base, u, "IN PROGRESS", lock).await, bad, INCONSISTENT, "IN PROGRESS → IN PROGRESS (C302)");
    expect(&change_state(base, u, "IN PROGRESS", wrong).await, bad, INCORRECT, "claim a claimed item (C301)");
    expect(&change_state(base, u, "SCHEDULED", lock).await, bad, INCONSISTENT, "IN PROGRESS → SCHEDULED (C303)");
    expect(&change_state(base, u, "COMPLETED", wrong).await, bad, INCORRECT, "complete with a wrong UID");
    expect(&change_state(base, u, "COMPLETED", None).await, bad, MISSING, "complete without a UID");
    let incomplete = change_state(base, u, "COMPLETED", lock).await;
    expect(&incomplete, bad, INCONSISTENT, "complete without the Final State attributes (C304)");
    assert!(incomplete.text().contains("0074,1216"), "{}", incomplete.text());
    expect(&update(base, u, None, &changes).await, bad, NOT_CLAIMED, "update IN PROGRESS without the UID");
    expect(&update(base, u, wrong, &changes).await, bad, NOT_CLAIMED, "update IN PROGRESS with a wrong UID");
    let state_change = json!({"00741000": {"vr": "CS", "Value": ["COMPLETED"]}});
    expect(&update(base, u, lock, &state_change).await, bad, "", "Update does not change the state");
    expect(&update(base, u, lock, &final_state_attributes(json!([]))).await, ok, "", "update with the UID");
    expect(&change_state(base, u, "COMPLETED", lock).await, ok, "", "IN PROGRESS → COMPLETED");
    assert_eq!(state_of(&get(&format!("{base}/workitems/{u}"), JSON).await), "COMPLETED");

    // COMPLETED.
    expect(
        &change_state(base, u, "COMPLETED", lock).await,
        ok,
        "The UPS is already in the requested state of COMPLETED.",
        "COMPLETED → COMPLETED (B306)",
    );
    expect(&change_state(base, u, "CANCELED", lock).await, bad, INCONSISTENT, "COMPLETED → CANCELED (C300)");
    expect(&change_state(base, u, "IN PROGRESS", lock).await, bad, INCONSISTENT, "COMPLETED → IN PROGRESS (C300)");
    expect(&change_state(base, u, "COMPLETED", wrong).await, bad, INCORRECT, "COMPLETED with a wrong UID");
    expect(&update(base, u, lock, &changes).await, bad, UPDATE_INCONSISTENT, "update COMPLETED");
    expect(&cancel_request(base, u).await, StatusCode::CONFLICT, UPDATE_INCONSISTENT, "cancel COMPLETED (C311)");

    // IN PROGRESS → CANCELED: the SCP records the Cancellation DateTime (CC.2.5.1.3.2 note).
    let u = "2.25.2";
    expect(&change_state(base, u, "IN PROGRESS", lock).await, ok, "", "claim");
    expect(&change_state(base, u, "CANCELED", lock).await, ok, "", "IN PROGRESS → CANCELED");
    let canceled = get(&format!("{base}/workitems/{u}"), JSON).await.json();
    assert_eq!(canceled[0]["00741000"]["Value"][0], "CANCELED");
    assert!(canceled[0]["00741002"]["Value"][0]["00404052"]["Value"][0].is_string(), "{canceled}");
    expect(
        &change_state(base, u, "CANCELED", lock).await,
        ok,
        "The UPS is already in the requested state of CANCELED.",
        "CANCELED → CANCELED (B304)",
    );
    expect(&change_state(base, u, "COMPLETED", lock).await, bad, INCONSISTENT, "CANCELED → COMPLETED (C300)");
    expect(&update(base, u, lock, &changes).await, bad, UPDATE_INCONSISTENT, "update CANCELED");
    expect(
        &cancel_request(base, u).await,
        StatusCode::ACCEPTED,
        "The UPS is already in the requested state of CANCELED.",
        "cancel CANCELED (B304)",
    );

    // Request Cancellation of a SCHEDULED item: the SCP cancels it (CC.1.1).
    let u = "2.25.3";
    expect(&cancel_request(base, u).await, StatusCode::ACCEPTED, "", "cancel SCHEDULED");
    let canceled = get(&format!("{base}/workitems/{u}"), JSON).await.json();
    assert_eq!(canceled[0]["00741000"]["Value"][0], "CANCELED");
    assert_eq!(canceled[0]["00741002"]["Value"][0]["00741238"]["Value"][0], "patient transferred");
    // … of an IN PROGRESS item: the performer is told; the state stays.
    let u = "2.25.4";
    expect(&change_state(base, u, "IN PROGRESS", lock).await, ok, "", "claim");
    expect(&cancel_request(base, u).await, StatusCode::ACCEPTED, "", "cancel IN PROGRESS");
    assert_eq!(state_of(&get(&format!("{base}/workitems/{u}"), JSON).await), "IN PROGRESS");
    let reply = send(Method::POST, &format!("{base}/workitems/{u}/cancelrequest"), &[], Bytes::new()).await;
    expect(&reply, StatusCode::ACCEPTED, "", "cancel request without a payload");

    // Unknown workitems: 404 everywhere (C307).
    let nobody = "2.25.999";
    expect(&get(&format!("{base}/workitems/{nobody}"), JSON).await, StatusCode::NOT_FOUND, "", "retrieve");
    expect(&change_state(base, nobody, "IN PROGRESS", lock).await, StatusCode::NOT_FOUND, "", "state");
    expect(&update(base, nobody, None, &changes).await, StatusCode::NOT_FOUND, "", "update");
    expect(&cancel_request(base, nobody).await, StatusCode::NOT_FOUND, "", "cancel");
    let subscribe = send(Method::POST, &format!("{base}/workitems/{nobody}/subscribers/AE1"), &[], Bytes::new()).await;
    expect(&subscribe, StatusCode::NOT_FOUND, "", "subscribe");
    // Methods the resources do not have: 405 with Allow.
    let reply = send(Method::DELETE, &format!("{base}/workitems/2.25.5"), &[], Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(reply.header("allow").is_some_and(|a| a.contains("PUT")));
}

#[tokio::test]
async fn ups_search_matching_and_paging() {
    let server = Server::start().await;
    let base = &server.base;
    let items = [
        ("2.25.11", "HIGH", "Read CT chest", "20260301100000", "1.2.840.1"),
        ("2.25.12", "LOW", "Read MR knee", "20260305100000", "1.2.840.2"),
        ("2.25.13", "HIGH", "Second opinion CT", "20260310100000", "1.2.840.3"),
    ];
    for (uid, priority, label, start, study) in items {
        expect(&create(base, uid, &workitem(priority, label, start, study)).await, StatusCode::CREATED, "", uid);
    }
    let uids = |reply: &Reply| -> Vec<String> {
        reply
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["00080018"]["Value"][0].as_str().unwrap().to_string())
            .collect()
    };
    let search = |query: &str| {
        let url = format!("{base}/workitems?{query}");
        async move { get(&url, JSON).await }
    };
    assert_eq!(uids(&search("ScheduledProcedureStepPriority=HIGH").await), ["2.25.11", "2.25.13"]);
    assert_eq!(uids(&search("ProcedureStepLabel=Read*").await), ["2.25.11", "2.25.12"]);
    assert_eq!(uids(&search("ProcedureStepLabel=read*").await), Vec::<String>::new(), "case-sensitive");
    assert_eq!(uids(&search("00741204=*CT*").await), ["2.25.11", "2.25.13"], "by tag");
    assert_eq!(uids(&search("ScheduledProcedureStepStartDateTime=20260302-20260310").await), ["2.25.12", "2.25.13"]);
    assert_eq!(
        uids(&search("InputInformationSequence.StudyInstanceUID=1.2.840.2,1.2.840.3").await),
        ["2.25.12", "2.25.13"]
    );
    assert_eq!(uids(&search("PatientName=doe*&ScheduledProcedureStepPriority=LOW").await), ["2.25.12"]);
    assert_eq!(uids(&search("NoSuchAttribute=1").await).len(), 3, "unknown parameters are ignored (§8.3)");
    let page = search("limit=1&offset=1").await;
    assert_eq!(uids(&page), ["2.25.12"]);
    assert!(page.warnings().contains("There are 1 additional results that can be requested"), "{}", page.warnings());
    let none = search("ScheduledProcedureStepPriority=MEDIUM").await;
    expect(&none, StatusCode::OK, "", "no match");
    assert_eq!(none.json(), json!([]));
    expect(&search("limit=x").await, StatusCode::BAD_REQUEST, "", "bad limit");
    let fuzzy = search("fuzzymatching=true").await;
    assert!(fuzzy.warnings().contains("fuzzymatching parameter is not supported"), "{}", fuzzy.warnings());
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Subscribes `ae` and opens its notification connection at the URL the Subscribe response
/// names (Content-Location).
async fn subscribe(base: &str, target: &str, ae: &str, query: &str) -> Reply {
    let reply =
        send(Method::POST, &format!("{base}/workitems/{target}/subscribers/{ae}{query}"), &[], Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::CREATED, "subscribe {ae}: {}", reply.text());
    reply
}

async fn connect(url: &str) -> Socket {
    let (socket, response) = tokio_tungstenite::connect_async(url).await.expect("websocket");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    socket
}

fn ws_url(base: &str, ae: &str) -> String {
    format!("{}/subscribers/{ae}", base.replacen("http://", "ws://", 1))
}

/// The next event report (a text frame of DICOM JSON), within 5 s.
async fn next_event(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("an event within 5 s")
            .expect("the connection is open")
            .expect("a frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).expect("DICOM JSON");
        }
    }
}

/// No event arrives within `wait` (control frames are read and answered meanwhile).
async fn no_event(socket: &mut Socket, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(message) = tokio::time::timeout_at(deadline, socket.next()).await {
        if let Some(Ok(Message::Text(text))) = message {
            panic!("unexpected event {text}");
        }
    }
}

/// (Event Type ID, workitem UID, state when a State Report).
fn summary(event: &Value) -> (u64, String, String) {
    assert_eq!(event["00000002"]["Value"][0], "1.2.840.10008.5.1.4.34.6.1", "{event}");
    (
        event["00001002"]["Value"][0].as_u64().unwrap_or(0),
        event["00001000"]["Value"][0].as_str().unwrap_or_default().to_string(),
        event["00741000"]["Value"][0].as_str().unwrap_or_default().to_string(),
    )
}

fn report(kind: u64, uid: &str, state: &str) -> (u64, String, String) {
    (kind, uid.to_string(), state.to_string())
}

#[tokio::test]
async fn ups_subscriptions_at_three_scopes_deliver_in_order() {
    let server = Server::start().await;
    let base = &server.base;
    expect(
        &create(base, "2.25.21", &workitem("LOW", "existing", "20260301", "1.2.3")).await,
        StatusCode::CREATED,
        "",
        "",
    );
    // Worklist subscription: the Content-Location is the WebSocket URL; no deletion lock.
    let mut all = connect(&ws_url(base, "ALL")).await;
    let reply = subscribe(base, GLOBAL, "ALL", "?deletionlock=true").await;
    assert_eq!(reply.header("content-location"), Some(ws_url(base, "ALL").as_str()));
    assert!(reply.warnings().contains("Deletion Lock not granted."), "{}", reply.warnings());
    assert_eq!(summary(&next_event(&mut all).await), report(1, "2.25.21", "SCHEDULED"), "initial State Report");
    // Filtered: only HIGH priority.
    let mut urgent = connect(&ws_url(base, "URGENT")).await;
    subscribe(base, FILTERED, "URGENT", "?filter=ScheduledProcedureStepPriority%3DHIGH").await;
    // One workitem.
    let mut one = connect(&ws_url(base, "ONE")).await;
    subscribe(base, "2.25.21", "ONE", "").await;
    assert_eq!(summary(&next_event(&mut one).await), report(1, "2.25.21", "SCHEDULED"));

    let mut high = workitem("HIGH", "urgent read", "20260301", "1.2.4");
    high["00404034"] = json!({"vr": "SQ", "Value": [{"00404009": {"vr": "SQ", "Value": [{
        "00080100": {"vr": "SH", "Value": ["RAD1"]}, "00080102": {"vr": "SH", "Value": ["L"]},
        "00080104": {"vr": "LO", "Value": ["Reader one"]}}]}}]});
    expect(&create(base, "2.25.22", &high).await, StatusCode::CREATED, "", "");
    expect(
        &create(base, "2.25.23", &workitem("LOW", "routine", "20260301", "1.2.5")).await,
        StatusCode::CREATED,
        "",
        "",
    );
    let lock = Some("2.25.55");
    expect(&change_state(base, "2.25.22", "IN PROGRESS", lock).await, StatusCode::OK, "", "");
    let progress = json!({"00741002": {"vr": "SQ", "Value": [{"00741004": {"vr": "DS", "Value": [50]}}]}});
    expect(&update(base, "2.25.22", lock, &progress).await, StatusCode::OK, "", "");
    expect(&cancel_request(base, "2.25.22").await, StatusCode::ACCEPTED, "", "");
    expect(&update(base, "2.25.22", lock, &final_state_attributes(json!([]))).await, StatusCode::OK, "", "");
    expect(&change_state(base, "2.25.22", "COMPLETED", lock).await, StatusCode::OK, "", "");
    expect(&change_state(base, "2.25.21", "IN PROGRESS", lock).await, StatusCode::OK, "", "");

    let expected_high = vec![
        report(1, "2.25.22", "SCHEDULED"),
        report(5, "2.25.22", ""),
        report(1, "2.25.22", "IN PROGRESS"),
        report(3, "2.25.22", ""),
        report(2, "2.25.22", ""),
        report(1, "2.25.22", "COMPLETED"),
    ];
    let mut expected_all = expected_high.clone();
    expected_all.insert(2, report(1, "2.25.23", "SCHEDULED"));
    expected_all.push(report(1, "2.25.21", "IN PROGRESS"));
    let mut got = Vec::new();
    for _ in 0..expected_all.len() {
        got.push(next_event(&mut all).await);
    }
    assert_eq!(got.iter().map(summary).collect::<Vec<_>>(), expected_all, "global subscriber, in order");
    let assigned = &got[1];
    assert_eq!(assigned["00404009"]["Value"][0]["00080100"]["Value"][0], "RAD1", "UPS Assigned names the performer");
    assert_eq!(got[4]["00741002"]["Value"][0]["00741004"]["Value"][0], 50, "progress");
    assert_eq!(got[5]["00741236"]["Value"][0], "DICOMWEB", "Requesting AE");
    assert_eq!(got[5]["00741238"]["Value"][0], "patient transferred");
    let mut got_urgent = Vec::new();
    for _ in 0..expected_high.len() {
        got_urgent.push(summary(&next_event(&mut urgent).await));
    }
    assert_eq!(got_urgent, expected_high, "filtered subscriber: only the HIGH workitem");
    assert_eq!(summary(&next_event(&mut one).await), report(1, "2.25.21", "IN PROGRESS"), "workitem subscriber");
    no_event(&mut one, Duration::from_millis(300)).await;
    no_event(&mut urgent, Duration::from_millis(100)).await;

    // Suspend: existing subscriptions stay, new workitems are not subscribed to.
    let reply =
        send(Method::POST, &format!("{base}/workitems/{GLOBAL}/subscribers/ALL/suspend"), &[], Bytes::new()).await;
    expect(&reply, StatusCode::OK, "", "suspend");
    expect(
        &create(base, "2.25.24", &workitem("LOW", "after suspend", "20260301", "1.2.6")).await,
        StatusCode::CREATED,
        "",
        "",
    );
    expect(&change_state(base, "2.25.23", "IN PROGRESS", lock).await, StatusCode::OK, "", "");
    assert_eq!(summary(&next_event(&mut all).await), report(1, "2.25.23", "IN PROGRESS"));
    no_event(&mut all, Duration::from_millis(300)).await;
    // Unsubscribe from the worklist removes the AE's workitem subscriptions too.
    let reply = send(Method::DELETE, &format!("{base}/workitems/{GLOBAL}/subscribers/ALL"), &[], Bytes::new()).await;
    expect(&reply, StatusCode::OK, "", "unsubscribe");
    expect(&change_state(base, "2.25.21", "CANCELED", lock).await, StatusCode::OK, "", "");
    no_event(&mut all, Duration::from_millis(300)).await;
    assert_eq!(summary(&next_event(&mut one).await), report(1, "2.25.21", "CANCELED"));
    let reply = send(Method::DELETE, &format!("{base}/workitems/2.25.21/subscribers/ONE"), &[], Bytes::new()).await;
    expect(&reply, StatusCode::OK, "", "unsubscribe from a workitem");
    let reply = send(Method::DELETE, &format!("{base}/workitems/{GLOBAL}/subscribers/NOBODY"), &[], Bytes::new()).await;
    expect(&reply, StatusCode::NOT_FOUND, "", "unsubscribe without a subscription");
    let reply =
        send(Method::POST, &format!("{base}/workitems/{GLOBAL}/subscribers/NOBODY/suspend"), &[], Bytes::new()).await;
    expect(&reply, StatusCode::NOT_FOUND, "", "suspend without a subscription");
    // Not a WebSocket handshake: 400, and the server stays up.
    expect(&get(&format!("{base}/subscribers/ALL"), "").await, StatusCode::BAD_REQUEST, "", "plain GET");
}

#[tokio::test]
async fn ups_events_missed_while_away_are_delivered_on_reconnect() {
    let server = Server::start().await;
    let base = &server.base;
    subscribe(base, GLOBAL, "AWAY", "").await;
    for uid in ["2.25.31", "2.25.32", "2.25.33"] {
        expect(&create(base, uid, &workitem("LOW", "x", "20260301", "1.2.3")).await, StatusCode::CREATED, "", "");
    }
    // Connected after the events: all of them, in order.
    let mut socket = connect(&ws_url(base, "AWAY")).await;
    for uid in ["2.25.31", "2.25.32", "2.25.33"] {
        assert_eq!(summary(&next_event(&mut socket).await), report(1, uid, "SCHEDULED"));
    }
    // Reading on lets the client answer the server's Ping: the three are delivered.
    no_event(&mut socket, Duration::from_millis(300)).await;
    socket.close(None).await.expect("close");
    expect(&change_state(base, "2.25.31", "IN PROGRESS", Some("2.25.5")).await, StatusCode::OK, "", "");
    expect(&change_state(base, "2.25.32", "IN PROGRESS", Some("2.25.5")).await, StatusCode::OK, "", "");
    // Read two events and vanish without answering the Ping: both come again (at least once).
    let mut socket = connect(&ws_url(base, "AWAY")).await;
    assert_eq!(summary(&next_event(&mut socket).await), report(1, "2.25.31", "IN PROGRESS"));
    assert_eq!(summary(&next_event(&mut socket).await), report(1, "2.25.32", "IN PROGRESS"));
    drop(socket);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut socket = connect(&ws_url(base, "AWAY")).await;
    assert_eq!(summary(&next_event(&mut socket).await), report(1, "2.25.31", "IN PROGRESS"), "redelivered");
    assert_eq!(summary(&next_event(&mut socket).await), report(1, "2.25.32", "IN PROGRESS"), "redelivered");
    no_event(&mut socket, Duration::from_millis(300)).await;
    // A second connection of the same AE supersedes the first.
    let mut newer = connect(&ws_url(base, "AWAY")).await;
    expect(&change_state(base, "2.25.33", "IN PROGRESS", Some("2.25.5")).await, StatusCode::OK, "", "");
    assert_eq!(summary(&next_event(&mut newer).await), report(1, "2.25.33", "IN PROGRESS"));
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(Message::Text(text))) => panic!("the superseded connection got {text}"),
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the superseded connection was closed");
    let _ = newer.send(Message::Close(None)).await;
}

/// Queues are in the catalog: events acknowledged to nobody survive kill -9, and the restarted
/// server says it restarted (SCP Status Change, CC.2.4.3) before or after them, in sequence.
#[tokio::test]
async fn ups_events_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = ChildServer::start(&data);
    let base = server.base.clone();
    subscribe(&base, GLOBAL, "HOSPITAL", "").await;
    expect(&create(&base, "2.25.41", &workitem("LOW", "x", "20260301", "1.2.3")).await, StatusCode::CREATED, "", "");
    expect(&change_state(&base, "2.25.41", "IN PROGRESS", Some("2.25.6")).await, StatusCode::OK, "", "");
    server.kill();
    let server = ChildServer::start(&data);
    let base = server.base.clone();
    let mut socket = connect(&ws_url(&base, "HOSPITAL")).await;
    assert_eq!(summary(&next_event(&mut socket).await), report(1, "2.25.41", "SCHEDULED"));
    assert_eq!(summary(&next_event(&mut socket).await), report(1, "2.25.41", "IN PROGRESS"));
    let restarted = next_event(&mut socket).await;
    assert_eq!(restarted["00001002"]["Value"][0], 4, "SCP Status Change: {restarted}");
    assert_eq!(restarted["00741242"]["Value"][0], "RESTARTED");
    // The subscription survived too: a new event reaches the subscriber.
    expect(&update(&base, "2.25.41", Some("2.25.6"), &final_state_attributes(json!([]))).await, StatusCode::OK, "", "");
    expect(&change_state(&base, "2.25.41", "COMPLETED", Some("2.25.6")).await, StatusCode::OK, "", "");
    assert_eq!(summary(&next_event(&mut socket).await), report(1, "2.25.41", "COMPLETED"));
    assert_eq!(state_of(&get(&format!("{base}/workitems/2.25.41"), JSON).await), "COMPLETED");
    drop(socket);
    server.terminate();
}

/// Completed workitems go after the retention (here 3.6 s); the others stay.
#[tokio::test]
async fn ups_completed_workitems_are_removed_after_the_retention() {
    let server = Server::start_with(|config| {
        config.archive.worklist.retention = Duration::from_millis(3600);
    })
    .await;
    let base = &server.base;
    for uid in ["2.25.51", "2.25.52"] {
        expect(&create(base, uid, &workitem("LOW", "x", "20260301", "1.2.3")).await, StatusCode::CREATED, "", "");
    }
    expect(&cancel_request(base, "2.25.51").await, StatusCode::ACCEPTED, "", "");
    expect(&get(&format!("{base}/workitems/2.25.51"), JSON).await, StatusCode::OK, "", "kept for now");
    tokio::time::sleep(Duration::from_secs(7)).await;
    expect(&get(&format!("{base}/workitems/2.25.51"), JSON).await, StatusCode::NOT_FOUND, "", "removed");
    expect(&get(&format!("{base}/workitems/2.25.52"), JSON).await, StatusCode::OK, "", "SCHEDULED stays");
}

/// One caller of a server that requires authentication: its key on every request.
struct Caller<'a> {
    base: &'a str,
    key: String,
}

impl Caller<'_> {
    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        let authorization = format!("Bearer {}", self.key);
        let mut headers = vec![("authorization", authorization.as_str()), ("accept", JSON)];
        if body.is_some() {
            headers.push(("content-type", JSON));
        }
        let body = body.map(Value::to_string).unwrap_or_default();
        send(method, &format!("{}{path}", self.base), &headers, body).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }

    async fn create(&self, uid: &str, dataset: &Value) -> Reply {
        self.send(Method::POST, &format!("/workitems?{uid}"), Some(dataset)).await
    }

    async fn change_state(&self, uid: &str, state: &str, transaction: &str) -> Reply {
        let body =
            json!({"00741000": {"vr": "CS", "Value": [state]}, "00081195": {"vr": "UI", "Value": [transaction]}});
        self.send(Method::PUT, &format!("/workitems/{uid}/state"), Some(&body)).await
    }

    async fn update(&self, uid: &str, transaction: Option<&str>, changes: &Value) -> Reply {
        let query = transaction.map(|t| format!("?transaction-uid={t}")).unwrap_or_default();
        self.send(Method::POST, &format!("/workitems/{uid}{query}"), Some(changes)).await
    }

    /// Subscribes `ae` of the caller's institution to the worklist and opens its notification
    /// connection at the URL the answer names.
    async fn watch(&self, ae: &str) -> Socket {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let reply = self.send(Method::POST, &format!("/workitems/{GLOBAL}/subscribers/{ae}"), None).await;
        assert_eq!(reply.status, StatusCode::CREATED, "subscribe {ae}: {}", reply.text());
        let url = reply.header("content-location").expect("Content-Location").to_string();
        let mut request = url.into_client_request().expect("request");
        request.headers_mut().insert("authorization", format!("Bearer {}", self.key).parse().expect("header"));
        let (socket, response) = tokio_tungstenite::connect_async(request).await.expect("websocket");
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        socket
    }
}

/// Scheduled Human Performers Sequence with one performer of `organization` (0040,4036).
fn performed_by(organization: &str) -> Value {
    json!({"00404034": {"vr": "SQ", "Value": [{
        "00404009": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["RDR"]},
            "00080102": {"vr": "SH", "Value": ["L"]}, "00080104": {"vr": "LO", "Value": ["Reader"]}}]},
        "00404036": {"vr": "LO", "Value": [organization]}}]}})
}

/// Reads `n` events and returns their summaries.
async fn events(socket: &mut Socket, n: usize) -> Vec<(u64, String, String)> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(summary(&next_event(socket).await));
    }
    got
}

/// Workitems belong to the requesting institution (the creator's) and the performing ones
/// (Human Performer's Organization of the Scheduled Human Performers Sequence): a third
/// institution's reader gets exactly the unknown-workitem 404 for everything about them, does
/// not find or count them in search, and its worklist subscriber hears nothing of them; the
/// same AE title in three institutions is three subscribers; an Update that names another
/// performer moves the workitem's visibility and its worklist subscribers with it.
#[tokio::test]
async fn ups_workitems_belong_to_requesting_and_performing_institutions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (_, hospital_key) = create_key(&data, "hospital", "uploader,reader");
    let (_, b_key) = create_key(&data, "reading-b", "reader");
    let (_, c_key) = create_key(&data, "reading-c", "uploader,reader");
    let server = ChildServer::start_with(&data, &["--require-auth"]);
    let base = server.base.clone();
    let hospital = Caller { base: &base, key: hospital_key };
    let b = Caller { base: &base, key: b_key };
    let c = Caller { base: &base, key: c_key };
    // One AE title, three institutions: three subscribers with queues of their own.
    let mut hospital_watch = hospital.watch("WATCH").await;
    let mut b_watch = b.watch("WATCH").await;
    let mut c_watch = c.watch("WATCH").await;

    let mut for_b = workitem("HIGH", "Second opinion CT", "20260301", "1.2.3");
    for_b["00404034"] = performed_by("reading-b")["00404034"].clone();
    expect(&hospital.create("2.25.61", &for_b).await, StatusCode::CREATED, "", "hospital creates for B");
    let own = workitem("LOW", "hospital only", "20260301", "1.2.4");
    expect(&hospital.create("2.25.62", &own).await, StatusCode::CREATED, "", "hospital's own");
    let c_own = workitem("LOW", "C's own", "20260301", "1.2.5");
    expect(&c.create("2.25.63", &c_own).await, StatusCode::CREATED, "", "C's own");

    // Search: each sees its own; counts and the Warning count visible workitems only.
    let found = |reply: &Reply| -> Vec<String> {
        reply
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["00080018"]["Value"][0].as_str().unwrap().to_string())
            .collect()
    };
    let page = hospital.get("/workitems?limit=1").await;
    expect(&page, StatusCode::OK, "There are 1 additional results that can be requested", "hospital page");
    assert_eq!(found(&page), ["2.25.61"]);
    assert_eq!(found(&hospital.get("/workitems").await), ["2.25.61", "2.25.62"]);
    assert_eq!(found(&b.get("/workitems").await), ["2.25.61"]);
    let c_page = c.get("/workitems?limit=1").await;
    expect(&c_page, StatusCode::OK, "", "C's page: nothing more to request");
    assert_eq!(found(&c_page), ["2.25.63"]);
    assert_eq!(found(&c.get("/workitems?ProcedureStepLabel=Second*").await), Vec::<String>::new());

    // C: exactly what an unknown workitem answers, for every operation.
    let lock = "2.25.6161";
    let same = |visible: &Reply, unknown: &Reply, what: &str| {
        assert_eq!(visible.status, StatusCode::NOT_FOUND, "{what}: {}", visible.text());
        assert_eq!(
            (visible.status, visible.text(), visible.warnings()),
            (unknown.status, unknown.text(), unknown.warnings()),
            "{what}"
        );
    };
    same(&c.get("/workitems/2.25.61").await, &c.get("/workitems/2.25.69").await, "retrieve");
    same(
        &c.change_state("2.25.61", "IN PROGRESS", lock).await,
        &c.change_state("2.25.69", "IN PROGRESS", lock).await,
        "claim",
    );
    let relabel = json!({"00741204": {"vr": "LO", "Value": ["taken"]}});
    same(&c.update("2.25.61", None, &relabel).await, &c.update("2.25.69", None, &relabel).await, "update");
    same(
        &c.send(Method::POST, "/workitems/2.25.61/cancelrequest", None).await,
        &c.send(Method::POST, "/workitems/2.25.69/cancelrequest", None).await,
        "request cancellation",
    );
    same(
        &c.send(Method::POST, "/workitems/2.25.61/subscribers/WATCH", None).await,
        &c.send(Method::POST, "/workitems/2.25.69/subscribers/WATCH", None).await,
        "subscribe",
    );
    same(
        &c.send(Method::DELETE, "/workitems/2.25.61/subscribers/WATCH", None).await,
        &c.send(Method::DELETE, "/workitems/2.25.69/subscribers/WATCH", None).await,
        "unsubscribe",
    );
    same(&b.get("/workitems/2.25.62").await, &b.get("/workitems/2.25.69").await, "B and the hospital's own");

    // B, the performer, sees, claims and completes it.
    expect(&b.get("/workitems/2.25.61").await, StatusCode::OK, "", "B retrieves");
    expect(&b.change_state("2.25.61", "IN PROGRESS", lock).await, StatusCode::OK, "", "B claims");
    expect(&b.update("2.25.61", Some(lock), &final_state_attributes(json!([]))).await, StatusCode::OK, "", "B updates");
    expect(&b.change_state("2.25.61", "COMPLETED", lock).await, StatusCode::OK, "", "B completes");
    assert_eq!(state_of(&hospital.get("/workitems/2.25.61").await), "COMPLETED");

    // Assigned later: an Update naming C makes C a performer (its worklist subscriber hears of
    // it); naming B instead takes it from C again.
    expect(&hospital.create("2.25.64", &own).await, StatusCode::CREATED, "", "unassigned");
    expect(&c.get("/workitems/2.25.64").await, StatusCode::NOT_FOUND, "", "not C's yet");
    expect(&hospital.update("2.25.64", None, &performed_by("reading-c")).await, StatusCode::OK, "", "assign C");
    expect(&c.get("/workitems/2.25.64").await, StatusCode::OK, "", "C performs it");
    expect(&hospital.update("2.25.64", None, &performed_by("reading-b")).await, StatusCode::OK, "", "assign B");
    same(&c.get("/workitems/2.25.64").await, &c.get("/workitems/2.25.69").await, "no longer C's");
    expect(&b.get("/workitems/2.25.64").await, StatusCode::OK, "", "B performs it");

    let scheduled = |uid: &str| report(1, uid, "SCHEDULED");
    assert_eq!(
        events(&mut hospital_watch, 8).await,
        [
            scheduled("2.25.61"),
            report(5, "2.25.61", ""),
            scheduled("2.25.62"),
            report(1, "2.25.61", "IN PROGRESS"),
            report(1, "2.25.61", "COMPLETED"),
            scheduled("2.25.64"),
            report(5, "2.25.64", ""),
            report(5, "2.25.64", ""),
        ],
        "the requester hears of everything it requested"
    );
    assert_eq!(
        events(&mut b_watch, 6).await,
        [
            scheduled("2.25.61"),
            report(5, "2.25.61", ""),
            report(1, "2.25.61", "IN PROGRESS"),
            report(1, "2.25.61", "COMPLETED"),
            scheduled("2.25.64"),
            report(5, "2.25.64", ""),
        ],
        "the performer hears of what it performs, from when it performs it"
    );
    assert_eq!(
        events(&mut c_watch, 3).await,
        [scheduled("2.25.63"), scheduled("2.25.64"), report(5, "2.25.64", "")],
        "C hears of its own and of what it performed for a while, nothing else"
    );
    no_event(&mut c_watch, Duration::from_millis(300)).await;
    no_event(&mut b_watch, Duration::from_millis(100)).await;
    no_event(&mut hospital_watch, Duration::from_millis(100)).await;
    drop((hospital_watch, b_watch, c_watch));
    server.terminate();
}
