//! What Kura does not serve (WADO-URI, Retrieve Capabilities, UPS-RS), the HTTP aspects common
//! to every transaction (PS3.18 §8.4, §8.5), and security (§8.11).

use bytes::Bytes;
use clap::Parser;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use kura::config::{Cli, Command, Config, ServeArgs};
use kura::error::{Error, ErrorKind};

use crate::support::*;

fn origin(server: &Server) -> String {
    server.base.trim_end_matches("/dicomweb").to_string()
}

/// PS3.18 Chapter 9, §9.4: WADO-URI Retrieve DICOM Instance at `/wado` on the same listener:
/// application/dicom in Explicit VR Little Endian by default; 400 for a missing requestType or
/// UID, a parameterised contentType or rendering parameters; 404 for an unknown instance; 406
/// for unconvertible transfer syntaxes (rendered retrieval: uri_002).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_001_wado_uri_retrieves_dicom_instances() {
    let spec = Spec::new(501, 1, 1);
    let original = instance(&spec);
    let server = Server::with(std::slice::from_ref(&original)).await;
    let wado = format!("{}/wado", origin(&server));
    let uids = format!("studyUID={}&seriesUID={}&objectUID={}", spec.study_uid(), spec.series_uid(), spec.sop_uid());
    let reply = get(&format!("{wado}?requestType=WADO&{uids}&contentType=application%2Fdicom"), "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type(), "application/dicom; transfer-syntax=1.2.840.10008.1.2.1");
    assert_eq!(reply.body.as_ref(), as_stored(&original).as_slice());
    let by_accept = get(&format!("{wado}?requestType=WADO&{uids}"), "application/dicom").await;
    assert_eq!(by_accept.status, StatusCode::OK, "Accept: application/dicom without contentType");
    for (query, status) in [
        (format!("{uids}&contentType=application%2Fdicom"), StatusCode::BAD_REQUEST),
        (
            format!("requestType=WADO&studyUID={}&contentType=application%2Fdicom", spec.study_uid()),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("requestType=WADO&{uids}&contentType=application%2Fdicom%3Btransfer-syntax%3D*"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("requestType=WADO&{uids}&contentType=application%2Fdicom&windowCenter=40&windowWidth=400"),
            StatusCode::BAD_REQUEST,
        ),
        (format!("requestType=WADO&{uids}&contentType=text%2Fhtml"), StatusCode::NOT_ACCEPTABLE),
        (
            format!("requestType=WADO&{uids}&contentType=application%2Fdicom&transferSyntax=1.2.840.10008.1.2.4.50"),
            StatusCode::NOT_ACCEPTABLE,
        ),
        (
            format!(
                "requestType=WADO&studyUID={}&seriesUID={}&objectUID=1.2.3&contentType=application%2Fdicom",
                spec.study_uid(),
                spec.series_uid()
            ),
            StatusCode::NOT_FOUND,
        ),
    ] {
        assert_eq!(get(&format!("{wado}?{query}"), "").await.status, status, "{query}");
    }
}

/// PS3.18 §9.5: WADO-URI Retrieve Rendered Instance: image/jpeg without contentType under
/// `Accept: */*` (§9.3), image/png asked by contentType, `rows`/`columns` as maxima keeping the
/// aspect ratio, `region`, `windowCenter`/`windowWidth` (both or neither), `frameNumber`; 400
/// for malformed or conflicting parameters and for presentation states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_002_wado_uri_renders_images() {
    let spec = Spec::new(502, 1, 1).size(16, 24, 2);
    let server = Server::with(&[rle_instance(&spec)]).await;
    let wado = format!("{}/wado", origin(&server));
    let base = format!(
        "{wado}?requestType=WADO&studyUID={}&seriesUID={}&objectUID={}",
        spec.study_uid(),
        spec.series_uid(),
        spec.sop_uid()
    );
    let jpeg = get(&base, "*/*").await;
    assert_eq!(jpeg.status, StatusCode::OK);
    assert_eq!(jpeg.content_type(), "image/jpeg");
    let mut decoder = jpeg_decoder::Decoder::new(jpeg.body.as_ref());
    decoder.decode().unwrap();
    let info = decoder.info().unwrap();
    assert_eq!((info.width, info.height), (24, 16));
    let png = get(&format!("{base}&contentType=image%2Fpng&frameNumber=2"), "").await;
    assert_eq!(png.content_type(), "image/png");
    let (size, pixels) = png_pixels(&png.body);
    assert_eq!(size, (24, 16));
    assert_eq!(pixels, normalised(&rle_pixels(&spec)[16 * 24..]), "frame 2, min-max over the frame");
    let small = get(&format!("{base}&contentType=image%2Fpng&rows=8"), "").await;
    assert_eq!(png_pixels(&small.body).0, (12, 8), "rows is a maximum; columns follow the aspect ratio");
    let region = get(&format!("{base}&contentType=image%2Fpng&region=0,0,0.5,0.5"), "").await;
    assert_eq!(png_pixels(&region.body).0, (12, 8));
    for query in [
        "&windowCenter=40",
        "&frameNumber=3",
        "&frameNumber=0",
        "&region=0.5,0,0.2,1",
        "&imageQuality=101",
        "&presentationUID=1.2.3&presentationSeriesUID=1.2.4",
        "&contentType=image%2Fjpeg&transferSyntax=1.2.840.10008.1.2.1",
    ] {
        assert_eq!(get(&format!("{base}{query}"), "").await.status, StatusCode::BAD_REQUEST, "{query}");
    }
}

