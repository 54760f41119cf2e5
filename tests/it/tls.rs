//! TLS: HTTPS over HTTP/1.1 and HTTP/2 by ALPN (curl and a rustls client), TLS 1.1 refused,
//! the certificate reloaded on SIGHUP, the handshake under the header timeout, client
//! certificates (mTLS) as principals. Certificates come from a test CA (rcgen).

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use http::{Method, StatusCode, Version};

use crate::support::pki::{TestCa, TlsOptions, https};
use crate::support::*;

/// curl against the server; returns (exit code, stdout).
fn curl(args: &[&str]) -> (i32, String) {
    let output = Command::new("curl").args(["-sS", "--max-time", "20"]).args(args).output().expect("curl is installed");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned())
}

fn tls_server(dir: &Path, ca: &TestCa, extra: &[&str]) -> ChildServer {
    let (cert, key) = ca.server("server");
    let mut args = vec!["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()];
    args.extend_from_slice(extra);
    ChildServer::start_logged(&dir.join("data"), &args, Some(&dir.join("server.log")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_curl_over_http1_and_h2_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "kura");
    let server = tls_server(dir.path(), &ca, &[]);
    let url = format!("https://localhost:{}/dicomweb", server.address.port());
    let ca_pem = ca.ca_pem.to_str().unwrap();

    // STOW over HTTPS, then the RetrieveURL names https.
    let spec = Spec::new(900, 1, 1);
    let body = dir.path().join("body.bin");
    std::fs::write(&body, multipart(&[instance(&spec)])).unwrap();
    let (code, out) = curl(&[
        "--cacert",
        ca_pem,
        "-X",
        "POST",
        "-H",
        &format!("content-type: {}", stow_content_type()),
        "-H",
        "accept: application/dicom+json",
        "--data-binary",
        &format!("@{}", body.display()),
        &format!("{url}/studies"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("https://localhost:{}/dicomweb/studies/", server.address.port())), "{out}");

    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (code, out) =
            curl(&["--cacert", ca_pem, flag, "-w", "\n%{http_version} %{http_code}", &format!("{url}/studies")]);
        assert_eq!(code, 0, "{flag}: {out}");
        assert!(out.ends_with(&format!("\n{version} 200")), "{flag}: {out}");
        assert!(out.contains(&spec.study_uid()), "{flag}: {out}");
    }
    // Plain HTTP to the TLS port gets no answer, and an unknown CA is refused by the client.
    let (code, _) = curl(&[&format!("http://127.0.0.1:{}/dicomweb/studies", server.address.port())]);
    assert_ne!(code, 0);
    let (code, _) = curl(&[&format!("{url}/studies")]);
    assert_eq!(code, 60, "curl without --cacert does not trust the test CA");

    // The rustls client: h2 by ALPN, HTTP/1.1 when only that is offered; TLS 1.2 and 1.3.
    let mut options = TlsOptions::new(&ca.ca_pem);
    let reply = https(server.address, &options, Method::GET, "/dicomweb/studies", &[], "").await.unwrap();
    assert_eq!((reply.status, reply.version), (StatusCode::OK, Version::HTTP_2));
    assert_eq!(reply.protocol, Some(rustls::ProtocolVersion::TLSv1_3));
    options.alpn = vec![b"http/1.1".to_vec()];
    options.versions = vec![&rustls::version::TLS12];
    let reply = https(server.address, &options, Method::GET, "/dicomweb/studies", &[], "").await.unwrap();
    assert_eq!((reply.status, reply.version), (StatusCode::OK, Version::HTTP_11));
    assert_eq!(reply.protocol, Some(rustls::ProtocolVersion::TLSv1_2));
}

#[test]
fn tls_1_1_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "kura");
    let server = tls_server(dir.path(), &ca, &[]);
    let url = format!("https://localhost:{}/dicomweb/studies", server.address.port());
    let ca_pem = ca.ca_pem.to_str().unwrap();
    // OpenSSL 3 needs security level 0 to offer TLS 1.1 at all; the same client reaches TLS 1.2.
    let (code, out) =
        curl(&["--cacert", ca_pem, "--tlsv1.1", "--tls-max", "1.1", "--ciphers", "DEFAULT@SECLEVEL=0", &url]);
    assert_eq!(code, 35, "TLS 1.1 handshake must fail: {out}");
    let (code, out) =
        curl(&["--cacert", ca_pem, "--tlsv1.2", "--tls-max", "1.2", "--ciphers", "DEFAULT@SECLEVEL=0", &url]);
    assert_eq!(code, 0, "TLS 1.2 with the same client works: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_keeps_it_when_the_new_one_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "kura");
    let server = tls_server(dir.path(), &ca, &[]);
    let options = TlsOptions::new(&ca.ca_pem);
    let served = || async { https(server.address, &options, Method::GET, "/dicomweb/studies", &[], "").await.unwrap() };
    let first = served().await.server_certificate;
    assert_eq!(first, pem_der(&std::fs::read_to_string(dir.path().join("server.pem")).unwrap()));

    // A new certificate in place of the old, then SIGHUP: new connections get it.
    ca.server("server");
    let second = pem_der(&std::fs::read_to_string(dir.path().join("server.pem")).unwrap());
    assert_ne!(first, second);
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while served().await.server_certificate != second {
        assert!(Instant::now() < deadline, "the new certificate was not served after SIGHUP");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A key that does not belong to the certificate: the old pair stays, the log says why.
    let (_, other_key) = ca.leaf("other", &["localhost"]);
    std::fs::write(dir.path().join("server.key"), other_key).unwrap();
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = dir.path().join("server.log");
    while !std::fs::read_to_string(&log).unwrap().contains("kept the current TLS certificate") {
        assert!(Instant::now() < deadline, "no log line about the refused reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = served().await;
    assert_eq!((reply.status, reply.server_certificate), (StatusCode::OK, second));
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

/// A connection that never sends its ClientHello (or sends half of one) is closed after the
/// header timeout, like one that never sends a request head.
#[test]
fn silent_tls_connections_are_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "kura");
    let server = tls_server(dir.path(), &ca, &["--header-timeout-secs", "1"]);
    for first_bytes in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let mut stream = std::net::TcpStream::connect(server.address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(first_bytes).unwrap();
        let started = Instant::now();
        let mut buffer = [0u8; 64];
        let read = stream.read(&mut buffer);
        let elapsed = started.elapsed();
        assert!(matches!(read, Ok(0)) || read.is_err(), "closed, not answered: {read:?}");
        assert!(
            elapsed >= Duration::from_millis(800) && elapsed < Duration::from_secs(5),
            "closed after the 1 s header timeout, not {elapsed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_map_to_principals() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "kura");
    let clients = TestCa::new(dir.path(), "clients");
    let stranger = TestCa::new(dir.path(), "stranger");
    let map = dir.path().join("clients.map");
    std::fs::write(
        &map,
        "# name institution roles\ngateway.st-mary.example st-mary uploader,reader\nCT Scanner 1 st-mary uploader\n",
    )
    .unwrap();
    let server = tls_server(
        dir.path(),
        &ca,
        &[
            "--require-auth",
            "--tls-client-ca",
            clients.ca_pem.to_str().unwrap(),
            "--tls-client-map",
            map.to_str().unwrap(),
        ],
    );
    let studies = "/dicomweb/studies";
    let spec = Spec::new(901, 1, 1);
    let stow_headers = [("content-type", stow_content_type()), ("accept", "application/dicom+json".to_string())];
    let stow_headers: Vec<(&str, &str)> = stow_headers.iter().map(|(n, v)| (*n, v.as_str())).collect();

    // A SAN that the map lists: uploader and reader, not administrator.
    let mut options = TlsOptions::new(&ca.ca_pem);
    options.client_certificate = Some(clients.leaf("gateway", &["gateway.st-mary.example"]));
    let stored = https(server.address, &options, Method::POST, studies, &stow_headers, multipart(&[instance(&spec)]))
        .await
        .unwrap();
    assert_eq!(stored.status, StatusCode::OK, "{}", stored.text());
    let found = https(server.address, &options, Method::GET, studies, &[], "").await.unwrap();
    assert!(found.status == StatusCode::OK && found.text().contains(&spec.study_uid()), "{}", found.text());
    let path = format!("{studies}/{}", spec.study_uid());
    let delete = https(server.address, &options, Method::DELETE, &path, &[], "").await.unwrap();
    assert_eq!(delete.status, StatusCode::FORBIDDEN);

    // A subject CN that the map lists (no SAN): uploader only.
    options.client_certificate = Some(clients.leaf("CT Scanner 1", &[]));
    assert_eq!(
        https(server.address, &options, Method::GET, studies, &[], "").await.unwrap().status,
        StatusCode::FORBIDDEN
    );

    // A verified certificate the map does not list, and no certificate: 401.
    options.client_certificate = Some(clients.leaf("unlisted", &["unlisted.example"]));
    let reply = https(server.address, &options, Method::GET, studies, &[], "").await.unwrap();
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    options.client_certificate = None;
    let reply = https(server.address, &options, Method::GET, studies, &[], "").await.unwrap();
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.headers.get("www-authenticate").unwrap(), "Bearer realm=\"kura\"");

    // A listed name from a CA the server does not trust: the handshake fails.
    options.client_certificate = Some(stranger.leaf("gateway", &["gateway.st-mary.example"]));
    let refused = https(server.address, &options, Method::GET, studies, &[], "").await;
    assert!(refused.is_err(), "a certificate from an unknown CA must be refused: {:?}", refused.map(|r| r.status));
}
