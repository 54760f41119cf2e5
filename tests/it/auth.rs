//! API keys over real HTTP: each role × route class → its status, revoked and unknown keys
//! 401 with WWW-Authenticate, the rate limit on failures, the key CLI, and no secret in the
//! server's log.

use std::process::Command;
use std::time::Duration;

use http::{Method, StatusCode};

use crate::support::*;

/// The secret part of a key: what follows `kura_{16 hex}_` (it may itself contain `_`).
fn secret_part(key: &str) -> &str {
    &key["kura_".len() + 17..]
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

/// A request with an optional key.
async fn call(method: Method, url: &str, key: Option<&str>, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
    let authorization = key.map(bearer);
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if let Some(value) = &authorization {
        all.push(("authorization", value));
    }
    send(method, url, &all, body).await
}

fn kura(args: &[&str]) -> std::process::Output {
    Command::new(kura_binary()).args(args).output().expect("run kura")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_by_route_class_revocation_and_no_secret_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_, uploader) = create_key(&data, "st-mary", "uploader");
    let (reader_id, reader) = create_key(&data, "st-mary", "reader");
    let (_, administrator) = create_key(&data, "st-mary", "administrator");
    let log = dir.path().join("server.log");
    let server = ChildServer::start_logged(&data, &["--require-auth"], Some(&log));
    let base = server.base.clone();
    let root = base.trim_end_matches("/dicomweb").to_string();

    // Store with the uploader key (the other roles and nobody may not).
    let spec = Spec::new(910, 1, 1);
    let body = multipart(&[instance(&spec)]);
    let content_type = stow_content_type();
    let stow_headers = [("content-type", content_type.as_str()), ("accept", "application/dicom+json")];
    for (key, expected) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some(&reader), StatusCode::FORBIDDEN),
        (Some(&administrator), StatusCode::FORBIDDEN),
        (Some(&uploader), StatusCode::OK),
    ] {
        let reply =
            call(Method::POST, &format!("{base}/studies"), key.map(|k| k.as_str()), &stow_headers, body.clone()).await;
        assert_eq!(reply.status, expected, "STOW with {key:?}: {}", reply.text());
    }

    // Every reader route class: reader 200, uploader and administrator 403, nobody 401.
    let instance_url = spec.instance_url(&base);
    let reads = [
        (format!("{base}/studies"), "application/dicom+json"),
        (format!("{base}/series"), "application/dicom+json"),
        (format!("{base}/studies/{}/instances", spec.study_uid()), "application/dicom+json"),
        (spec.study_url(&base), DICOM_ANY_TS),
        (format!("{}/metadata", spec.series_url(&base)), "application/dicom+json"),
        (format!("{instance_url}/frames/1"), "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*"),
        (format!("{instance_url}/bulkdata/7FE00010"), "application/octet-stream"),
        (format!("{instance_url}/rendered"), "image/jpeg"),
        (format!("{}/thumbnail", spec.study_url(&base)), "image/jpeg"),
        (
            format!(
                "{root}/wado?requestType=WADO&studyUID={}&seriesUID={}&objectUID={}&contentType=application%2Fdicom",
                spec.study_uid(),
                spec.series_uid(),
                spec.sop_uid()
            ),
            "application/dicom",
        ),
    ];
    for (url, accept) in &reads {
        for (key, expected) in [
            (None, StatusCode::UNAUTHORIZED),
            (Some(&uploader), StatusCode::FORBIDDEN),
            (Some(&administrator), StatusCode::FORBIDDEN),
            (Some(&reader), StatusCode::OK),
        ] {
            let reply = call(Method::GET, url, key.map(|k| k.as_str()), &[("accept", accept)], Vec::new()).await;
            assert_eq!(reply.status, expected, "GET {url} with {key:?}: {}", reply.text());
            if expected == StatusCode::UNAUTHORIZED {
                assert_eq!(reply.header("www-authenticate"), Some("Bearer realm=\"kura\""), "{url}");
            }
        }
    }

    // Capabilities: any authenticated caller. Keys: administrators only.
    for key in [&uploader, &reader, &administrator] {
        let reply =
            call(Method::OPTIONS, &format!("{base}/"), Some(key), &[("accept", "application/json")], Vec::new()).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let reply = call(Method::OPTIONS, &format!("{base}/"), None, &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    for (key, expected) in
        [(&uploader, StatusCode::FORBIDDEN), (&reader, StatusCode::FORBIDDEN), (&administrator, StatusCode::OK)]
    {
        let reply = call(Method::GET, &format!("{root}/admin/keys"), Some(key), &[], Vec::new()).await;
        assert_eq!(reply.status, expected, "{}", reply.text());
    }
    let listed = call(Method::GET, &format!("{root}/admin/keys"), Some(&administrator), &[], Vec::new()).await;
    assert_eq!(listed.json().as_array().unwrap().len(), 3);
    for secret in [&uploader, &reader, &administrator] {
        assert!(!listed.text().contains(secret_part(secret)), "the list never carries a secret");
    }

    // An administrator creates a key over HTTP; it works at once.
    let created = call(
        Method::POST,
        &format!("{root}/admin/keys"),
        Some(&administrator),
        &[("content-type", "application/json")],
        br#"{"institution": "st-mary", "roles": ["reader"], "name": "viewer"}"#.to_vec(),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let new_secret = created.json()["secret"].as_str().unwrap().to_string();
    let reply = call(Method::GET, &format!("{base}/studies"), Some(&new_secret), &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::OK);

    // Delete: administrators only.
    for (key, expected) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some(&uploader), StatusCode::FORBIDDEN),
        (Some(&reader), StatusCode::FORBIDDEN),
    ] {
        let reply = call(Method::DELETE, &spec.study_url(&base), key.map(|k| k.as_str()), &[], Vec::new()).await;
        assert_eq!(reply.status, expected);
    }
    let reply = call(Method::DELETE, &spec.study_url(&base), Some(&administrator), &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());

    // Revocation takes effect at once; unknown and malformed keys are 401 as well.
    let reply =
        call(Method::DELETE, &format!("{root}/admin/keys/{reader_id}"), Some(&administrator), &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let forged = format!("kura_{reader_id}_{}", "A".repeat(43));
    for key in [reader.as_str(), forged.as_str(), "not-a-kura-key"] {
        let reply = call(Method::GET, &format!("{base}/studies"), Some(key), &[], Vec::new()).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{key}");
        // RFC 6750 §3.1: presented credentials that failed say invalid_token.
        assert_eq!(reply.header("www-authenticate"), Some("Bearer realm=\"kura\", error=\"invalid_token\""));
    }

    // While the server runs, the CLI refuses (one process per store) and points at the API.
    let busy = kura(&["key", "list", "--data", data.to_str().unwrap()]);
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("/admin/keys"), "{}", String::from_utf8_lossy(&busy.stderr));

    server.terminate();
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("authentication failed"), "failures are logged (without the key)");
    for secret in [&uploader, &reader, &administrator, &new_secret, &forged] {
        assert_eq!(secret_part(secret).len(), 43);
        assert!(!log_text.contains(secret_part(secret)), "a secret reached the log");
    }

    // The CLI after the stop: the list shows the revocation and never a secret.
    let listed = kura(&["key", "list", "--data", data.to_str().unwrap()]);
    assert!(listed.status.success());
    let listed = String::from_utf8(listed.stdout).unwrap();
    let reader_line = listed.lines().find(|line| line.starts_with(&reader_id)).expect("the reader key is listed");
    assert!(reader_line.contains("st-mary") && reader_line.contains("reader"), "{reader_line}");
    assert!(!reader_line.ends_with(" -"), "revoked: {reader_line}");
    assert_eq!(listed.lines().count(), 1 + 4, "{listed}");
    for secret in [&uploader, &reader, &administrator, &new_secret] {
        assert!(!listed.contains(secret_part(secret)));
    }
    assert!(!kura(&["key", "revoke", "--data", data.to_str().unwrap(), "0000000000000000"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_rate_limited_per_address() {
    let server = Server::start_with(|config| config.security.require_auth = true).await;
    let key = server
        .archive
        .keys()
        .create("script", "st-mary", "reader".parse::<kura::auth::Role>().into_iter().collect())
        .await
        .unwrap();
    let studies = format!("{}/studies", server.base);
    let wrong = format!("kura_{}_{}", key.info.id, "B".repeat(43));
    for attempt in 0..10 {
        let reply = call(Method::GET, &studies, Some(&wrong), &[], Vec::new()).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    let limited = call(Method::GET, &studies, Some(&wrong), &[], Vec::new()).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.header("retry-after"), Some("6"));
    // While limited, credentials from this address are not even looked at.
    let reply = call(Method::GET, &studies, Some(&key.secret), &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    // A token comes back after the refill interval.
    tokio::time::sleep(Duration::from_millis(6_100)).await;
    let reply = call(Method::GET, &studies, Some(&key.secret), &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_without_require_auth_keeps_the_local_principal_but_checks_keys() {
    let server = Server::start().await;
    let studies = format!("{}/studies", server.base);
    assert_eq!(call(Method::GET, &studies, None, &[], Vec::new()).await.status, StatusCode::OK);
    let reply = call(Method::GET, &studies, Some("kura_0000000000000000_bad"), &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "a presented key is always checked");
    let key = server
        .archive
        .keys()
        .create("up", "st-mary", "uploader".parse::<kura::auth::Role>().into_iter().collect())
        .await
        .unwrap();
    let reply = call(Method::GET, &studies, Some(&key.secret), &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "a key's roles apply on loopback too");
}

#[test]
fn serve_refuses_required_authentication_that_nobody_could_pass() {
    let dir = tempfile::tempdir().unwrap();
    let output = kura(&["serve", "--listen", "127.0.0.1:0", "--data", dir.path().to_str().unwrap(), "--require-auth"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("kura key create"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