/// PS3.18 §8.9, Annex H: Retrieve Capabilities. `OPTIONS` on the base URI answers a WADL
/// document (or JSON, asked for) whose resources base is the service's base URL, describing
/// every resource with its methods named by transaction, query keys and media types; a resource
/// below the root answers its own subtree; ETag and 304; 406 for other media types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_001_retrieve_capabilities() {
    let server = Server::start().await;
    let root = format!("{}/", server.base);
    let wadl = send(Method::OPTIONS, &root, &[("accept", "application/vnd.sun.wadl+xml")], Bytes::new()).await;
    assert_eq!(wadl.status, StatusCode::OK);
    assert_eq!(wadl.content_type(), "application/vnd.sun.wadl+xml");
    let text = wadl.text();
    assert!(text.contains("<application xmlns=\"http://wadl.dev.java.net/2009/02\">"), "{text}");
    assert!(text.contains(&format!("<resources base=\"{}/\">", server.base)), "{text}");
    for needle in [
        "<resource path=\"studies\"><method name=\"GET\" id=\"SearchForStudies\">",
        "<method name=\"POST\" id=\"StoreInstances\">",
        "<param name=\"PatientName\" style=\"query\">",
        "<param name=\"fuzzymatching\" style=\"query\">",
        "<resource path=\"frames/{frameList}\"><method name=\"GET\" id=\"RetrieveFrames\">",
        "<option value=\"multipart/related; type=&quot;application/dicom&quot;; transfer-syntax=*\"/>",
        "<method name=\"GET\" id=\"RetrieveInstanceMetadata\">",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    assert_eq!(server.base.matches("//").count(), 1);
    let etag = wadl.header("etag").unwrap().to_string();
    let again =
        send(Method::OPTIONS, &root, &[("accept", "*/*"), ("if-none-match", etag.as_str())], Bytes::new()).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);

    let json = send(Method::OPTIONS, &server.base, &[("accept", "application/json")], Bytes::new()).await;
    assert_eq!(json.content_type(), "application/json");
    let document = json.json();
    let resources = &document["application"]["resources"];
    assert_eq!(resources["base"], format!("{}/", server.base));
    let studies = &resources["resource"][0];
    assert_eq!(studies["path"], "studies");
    let search = &studies["method"][0];
    assert_eq!(search["id"], "SearchForStudies");
    let keys: Vec<&str> =
        search["request"]["query"].as_array().unwrap().iter().filter_map(|q| q["name"].as_str()).collect();
    assert!(keys.contains(&"StudyInstanceUID") && keys.contains(&"ModalitiesInStudy") && keys.contains(&"limit"));
    assert!(!keys.contains(&"SOPInstanceUID"), "instance keys are not study search keys");

    let series = send(
        Method::OPTIONS,
        &format!("{}/studies/1.2.3/series", server.base),
        &[("accept", "application/vnd.sun.wadl+xml")],
        Bytes::new(),
    )
    .await;
    assert_eq!(series.status, StatusCode::OK);
    assert_eq!(series.header("allow"), Some("GET, HEAD, OPTIONS"));
    let text = series.text();
    assert!(text.contains("<resource path=\"studies\"><resource path=\"{StudyInstanceUID}\"><resource path=\"series\"><method name=\"GET\" id=\"SearchForStudySeries\">"), "{text}");
    assert!(!text.contains("SearchForStudies") && !text.contains("RetrieveStudy\""), "only the target's subtree");

    let unknown = send(Method::OPTIONS, &format!("{}/nothing", server.base), &[("accept", "*/*")], Bytes::new()).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let png = send(Method::OPTIONS, &root, &[("accept", "image/png")], Bytes::new()).await;
    assert_eq!(png.status, StatusCode::NOT_ACCEPTABLE);
}

