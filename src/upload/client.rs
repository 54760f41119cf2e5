//! The uploader's HTTP transport: one keep-alive HTTP/1.1 connection to the DICOMweb server
//! (TLS with rustls for https://: the Mozilla roots plus `--ca-cert`), opened again after it
//! breaks, the bearer token on every request, and a stall timeout: a request is abandoned when
//! for `timeout` seconds no body byte was taken, the socket's send queue did not drain and no
//! answer came.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use super::Secret;

/// Largest answer read (a Store Instances Response for a batch, a QIDO-RS page).
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// Request bodies are handed to hyper in pieces this large, so that progress can be counted.
const CHUNK: usize = 64 * 1024;
/// The socket's send buffer: large enough for ~100 Mbit/s at 150 ms, small enough that bytes
/// "sent" are close to bytes on the wire on a slow link.
const SEND_BUFFER: u32 = 1024 * 1024;

/// The DICOMweb root an upload goes to.
#[derive(Debug, Clone)]
pub struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path of the root, without a trailing `/` (empty for the server's root).
    pub base_path: String,
    /// `scheme://host:port/path` as normalised (the journal's key).
    pub root: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: http::Uri = url.trim().parse().map_err(|e| format!("--to {url:?}: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("--to {url:?}: give an http:// or https:// URL")),
        };
        let host = uri.host().ok_or_else(|| format!("--to {url:?}: no host"))?.to_string();
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err("--to: put credentials in --token or KURA_TOKEN, not in the URL".into());
        }
        if uri.query().is_some() {
            return Err(format!("--to {url:?}: the DICOMweb root has no query"));
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let base_path = uri.path().trim_end_matches('/').to_string();
        let root = format!("{}://{host}:{port}{base_path}", if https { "https" } else { "http" });
        Ok(Target { https, host, port, base_path, root })
    }
}

/// An answer, read whole (bounded).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(512)]).trim().to_string()
    }
}

/// Why a request got no answer; every one of them is worth a retry.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("no progress for {0} s")]
    Timeout(u64),
    #[error("the answer is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
}

type Body = BoxBody<Bytes, Infallible>;

struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    /// The socket, for its send-queue length (a stall is a queue that does not drain).
    fd: std::os::fd::RawFd,
}

pub struct Client {
    target: Target,
    tls: Option<tokio_rustls::TlsConnector>,
    token: Option<Secret>,
    timeout: Duration,
    connection: Option<Connection>,
    /// Request-body bytes handed to the socket, over the whole run.
    pub wire_bytes: Arc<AtomicU64>,
    pub connections_opened: u64,
}

