//! Institutions, shares and share links over real HTTPS: every route × every caller → the
//! expected status. The callers: API keys and OpenID Connect tokens of the owning, a grantee and
//! another institution, a grantee user, an expired and a revoked share, a link (study and
//! series), revoked, expired and unknown links, a revoked API key, JWTs with a wrong issuer, a
//! wrong audience, expired, with a bad signature, an unknown `kid` or `alg: none`, and no
//! credentials. What is not visible answers exactly what an unknown UID answers; no UID, count,
//! header or patient attribute of an invisible study reaches any answer; STOW into another
//! institution's study is refused with 0124; the key, share and audit APIs are confined to the
//! caller's institution; a link is a read-only DICOMweb root without the worklist, whose minted
//! URLs stay inside it; expiry and revocation take effect at once. Every request that reached
//! a route (and every failed authentication) has its audit record, in order, with its status,
//! and `kura audit verify` passes.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::oidc::{self, JwksServer};
use crate::support::pki::{TestCa, TlsOptions, https};
use crate::support::*;

/// What a caller's credentials are worth, and so what the audit trail records of its requests.
#[derive(Clone, PartialEq)]
enum Kind {
    /// Authenticates as this subject (`key:<id>`, `oidc:<sub>`, `link:<share id>`).
    Valid(String),
    /// Presents credentials that fail: 401 with `error="invalid_token"`, an `auth-failure` record.
    Invalid,
    /// An unknown, expired or revoked link: the 404 of an unknown path, an `auth-failure` record.
    DeadLink,
    /// Presents nothing: 401, no record (not a failed authentication).
    Anonymous,
}

/// How a caller reaches the archive: a bearer token (API key or JWT), or a share link's root.
#[derive(Clone)]
struct Caller {
    name: String,
    bearer: Option<String>,
    /// The DICOMweb root path: `/dicomweb` or `/share/{token}/dicomweb`.
    root: String,
    kind: Kind,
}

impl Caller {
    /// An API key, as `create_key` returned it: (id, secret).
    fn key(name: &str, (id, secret): &(String, String)) -> Caller {
        Caller {
            name: name.into(),
            bearer: Some(secret.clone()),
            root: "/dicomweb".into(),
            kind: Kind::Valid(format!("key:{id}")),
        }
    }

    fn jwt(name: &str, token: String, subject: &str) -> Caller {
        Caller {
            name: name.into(),
            bearer: Some(token),
            root: "/dicomweb".into(),
            kind: Kind::Valid(format!("oidc:{subject}")),
        }
    }

    /// A live link, from the answer that created its share.
    fn link(name: &str, share: &Value) -> Caller {
        let token = share["token"].as_str().unwrap();
        Caller {
            name: name.into(),
            bearer: None,
            root: format!("/share/{token}/dicomweb"),
            kind: Kind::Valid(format!("link:{}", share["id"].as_str().unwrap())),
        }
    }

    fn dead_link(name: &str, token: &str) -> Caller {
        Caller { name: name.into(), bearer: None, root: format!("/share/{token}/dicomweb"), kind: Kind::DeadLink }
    }

    fn invalid(name: &str, bearer: String) -> Caller {
        Caller { name: name.into(), bearer: Some(bearer), root: "/dicomweb".into(), kind: Kind::Invalid }
    }

    fn anonymous() -> Caller {
        Caller { name: "no credentials".into(), bearer: None, root: "/dicomweb".into(), kind: Kind::Anonymous }
    }

    fn is_link(&self) -> bool {
        self.root.starts_with("/share/")
    }

    /// The answer every request of a caller that does not authenticate gets, whatever it asks.
    fn refusal(&self) -> Option<(StatusCode, Option<&'static str>)> {
        match self.kind {
            Kind::Valid(_) => None,
            Kind::Invalid => Some((StatusCode::UNAUTHORIZED, Some(INVALID_TOKEN))),
            Kind::Anonymous => Some((StatusCode::UNAUTHORIZED, Some("Bearer realm=\"kura\""))),
            Kind::DeadLink => Some((StatusCode::NOT_FOUND, None)),
        }
    }
}

const INVALID_TOKEN: &str = "Bearer realm=\"kura\", error=\"invalid_token\"";

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Every header name and value, and the body, as one lossy string to search in.
    fn everything(&self) -> String {
        let mut all = String::new();
        for (name, value) in &self.headers {
            all.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
        }
        all + &self.text()
    }

    /// The header names, but the date.
    fn header_names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.headers.keys().map(|n| n.as_str().to_string()).filter(|n| n != "date").collect();
        names.sort();
        names
    }
}

/// The audit record one request must have left (requests are sent one at a time, and each is
/// answered only once its record is durable, so the trail holds them in this order).
struct Expected {
    request: String,
    action: String,
    status: u16,
    subject: Option<String>,
}

struct Tenancy {
    address: std::net::SocketAddr,
    ca_pem: std::path::PathBuf,
    next_address: AtomicU32,
    expected: Mutex<Vec<Expected>>,
}

