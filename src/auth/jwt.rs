//! OAuth 2.0 / OpenID Connect bearer tokens: JWTs (RFC 7519) signed by the hospital's identity
//! provider (Keycloak, Azure AD/Entra, Google, …), verified with the issuer's public keys
//! (a JWKS, RFC 7517) and mapped to a [`Principal`] by configured claim paths.
//!
//! Signatures are checked by the `jsonwebtoken` crate (over ring), never here. Only the
//! asymmetric algorithms configured (RS256, ES256, EdDSA by default) are accepted: `alg: none`
//! does not parse, and HS256 and friends are refused before any key is looked at, so a public
//! key can never be used as an HMAC secret. A key's type must match the token's algorithm and a
//! key that names its own `alg` must name the token's.
//!
//! The keys come from a JWKS URL (HTTPS only; the answer bounded in size and time) or a file.
//! They are cached; a token whose `kid` is not in the cache triggers one refetch, at most once
//! per `min_refresh`, so a flood of made-up `kid`s costs the identity provider one request per
//! interval. A token is told from an API key by its form (three dot-separated base64url parts;
//! API keys start with `kura_`).
//!
//! Nothing here logs a token or a claim value: a rejection carries a reason, nothing more.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::{Principal, Role, Roles};

/// Largest token accepted (Azure AD tokens with group claims reach a few KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Largest JWKS document read.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys taken from a JWKS document.
pub const MAX_JWKS_KEYS: usize = 64;
/// How long a JWKS fetch may take, connection and TLS handshake included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Most role values looked at in a token.
const MAX_ROLE_VALUES: usize = 256;
/// Longest subject or institution taken from a claim.
const MAX_NAME_CHARS: usize = 256;

/// Where the issuer's signing keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// `https://…` (the issuer's `jwks_uri`), with extra CA certificates (PEM) to trust besides
    /// the Mozilla roots, for an identity provider with an in-house CA.
    Url { url: String, extra_ca: Option<PathBuf> },
    /// A JWKS document on disk, re-read on an unknown `kid` (rate-limited like the URL).
    File(PathBuf),
}

/// How claims become a principal.
#[derive(Debug, Clone)]
pub struct ClaimMapping {
    /// Dotted path of the subject claim (default `sub`).
    pub subject: String,
    /// Dotted path of the institution claim; `None`: every token acts for `default_institution`.
    pub institution: Option<String>,
    /// The institution when the token has no institution claim.
    pub default_institution: Option<String>,
    /// Dotted path of the roles claim (an array of strings, or one space-separated string).
    pub roles: Option<String>,
    /// Claim value → role. Empty: values that are role names (`reader`, …) map to themselves.
    pub role_map: Vec<(String, Role)>,
    /// Roles every valid token gets besides those mapped (for providers without role claims,
    /// such as Google).
    pub default_roles: Roles,
}

/// The `--oidc-*` settings.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// Expected `iss`, exactly.
    pub issuer: String,
    /// Accepted `aud` values (one must match).
    pub audience: Vec<String>,
    /// Leeway on `exp` and `nbf`.
    pub clock_skew: Duration,
    pub jwks: JwksSource,
    /// The keys are fetched again on an unknown `kid` at most this often.
    pub min_refresh: Duration,
    /// Accepted signature algorithms; only asymmetric ones can be configured.
    pub algorithms: Vec<Algorithm>,
    pub claims: ClaimMapping,
}

impl OidcConfig {
    /// Defaults for everything but the issuer, the audience and the keys: a minute of skew,
    /// RS256/ES256/EdDSA, subject from `sub`, roles from `roles`, refetch at most every 60 s.
    pub fn new(issuer: &str, audience: &str, jwks: JwksSource) -> OidcConfig {
        OidcConfig {
            issuer: issuer.to_string(),
            audience: vec![audience.to_string()],
            clock_skew: Duration::from_secs(60),
            jwks,
            min_refresh: Duration::from_secs(60),
            algorithms: ASYMMETRIC.to_vec(),
            claims: ClaimMapping {
                subject: "sub".into(),
                institution: None,
                default_institution: None,
                roles: Some("roles".into()),
                role_map: Vec::new(),
                default_roles: Roles::default(),
            },
        }
    }
}

/// The algorithms that may be configured.
pub const ASYMMETRIC: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Parses an `--oidc-algorithms` entry; symmetric algorithms are refused.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let algorithm: Algorithm = name.trim().parse().map_err(|_| format!("unknown JWT algorithm {name:?}"))?;
    if !ASYMMETRIC.contains(&algorithm) {
        return Err(format!("JWT algorithm {name:?} is not supported: use RS256, ES256 or EdDSA"));
    }
    Ok(algorithm)
}

