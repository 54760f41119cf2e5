//! A test CA made with rcgen, its server and client certificates, and an HTTPS client (rustls
//! over hyper's connection API) that reports what the handshake negotiated.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A certificate authority whose certificate is written to `{dir}/{name}-ca.pem`.
pub struct TestCa {
    pub ca_pem: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        let ca_pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_pem, cert.pem()).expect("write CA");
        TestCa { ca_pem, issuer: Issuer::new(params, key), dir: dir.to_path_buf() }
    }

    /// A leaf certificate and key (PEM) with the given subject CN and DNS/IP subject names.
    pub fn leaf(&self, common_name: &str, names: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::CommonName, common_name);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }

    /// A server certificate for localhost and 127.0.0.1, written to `{stem}.pem` and
    /// `{stem}.key`; returns their paths.
    pub fn server(&self, stem: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = self.leaf(stem, &["localhost", "127.0.0.1"]);
        let paths = (self.dir.join(format!("{stem}.pem")), self.dir.join(format!("{stem}.key")));
        std::fs::write(&paths.0, cert).expect("write cert");
        std::fs::write(&paths.1, key).expect("write key");
        paths
    }

    /// A TLS acceptor for a test server (a JWKS endpoint, a syslog collector) with a server
    /// certificate of this CA named `stem`.
    pub fn acceptor(&self, stem: &str) -> tokio_rustls::TlsAcceptor {
        let (cert, key) = self.server(stem);
        let chain: Vec<_> = CertificateDer::pem_file_iter(&cert).unwrap().collect::<Result<_, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

/// How the test client connects.
pub struct TlsOptions<'a> {
    pub ca_pem: &'a Path,
    pub alpn: Vec<Vec<u8>>,
    /// (certificate PEM, key PEM) to present.
    pub client_certificate: Option<(String, String)>,
    pub versions: Vec<&'static rustls::SupportedProtocolVersion>,
}

impl<'a> TlsOptions<'a> {
    pub fn new(ca_pem: &'a Path) -> TlsOptions<'a> {
        TlsOptions {
            ca_pem,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            client_certificate: None,
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
        }
    }
}

pub struct TlsReply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The server's certificate (DER) as presented in the handshake.
    pub server_certificate: Vec<u8>,
    pub protocol: Option<rustls::ProtocolVersion>,
}

impl TlsReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn client_config(options: &TlsOptions<'_>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(options.ca_pem).expect("CA file") {
        roots.add(cert.expect("CA cert")).expect("CA cert");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&options.versions)
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match &options.client_certificate {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().expect("cert");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
            builder.with_client_auth_cert(chain, key).expect("client cert")
        }
    };
    config.alpn_protocols = options.alpn.clone();
    config
}

/// One request over a new TLS connection to `address` (as `localhost`).
pub async fn https(
    address: SocketAddr,
    options: &TlsOptions<'_>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<TlsReply, String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(options)));
    let tcp = tokio::net::TcpStream::connect(address).await.map_err(|e| e.to_string())?;
    let stream = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (_, session) = stream.get_ref();
    let server_certificate =
        session.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    let protocol = session.protocol_version();
    let h2 = session.alpn_protocol() == Some(b"h2");
    let mut request = Request::builder().method(method);
    request = if h2 {
        request.uri(format!("https://localhost:{}{path}", address.port()))
    } else {
        request.uri(path).header("host", format!("localhost:{}", address.port()))
    };
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.into())).map_err(|e| e.to_string())?;
    let io = TokioIo::new(stream);
    let response = if h2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(request).await.map_err(|e| e.to_string())?
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(request).await.map_err(|e| e.to_string())?
    };
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(TlsReply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
        server_certificate,
        protocol,
    })
}