impl Tenancy {
    /// A request as `caller`; `action` names the route's audit action (`None`: no record, as
    /// for the capabilities document). Failed authentications are rate-limited per client
    /// address, so a caller whose credentials fail appears as a new client each time: the
    /// server trusts 127.0.0.1 as its proxy, and this sends a fresh X-Forwarded-For.
    async fn send(
        &self,
        caller: &Caller,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        action: Option<&str>,
    ) -> Reply {
        let n = self.next_address.fetch_add(1, Ordering::Relaxed);
        let forwarded = format!("10.9.{}.{}", n / 250, 1 + n % 250);
        let authorization = caller.bearer.as_ref().map(|b| format!("Bearer {b}"));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(value) = &authorization {
            all.push(("authorization", value));
        }
        if matches!(caller.kind, Kind::Invalid | Kind::DeadLink) {
            all.push(("x-forwarded-for", &forwarded));
        }
        let reply = https(self.address, &TlsOptions::new(&self.ca_pem), method.clone(), path, &all, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let reply = Reply { status: reply.status, headers: reply.headers, body: reply.body.to_vec() };
        let record = match &caller.kind {
            Kind::Anonymous => None,
            Kind::Invalid | Kind::DeadLink => Some(("auth-failure".to_string(), None)),
            Kind::Valid(subject) => action.map(|a| (a.to_string(), Some(subject.clone()))),
        };
        if let Some((action, subject)) = record {
            self.expected.lock().unwrap().push(Expected {
                request: format!("{}: {method} {path}", caller.name),
                action,
                status: reply.status.as_u16(),
                subject,
            });
        }
        reply
    }

    async fn get(&self, caller: &Caller, path: &str, accept: &str, action: &str) -> Reply {
        self.send(caller, Method::GET, path, &[("accept", accept)], Vec::new(), Some(action)).await
    }

    /// STOW-RS under the caller's root.
    async fn stow(&self, caller: &Caller, parts: &[Vec<u8>]) -> Reply {
        let content_type = stow_content_type();
        let headers = [("content-type", content_type.as_str()), ("accept", "application/dicom+json")];
        let path = format!("{}/studies", caller.root);
        self.send(caller, Method::POST, &path, &headers, multipart(parts), Some("stow")).await
    }

    async fn admin(&self, caller: &Caller, method: Method, path: &str, body: Value, action: &str) -> Reply {
        let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
        self.send(caller, method, path, &[("content-type", "application/json")], body, Some(action)).await
    }

    /// Creates a share as `admin`; returns its JSON.
    async fn share(&self, admin: &Caller, request: Value) -> Value {
        let reply = self.admin(admin, Method::POST, "/admin/shares", request, "share-create").await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()
    }

    /// Every record `admin` may read, page by page.
    async fn audit_trail(&self, admin: &Caller, query: &str) -> Vec<Value> {
        let mut records = Vec::new();
        let mut after = String::new();
        loop {
            let path = format!("/admin/audit?limit=1000{query}{after}");
            let reply = self.admin(admin, Method::GET, &path, Value::Null, "audit-query").await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            let page = reply.json();
            records.extend(page["records"].as_array().unwrap().iter().cloned());
            match page["next"].as_u64() {
                Some(next) => after = format!("&after={next}"),
                None => return records,
            }
        }
    }
}

/// The routes of one study's instance (relative to a DICOMweb root), with their Accept header,
/// whether they are QIDO-RS, and their audit action: each QIDO level, WADO study/series/instance,
/// metadata at three levels, frames, bulk data, rendered, thumbnail, ZIP. `{S}`, `{R}`, `{I}`
/// stand for the study, series and SOP UIDs.
const ROUTES: &[(&str, &str, bool, &str)] = &[
    ("/studies?StudyInstanceUID={S}", "application/dicom+json", true, "qido"),
    ("/series?StudyInstanceUID={S}", "application/dicom+json", true, "qido"),
    ("/instances?StudyInstanceUID={S}", "application/dicom+json", true, "qido"),
    ("/studies/{S}/series", "application/dicom+json", true, "qido"),
    ("/studies/{S}/instances", "application/dicom+json", true, "qido"),
    ("/studies/{S}/series/{R}/instances", "application/dicom+json", true, "qido"),
    ("/studies/{S}", DICOM_ANY_TS, false, "wado"),
    ("/studies/{S}/series/{R}", DICOM_ANY_TS, false, "wado"),
    ("/studies/{S}/series/{R}/instances/{I}", DICOM_ANY_TS, false, "wado"),
    ("/studies/{S}/metadata", "application/dicom+json", false, "wado-metadata"),
    ("/studies/{S}/series/{R}/metadata", "application/dicom+json", false, "wado-metadata"),
    ("/studies/{S}/series/{R}/instances/{I}/metadata", "application/dicom+json", false, "wado-metadata"),
    (
        "/studies/{S}/series/{R}/instances/{I}/frames/1",
        "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*",
        false,
        "wado-frames",
    ),
    ("/studies/{S}/series/{R}/instances/{I}/bulkdata/7FE00010", "application/octet-stream", false, "wado-bulkdata"),
    ("/studies/{S}/series/{R}/instances/{I}/rendered", "image/jpeg", false, "wado-rendered"),
    ("/studies/{S}/thumbnail", "image/jpeg", false, "wado-thumbnail"),
    ("/studies/{S}", "application/zip", false, "wado"),
];

fn fill(route: &str, study: &str, series: &str, sop: &str) -> String {
    route.replace("{S}", study).replace("{R}", series).replace("{I}", sop)
}

fn wado_uri(study: &str, series: &str, sop: &str) -> String {
    format!(
        "/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}&contentType=application%2Fdicom"
    )
}

fn kura(args: &[&str]) -> std::process::Output {
    std::process::Command::new(kura_binary()).args(args).output().expect("run kura")
}

/// Everything that identifies `spec`'s study: its UIDs and patient attributes.
fn secrets_of(spec: &Spec) -> Vec<String> {
    vec![spec.study_uid(), spec.series_uid(), spec.sop_uid(), spec.patient_name.clone(), spec.patient_id.clone()]
}

fn assert_reveals_nothing(reply: &Reply, specs: &[&Spec], context: &str) {
    let everything = reply.everything();
    for spec in specs {
        for secret in secrets_of(spec) {
            assert!(!everything.contains(&secret), "{context}: {secret} appears in {everything}");
        }
    }
}

/// A caller that does not authenticate gets its refusal (status and `WWW-Authenticate`), and
/// nothing of any study or of its own credentials.
fn assert_refused(caller: &Caller, reply: &Reply, specs: &[&Spec], context: &str) {
    let (status, challenge) = caller.refusal().expect("a refused caller");
    let context = format!("{} {context}", caller.name);
    assert_eq!(reply.status, status, "{context}: {}", reply.text());
    assert_eq!(reply.headers.get("www-authenticate").map(|v| v.to_str().unwrap()), challenge, "{context}");
    if caller.kind == Kind::DeadLink {
        assert_eq!(reply.json()["message"], "no such DICOMweb resource", "{context}");
    }
    assert_reveals_nothing(reply, specs, &context);
    if let Some(bearer) = &caller.bearer {
        assert!(!reply.text().contains(bearer.as_str()), "{context}: the answer repeats the credential");
    }
}

/// Every absolute URL in a body starts with `root` (the minted URLs stay inside a share).
fn assert_urls_inside(body: &str, root: &str, context: &str) {
    let mut found = 0;
    for (at, _) in body.match_indices("https://") {
        let url = &body[at..];
        assert!(url.starts_with(root), "{context}: a URL outside {root}: {}", &url[..url.len().min(120)]);
        found += 1;
    }
    assert!(found > 0, "{context}: no URL in {body}");
}

/// `kura serve` over TLS, authentication required, API keys and OpenID Connect tokens (Keycloak
/// layout: institution in `hospital.name`, roles in `realm_access.roles`) from `jwks`.
fn server(dir: &Path, ca: &TestCa, jwks: &JwksServer) -> ChildServer {
    let (cert, key) = ca.server("server");
    ChildServer::start_logged(
        &dir.join("data"),
        &[
            "--require-auth",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            // Trusted for X-Forwarded-For: see `Tenancy::send`.
            "--behind-proxy",
            "127.0.0.1",
            "--oidc-issuer",
            oidc::ISSUER,
            "--oidc-audience",
            oidc::AUDIENCE,
            "--oidc-jwks-url",
            &jwks.url,
            "--oidc-jwks-ca",
            jwks.ca_pem.to_str().unwrap(),
            "--oidc-institution-claim",
            "hospital.name",
            "--oidc-roles-claim",
            "realm_access.roles",
            "--oidc-role-map",
            "pacs-reader=reader,pacs-uploader=uploader,pacs-admin=administrator",
        ],
        Some(&dir.join("server.log")),
    )
}

/// Claims of a good token for `subject` of `institution`, valid for an hour.
fn claims_of(subject: &str, institution: &str, roles: &[&str]) -> Value {
    let mut claims = oidc::claims(subject, roles);
    claims["hospital"]["name"] = institution.into();
    claims["exp"] = (oidc::now() + 3600).into();
    claims
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_tenant_matrix_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ca = TestCa::new(dir.path(), "tenancy");
    let a_up = create_key(&data, "hosp-a", "uploader");
    let a_read = create_key(&data, "hosp-a", "reader");
    let a_admin = create_key(&data, "hosp-a", "administrator");
    let b_up = create_key(&data, "hosp-b", "uploader");
    let b_read = create_key(&data, "hosp-b", "reader");
    let b_admin = create_key(&data, "hosp-b", "administrator");
    let c_read = create_key(&data, "hosp-c", "reader");
    let d_read = create_key(&data, "hosp-d", "reader");
    let d_other = create_key(&data, "hosp-d", "reader,uploader");
    let e_read = create_key(&data, "hosp-e", "reader");
    let f_read = create_key(&data, "hosp-f", "reader");
    let g_read = create_key(&data, "hosp-a", "reader");
    let signing = oidc::ec_key("ec-1");
    let jwks = oidc::serve_jwks(dir.path(), &[&signing]).await;
    let server = server(dir.path(), &ca, &jwks);
    let t = Tenancy {
        address: server.address,
        ca_pem: ca.ca_pem.clone(),
        next_address: Default::default(),
        expected: Default::default(),
    };
    let origin = format!("https://localhost:{}", server.address.port());
    let (a_uploader, a_administrator) = (Caller::key("hosp-a uploader", &a_up), Caller::key("hosp-a admin", &a_admin));
    let (b_uploader, b_administrator) = (Caller::key("hosp-b uploader", &b_up), Caller::key("hosp-b admin", &b_admin));
    let d_uploader = Caller::key("other user of the grantee user's institution", &d_other);

    // hosp-a stores S1 (to be shared), S2 (never shared) and S3 (two series; one is shared by
    // link); hosp-b stores SB.
    let s1 = Spec::new(701, 1, 1);
    let s2 = Spec::new(702, 1, 1);
    let s3 = Spec::new(703, 1, 1);
    let s3_other = Spec::new(703, 2, 1);
    let sb = Spec::new(704, 1, 1);
    for (caller, specs) in [(&a_uploader, vec![&s1, &s2, &s3, &s3_other]), (&b_uploader, vec![&sb])] {
        let parts: Vec<Vec<u8>> = specs.iter().map(|spec| instance(spec)).collect();
        let reply = t.stow(caller, &parts).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }

    // STOW into another institution's study: refused for that instance with 0124 (0x0124 =
    // 292), the others of the request stored; nothing of S1 changes.
    let intruder = Spec::new(701, 9, 1);
    let own = Spec::new(705, 1, 1);
    let reply = t.stow(&b_uploader, &[instance(&intruder), instance(&own)]).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
    assert_eq!(failed_sops(&reply.json()), vec![(intruder.sop_uid(), 0x0124)]);
    assert_eq!(referenced_sops(&reply.json()), vec![own.sop_uid()]);
    assert_reveals_nothing(&reply, &[&s1], "refused STOW");
    // The same SOP Instance UID into the intruder's own study: also refused (it is stored in
    // hosp-a's study).
    let hijack = {
        let mut object = dataset(&Spec::new(706, 1, 1));
        put(&mut object, dicom_dictionary_std::tags::SOP_INSTANCE_UID, dicom_core::VR::UI, s1.sop_uid());
        part10(object)
    };
    let reply = t.stow(&b_uploader, &[hijack]).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());
    assert_eq!(failed_sops(&reply.json()), vec![(s1.sop_uid(), 0x0124)]);
    // A caller of hosp-d (grantee later) cannot add to S1 either.
    let reply = t.stow(&d_uploader, &[instance(&Spec::new(701, 8, 1))]).await;
    assert_eq!(failed_sops(&reply.json()).first().map(|f| f.1), Some(0x0124));

