//! OpenID Connect bearer tokens over real HTTP: JWTs minted here with test keys (RSA, EC P-256,
//! Ed25519), their JWKS served over HTTPS by a local endpoint with a test CA. Each signature
//! algorithm is accepted; wrong issuer or audience, expired, not yet valid, bad signature,
//! unknown `kid` (one refetch, then 401), `alg: none`, HS256 keyed with the public key and an
//! oversize token are refused with `error="invalid_token"`; the refetch is rate-limited; roles
//! from a dotted claim path decide the routes; failures count towards the address's limit.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::oidc::*;
use crate::support::*;

/// A server that requires authentication and takes tokens from `jwks` with the Keycloak layout.
pub async fn oidc_server(jwks: &JwksServer, min_refresh: Duration) -> Server {
    let source = kura::auth::jwt::JwksSource::Url { url: jwks.url.clone(), extra_ca: Some(jwks.ca_pem.clone()) };
    Server::start_with(move |config| {
        let mut oidc = kura::auth::jwt::OidcConfig::new(ISSUER, AUDIENCE, source);
        oidc.min_refresh = min_refresh;
        oidc.claims.institution = Some("hospital.name".into());
        oidc.claims.roles = Some("realm_access.roles".into());
        oidc.claims.role_map = vec![
            ("pacs-reader".into(), kura::auth::Role::Reader),
            ("pacs-uploader".into(), kura::auth::Role::Uploader),
            ("pacs-admin".into(), kura::auth::Role::Administrator),
        ];
        config.security.oidc = Some(oidc);
        config.security.require_auth = true;
    })
    .await
}

/// A GET of `url` with `token`, from the loopback address 127.0.0.`n`.
pub async fn get_from(n: u8, url: &str, token: &str) -> Reply {
    let from: IpAddr = format!("127.0.0.{n}").parse().unwrap();
    let authorization = format!("Bearer {token}");
    send_from(from, Method::GET, url, &[("authorization", &authorization), ("accept", "application/dicom+json")], "")
        .await
}