impl Client {
    pub fn new(
        target: Target,
        ca_cert: Option<&std::path::PathBuf>,
        token: Option<Secret>,
        timeout: Duration,
    ) -> Result<Client, String> {
        let tls = if target.https {
            let mut config = crate::auth::jwt::client_tls(ca_cert)?;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
        } else {
            if ca_cert.is_some() {
                return Err("--ca-cert needs an https:// --to URL".into());
            }
            None
        };
        Ok(Client { target, tls, token, timeout, connection: None, wire_bytes: Arc::default(), connections_opened: 0 })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    async fn connect(&mut self) -> Result<(), TransportError> {
        let deadline = self.timeout;
        let address = format!("{}:{}", self.target.host.trim_matches(['[', ']']), self.target.port);
        let addresses: Vec<std::net::SocketAddr> = tokio::time::timeout(deadline, tokio::net::lookup_host(&address))
            .await
            .map_err(|_| TransportError::Connect(format!("resolving {address} timed out")))?
            .map_err(|e| TransportError::Connect(format!("{address}: {e}")))?
            .collect();
        let mut last_error = format!("{address}: no address");
        let mut stream = None;
        for socket_address in addresses {
            let socket = if socket_address.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .map_err(|e| TransportError::Connect(e.to_string()))?;
            let _ = socket.set_send_buffer_size(SEND_BUFFER);
            match tokio::time::timeout(deadline, socket.connect(socket_address)).await {
                Ok(Ok(connected)) => {
                    stream = Some(connected);
                    break;
                }
                Ok(Err(e)) => last_error = format!("{socket_address}: {e}"),
                Err(_) => last_error = format!("{socket_address}: timed out"),
            }
        }
        let tcp = stream.ok_or(TransportError::Connect(last_error))?;
        let _ = tcp.set_nodelay(true);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
        let sender = match &self.tls {
            Some(connector) => {
                let name =
                    rustls::pki_types::ServerName::try_from(self.target.host.trim_matches(['[', ']']).to_string())
                        .map_err(|e| TransportError::Tls(e.to_string()))?;
                let stream = tokio::time::timeout(deadline, connector.connect(name, tcp))
                    .await
                    .map_err(|_| TransportError::Tls("handshake timed out".into()))?
                    .map_err(|e| TransportError::Tls(e.to_string()))?;
                handshake(stream).await?
            }
            None => handshake(tcp).await?,
        };
        self.connections_opened += 1;
        self.connection = Some(Connection { sender, fd });
        Ok(())
    }

    /// Sends one request on the kept-alive connection (opened first when there is none, or it
    /// was closed) and reads the answer whole.
    pub async fn send(
        &mut self,
        method: Method,
        path_and_query: &str,
        headers: &[(header::HeaderName, String)],
        body: Bytes,
    ) -> Result<Reply, TransportError> {
        let result = self.try_send(method, path_and_query, headers, body).await;
        if result.is_err() {
            // Whatever state the connection is in, the next request starts on a new one.
            self.connection = None;
        }
        result
    }

    async fn try_send(
        &mut self,
        method: Method,
        path_and_query: &str,
        headers: &[(header::HeaderName, String)],
        body: Bytes,
    ) -> Result<Reply, TransportError> {
        if self.connection.as_ref().is_none_or(|c| c.sender.is_closed()) {
            self.connect().await?;
        }
        let connection = self.connection.as_mut().expect("connected above");
        if connection.sender.ready().await.is_err() {
            self.connect().await?;
        }
        let connection = self.connection.as_mut().expect("connected above");
        let fd = connection.fd;
        let progress = Arc::new(AtomicU64::new(0));
        let length = body.len();
        let (request_progress, wire) = (progress.clone(), self.wire_bytes.clone());
        let chunks: Vec<Bytes> =
            (0..length).step_by(CHUNK).map(|at| body.slice(at..(at + CHUNK).min(length))).collect();
        // hyper polls for the next piece when the socket took the previous one.
        let stream = futures_util::stream::iter(chunks.into_iter().map(move |chunk| {
            request_progress.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            wire.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Ok::<_, Infallible>(Frame::data(chunk))
        }));
        let authority =
            if (self.target.https && self.target.port == 443) || (!self.target.https && self.target.port == 80) {
                self.target.host.clone()
            } else {
                format!("{}:{}", self.target.host, self.target.port)
            };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.target.base_path))
            .header(header::HOST, authority)
            .header(header::USER_AGENT, concat!("kura-upload/", env!("CARGO_PKG_VERSION")))
            .header(header::CONTENT_LENGTH, length);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", token.expose()));
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(StreamBody::new(stream).boxed()).map_err(|e| TransportError::Lost(e.to_string()))?;
        let timeout = self.timeout;
        let response = watch(connection.sender.send_request(request), &progress, fd, timeout)
            .await?
            .map_err(|e| TransportError::Lost(e.to_string()))?;
        let (parts, mut incoming) = response.into_parts();
        let mut body = Vec::new();
        loop {
            let frame = watch(incoming.frame(), &progress, fd, timeout).await?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| TransportError::Lost(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if body.len() + data.len() > MAX_RESPONSE_BYTES {
                    return Err(TransportError::TooLarge);
                }
                body.extend_from_slice(&data);
                progress.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }
}

async fn handshake<S>(stream: S) -> Result<hyper::client::conn::http1::SendRequest<Body>, TransportError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| TransportError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Bytes in the socket's send queue, not yet acknowledged by the peer (Linux `SIOCOUTQ`).
fn send_queue(fd: std::os::fd::RawFd) -> Option<i64> {
    #[cfg(target_os = "linux")]
    {
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int; on a closed or reused descriptor it fails
        // or reports another socket's queue, which only delays or hastens a timeout.
        let result = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
        (result == 0).then_some(queued as i64)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        None
    }
}

/// Runs `future` while something moves: body bytes taken, the send queue draining, answer
/// bytes arriving; `timeout` with none of these is [`TransportError::Timeout`].
async fn watch<F: std::future::Future>(
    future: F,
    progress: &AtomicU64,
    fd: std::os::fd::RawFd,
    timeout: Duration,
) -> Result<F::Output, TransportError> {
    tokio::pin!(future);
    let mut last = (progress.load(Ordering::Relaxed), send_queue(fd));
    let mut since = Instant::now();
    loop {
        tokio::select! {
            output = &mut future => return Ok(output),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                let now = (progress.load(Ordering::Relaxed), send_queue(fd));
                if now != last {
                    last = now;
                    since = Instant::now();
                } else if since.elapsed() >= timeout {
                    return Err(TransportError::Timeout(timeout.as_secs()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let target = Target::parse("https://pacs.example/dicomweb/").unwrap();
        assert_eq!((target.https, target.port, target.base_path.as_str()), (true, 443, "/dicomweb"));
        assert_eq!(target.root, "https://pacs.example:443/dicomweb");
        let target = Target::parse("http://127.0.0.1:8042").unwrap();
        assert_eq!((target.port, target.base_path.as_str()), (8042, ""));
        assert!(Target::parse("ftp://x/").is_err());
        assert!(Target::parse("https://user:secret@x/dicomweb").is_err());
    }
}
