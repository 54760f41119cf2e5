//! OpenID Connect test material: signing keys of each algorithm (RSA, EC P-256, Ed25519) with
//! their public JWKs, tokens minted from claims, and a JWKS served over HTTPS by a local endpoint
//! with a test CA (counting its fetches). Used by the JWT tests and the cross-tenant matrix.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::pki::TestCa;

pub const ISSUER: &str = "https://idp.test/realms/hospital";
pub const AUDIENCE: &str = "kura-archive";

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

/// A token with `header` (say `{"alg": "none"}`) and no signature.
pub fn unsigned(header: &Value, claims: &Value) -> String {
    format!("{}.{}.", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()))
}

/// A JWKS over HTTPS (certificate from a test CA) that counts its fetches.
pub struct JwksServer {
    pub url: String,
    pub ca_pem: std::path::PathBuf,
    pub document: Arc<Mutex<Value>>,
    pub fetches: Arc<AtomicUsize>,
}

pub async fn serve_jwks(dir: &Path, keys: &[&SigningKey]) -> JwksServer {
    let ca = TestCa::new(dir, "idp");
    let acceptor = ca.acceptor("idp");
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