fn assert_invalid_token(reply: &Reply, case: &str) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{case}: {}", reply.text());
    assert_eq!(reply.header("www-authenticate"), Some("Bearer realm=\"kura\", error=\"invalid_token\""), "{case}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_each_algorithm_and_every_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, ec, ed) = (rsa_key("rsa-1", dir.path()), ec_key("ec-1"), ed_key("ed-1"));
    let jwks = serve_jwks(dir.path(), &[&rsa, &ec, &ed]).await;
    let server = oidc_server(&jwks, Duration::from_secs(1)).await;
    let studies = format!("{}/studies", server.base);

    // Each algorithm: a reader token searches.
    for key in [&rsa, &ec, &ed] {
        let reply = get_from(2, &studies, &mint(key, &claims("reader-1", &["pacs-reader"]))).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}: {}", key.alg, reply.text());
    }
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1, "the keys are fetched once and cached");

    // Every refusal comes from an address of its own, so the failure limit does not interfere.
    let mut from = 10u8;
    let mut refuse = async |token: String, case: &str| {
        from += 1;
        let reply = get_from(from, &studies, &token).await;
        assert_invalid_token(&reply, case);
        assert!(!reply.text().contains(&token), "{case}: the answer never repeats the token");
    };
    let good = claims("reader-1", &["pacs-reader"]);
    let with = |field: &str, value: Value| {
        let mut claims = good.clone();
        claims[field] = value;
        claims
    };
    refuse(mint(&ec, &with("iss", json!("https://evil.example/realms/hospital"))), "wrong issuer").await;
    refuse(mint(&ec, &with("aud", json!("another-app"))), "wrong audience").await;
    refuse(mint(&ec, &with("exp", json!(now() - 3600))), "expired").await;
    refuse(mint(&ec, &with("nbf", json!(now() + 3600))), "not yet valid").await;
    let mut no_sub = good.clone();
    no_sub.as_object_mut().unwrap().remove("sub");
    refuse(mint(&ec, &no_sub), "no subject").await;
    // Signed by another key that claims the trusted kid.
    refuse(mint(&ec_key("ec-1"), &good), "bad signature").await;
    let token = mint(&rsa, &good);
    let (head, _) = token.rsplit_once('.').unwrap();
    refuse(format!("{head}.{}", URL_SAFE_NO_PAD.encode([7u8; 256])), "forged signature bytes").await;
    // alg none, with and without a kid.
    for header in [json!({"alg": "none", "typ": "JWT"}), json!({"alg": "none", "kid": "rsa-1"})] {
        refuse(unsigned(&header, &good), "alg none").await;
    }
    // HS256 keyed with the RSA public key (the classic confusion attack).
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let secret = EncodingKey::from_secret(rsa.public_pem.as_ref().unwrap().as_bytes());
    refuse(jsonwebtoken::encode(&header, &good, &secret).unwrap(), "HS256 with the public key").await;
    // Oversize: padded past 16 KiB.
    refuse(mint(&ec, &with("padding", json!("x".repeat(20_000)))), "oversize").await;
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1, "none of these needed the keys again");

    // Unknown kid: one refetch, then 401; another unknown kid at once: no further fetch.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotated = ec_key("ec-2");
    refuse(mint(&rotated, &good), "unknown kid").await;
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2, "an unknown kid triggers one refetch");
    refuse(mint(&ed_key("ed-9"), &good), "another unknown kid").await;
    // The identity provider rotates its keys: within the interval nothing is fetched …
    jwks.document.lock().unwrap()["keys"].as_array_mut().unwrap().push(rotated.jwk.clone());
    refuse(mint(&rotated, &good), "rotated key before the interval").await;
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2, "refetches are rate-limited");
    // … after it, the new key is fetched and works.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = get_from(3, &studies, &mint(&rotated, &good)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 3);

    // Failures count towards the address's limit like bad API keys: 429 after the burst.
    let bad = mint(&ec, &with("aud", json!("another-app")));
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get_from(99, &studies, &bad).await.status);
    }
    assert_eq!(statuses[0], StatusCode::UNAUTHORIZED);
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    // Another address is not affected.
    assert_eq!(get_from(98, &studies, &mint(&ec, &good)).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_from_the_claim_path_decide_the_routes() {
    let dir = tempfile::tempdir().unwrap();
    let key = ec_key("ec-1");
    let jwks = serve_jwks(dir.path(), &[&key]).await;
    let server = oidc_server(&jwks, Duration::from_secs(60)).await;
    let base = server.base.clone();
    let root = base.trim_end_matches("/dicomweb").to_string();
    let uploader = mint(&key, &claims("modality-1", &["pacs-uploader"]));
    let reader = mint(&key, &claims("reader-1", &["pacs-reader", "offline_access"]));
    let admin = mint(&key, &claims("admin-1", &["pacs-admin"]));
    let nobody = mint(&key, &claims("guest-1", &["offline_access", "reader-typo"]));

    let spec = Spec::new(931, 1, 1);
    let body = multipart(&[instance(&spec)]);
    let content_type = stow_content_type();
    let stow = async |token: &str| {
        let authorization = format!("Bearer {token}");
        send(
            Method::POST,
            &format!("{base}/studies"),
            &[
                ("content-type", content_type.as_str()),
                ("accept", "application/dicom+json"),
                ("authorization", &authorization),
            ],
            body.clone(),
        )
        .await
    };
    assert_eq!(stow(&reader).await.status, StatusCode::FORBIDDEN, "a reader cannot store");
    assert_eq!(stow(&nobody).await.status, StatusCode::FORBIDDEN, "unmapped role names give no role");
    let stored = stow(&uploader).await;
    assert_eq!(stored.status, StatusCode::OK, "{}", stored.text());

    let studies = format!("{base}/studies");
    let found = get_from(2, &studies, &reader).await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.text());
    assert_eq!(found.json().as_array().unwrap().len(), 1);
    assert_eq!(get_from(2, &studies, &uploader).await.status, StatusCode::FORBIDDEN, "an uploader cannot search");
    let metadata = format!("{}/metadata", spec.study_url(&base));
    assert_eq!(get_from(2, &metadata, &reader).await.status, StatusCode::OK);
    assert_eq!(get_from(2, &format!("{root}/admin/keys"), &reader).await.status, StatusCode::FORBIDDEN);
    assert_eq!(get_from(2, &format!("{root}/admin/keys"), &admin).await.status, StatusCode::OK);

    // The audit trail names the token's subject and institution (from `hospital.name`), never
    // the token or the patient.
    let audit = get_from(2, &format!("{root}/admin/audit?principal=oidc:reader-1"), &admin).await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.text());
    let records = audit.json()["records"].as_array().unwrap().clone();
    assert!(records.iter().any(|r| r["action"] == "qido" && r["institution"] == "st-mary"), "{records:?}");
    assert!(records.iter().any(|r| r["action"] == "wado-metadata" && r["studies"][0] == spec.study_uid().as_str()));
    for token in [&reader, &uploader, &admin] {
        assert!(!audit.text().contains(token.as_str()));
    }
}