    // Shares by hosp-a's administrator.
    let study = |spec: &Spec| json!({ "study": spec.study_uid() });
    let mut to_b = study(&s1);
    to_b["institution"] = "hosp-b".into();
    t.share(&a_administrator, to_b).await;
    let mut to_d = study(&s1);
    to_d["user"] = format!("key:{}", d_read.0).into();
    t.share(&a_administrator, to_d).await;
    let mut to_e = study(&s1);
    to_e["institution"] = "hosp-e".into();
    to_e["expires_in_secs"] = 2.into();
    t.share(&a_administrator, to_e).await;
    let mut to_f = study(&s1);
    to_f["institution"] = "hosp-f".into();
    let f_share = t.share(&a_administrator, to_f).await;
    let mut as_link = study(&s1);
    as_link["link"] = true.into();
    let link = t.share(&a_administrator, as_link.clone()).await;
    let token = link["token"].as_str().unwrap().to_string();
    assert_eq!(link["url"], format!("{origin}/share/{token}/dicomweb"));
    let revoked_link = t.share(&a_administrator, as_link.clone()).await;
    let mut expiring = as_link.clone();
    expiring["expires_in_secs"] = 2.into();
    let expired_link = t.share(&a_administrator, expiring).await;
    let series_link =
        t.share(&a_administrator, json!({"study": s3.study_uid(), "series": s3.series_uid(), "link": true})).await;

