//! Institutions, shares and share links over real HTTPS: every route × every caller → the
//! expected status; what is not visible answers exactly what an unknown UID answers; no UID,
//! count, header or patient attribute of an invisible study reaches any answer; STOW into
//! another institution's study is refused with 0124; the key and share APIs are confined to
//! the caller's institution; a link is a read-only DICOMweb root whose minted URLs stay inside
//! it; expiry and revocation take effect at once.

use std::path::Path;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;

use crate::support::pki::{TestCa, TlsOptions, https};
use crate::support::*;

/// How a caller reaches the archive: a bearer key, or a share link's root.
#[derive(Clone)]
struct Caller {
    name: &'static str,
    key: Option<String>,
    /// The DICOMweb root path: `/dicomweb` or `/share/{token}/dicomweb`.
    root: String,
    /// Its credentials fail: each request comes from another client address.
    spread: bool,
}

impl Caller {
    fn key(name: &'static str, key: &str) -> Caller {
        Caller { name, key: Some(key.to_string()), root: "/dicomweb".into(), spread: false }
    }

    fn link(name: &'static str, token: &str) -> Caller {
        Caller { name, key: None, root: format!("/share/{token}/dicomweb"), spread: false }
    }

    fn anonymous() -> Caller {
        Caller { name: "no credentials", key: None, root: "/dicomweb".into(), spread: false }
    }

    fn failing(self) -> Caller {
        Caller { spread: true, ..self }
    }

    fn is_link(&self) -> bool {
        self.root.starts_with("/share/")
    }
}

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
}

struct Tenancy {
    address: std::net::SocketAddr,
    ca_pem: std::path::PathBuf,
    next_address: std::sync::atomic::AtomicU32,
}

impl Tenancy {
    async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let authorization = key.map(|k| format!("Bearer {k}"));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(value) = &authorization {
            all.push(("authorization", value));
        }
        let reply = https(self.address, &TlsOptions::new(&self.ca_pem), method.clone(), path, &all, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        Reply { status: reply.status, headers: reply.headers, body: reply.body.to_vec() }
    }

    /// A GET as `caller`. Failed authentications are rate-limited per client address, so a
    /// caller whose credentials fail (`spread`) appears as a new client each time: the server
    /// trusts 127.0.0.1 as its proxy, and this sends a fresh X-Forwarded-For.
    async fn get(&self, caller: &Caller, path: &str, accept: &str) -> Reply {
        let forwarded = self.next_address.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let forwarded = format!("10.9.{}.{}", forwarded / 250, 1 + forwarded % 250);
        let mut headers = vec![("accept", accept)];
        if caller.spread {
            headers.push(("x-forwarded-for", &forwarded));
        }
        self.call(Method::GET, path, caller.key.as_deref(), &headers, Vec::new()).await
    }

    async fn stow(&self, key: &str, parts: &[Vec<u8>]) -> Reply {
        let content_type = stow_content_type();
        self.call(
            Method::POST,
            "/dicomweb/studies",
            Some(key),
            &[("content-type", &content_type), ("accept", "application/dicom+json")],
            multipart(parts),
        )
        .await
    }

    async fn admin(&self, method: Method, path: &str, key: &str, body: Value) -> Reply {
        let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
        self.call(method, path, Some(key), &[("content-type", "application/json")], body).await
    }

    /// Creates a share as `admin`; returns its JSON.
    async fn share(&self, admin: &str, request: Value) -> Value {
        let reply = self.admin(Method::POST, "/admin/shares", admin, request).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()
    }
}