/// PS3.18 Chapter 11, Table 11.1.1-1: the Worklist service's resources are served: Create
/// (201 with Location), Retrieve (DICOM JSON), Search (DICOM JSON array), and the Subscribe
/// response names the WebSocket URL of the notification connection (§11.10.3, §8.10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ups_001_worklist_resources_are_served() {
    let server = Server::start().await;
    let url = format!("{}/workitems", server.base);
    assert_eq!(get(&url, "application/dicom+json").await.json(), serde_json::json!([]));
    let workitem = serde_json::json!({
        "00741000": {"vr": "CS", "Value": ["SCHEDULED"]},
        "00741200": {"vr": "CS", "Value": ["MEDIUM"]},
        "00741204": {"vr": "LO", "Value": ["conformance"]},
        "00404005": {"vr": "DT", "Value": ["20260101120000"]},
        "00404041": {"vr": "CS", "Value": ["READY"]}
    });
    let created = send(
        Method::POST,
        &format!("{url}?2.25.1"),
        &[("content-type", "application/dicom+json")],
        workitem.to_string(),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    assert_eq!(created.header("location"), Some(format!("{url}/2.25.1").as_str()));
    let retrieved = get(&format!("{url}/2.25.1"), "application/dicom+json").await;
    assert_eq!(retrieved.content_type(), "application/dicom+json");
    assert_eq!(retrieved.json()[0]["00080016"]["Value"][0], "1.2.840.10008.5.1.4.34.6.1");
    let subscribed = send(Method::POST, &format!("{url}/2.25.1/subscribers/WATCHER"), &[], "").await;
    assert_eq!(subscribed.status, StatusCode::CREATED);
    let websocket = subscribed.header("content-location").unwrap_or_default();
    assert!(websocket.starts_with("ws://") && websocket.ends_with("/subscribers/WATCHER"), "{websocket}");
}

/// PS3.18 §8.5: 4xx and 5xx responses carry a payload that explains the error: Kura's is
/// `application/json` `{"status": <code>, "message": <text>}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gen_001_errors_carry_a_json_status_report() {
    let server = Server::start().await;
    let reply = get(&format!("{}/nothing/here", server.base), "application/dicom+json").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.content_type(), "application/json");
    assert_eq!(reply.json(), serde_json::json!({"status": 404, "message": "no such DICOMweb resource"}));
    let outside = get(&format!("{}/studies", origin(&server)), "application/dicom+json").await;
    assert_eq!(outside.status, StatusCode::NOT_FOUND);
    assert!(outside.json()["message"].as_str().unwrap().contains("/dicomweb/"), "says where the services are");
    let bad = get(&format!("{}/studies/1.2.x", server.base), "").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["status"], 400);
}

/// PS3.18 §8.5: 405 Method Not Allowed carries an Allow header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gen_002_method_not_allowed_lists_the_allowed_methods() {
    let server = Server::start().await;
    for (method, path, allowed) in
        [(Method::DELETE, "/studies", "GET, HEAD, POST"), (Method::PUT, "/series", "GET, HEAD")]
    {
        let reply = send(method.clone(), &format!("{}{path}", server.base), &[], Bytes::new()).await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(reply.header("allow"), Some(allowed), "{method} {path}");
        assert_eq!(reply.json()["status"], 405);
    }
}

