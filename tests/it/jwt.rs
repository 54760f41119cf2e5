//! OpenID Connect bearer tokens over real HTTP: JWTs minted here with test keys (RSA, EC P-256,
//! Ed25519), their JWKS served over HTTPS by a local endpoint with a test CA. Each signature
//! algorithm is accepted; wrong issuer or audience, expired, not yet valid, bad signature,
//! unknown `kid` (one refetch, then 401), `alg: none`, HS256 keyed with the public key and an
//! oversize token are refused with `error="invalid_token"`; the refetch is rate-limited; roles
//! from a dotted claim path decide the routes; failures count towards the address's limit.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::pki::TestCa;
use crate::support::*;

const ISSUER: &str = "https://idp.test/realms/hospital";
const AUDIENCE: &str = "kura-archive";

/// A signing key and its public JWK.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
    /// The public key as PEM (RSA only: for the HS256 confusion attempt).
    pub public_pem: Option<String>,
}

pub fn ec_key(kid: &str) -> SigningKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    assert_eq!(raw.len(), 65, "an uncompressed P-256 point");
    SigningKey {
        kid: kid.into(),
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                    "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65])}),
        public_pem: None,
    }
}

pub fn ed_key(kid: &str) -> SigningKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    SigningKey {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_der(&pair.serialize_der()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw())}),
        public_pem: None,
    }
}

/// An RSA key from `openssl genpkey` (ring cannot generate RSA keys).
pub fn rsa_key(kid: &str, dir: &Path) -> SigningKey {
    let path = dir.join(format!("{kid}.pem"));
    let openssl = |args: &[&str]| {
        let output =
            std::process::Command::new("openssl").args(args).output().expect("openssl (tests/run installs it)");
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let path_text = path.to_str().unwrap();
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", path_text]);
    let modulus = openssl(&["rsa", "-in", path_text, "-noout", "-modulus"]);
    let hex = modulus.trim().strip_prefix("Modulus=").unwrap();
    let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    let public_pem = openssl(&["rsa", "-in", path_text, "-pubout"]);
    let private = std::fs::read(&path).unwrap();
    SigningKey {
        kid: kid.into(),
        alg: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_pem(&private).unwrap(),
        jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": URL_SAFE_NO_PAD.encode(bytes), "e": "AQAB"}),
        public_pem: Some(public_pem),
    }
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Claims of a good token for `subject` with Keycloak's role layout.
pub fn claims(subject: &str, roles: &[&str]) -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now(), "exp": now() + 300,
        "hospital": {"name": "st-mary"}, "realm_access": {"roles": roles},
        "name": "Dr Reader", "email": "reader@st-mary.example"
    })
}

pub fn mint(key: &SigningKey, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

/// A JWKS over HTTPS (certificate from a test CA) that counts its fetches.
pub struct JwksServer {
    pub url: String,
    pub ca_pem: std::path::PathBuf,
    pub document: Arc<Mutex<Value>>,
    pub fetches: Arc<AtomicUsize>,
}

pub async fn serve_jwks(dir: &Path, keys: &[&SigningKey]) -> JwksServer {
    use rustls::pki_types::pem::PemObject;
    let ca = TestCa::new(dir, "idp");
    let (cert, key) = ca.server("idp");
    let chain: Vec<_> =
        rustls::pki_types::CertificateDer::pem_file_iter(&cert).unwrap().collect::<Result<_, _>>().unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let document = Arc::new(Mutex::new(json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (served, counter) = (document.clone(), fetches.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, served, counter) = (acceptor.clone(), served.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |_request| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body = served.lock().unwrap().to_string();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    JwksServer { url: format!("https://localhost:{}/certs", address.port()), ca_pem: ca.ca_pem, document, fetches }
}

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
    let payload = URL_SAFE_NO_PAD.encode(good.to_string());
    for header in [json!({"alg": "none", "typ": "JWT"}), json!({"alg": "none", "kid": "rsa-1"})] {
        refuse(format!("{}.{payload}.", URL_SAFE_NO_PAD.encode(header.to_string())), "alg none").await;
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