/// The routes of one study's instance (relative to a DICOMweb root), with their Accept header:
/// each QIDO level, WADO study/series/instance, metadata at three levels, frames, bulk data,
/// rendered, thumbnail, ZIP. `{S}`, `{R}`, `{I}` stand for the study, series and SOP UIDs.
const ROUTES: &[(&str, &str, bool)] = &[
    ("/studies?StudyInstanceUID={S}", "application/dicom+json", true),
    ("/series?StudyInstanceUID={S}", "application/dicom+json", true),
    ("/instances?StudyInstanceUID={S}", "application/dicom+json", true),
    ("/studies/{S}/series", "application/dicom+json", true),
    ("/studies/{S}/instances", "application/dicom+json", true),
    ("/studies/{S}/series/{R}/instances", "application/dicom+json", true),
    ("/studies/{S}", DICOM_ANY_TS, false),
    ("/studies/{S}/series/{R}", DICOM_ANY_TS, false),
    ("/studies/{S}/series/{R}/instances/{I}", DICOM_ANY_TS, false),
    ("/studies/{S}/metadata", "application/dicom+json", false),
    ("/studies/{S}/series/{R}/metadata", "application/dicom+json", false),
    ("/studies/{S}/series/{R}/instances/{I}/metadata", "application/dicom+json", false),
    (
        "/studies/{S}/series/{R}/instances/{I}/frames/1",
        "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*",
        false,
    ),
    ("/studies/{S}/series/{R}/instances/{I}/bulkdata/7FE00010", "application/octet-stream", false),
    ("/studies/{S}/series/{R}/instances/{I}/rendered", "image/jpeg", false),
    ("/studies/{S}/thumbnail", "image/jpeg", false),
    ("/studies/{S}", "application/zip", false),
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

fn server(dir: &Path, ca: &TestCa) -> ChildServer {
    let (cert, key) = ca.server("server");
    ChildServer::start_logged(
        &dir.join("data"),
        &[
            "--require-auth",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            // Trusted for X-Forwarded-For: see `Tenancy::get`.
            "--behind-proxy",
            "127.0.0.1",
        ],
        Some(&dir.join("server.log")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_tenant_matrix_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ca = TestCa::new(dir.path(), "tenancy");
    let (_, a_up) = create_key(&data, "hosp-a", "uploader");
    let (a_read_id, a_read) = create_key(&data, "hosp-a", "reader");
    let (_, a_admin) = create_key(&data, "hosp-a", "administrator");
    let (_, b_up) = create_key(&data, "hosp-b", "uploader");
    let (b_read_id, b_read) = create_key(&data, "hosp-b", "reader");
    let (_, b_admin) = create_key(&data, "hosp-b", "administrator");
    let (_, c_read) = create_key(&data, "hosp-c", "reader");
    let (d_read_id, d_read) = create_key(&data, "hosp-d", "reader");
    let (_, d_other) = create_key(&data, "hosp-d", "reader,uploader");
    let (_, e_read) = create_key(&data, "hosp-e", "reader");
    let (_, f_read) = create_key(&data, "hosp-f", "reader");
    let (g_read_id, g_read) = create_key(&data, "hosp-a", "reader");
    let server = server(dir.path(), &ca);
    let t = Tenancy { address: server.address, ca_pem: ca.ca_pem.clone(), next_address: Default::default() };
    let origin = format!("https://localhost:{}", server.address.port());

    // hosp-a stores S1 (to be shared), S2 (never shared) and S3 (two series; one is shared by
    // link); hosp-b stores SB.
    let s1 = Spec::new(701, 1, 1);
    let s2 = Spec::new(702, 1, 1);
    let s3 = Spec::new(703, 1, 1);
    let s3_other = Spec::new(703, 2, 1);
    let sb = Spec::new(704, 1, 1);
    for (key, specs) in [(&a_up, vec![&s1, &s2, &s3, &s3_other]), (&b_up, vec![&sb])] {
        let parts: Vec<Vec<u8>> = specs.iter().map(|spec| instance(spec)).collect();
        let reply = t.stow(key, &parts).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }

    // STOW into another institution's study: refused for that instance with 0124 (0x0124 =
    // 292), the others of the request stored; nothing of S1 changes.
    let intruder = Spec::new(701, 9, 1);
    let own = Spec::new(705, 1, 1);
    let reply = t.stow(&b_up, &[instance(&intruder), instance(&own)]).await;
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
    let reply = t.stow(&b_up, &[hijack]).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());
    assert_eq!(failed_sops(&reply.json()), vec![(s1.sop_uid(), 0x0124)]);
    // A caller of hosp-d (grantee later) cannot add to S1 either.
    let reply = t.stow(&d_other, &[instance(&Spec::new(701, 8, 1))]).await;
    assert_eq!(failed_sops(&reply.json()).first().map(|f| f.1), Some(0x0124));

    // Shares by hosp-a's administrator.
    let study = |spec: &Spec| serde_json::json!({ "study": spec.study_uid() });
    let mut to_b = study(&s1);
    to_b["institution"] = "hosp-b".into();
    t.share(&a_admin, to_b).await;
    let mut to_d = study(&s1);
    to_d["user"] = format!("key:{d_read_id}").into();
    t.share(&a_admin, to_d).await;
    let mut to_e = study(&s1);
    to_e["institution"] = "hosp-e".into();
    to_e["expires_in_secs"] = 2.into();
    t.share(&a_admin, to_e).await;
    let mut to_f = study(&s1);
    to_f["institution"] = "hosp-f".into();
    let f_share = t.share(&a_admin, to_f).await;
    let mut as_link = study(&s1);
    as_link["link"] = true.into();
    let link = t.share(&a_admin, as_link.clone()).await;
    let token = link["token"].as_str().unwrap().to_string();
    assert_eq!(link["url"], format!("{origin}/share/{token}/dicomweb"));
    let revoked_link = t.share(&a_admin, as_link.clone()).await;
    let mut expiring = as_link.clone();
    expiring["expires_in_secs"] = 2.into();
    let expired_link = t.share(&a_admin, expiring).await;
    let series_link =
        t.share(&a_admin, serde_json::json!({"study": s3.study_uid(), "series": s3.series_uid(), "link": true})).await;

    // Revocations, with immediate effect.
    for id in [f_share["id"].as_str().unwrap(), revoked_link["id"].as_str().unwrap()] {
        let reply = t.admin(Method::DELETE, &format!("/admin/shares/{id}"), &a_admin, Value::Null).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    }
    let reply = t.admin(Method::DELETE, &format!("/admin/keys/{g_read_id}"), &a_admin, Value::Null).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(2_200)).await; // the 2-second shares expire

    let see = [
        Caller::key("same institution", &a_read),
        Caller::key("grantee institution", &b_read),
        Caller::key("grantee user", &d_read),
        Caller::link("link", &token),
    ];
    let not_see = [
        Caller::key("other institution", &c_read),
        Caller::key("other user of the grantee user's institution", &d_other),
        Caller::key("expired share", &e_read),
        Caller::key("revoked share", &f_read),
    ];
    let dead_links = [
        Caller::link("revoked link", revoked_link["token"].as_str().unwrap()).failing(),
        Caller::link("expired link", expired_link["token"].as_str().unwrap()).failing(),
        Caller::link("unknown link", &format!("kshare_{}", "A".repeat(43))).failing(),
    ];
    let unauthenticated = [Caller::key("revoked API key", &g_read).failing(), Caller::anonymous()];
    let unknown = Spec::new(799, 1, 1);

    for &(route, accept, is_qido) in ROUTES {
        let path = fill(route, &s1.study_uid(), &s1.series_uid(), &s1.sop_uid());
        let unknown_path = fill(route, &unknown.study_uid(), &unknown.series_uid(), &unknown.sop_uid());
        for caller in &see {
            let reply = t.get(caller, &format!("{}{path}", caller.root), accept).await;
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
            let reply = t.get(caller, &format!("{}{path}", caller.root), accept).await;
            let same_for_unknown = t.get(caller, &format!("{}{unknown_path}", caller.root), accept).await;
            let context = format!("{} GET {path}", caller.name);
            if is_qido {
                assert_eq!(reply.status, StatusCode::OK, "{context}");
                assert_eq!(reply.json(), serde_json::json!([]), "{context}");
                assert!(reply.headers.get("warning").is_none(), "{context}");
            } else {
                assert_eq!(reply.status, StatusCode::NOT_FOUND, "{context}: {}", reply.text());
            }
            assert_eq!(reply.status, same_for_unknown.status, "{context}");
            assert_eq!(reply.body, same_for_unknown.body, "{context}: the same answer as an unknown UID");
            assert_eq!(reply.headers.get("content-type"), same_for_unknown.headers.get("content-type"), "{context}");
            assert_reveals_nothing(&reply, &[&s1, &s2, &s3], &context);
        }
        for caller in &dead_links {
            let reply = t.get(caller, &format!("{}{path}", caller.root), accept).await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{} GET {path}", caller.name);
            assert_eq!(reply.json()["message"], "no such DICOMweb resource", "{}", caller.name);
            assert_reveals_nothing(&reply, &[&s1], caller.name);
        }
        for caller in &unauthenticated {
            let reply = t.get(caller, &format!("{}{path}", caller.root), accept).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{} GET {path}", caller.name);
            // RFC 6750 §3.1: presented credentials that fail are `invalid_token`; none, a bare
            // challenge.
            let challenge = match caller.key {
                Some(_) => "Bearer realm=\"kura\", error=\"invalid_token\"",
                None => "Bearer realm=\"kura\"",
            };
            assert_eq!(reply.headers.get("www-authenticate").unwrap(), challenge, "{}", caller.name);
            assert_reveals_nothing(&reply, &[&s1], caller.name);
        }
    }

    // WADO-URI (not under a link root).
    let uri = wado_uri(&s1.study_uid(), &s1.series_uid(), &s1.sop_uid());
    let unknown_uri = wado_uri(&unknown.study_uid(), &unknown.series_uid(), &unknown.sop_uid());
    for caller in see.iter().filter(|c| !c.is_link()) {
        assert_eq!(t.get(caller, &uri, "application/dicom").await.status, StatusCode::OK, "{}", caller.name);
    }
    for caller in &not_see {
        let reply = t.get(caller, &uri, "application/dicom").await;
        let expected = t.get(caller, &unknown_uri, "application/dicom").await;
        assert_eq!((reply.status, &reply.body), (StatusCode::NOT_FOUND, &expected.body), "{} WADO-URI", caller.name);
    }
    for caller in &unauthenticated {
        assert_eq!(t.get(caller, &uri, "application/dicom").await.status, StatusCode::UNAUTHORIZED);
    }

    // QIDO counts and paging are exact: hosp-b sees S1 (shared) and its own SB and S705.
    let studies = |caller: &Caller, query: &str| {
        let path = format!("{}/studies{query}", caller.root);
        let caller = caller.clone();
        let t = &t;
        async move { t.get(&caller, &path, "application/dicom+json").await }
    };
    let b = Caller::key("hosp-b", &b_read);
    let all = studies(&b, "").await;
    let uids: Vec<String> = all.json().as_array().unwrap().iter().filter_map(|r| value_of(r, "0020000D")).collect();
    assert_eq!(uids.len(), 3, "{uids:?}");
    for uid in [s1.study_uid(), sb.study_uid(), own.study_uid()] {
        assert!(uids.contains(&uid), "{uid} in {uids:?}");
    }
    assert_reveals_nothing(&all, &[&s2, &s3], "hosp-b /studies");
    let first = studies(&b, "?limit=2").await;
    assert_eq!(first.json().as_array().unwrap().len(), 2);
    assert!(first.headers.get("warning").is_some(), "more results remain");
    let last = studies(&b, "?limit=2&offset=2").await;
    assert_eq!(last.json().as_array().unwrap().len(), 1);
    assert!(last.headers.get("warning").is_none(), "nothing remains: {:?}", last.headers);
    assert_eq!(studies(&b, "?offset=3").await.json(), serde_json::json!([]));
    // By patient name, across institutions: hosp-c finds nothing of hosp-a's.
    let c = Caller::key("hosp-c", &c_read);
    let by_name = studies(&c, "?PatientName=Doe*").await;
    assert_eq!(by_name.json(), serde_json::json!([]));
    let d = Caller::key("hosp-d", &d_read);
    let d_rows = studies(&d, "").await.json();
    assert_eq!(d_rows.as_array().unwrap().len(), 1);
    assert_eq!(value_of(&d_rows[0], "0020000D"), Some(s1.study_uid()));

    // A series link: S3 appears with only its shared series; the other series is unknown.
    let series_token = series_link["token"].as_str().unwrap();
    let series_caller = Caller::link("series link", series_token);
    let root = series_caller.root.clone();
    let rows = studies(&series_caller, "").await.json();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(value_of(&rows[0], "0020000D"), Some(s3.study_uid()));
    let series_rows =
        t.get(&series_caller, &format!("{root}/studies/{}/series", s3.study_uid()), "application/dicom+json").await;
    let series_uids: Vec<String> =
        series_rows.json().as_array().unwrap().iter().filter_map(|r| value_of(r, "0020000E")).collect();
    assert_eq!(series_uids, vec![s3.series_uid()]);
    let metadata =
        t.get(&series_caller, &format!("{root}/studies/{}/metadata", s3.study_uid()), "application/dicom+json").await;
    assert_eq!(metadata.json().as_array().unwrap().len(), 1, "the study's metadata holds the shared series only");
    assert!(!metadata.text().contains(&s3_other.sop_uid()));
    assert_urls_inside(&metadata.text(), &format!("{origin}{root}"), "series link metadata");
    let whole = t.get(&series_caller, &format!("{root}/studies/{}", s3.study_uid()), DICOM_ANY_TS).await;
    assert_eq!(whole.status, StatusCode::OK);
    let content_type = whole.headers.get("content-type").unwrap().to_str().unwrap().to_string();
    assert_eq!(split_multipart(&content_type, &whole.body).len(), 1, "only the shared series' instance");
    let other = t.get(&series_caller, &format!("{root}{}", &s3_other.series_url("")), DICOM_ANY_TS).await;
    let unknown_series =
        t.get(&series_caller, &format!("{root}{}", &Spec::new(703, 77, 1).series_url("")), DICOM_ANY_TS).await;
    assert_eq!((other.status, &other.body), (StatusCode::NOT_FOUND, &unknown_series.body));

    // A link is read-only: STOW and DELETE under it are refused; capabilities are served.
    let link_caller = &see[3];
    let content_type = stow_content_type();
    let reply = t
        .call(
            Method::POST,
            &format!("{}/studies", link_caller.root),
            None,
            &[("content-type", &content_type)],
            multipart(&[instance(&Spec::new(701, 5, 1))]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply =
        t.call(Method::DELETE, &format!("{}{}", link_caller.root, s1.study_url("")), None, &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = t.call(Method::OPTIONS, &format!("{}/", link_caller.root), None, &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::OK);
    for caller in [&b, &c] {
        let reply = t.call(Method::OPTIONS, "/dicomweb/", caller.key.as_deref(), &[], Vec::new()).await;
        assert_eq!(reply.status, StatusCode::OK, "capabilities for {}", caller.name);
    }
    let reply = t.call(Method::OPTIONS, "/dicomweb/", None, &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    // The key API is confined to the administrator's institution.
    let keys = t.admin(Method::GET, "/admin/keys", &b_admin, Value::Null).await;
    assert_eq!(keys.status, StatusCode::OK);
    let keys_json = keys.json();
    let listed: Vec<&Value> = keys_json.as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 3, "hosp-b's three keys: {}", keys.text());
    assert!(listed.iter().all(|k| k["institution"] == "hosp-b"), "{}", keys.text());
    assert!(listed.iter().any(|k| k["id"] == b_read_id.as_str()));
    assert!(!keys.text().contains(&a_read_id));
    let reply = t.admin(Method::DELETE, &format!("/admin/keys/{a_read_id}"), &b_admin, Value::Null).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "another institution's key is unknown");
    let reply = t
        .admin(Method::POST, "/admin/keys", &b_admin, serde_json::json!({"institution": "hosp-a", "role": "reader"}))
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    for key in [&b_read, &c_read] {
        assert_eq!(t.admin(Method::GET, "/admin/keys", key, Value::Null).await.status, StatusCode::FORBIDDEN);
        assert_eq!(t.admin(Method::GET, "/admin/shares", key, Value::Null).await.status, StatusCode::FORBIDDEN);
    }
    for path in ["/admin/keys", "/admin/shares"] {
        assert_eq!(t.call(Method::GET, path, None, &[], Vec::new()).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(t.call(Method::GET, path, Some(&g_read), &[], Vec::new()).await.status, StatusCode::UNAUTHORIZED);
    }

    // The share API, likewise: hosp-b's administrator sees none of hosp-a's shares, cannot
    // revoke them, and cannot share hosp-a's study (404, as an unknown study).
    let b_shares = t.admin(Method::GET, "/admin/shares", &b_admin, Value::Null).await;
    assert_eq!(b_shares.json(), serde_json::json!([]));
    let a_shares = t.admin(Method::GET, "/admin/shares", &a_admin, Value::Null).await;
    assert_eq!(a_shares.json().as_array().unwrap().len(), 8);
    assert!(!a_shares.text().contains("kshare_"), "a list never carries a token");
    let link_id = link["id"].as_str().unwrap();
    let reply = t.admin(Method::DELETE, &format!("/admin/shares/{link_id}"), &b_admin, Value::Null).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let mut reshare = study(&s1);
    reshare["institution"] = "hosp-c".into();
    let reply = t.admin(Method::POST, "/admin/shares", &b_admin, reshare.clone()).await;
    let mut unknown_share = study(&unknown);
    unknown_share["institution"] = "hosp-c".into();
    let unknown_reply = t.admin(Method::POST, "/admin/shares", &b_admin, unknown_share).await;
    assert_eq!((reply.status, &reply.body), (StatusCode::NOT_FOUND, &unknown_reply.body));
    assert_eq!(t.get(&c, &format!("/dicomweb{}", s1.study_url("")), DICOM_ANY_TS).await.status, StatusCode::NOT_FOUND);

    // Delete: the grantee's administrator gets what an unknown study gets; the owner's deletes.
    let reply =
        t.call(Method::DELETE, &format!("/dicomweb{}", s1.instance_url("")), Some(&b_admin), &[], Vec::new()).await;
    let expected = t
        .call(Method::DELETE, &format!("/dicomweb{}", unknown.instance_url("")), Some(&b_admin), &[], Vec::new())
        .await;
    assert_eq!((reply.status, &reply.body), (StatusCode::NOT_FOUND, &expected.body));
    assert_eq!(t.get(&b, &format!("/dicomweb{}", s1.instance_url("")), DICOM_ANY_TS).await.status, StatusCode::OK);

    // Revoking the link takes effect at once.
    let reply = t.admin(Method::DELETE, &format!("/admin/shares/{link_id}"), &a_admin, Value::Null).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let gone = t.get(link_caller, &format!("{}/studies", link_caller.root), "application/dicom+json").await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);

    let reply =
        t.call(Method::DELETE, &format!("/dicomweb{}", s1.study_url("")), Some(&a_admin), &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    assert_eq!(studies(&b, "").await.json().as_array().unwrap().len(), 2);

    // No token or key secret in the log; link requests are logged by the share's id.
    server.terminate();
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    for secret in [token.as_str(), series_token, revoked_link["token"].as_str().unwrap()] {
        assert!(!log.contains(&secret["kshare_".len()..]), "a link token reached the log");
    }
    for key in [&a_read, &b_read, &d_read, &g_read] {
        assert!(!log.contains(&key["kura_".len() + 17..]), "a key secret reached the log");
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
}