/// Why a token was refused (for the log and the audit trail; the client hears only
/// `invalid_token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtRejected {
    Oversize,
    Malformed,
    /// `alg` not configured (`none`, HS256, …), or not the key's.
    Algorithm,
    /// No key with this `kid`, after the allowed refetch.
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// The subject or institution claim is missing or unusable.
    Claims,
}

/// Whether a bearer token has the form of a JWS compact serialisation: three base64url parts.
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && !parts[0].is_empty()
        && !parts[1].is_empty()
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

struct CachedKey {
    kid: Option<String>,
    /// The `alg` the JWK names, if any.
    algorithm: Option<Algorithm>,
    key: DecodingKey,
}

pub struct JwtVerifier {
    config: OidcConfig,
    keys: RwLock<Arc<Vec<CachedKey>>>,
    /// When the keys were last fetched (held while fetching, so concurrent misses share one).
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    fetches: std::sync::atomic::AtomicU64,
}

impl JwtVerifier {
    /// A verifier; the keys are fetched on the first token (an identity provider that is down
    /// does not keep the archive from starting). Errors: unreadable `--oidc-jwks-ca`.
    pub fn new(config: OidcConfig) -> Result<JwtVerifier, String> {
        let tls = match &config.jwks {
            JwksSource::Url { extra_ca, .. } => Some(Arc::new(client_tls(extra_ca.as_ref())?)),
            JwksSource::File(_) => None,
        };
        Ok(JwtVerifier {
            config,
            keys: RwLock::new(Arc::new(Vec::new())),
            last_fetch: tokio::sync::Mutex::new(None),
            tls,
            fetches: Default::default(),
        })
    }

    /// How many times the keys were fetched (or the file read), failures included.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The principal a token stands for.
    pub async fn verify(&self, token: &str) -> Result<Principal, JwtRejected> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtRejected::Oversize);
        }
        if !looks_like_jwt(token) {
            return Err(JwtRejected::Malformed);
        }
        // `none` and unknown names fail to parse here.
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtRejected::Algorithm)?;
        if !self.config.algorithms.contains(&header.alg) {
            return Err(JwtRejected::Algorithm);
        }
        let key = match self.find_key(header.kid.as_deref(), header.alg) {
            Some(found) => found,
            None => {
                self.refresh().await;
                self.find_key(header.kid.as_deref(), header.alg).ok_or(JwtRejected::UnknownKey)?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.config.clock_skew.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&self.config.audience);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &validation)
            .map_err(|error| {
                use jsonwebtoken::errors::ErrorKind as Kind;
                match error.kind() {
                    Kind::InvalidSignature => JwtRejected::BadSignature,
                    Kind::ExpiredSignature => JwtRejected::Expired,
                    Kind::ImmatureSignature => JwtRejected::NotYetValid,
                    Kind::InvalidIssuer => JwtRejected::WrongIssuer,
                    Kind::InvalidAudience => JwtRejected::WrongAudience,
                    Kind::InvalidAlgorithm => JwtRejected::Algorithm,
                    Kind::MissingRequiredClaim(_) => JwtRejected::Claims,
                    _ => JwtRejected::Malformed,
                }
            })?
            .claims;
        self.principal(&Value::Object(claims))
    }

    /// A key for `kid` (or the only key, for a token without one) that can verify `algorithm`.
    fn find_key(&self, kid: Option<&str>, algorithm: Algorithm) -> Option<DecodingKey> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        let usable = |cached: &&CachedKey| cached.algorithm.is_none_or(|a| a == algorithm);
        match kid {
            Some(kid) => keys.iter().filter(usable).find(|c| c.kid.as_deref() == Some(kid)).map(|c| c.key.clone()),
            None if keys.len() == 1 => keys.iter().find(usable).map(|c| c.key.clone()),
            None => None,
        }
    }

    /// Fetches the keys again unless that happened less than `min_refresh` ago. A failure
    /// keeps the keys held so far.
    async fn refresh(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.config.min_refresh) {
            return;
        }
        *last = Some(Instant::now());
        self.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let document = match &self.config.jwks {
            JwksSource::Url { url, .. } => {
                let tls = self.tls.clone().expect("a URL source has a TLS configuration");
                match tokio::time::timeout(FETCH_TIMEOUT, fetch_https(url, tls)).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {} s", FETCH_TIMEOUT.as_secs())),
                }
            }
            JwksSource::File(path) => read_bounded(path),
        };
        match document.and_then(|bytes| parse_jwks(&bytes)) {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "loaded the OIDC signing keys");
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
            }
            Err(error) => tracing::warn!(%error, "fetching the OIDC signing keys (JWKS) failed"),
        }
    }

    fn principal(&self, claims: &Value) -> Result<Principal, JwtRejected> {
        let mapping = &self.config.claims;
        let subject = claim(claims, &mapping.subject).and_then(Value::as_str).filter(|s| usable_name(s));
        let subject = subject.ok_or(JwtRejected::Claims)?;
        let institution = match &mapping.institution {
            Some(path) => claim(claims, path).and_then(Value::as_str).filter(|s| usable_name(s)).map(str::to_string),
            None => None,
        };
        let institution = institution.or_else(|| mapping.default_institution.clone()).ok_or(JwtRejected::Claims)?;
        let values: Vec<&str> = match mapping.roles.as_deref().and_then(|path| claim(claims, path)) {
            Some(Value::Array(items)) => items.iter().take(MAX_ROLE_VALUES).filter_map(Value::as_str).collect(),
            Some(Value::String(text)) => text.split_whitespace().take(MAX_ROLE_VALUES).collect(),
            _ => Vec::new(),
        };
        let mapped = values.into_iter().filter_map(|value| {
            if mapping.role_map.is_empty() {
                value.parse::<Role>().ok()
            } else {
                mapping.role_map.iter().find(|(name, _)| name == value).map(|(_, role)| *role)
            }
        });
        let roles: Roles = mapped.chain(mapping.default_roles.iter()).collect();
        Ok(Principal {
            subject: format!("oidc:{subject}"),
            institution,
            roles,
            key_id: None,
            scope: super::Scope::Institution,
        })
    }
}

