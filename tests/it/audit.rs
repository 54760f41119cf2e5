//! The audit trail over real HTTP: every access recorded with who, institution, what, where
//! and the outcome; the admin query filters; failed authentications appear; no patient name,
//! key or token in any record or log line; records of acknowledged requests survive kill -9;
//! `kura audit verify` finds an edited record; the ATNA copy reaches a TLS syslog collector.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::Value;
use tokio::io::AsyncReadExt;

use crate::support::pki::TestCa;
use crate::support::*;

fn kura(args: &[&str]) -> std::process::Output {
    Command::new(kura_binary()).args(args).output().expect("run kura")
}

async fn call(method: Method, url: &str, key: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
    let authorization = format!("Bearer {key}");
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    all.push(("authorization", &authorization));
    send(method, url, &all, body).await
}

/// The records an `/admin/audit` query returns.
async fn audit(root: &str, key: &str, query: &str) -> Vec<Value> {
    let reply = call(Method::GET, &format!("{root}/admin/audit?{query}"), key, &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.text());
    reply.json()["records"].as_array().unwrap().clone()
}

fn actions(records: &[Value]) -> Vec<String> {
    records.iter().map(|r| r["action"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_access_is_recorded_queried_and_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (uploader_id, uploader) = create_key(&data, "st-mary", "uploader");
    let (reader_id, reader) = create_key(&data, "st-mary", "reader");
    let (_, admin) = create_key(&data, "st-mary", "administrator");
    let log = dir.path().join("server.log");
    let server = ChildServer::start_logged(&data, &["--require-auth"], Some(&log));
    let base = server.base.clone();
    let root = base.trim_end_matches("/dicomweb").to_string();

    let (one, two) = (Spec::new(941, 1, 1), Spec::new(942, 1, 1));
    let content_type = stow_content_type();
    let stow_headers = [("content-type", content_type.as_str()), ("accept", "application/dicom+json")];
    let body = multipart(&[instance(&one), instance(&two)]);
    let stored = call(Method::POST, &format!("{base}/studies"), &uploader, &stow_headers, body).await;
    assert_eq!(stored.status, StatusCode::OK, "{}", stored.text());
    let json = [("accept", "application/dicom+json")];
    assert_eq!(
        call(Method::GET, &format!("{base}/studies?PatientName=Doe*"), &reader, &json, vec![]).await.status,
        StatusCode::OK
    );
    let metadata = format!("{}/metadata", one.study_url(&base));
    assert_eq!(call(Method::GET, &metadata, &reader, &json, vec![]).await.status, StatusCode::OK);
    let frames = format!("{}/frames/1", one.instance_url(&base));
    let octets = [("accept", "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*")];
    assert_eq!(call(Method::GET, &frames, &reader, &octets, vec![]).await.status, StatusCode::OK);
    let wado_uri = format!(
        "{root}/wado?requestType=WADO&studyUID={}&seriesUID={}&objectUID={}&contentType=application%2Fdicom",
        two.study_uid(),
        two.series_uid(),
        two.sop_uid()
    );
    assert_eq!(call(Method::GET, &wado_uri, &reader, &[], vec![]).await.status, StatusCode::OK);
    // Forbidden and unknown are recorded with their outcome.
    assert_eq!(call(Method::DELETE, &one.study_url(&base), &reader, &[], vec![]).await.status, StatusCode::FORBIDDEN);
    let missing = format!("{base}/studies/1.2.3.999/metadata");
    assert_eq!(call(Method::GET, &missing, &reader, &json, vec![]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(call(Method::DELETE, &two.study_url(&base), &admin, &[], vec![]).await.status, StatusCode::NO_CONTENT);
    // A key change over HTTP, and a failed authentication with a forged key.
    let created = call(
        Method::POST,
        &format!("{root}/admin/keys"),
        &admin,
        &[("content-type", "application/json")],
        br#"{"institution": "st-mary", "role": "reader"}"#.to_vec(),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let new_id = created.json()["id"].as_str().unwrap().to_string();
    let new_secret = created.json()["secret"].as_str().unwrap().to_string();
    let forged = format!("kura_{reader_id}_{}", "B".repeat(43));
    let refused = call(Method::GET, &format!("{base}/studies"), &forged, &[], vec![]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);

    // The query: everything, by study, by principal, by time.
    let all = audit(&root, &admin, "limit=1000").await;
    let names = actions(&all);
    for expected in ["stow", "qido", "wado-metadata", "wado-frames", "wado-uri", "delete", "key-create"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    // The administrator reads its own institution's callers only: a failed authentication
    // (nobody's) and the command line's key creations are in the trail (see the export below)
    // but not in its answer.
    assert!(all.iter().all(|r| r["institution"] == "st-mary"), "{names:?}");
    let stow = all.iter().find(|r| r["action"] == "stow").unwrap();
    assert_eq!(stow["subject"], format!("key:{uploader_id}"));
    assert_eq!(stow["key_id"], uploader_id.as_str());
    assert_eq!(stow["institution"], "st-mary");
    assert_eq!(stow["address"], "127.0.0.1");
    assert_eq!(stow["status"], 200);
    let mut studies: Vec<&str> = stow["studies"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    studies.sort();
    assert_eq!(studies, [one.study_uid(), two.study_uid()]);
    let denied = all.iter().find(|r| r["action"] == "delete" && r["status"] == 403).expect("the refused delete");
    assert_eq!(denied["subject"], format!("key:{reader_id}"));
    assert!(all.iter().any(|r| r["action"] == "wado-metadata" && r["status"] == 404));
    let key_create = all.iter().rfind(|r| r["action"] == "key-create").unwrap(); // the HTTP one, after the CLI's
    assert!(key_create["detail"].as_str().unwrap().contains(&new_id));
    let wado_uri_record = all.iter().find(|r| r["action"] == "wado-uri").unwrap();
    assert_eq!(wado_uri_record["studies"][0], two.study_uid().as_str());

    let by_study = audit(&root, &admin, &format!("study={}", one.study_uid())).await;
    assert_eq!(actions(&by_study), ["stow", "wado-metadata", "wado-frames", "delete"], "{by_study:?}");
    let by_principal = audit(&root, &admin, &format!("principal={reader_id}")).await;
    assert!(by_principal.iter().all(|r| r["key_id"] == reader_id.as_str()));
    assert_eq!(by_principal.len(), 6, "{:?}", actions(&by_principal));
    let future = audit(&root, &admin, "since=2999-01-01T00:00:00Z").await;
    assert!(future.is_empty());
    let past = audit(&root, &admin, "until=2000-01-01T00:00:00Z").await;
    assert!(past.is_empty());
    let page = call(Method::GET, &format!("{root}/admin/audit?limit=2"), &admin, &[], vec![]).await.json();
    assert_eq!(page["records"].as_array().unwrap().len(), 2);
    assert_eq!(page["next"], page["records"][1]["seq"]);
    let bad = call(Method::GET, &format!("{root}/admin/audit?PatientName=Doe"), &admin, &[], vec![]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let over = call(Method::GET, &format!("{root}/admin/audit?limit=100000"), &admin, &[], vec![]).await;
    assert_eq!(over.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        call(Method::GET, &format!("{root}/admin/audit"), &reader, &[], vec![]).await.status,
        StatusCode::FORBIDDEN
    );

    // Acknowledged, then killed: every record is there and the chain holds.
    // Acknowledged since `all` was read: that query itself and the eight after it; besides
    // `all`, the command line's three key creations and the failed authentication.
    let acknowledged = all.len() + 9 + 3 + 1;
    server.kill();
    let verify = kura(&["audit", "verify", "--data", data.to_str().unwrap()]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    let export = kura(&["audit", "export", "--data", data.to_str().unwrap()]);
    assert!(export.status.success());
    let text = String::from_utf8(export.stdout).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // The CLI's three key creations, then everything acknowledged over HTTP.
    assert_eq!(lines.len(), acknowledged, "exported vs acknowledged");
    assert_eq!(lines[0]["action"], "key-create");
    assert_eq!(lines[0]["subject"], "cli");
    let failure = lines.iter().find(|r| r["action"] == "auth-failure").unwrap();
    assert_eq!(failure["outcome"], 401);
    assert_eq!(failure["address"], "127.0.0.1");
    assert!(failure["subject"].is_null(), "a failed authentication names nobody: {failure}");

    // Nothing secret or patient-identifying in the records or the log.
    let server_log = std::fs::read_to_string(&log).unwrap();
    for secret in [&uploader, &reader, &admin, &new_secret, &forged] {
        let secret_part = &secret["kura_".len() + 17..];
        assert!(!text.contains(secret_part), "a key's secret in the audit trail");
        assert!(!server_log.contains(secret_part), "a key's secret in the log");
    }
    for patient in [one.patient_name.as_str(), two.patient_name.as_str(), one.patient_id.as_str(), "Doe"] {
        assert!(!text.contains(patient), "{patient} in the audit trail");
        assert!(!server_log.contains(patient), "{patient} in the log");
    }

    // An edited record: `kura audit verify` says so and fails.
    {
        let store = kura::store::SledStore::open(&data.join("store"), Default::default()).unwrap();
        let tree = store.tree(kura::audit::TREE).unwrap();
        let (key, value) = tree.scan_prefix(b"r").nth(4).unwrap().unwrap();
        let mut record: Value = serde_json::from_slice(&value).unwrap();
        record["outcome"] = 200.into();
        record["subject"] = "key:0000000000000000".into();
        tree.insert(key, serde_json::to_vec(&record).unwrap()).unwrap();
        tree.flush().unwrap();
    }
    // The store's background tasks let go of the database shortly after it is dropped.
    let deadline = Instant::now() + Duration::from_secs(20);
    let verify = loop {
        let verify = kura(&["audit", "verify", "--data", data.to_str().unwrap()]);
        if !String::from_utf8_lossy(&verify.stderr).contains("cannot open the store") || Instant::now() > deadline {
            break verify;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!verify.status.success(), "an edited record must fail verification");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(said.contains("audit record 6"), "{said}");
}

/// A TLS syslog collector: reads RFC 5425 frames (`LEN SP MSG`) into `messages`.
async fn syslog_collector(dir: &std::path::Path) -> (u16, std::path::PathBuf, Arc<Mutex<Vec<String>>>) {
    let ca = TestCa::new(dir, "syslog");
    let acceptor = ca.acceptor("syslog");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let messages = Arc::new(Mutex::new(Vec::new()));
    let received = messages.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(tcp).await else { continue };
            let received = received.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = tls.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    // Octet counting: the length, a space, then exactly that many bytes.
                    while let Some(space) = buffer.iter().position(|b| *b == b' ') {
                        let length: usize = std::str::from_utf8(&buffer[..space]).unwrap().parse().unwrap();
                        if buffer.len() < space + 1 + length {
                            break;
                        }
                        let message = String::from_utf8(buffer[space + 1..space + 1 + length].to_vec()).unwrap();
                        received.lock().unwrap().push(message);
                        buffer.drain(..space + 1 + length);
                    }
                }
            });
        }
    });
    (port, ca.ca_pem, messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atna_messages_reach_a_tls_syslog_collector() {
    let dir = tempfile::tempdir().unwrap();
    let (port, ca, messages) = syslog_collector(dir.path()).await;
    let data = dir.path().join("data");
    let collector = format!("localhost:{port}");
    let server =
        ChildServer::start_with(&data, &["--audit-syslog", &collector, "--audit-syslog-ca", ca.to_str().unwrap()]);
    let spec = Spec::new(951, 1, 1);
    assert_eq!(stow(&server.base, None, &[instance(&spec)]).await.status, StatusCode::OK);
    let reply = get(&format!("{}/metadata", spec.study_url(&server.base)), "application/dicom+json").await;
    assert_eq!(reply.status, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(20);
    while messages.lock().unwrap().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = messages.lock().unwrap().clone();
    assert_eq!(received.len(), 2, "{received:?}");
    // RFC 5424 header: PRI 85 (authpriv.notice), version 1, app kura, MSGID IHE+RFC-3881.
    for message in &received {
        assert!(message.starts_with("<85>1 "), "{message}");
        assert!(message.contains(" kura ") && message.contains(" IHE+RFC-3881 - \u{feff}<?xml"), "{message}");
        assert!(!message.contains(&spec.patient_name) && !message.contains(&spec.patient_id));
    }
    let xml = |message: &str| message.split_once('\u{feff}').unwrap().1.to_string();
    let stored = xml(&received[0]);
    let document = roxmltree::Document::parse(&stored).unwrap();
    let event = document.descendants().find(|n| n.has_tag_name("EventID")).unwrap();
    assert_eq!(event.attribute("csd-code"), Some("110104"), "STOW: DICOM Instances Transferred");
    let identification = document.descendants().find(|n| n.has_tag_name("EventIdentification")).unwrap();
    assert_eq!(identification.attribute("EventActionCode"), Some("C"));
    assert_eq!(identification.attribute("EventOutcomeIndicator"), Some("0"));
    let study = spec.study_uid();
    assert!(
        document.descendants().any(|n| n.attribute("ParticipantObjectID") == Some(study.as_str())),
        "the study is a participant object"
    );
    let read = roxmltree::Document::parse(&xml(&received[1]))
        .unwrap()
        .descendants()
        .any(|n| n.has_tag_name("EventID") && n.attribute("csd-code") == Some("110103"));
    assert!(read, "metadata: DICOM Instances Accessed");
    server.terminate();
}
