//! A copy of the trail for the hospital's audit repository: every record as a DICOM audit
//! message (`atna`) in an RFC 5424 syslog message, sent over TLS with RFC 5425 framing
//! (`MSG-LEN SP SYSLOG-MSG`), as IHE ATNA's ITI-20 asks.
//!
//! Best effort by design: the durable, hash-chained trail in the store is the record of truth,
//! and a collector that is down must not stop the archive. Messages wait in a bounded queue
//! ([`QUEUE`]); when it is full new ones are dropped and counted (the log says how many), and
//! the sender reconnects with a growing pause. A collector can tell a gap by the sequence
//! number each message carries.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::AuditRecord;

/// Messages waiting for the collector at most.
pub const QUEUE: usize = 4096;
/// Facility 10 (security/authorization), severity 5 (notice): PRI 85 (RFC 5424 §6.2.1).
const PRI: u32 = 10 * 8 + 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the messages go.
#[derive(Debug, Clone)]
pub struct SyslogTarget {
    /// `host:port`.
    pub address: String,
    /// CA certificates (PEM) trusted besides the Mozilla roots.
    pub extra_ca: Option<PathBuf>,
}

/// The handle the trail sends copies through.
pub struct Forwarder {
    queue: mpsc::Sender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
    hostname: String,
}

/// The host name for the syslog header and AuditSourceID.
fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let ok = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0;
    let name = if ok {
        let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
        String::from_utf8_lossy(&buffer[..end]).into_owned()
    } else {
        String::new()
    };
    let name: String = name.chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
    if name.is_empty() { "-".into() } else { name }
}

/// One RFC 5424 message with the audit message as its UTF-8 body, framed for RFC 5425.
pub fn frame(record: &AuditRecord, hostname: &str) -> Vec<u8> {
    let xml = super::atna::message(record, &format!("kura@{hostname}"));
    let pid = std::process::id();
    // APP-NAME kura, MSGID IHE+RFC-3881 (ITI-20's for the DICOM/RFC 3881 schema); no
    // structured data; MSG is a BOM and UTF-8.
    let message =
        format!("<{PRI}>1 {} {hostname} kura {pid} IHE+RFC-3881 - \u{feff}{xml}", super::atna::timestamp(record.time));
    let mut framed = format!("{} ", message.len()).into_bytes();
    framed.extend_from_slice(message.as_bytes());
    framed
}

impl Forwarder {
    /// Starts the sender task (inside a tokio runtime).
    pub fn start(target: SyslogTarget) -> Result<Forwarder, String> {
        let tls = Arc::new(crate::auth::jwt::client_tls(target.extra_ca.as_ref())?);
        let (queue, receiver) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(send_loop(target.address, tls, receiver, dropped.clone()));
        Ok(Forwarder { queue, dropped, hostname: hostname() })
    }

    /// Queues a copy of `record`; drops it (counted) when the queue is full.
    pub fn send(&self, record: &AuditRecord) {
        if self.queue.try_send(frame(record, &self.hostname)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn connect(
    address: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host).trim_matches(['[', ']']);
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(address).await.map_err(|e| e.to_string())?;
        tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt).await.map_err(|_| "connection timed out".to_string())?
}

async fn send_loop(
    address: String,
    tls: Arc<rustls::ClientConfig>,
    mut receiver: mpsc::Receiver<Vec<u8>>,
    dropped: Arc<AtomicU64>,
) {
    let mut connection = None;
    let mut pause = Duration::from_millis(500);
    let mut reported = 0;
    while let Some(message) = receiver.recv().await {
        loop {
            if connection.is_none() {
                match connect(&address, &tls).await {
                    Ok(stream) => {
                        connection = Some(stream);
                        pause = Duration::from_millis(500);
                    }
                    Err(error) => {
                        tracing::warn!(%error, collector = %address, "the audit syslog collector is unreachable");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(60));
                        continue;
                    }
                }
            }
            let stream = connection.as_mut().expect("connected");
            match stream.write_all(&message).await.and(stream.flush().await) {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(%error, collector = %address, "sending to the audit syslog collector failed");
                    connection = None;
                }
            }
        }
        let now_dropped = dropped.load(Ordering::Relaxed);
        if now_dropped > reported {
            tracing::warn!(dropped = now_dropped - reported, "audit syslog queue was full; messages were dropped");
            reported = now_dropped;
        }
    }
}