    // Revocations, with immediate effect.
    for id in [f_share["id"].as_str().unwrap(), revoked_link["id"].as_str().unwrap()] {
        let path = format!("/admin/shares/{id}");
        let reply = t.admin(&a_administrator, Method::DELETE, &path, Value::Null, "share-revoke").await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    }
    let path = format!("/admin/keys/{}", g_read.0);
    let reply = t.admin(&a_administrator, Method::DELETE, &path, Value::Null, "key-revoke").await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(2_200)).await; // the 2-second shares expire

    // OpenID Connect tokens: good ones of three institutions, and one of each refusal.
    let jwt =
        |subject: &str, institution: &str| oidc::mint(&signing, &claims_of(subject, institution, &["pacs-reader"]));
    let good = claims_of("dr-a", "hosp-a", &["pacs-reader"]);
    let with = |field: &str, value: Value| {
        let mut claims = good.clone();
        claims[field] = value;
        claims
    };
    let bad_tokens = [
        ("JWT with a wrong issuer", oidc::mint(&signing, &with("iss", json!("https://evil.example/realms/hospital")))),
        ("JWT with a wrong audience", oidc::mint(&signing, &with("aud", json!("another-app")))),
        ("expired JWT", oidc::mint(&signing, &with("exp", json!(oidc::now() - 3600)))),
        // Signed by another key that claims the trusted kid.
        ("JWT with a bad signature", oidc::mint(&oidc::ec_key("ec-1"), &good)),
        ("JWT with an unknown kid", oidc::mint(&oidc::ec_key("ec-9"), &good)),
        ("JWT with alg none", oidc::unsigned(&json!({"alg": "none", "kid": "ec-1", "typ": "JWT"}), &good)),
    ];

    let see = [
        Caller::key("same institution", &a_read),
        Caller::key("grantee institution", &b_read),
        Caller::key("grantee user", &d_read),
        Caller::link("link", &link),
        Caller::jwt("JWT of the same institution", jwt("dr-a", "hosp-a"), "dr-a"),
        Caller::jwt("JWT of the grantee institution", jwt("dr-b", "hosp-b"), "dr-b"),
    ];
    let not_see = [
        Caller::key("other institution", &c_read),
        Caller::key("other user of the grantee user's institution", &d_other),
        Caller::key("expired share", &e_read),
        Caller::key("revoked share", &f_read),
        Caller::jwt("JWT of another institution", jwt("dr-c", "hosp-c"), "dr-c"),
    ];
    let mut refused = vec![
        Caller::dead_link("revoked link", revoked_link["token"].as_str().unwrap()),
        Caller::dead_link("expired link", expired_link["token"].as_str().unwrap()),
        Caller::dead_link("unknown link", &format!("kshare_{}", "A".repeat(43))),
        Caller::invalid("revoked API key", g_read.1.clone()),
        Caller::anonymous(),
    ];
    refused.extend(bad_tokens.iter().map(|(name, token)| Caller::invalid(name, token.clone())));
    let unknown = Spec::new(799, 1, 1);
    let everyone: Vec<&Caller> = see.iter().chain(&not_see).chain(&refused).collect();

    // Every GET route of the study.
    for &(route, accept, is_qido, action) in ROUTES {
        let path = fill(route, &s1.study_uid(), &s1.series_uid(), &s1.sop_uid());
        let unknown_path = fill(route, &unknown.study_uid(), &unknown.series_uid(), &unknown.sop_uid());
        for caller in &see {
            let reply = t.get(caller, &format!("{}{path}", caller.root), accept, action).await;
            assert_eq!(reply.status, StatusCode::OK, "{} GET {path}: {}", caller.name, reply.text());
            if is_qido {
                let rows = reply.json();
                assert_eq!(rows.as_array().unwrap().len(), 1, "{} {path}", caller.name);
                assert!(reply.text().contains(&s1.study_uid()));
            }
            assert_reveals_nothing(&reply, &[&s2, &sb, &s3], &format!("{} {path}", caller.name));
            if caller.is_link() && (is_qido || route.ends_with("metadata")) {
                assert_urls_inside(&reply.text(), &format!("{origin}{}", caller.root), &path);
            }
        }
        for caller in &not_see {
            let reply = t.get(caller, &format!("{}{path}", caller.root), accept, action).await;
            let same_for_unknown = t.get(caller, &format!("{}{unknown_path}", caller.root), accept, action).await;
            let context = format!("{} GET {path}", caller.name);
            if is_qido {
                assert_eq!(reply.status, StatusCode::OK, "{context}");
                assert_eq!(reply.json(), json!([]), "{context}");
                assert!(reply.headers.get("warning").is_none(), "{context}");
            } else {
                assert_eq!(reply.status, StatusCode::NOT_FOUND, "{context}: {}", reply.text());
            }
            assert_eq!(reply.status, same_for_unknown.status, "{context}");
            assert_eq!(reply.body, same_for_unknown.body, "{context}: the same answer as an unknown UID");
            assert_eq!(reply.header_names(), same_for_unknown.header_names(), "{context}: the same headers");
            assert_eq!(reply.headers.get("content-type"), same_for_unknown.headers.get("content-type"), "{context}");
            assert_reveals_nothing(&reply, &[&s1, &s2, &s3], &context);
        }
        for caller in &refused {
            let reply = t.get(caller, &format!("{}{path}", caller.root), accept, action).await;
            assert_refused(caller, &reply, &[&s1, &s2, &s3, &sb], &format!("GET {path}"));
        }
    }

    // Every other route, for every caller: capabilities, STOW, DELETE, the worklist, WADO-URI
    // and the key, share and audit APIs. Nothing is stored, deleted or revoked by any of them.
    let uri = wado_uri(&s1.study_uid(), &s1.series_uid(), &s1.sop_uid());
    let unknown_uri = wado_uri(&unknown.study_uid(), &unknown.series_uid(), &unknown.sop_uid());
    let link_id = link["id"].as_str().unwrap();
    for caller in &everyone {
        let all_studies: &[&Spec] = &[&s1, &s2, &s3, &sb];
        let root = &caller.root;
        let check = |reply: &Reply, valid: StatusCode, context: &str| match caller.refusal() {
            None => {
                assert_eq!(reply.status, valid, "{} {context}: {}", caller.name, reply.text());
                assert_reveals_nothing(reply, &[&s2, &s3, &sb], &format!("{} {context}", caller.name));
            }
            Some(_) => assert_refused(caller, reply, all_studies, context),
        };

        let reply = t.send(caller, Method::OPTIONS, &format!("{root}/"), &[], Vec::new(), None).await;
        check(&reply, StatusCode::OK, "capabilities");

        // STOW of a new instance of S1: no caller here may store into it. Readers and links
        // lack the role; hosp-d's uploader is refused the instance (0124).
        let reply = t.stow(caller, &[instance(&Spec::new(701, 60, 1))]).await;
        let may_upload = caller.bearer.as_deref() == Some(d_other.1.as_str());
        check(&reply, if may_upload { StatusCode::CONFLICT } else { StatusCode::FORBIDDEN }, "STOW");

        let path = format!("{root}{}", s1.instance_url(""));
        let reply = t.send(caller, Method::DELETE, &path, &[], Vec::new(), Some("delete")).await;
        check(&reply, StatusCode::FORBIDDEN, "DELETE");

        if caller.is_link() {
            // A link gives no access to the worklist (UPS-RS), whatever the operation.
            let json = [("content-type", "application/dicom+json"), ("accept", "application/dicom+json")];
            for (method, route) in
                [(Method::GET, "/workitems"), (Method::GET, "/workitems/1.2.3.4"), (Method::POST, "/workitems")]
            {
                let body = if method == Method::POST { b"[{}]".to_vec() } else { Vec::new() };
                let reply = t.send(caller, method.clone(), &format!("{root}{route}"), &json, body, Some("ups")).await;
                check(&reply, StatusCode::FORBIDDEN, &format!("{method} {route}"));
            }
            continue;
        }
        if caller.refusal().is_some() {
            let reply = t.get(caller, &format!("{root}/workitems"), "application/dicom+json", "ups").await;
            check(&reply, StatusCode::OK, "GET /workitems");
        }

        // WADO-URI (not offered under a link).
        let reply = t.get(caller, &uri, "application/dicom", "wado-uri").await;
        let sees = see.iter().any(|c| c.kind == caller.kind);
        if caller.refusal().is_none() && !sees {
            let expected = t.get(caller, &unknown_uri, "application/dicom", "wado-uri").await;
            let context = format!("{} WADO-URI", caller.name);
            assert_eq!((reply.status, &reply.body), (StatusCode::NOT_FOUND, &expected.body), "{context}");
            assert_eq!(reply.header_names(), expected.header_names(), "{context}");
            assert_reveals_nothing(&reply, all_studies, &context);
        } else {
            check(&reply, StatusCode::OK, "WADO-URI");
        }

        // The management APIs need an administrator.
        let requests = [
            (Method::GET, "/admin/keys".to_string(), Value::Null, "key-list"),
            (Method::POST, "/admin/keys".to_string(), json!({"institution": "hosp-a", "role": "reader"}), "key-create"),
            (Method::DELETE, format!("/admin/keys/{}", a_read.0), Value::Null, "key-revoke"),
            (Method::GET, "/admin/shares".to_string(), Value::Null, "share-list"),
            (Method::POST, "/admin/shares".to_string(), json!({"study": s1.study_uid(), "link": true}), "share-create"),
            (Method::DELETE, format!("/admin/shares/{link_id}"), Value::Null, "share-revoke"),
            (Method::GET, "/admin/audit".to_string(), Value::Null, "audit-query"),
        ];
        for (method, path, body, action) in requests {
            let reply = t.admin(caller, method.clone(), &path, body, action).await;
            check(&reply, StatusCode::FORBIDDEN, &format!("{method} {path}"));
        }
    }

    // QIDO counts and paging are exact: hosp-b sees S1 (shared) and its own SB and S705.
    let studies = |caller: &Caller, query: &str| {
        let path = format!("{}/studies{query}", caller.root);
        let caller = caller.clone();
        let t = &t;
        async move { t.get(&caller, &path, "application/dicom+json", "qido").await }
    };
    for b in [&see[1], &see[5]] {
        let all = studies(b, "").await;
        let uids: Vec<String> = all.json().as_array().unwrap().iter().filter_map(|r| value_of(r, "0020000D")).collect();
        assert_eq!(uids.len(), 3, "{}: {uids:?}", b.name);
        for uid in [s1.study_uid(), sb.study_uid(), own.study_uid()] {
            assert!(uids.contains(&uid), "{uid} in {uids:?}");
        }
        assert_reveals_nothing(&all, &[&s2, &s3], "hosp-b /studies");
        let first = studies(b, "?limit=2").await;
        assert_eq!(first.json().as_array().unwrap().len(), 2);
        assert!(first.headers.get("warning").is_some(), "more results remain");
        let last = studies(b, "?limit=2&offset=2").await;
        assert_eq!(last.json().as_array().unwrap().len(), 1);
        assert!(last.headers.get("warning").is_none(), "nothing remains: {:?}", last.headers);
        assert_eq!(studies(b, "?offset=3").await.json(), json!([]));
    }
    // By patient name, across institutions: hosp-c finds nothing of hosp-a's, by key or token.
    for c in [&not_see[0], &not_see[4]] {
        let by_name = studies(c, "?PatientName=Doe*").await;
        assert_eq!(by_name.json(), json!([]), "{}", c.name);
        assert!(by_name.headers.get("warning").is_none());
    }
    let d_rows = studies(&see[2], "").await.json();
    assert_eq!(d_rows.as_array().unwrap().len(), 1);
    assert_eq!(value_of(&d_rows[0], "0020000D"), Some(s1.study_uid()));

    // A series link: S3 appears with only its shared series; the other series is unknown.
    let series_caller = Caller::link("series link", &series_link);
    let root = series_caller.root.clone();
    let rows = studies(&series_caller, "").await.json();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(value_of(&rows[0], "0020000D"), Some(s3.study_uid()));
    let path = format!("{root}/studies/{}/series", s3.study_uid());
    let series_rows = t.get(&series_caller, &path, "application/dicom+json", "qido").await;
    let series_uids: Vec<String> =
        series_rows.json().as_array().unwrap().iter().filter_map(|r| value_of(r, "0020000E")).collect();
    assert_eq!(series_uids, vec![s3.series_uid()]);
    let path = format!("{root}/studies/{}/metadata", s3.study_uid());
    let metadata = t.get(&series_caller, &path, "application/dicom+json", "wado-metadata").await;
    assert_eq!(metadata.json().as_array().unwrap().len(), 1, "the study's metadata holds the shared series only");
    assert!(!metadata.text().contains(&s3_other.sop_uid()));
    assert_urls_inside(&metadata.text(), &format!("{origin}{root}"), "series link metadata");
    let whole = t.get(&series_caller, &format!("{root}/studies/{}", s3.study_uid()), DICOM_ANY_TS, "wado").await;
    assert_eq!(whole.status, StatusCode::OK);
    let content_type_of_whole = whole.headers.get("content-type").unwrap().to_str().unwrap().to_string();
    assert_eq!(split_multipart(&content_type_of_whole, &whole.body).len(), 1, "only the shared series' instance");
    let other = t.get(&series_caller, &format!("{root}{}", &s3_other.series_url("")), DICOM_ANY_TS, "wado").await;
    let path = format!("{root}{}", &Spec::new(703, 77, 1).series_url(""));
    let unknown_series = t.get(&series_caller, &path, DICOM_ANY_TS, "wado").await;
    assert_eq!((other.status, &other.body), (StatusCode::NOT_FOUND, &unknown_series.body));

    // The key API is confined to the administrator's institution.
    let keys = t.admin(&b_administrator, Method::GET, "/admin/keys", Value::Null, "key-list").await;
    assert_eq!(keys.status, StatusCode::OK);
    let keys_json = keys.json();
    let listed: Vec<&Value> = keys_json.as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 3, "hosp-b's three keys: {}", keys.text());
    assert!(listed.iter().all(|k| k["institution"] == "hosp-b"), "{}", keys.text());
    assert!(listed.iter().any(|k| k["id"] == b_read.0.as_str()));
    assert!(!keys.text().contains(&a_read.0));
    let path = format!("/admin/keys/{}", a_read.0);
    let reply = t.admin(&b_administrator, Method::DELETE, &path, Value::Null, "key-revoke").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "another institution's key is unknown");
    let request = json!({"institution": "hosp-a", "role": "reader"});
    let reply = t.admin(&b_administrator, Method::POST, "/admin/keys", request, "key-create").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);

    // The share API, likewise: hosp-b's administrator sees none of hosp-a's shares, cannot
    // revoke them, and cannot share hosp-a's study (404, as an unknown study).
    let b_shares = t.admin(&b_administrator, Method::GET, "/admin/shares", Value::Null, "share-list").await;
    assert_eq!(b_shares.json(), json!([]));
    let a_shares = t.admin(&a_administrator, Method::GET, "/admin/shares", Value::Null, "share-list").await;
    assert_eq!(a_shares.json().as_array().unwrap().len(), 8);
    assert!(!a_shares.text().contains("kshare_"), "a list never carries a token");
    let path = format!("/admin/shares/{link_id}");
    let reply = t.admin(&b_administrator, Method::DELETE, &path, Value::Null, "share-revoke").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let mut reshare = study(&s1);
    reshare["institution"] = "hosp-c".into();
    let reply = t.admin(&b_administrator, Method::POST, "/admin/shares", reshare, "share-create").await;
    let mut unknown_share = study(&unknown);
    unknown_share["institution"] = "hosp-c".into();
    let unknown_reply = t.admin(&b_administrator, Method::POST, "/admin/shares", unknown_share, "share-create").await;
    assert_eq!((reply.status, &reply.body), (StatusCode::NOT_FOUND, &unknown_reply.body));
    let path = format!("/dicomweb{}", s1.study_url(""));
    assert_eq!(t.get(&not_see[0], &path, DICOM_ANY_TS, "wado").await.status, StatusCode::NOT_FOUND);

    // The audit API, likewise: each administrator reads the records of its own institution's
    // callers (keys and tokens), and nothing of the other's.
    let a_trail = t.audit_trail(&a_administrator, "").await;
    let b_trail = t.audit_trail(&b_administrator, "").await;
    for (trail, institution) in [(&a_trail, "hosp-a"), (&b_trail, "hosp-b")] {
        assert!(!trail.is_empty());
        assert!(trail.iter().all(|r| r["institution"] == institution), "{institution}: {trail:?}");
    }
    let b_text = serde_json::to_string(&b_trail).unwrap();
    // (hosp-a's reader key id is left out: hosp-b's callers named it themselves, trying to
    // revoke it, and their records say so.)
    let a_callers = [&a_up, &a_admin, &g_read].map(|(id, _)| id.clone());
    for secret in
        [s2.study_uid(), s3.study_uid(), "hosp-a".to_string(), "oidc:dr-a".to_string()].iter().chain(&a_callers)
    {
        assert!(!b_text.contains(secret.as_str()), "hosp-b's administrator reads {secret}");
    }
    let has = |trail: &[Value], subject: &str, action: &str| {
        trail.iter().any(|r| r["subject"] == subject && r["action"] == action)
    };
    assert!(has(&a_trail, &format!("key:{}", a_read.0), "wado-metadata"));
    assert!(has(&a_trail, "oidc:dr-a", "qido"));
    assert!(has(&a_trail, &format!("key:{}", a_up.0), "stow"));
    assert!(has(&b_trail, &format!("key:{}", b_read.0), "wado-rendered"));
    assert!(has(&b_trail, "oidc:dr-b", "wado-thumbnail"));
    // Asking for hosp-a's study or caller by name gives hosp-b's administrator nothing more.
    assert!(t.audit_trail(&b_administrator, &format!("&study={}", s2.study_uid())).await.is_empty());
    assert!(t.audit_trail(&b_administrator, &format!("&principal=key:{}", a_read.0)).await.is_empty());
    let s1_for_b = t.audit_trail(&b_administrator, &format!("&study={}", s1.study_uid())).await;
    assert!(!s1_for_b.is_empty() && s1_for_b.iter().all(|r| r["institution"] == "hosp-b"));

    // Delete: the grantee's administrator gets what an unknown study gets; the owner's deletes.
    let path = format!("/dicomweb{}", s1.instance_url(""));
    let reply = t.send(&b_administrator, Method::DELETE, &path, &[], Vec::new(), Some("delete")).await;
    let unknown_path = format!("/dicomweb{}", unknown.instance_url(""));
    let expected = t.send(&b_administrator, Method::DELETE, &unknown_path, &[], Vec::new(), Some("delete")).await;
    assert_eq!((reply.status, &reply.body), (StatusCode::NOT_FOUND, &expected.body));
    assert_eq!(t.get(&see[1], &path, DICOM_ANY_TS, "wado").await.status, StatusCode::OK);
    // Nothing the matrix sent was stored into S1.
    let path = format!("/dicomweb/studies/{}/instances", s1.study_uid());
    assert_eq!(t.get(&see[0], &path, "application/dicom+json", "qido").await.json().as_array().unwrap().len(), 1);

    // Revoking the link takes effect at once.
    let path = format!("/admin/shares/{link_id}");
    let reply = t.admin(&a_administrator, Method::DELETE, &path, Value::Null, "share-revoke").await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let gone = Caller::dead_link("link after its revocation", &token);
    let reply = t.get(&gone, &format!("{}/studies", gone.root), "application/dicom+json", "qido").await;
    assert_refused(&gone, &reply, &[&s1], "GET /studies");

    let path = format!("/dicomweb{}", s1.study_url(""));
    let reply = t.send(&a_administrator, Method::DELETE, &path, &[], Vec::new(), Some("delete")).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    assert_eq!(studies(&see[1], "").await.json().as_array().unwrap().len(), 2);

    server.terminate();

    // The trail: after the command line's twelve key creations, one record per request that
    // reached a route or failed to authenticate, in order, with its action, status and caller.
    let data_arg = data.to_str().unwrap();
    let export = kura(&["audit", "export", "--data", data_arg]);
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let exported = String::from_utf8(export.stdout).unwrap();
    let records: Vec<Value> = exported.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (cli, http): (Vec<&Value>, Vec<&Value>) = records.iter().partition(|r| r["subject"] == "cli");
    assert_eq!(cli.len(), 12);
    let expected = t.expected.lock().unwrap();
    for (at, (record, expected)) in http.iter().zip(expected.iter()).enumerate() {
        let context = format!("record {at} for {}: {record}", expected.request);
        assert_eq!(record["action"], expected.action.as_str(), "{context}");
        assert_eq!(record["outcome"], expected.status, "{context}");
        assert_eq!(record["subject"], json!(expected.subject), "{context}");
    }
    assert_eq!(http.len(), expected.len(), "one record per routed request and failed authentication");
    // A share's creation names the share, its study and the grantee.
    let created: Vec<&&Value> = http.iter().filter(|r| r["action"] == "share-create" && r["outcome"] == 201).collect();
    assert_eq!(created.len(), 8);
    for record in &created {
        assert!(record["detail"].as_str().unwrap().starts_with("share "), "{record}");
    }
    assert!(created.iter().any(|r| r["studies"][0] == s3.study_uid().as_str()
        && r["detail"].as_str().unwrap().contains(&format!("{}/{} for link", s3.study_uid(), s3.series_uid()))));
    let failures = expected.iter().filter(|e| e.action == "auth-failure").count();
    assert!(failures > 250, "{failures} failed authentications recorded");
    let verify = kura(&["audit", "verify", "--data", data_arg]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    let said = String::from_utf8_lossy(&verify.stdout);
    assert!(said.contains(&format!("{} records", records.len())), "{said}");

    // No token, key secret or patient attribute in the trail; none in the log either, where
    // link requests are logged by the share's id.
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    let link_tokens = [token.as_str(), series_link["token"].as_str().unwrap(), revoked_link["token"].as_str().unwrap()];
    for secret in link_tokens {
        let secret = &secret["kshare_".len()..];
        assert!(!log.contains(secret) && !exported.contains(secret), "a link token reached the log or the trail");
    }
    for (_, key) in [&a_read, &b_read, &d_read, &g_read, &a_admin] {
        let secret = &key["kura_".len() + 17..];
        assert!(!log.contains(secret) && !exported.contains(secret), "a key secret reached the log or the trail");
    }
    for caller in see.iter().chain(&not_see).chain(&refused).filter(|c| c.bearer.is_some()) {
        let bearer = caller.bearer.as_deref().unwrap();
        let payload = bearer.split('.').nth(1).unwrap_or(bearer);
        assert!(!log.contains(payload) && !exported.contains(payload), "{}'s token reached the log", caller.name);
    }
    for spec in [&s1, &s2, &s3, &sb] {
        assert!(!exported.contains(&spec.patient_name) && !exported.contains(&spec.patient_id));
    }
    assert!(log.contains(&format!("link:{}", series_link["id"].as_str().unwrap())), "callers by share id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_cli_creates_lists_and_revokes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let spec = Spec::new(720, 1, 1);
    {
        let server = ChildServer::start(&data);
        let reply = stow(&server.base, None, &[instance(&spec)]).await;
        assert_eq!(reply.status, StatusCode::OK);
        server.terminate();
    }
    let data_arg = data.to_str().unwrap();
    let created = kura(&["share", "create", "--data", data_arg, "--study", &spec.study_uid(), "--link"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let link_path = String::from_utf8(created.stdout).unwrap().trim().to_string();
    assert!(link_path.starts_with("/share/kshare_") && link_path.ends_with("/dicomweb"), "{link_path}");
    let unknown = kura(&["share", "create", "--data", data_arg, "--study", "1.2.3.4", "--institution", "x"]);
    assert!(!unknown.status.success());
    let listed = kura(&["share", "list", "--data", data_arg]);
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert_eq!(listed.lines().count(), 2, "{listed}");
    let line = listed.lines().nth(1).unwrap();
    assert!(line.contains(&spec.study_uid()) && line.contains("link") && line.ends_with("active"), "{line}");
    assert!(!listed.contains("kshare_"));
    let id = line.split_whitespace().next().unwrap();

    // The link works on a running server (plain HTTP on loopback here), then not once revoked.
    let server = ChildServer::start(&data);
    let root = server.base.replace("/dicomweb", &link_path);
    let rows = qido(&root, "/studies").await;
    assert_eq!(rows.len(), 1);
    assert!(value_of(&rows[0], "00081190").unwrap().starts_with(&root), "RetrieveURL inside the link");
    server.terminate();
    assert!(kura(&["share", "revoke", "--data", data_arg, id]).status.success());
    let listed = String::from_utf8(kura(&["share", "list", "--data", data_arg]).stdout).unwrap();
    assert!(listed.lines().nth(1).unwrap().contains("revoked"), "{listed}");
    let server = ChildServer::start(&data);
    let root = server.base.replace("/dicomweb", &link_path);
    assert_eq!(get(&format!("{root}/studies"), "application/dicom+json").await.status, StatusCode::NOT_FOUND);
    server.terminate();

    // Share changes made with the CLI are on the trail like those over HTTP, never the token.
    let export = kura(&["audit", "export", "--data", data_arg]);
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let export = String::from_utf8(export.stdout).unwrap();
    assert!(!export.contains("kshare_"), "a link token in the trail");
    let records: Vec<serde_json::Value> = export.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (action, detail) in [
        ("share-create", format!("share {id} of {} for link", spec.study_uid())),
        ("share-revoke", format!("share {id}")),
    ] {
        let record =
            records.iter().find(|r| r["action"] == action).unwrap_or_else(|| panic!("{action} missing: {export}"));
        assert_eq!(record["subject"], "cli", "{record}");
        assert_eq!(record["detail"], detail.as_str(), "{record}");
        assert_eq!(record["studies"][0], spec.study_uid().as_str(), "{record}");
        assert!(record["institution"].is_null(), "the command line acts for no institution: {record}");
    }
    assert!(kura(&["audit", "verify", "--data", data_arg]).status.success());
}