fn serve_args(extra: &[&str]) -> ServeArgs {
    let mut argv = vec!["kura", "serve", "--data", "/nonexistent/kura-conformance"];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv).expect("command line").command {
        Command::Serve(args) => args,
        _ => unreachable!("serve"),
    }
}

/// PS3.18 §8.11 leaves security to the implementation. Kura listens on 127.0.0.1 by default;
/// a non-loopback address is refused unless the transport is TLS (`--tls-cert`/`--tls-key`) or
/// a TLS-terminating proxy is named (`--behind-proxy`), and there authentication is required
/// unless `--allow-remote-without-auth` says the proxy authenticates.
#[test]
fn sec_001_listens_on_loopback_unless_told_otherwise() {
    if std::env::var_os("KURA_LISTEN").is_none() {
        let config = Config::from_args(serve_args(&[])).expect("defaults");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert!(!config.security.require_auth, "loopback keeps the local principal");
    }
    for address in ["0.0.0.0:8080", "[::]:8080", "192.0.2.10:80"] {
        let refused = Config::from_args(serve_args(&["--listen", address])).expect_err(address);
        assert!(refused.contains("--tls-cert") && refused.contains("--behind-proxy"), "{refused}");
        let refused = Config::from_args(serve_args(&["--listen", address, "--allow-remote-without-auth"]));
        assert!(refused.is_err(), "{address}: no longer enough without TLS or a proxy");
        let tls = Config::from_args(serve_args(&["--listen", address, "--tls-cert", "c.pem", "--tls-key", "k.pem"]));
        assert!(tls.expect(address).security.require_auth, "{address}: TLS, and authentication required");
        let proxied = Config::from_args(serve_args(&["--listen", address, "--behind-proxy", "192.0.2.1"]));
        let proxied = proxied.expect(address);
        assert!(proxied.security.require_auth && proxied.security.trusted_proxy.is_some());
        let open = Config::from_args(serve_args(&[
            "--listen",
            address,
            "--behind-proxy",
            "192.0.2.1",
            "--allow-remote-without-auth",
        ]));
        assert!(!open.expect(address).security.require_auth);
    }
    assert!(Config::from_args(serve_args(&["--listen", "[::1]:8080"])).is_ok(), "IPv6 loopback");
    let required = Config::from_args(serve_args(&["--require-auth"])).expect("loopback, --require-auth");
    assert!(required.security.require_auth);
    let half = Config::from_args(serve_args(&["--tls-cert", "c.pem"]));
    assert!(half.is_err(), "--tls-cert without --tls-key");
}

/// Every response carries `X-Content-Type-Options: nosniff`; a single-part instance is sent
/// with `Content-Disposition: attachment`, so a browser never renders stored bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_002_responses_are_not_sniffed_or_rendered_by_browsers() {
    let spec = Spec::new(502, 1, 1);
    let server = Server::with(&[instance(&spec)]).await;
    let replies = [
        get(&format!("{}/studies", server.base), "").await,
        get(&spec.study_url(&server.base), DICOM_ANY_TS).await,
        get(&format!("{}/nothing", server.base), "").await,
        send(Method::DELETE, &format!("{}/studies", server.base), &[], Bytes::new()).await,
        stow(&server.base, None, &[instance(&spec)]).await,
    ];
    for reply in &replies {
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"), "status {}", reply.status);
    }
    let single = get(&spec.instance_url(&server.base), "application/dicom").await;
    assert_eq!(single.header("content-disposition"), Some("attachment"));
}

/// PS3.18 §8.5 asks for an explanation with every error; for server-side failures Kura's says
/// nothing internal (no paths, no library messages), which are logged instead.
#[tokio::test]
async fn sec_004_server_errors_reveal_nothing_internal() {
    let cause = std::io::Error::other("sled: cannot write /srv/kura/secret-dir/db");
    for (error, status) in [
        (Error::internal(cause), StatusCode::INTERNAL_SERVER_ERROR),
        (Error::new(ErrorKind::Unavailable, "queue /srv/kura/secret-dir full"), StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let response = kura::server::service::render_error(&error);
        assert_eq!(response.status(), status);
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = response.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("secret") && !text.contains("sled"), "{text}");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["status"], status.as_u16());
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}