/// The value at a dotted path (`realm_access.roles`).
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(claims, |value, segment| value.get(segment))
}

fn usable_name(text: &str) -> bool {
    !text.trim().is_empty() && text.chars().count() <= MAX_NAME_CHARS && !text.chars().any(char::is_control)
}

/// The usable keys of a JWKS document: asymmetric keys that `jsonwebtoken` understands; others
/// (symmetric `oct` keys, encryption keys, unknown types) are skipped.
fn parse_jwks(bytes: &[u8]) -> Result<Vec<CachedKey>, String> {
    let document: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let keys = document.get("keys").and_then(Value::as_array).ok_or("no \"keys\" array")?;
    let mut usable = Vec::new();
    for entry in keys.iter().take(MAX_JWKS_KEYS) {
        let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else { continue };
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            continue;
        }
        if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature) {
            continue;
        }
        let algorithm = match jwk.common.key_algorithm {
            Some(named) => match named.to_string().parse::<Algorithm>() {
                Ok(algorithm) if ASYMMETRIC.contains(&algorithm) => Some(algorithm),
                _ => continue,
            },
            None => None,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else { continue };
        usable.push(CachedKey { kid: jwk.common.key_id.clone(), algorithm, key });
    }
    Ok(usable)
}

fn read_bounded(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_JWKS_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(format!("{} is larger than {MAX_JWKS_BYTES} bytes", path.display()));
    }
    Ok(bytes)
}

/// The TLS client for JWKS fetches: the Mozilla roots plus `extra_ca`.
pub fn client_tls(extra_ca: Option<&PathBuf>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect())
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        for certificate in certificates {
            roots.add(certificate).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
}

/// GET over HTTPS with a bounded answer (the caller bounds the time).
async fn fetch_https(url: &str, tls: Arc<rustls::ClientConfig>) -> Result<Vec<u8>, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad JWKS URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err("the JWKS URL must be https".into());
    }
    let host = uri.host().ok_or("the JWKS URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
        .map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or(host);
    let request = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json, application/jwk-set+json")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("the JWKS URL answered {}", response.status()));
    }
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_JWKS_BYTES {
                return Err(format!("the JWKS document is larger than {MAX_JWKS_BYTES} bytes"));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_forms() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."), "alg none has an empty signature");
        assert!(!looks_like_jwt(&format!("kura_0123456789abcdef_{}", "A".repeat(43))));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a+.b.c"));
    }

    #[test]
    fn dotted_claim_paths() {
        let claims = serde_json::json!({"realm_access": {"roles": ["kura-reader"]}, "sub": "u1"});
        assert_eq!(claim(&claims, "realm_access.roles"), Some(&serde_json::json!(["kura-reader"])));
        assert_eq!(claim(&claims, "sub"), Some(&serde_json::json!("u1")));
        assert_eq!(claim(&claims, "realm_access.nothing"), None);
    }

    #[test]
    fn only_asymmetric_algorithms_configure() {
        assert_eq!(parse_algorithm("ES256"), Ok(Algorithm::ES256));
        assert!(parse_algorithm("HS256").is_err());
        assert!(parse_algorithm("none").is_err());
    }
}
