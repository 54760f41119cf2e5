//! A TCP proxy for upload tests: forwards a client to a server, records every byte each way,
//! and can cut the link once (both directions, as a dropped line would) after a number of
//! bytes from the client or from the server. The recording is parsed back into HTTP/1.1
//! exchanges, so that a test sees what was sent and which answers reached the client,
//! independently of what the client says about itself.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Where the link is cut, once: after this many bytes (over all connections) in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    Never,
    AfterClientBytes(u64),
    AfterServerBytes(u64),
}

#[derive(Default)]
struct Recorded {
    /// Per connection, in the order opened: (client → server, server → client).
    connections: Vec<(Vec<u8>, Vec<u8>)>,
    client_total: u64,
    server_total: u64,
    cut_done: bool,
}

pub struct CutProxy {
    pub address: SocketAddr,
    recorded: Arc<Mutex<Recorded>>,
    cut: Arc<Mutex<Cut>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request and, when it reached the client whole, its answer's status.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub connection: usize,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub status: Option<u16>,
    /// The request's bytes on the wire, and its answer's when it came whole.
    pub request_bytes: u64,
    pub answer_bytes: Option<u64>,
}

impl Exchange {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The SOP Instance UIDs of a STOW-RS request's parts (its body inflated first).
    pub fn stow_sop_uids(&self) -> Vec<String> {
        let body = match self.header("content-encoding") {
            Some("gzip") => {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&self.body[..]).read_to_end(&mut out).expect("gzip body");
                out
            }
            Some("br") => {
                let mut out = Vec::new();
                brotli::Decompressor::new(&self.body[..], 4096).read_to_end(&mut out).expect("br body");
                out
            }
            None => self.body.clone(),
            Some(other) => panic!("unexpected coding {other}"),
        };
        let content_type = self.header("content-type").expect("content type");
        super::split_multipart(content_type, &body)
            .into_iter()
            .map(|(_, part)| {
                kura::dicom::part10::parse(std::io::Cursor::new(&part), part.len() as u64)
                    .expect("a part10 part")
                    .sop_instance_uid
            })
            .collect()
    }
}

impl CutProxy {
    pub async fn start(server: SocketAddr, cut: Cut) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let cut = Arc::new(Mutex::new(cut));
        let (task_recorded, task_cut) = (recorded.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(server).await else { continue };
                let index = {
                    let mut recorded = task_recorded.lock().unwrap();
                    recorded.connections.push((Vec::new(), Vec::new()));
                    recorded.connections.len() - 1
                };
                tokio::spawn(relay(client, upstream, index, task_recorded.clone(), task_cut.clone()));
            }
        });
        CutProxy { address, recorded, cut, task }
    }

    /// The proxy's URL for a server's DICOMweb root path.
    pub fn base(&self) -> String {
        format!("http://{}/dicomweb", self.address)
    }

    /// Arms a new cut (the previous one done or not).
    pub fn set_cut(&self, cut: Cut) {
        *self.cut.lock().unwrap() = cut;
        let mut recorded = self.recorded.lock().unwrap();
        recorded.cut_done = false;
        recorded.client_total = 0;
        recorded.server_total = 0;
    }

    pub fn was_cut(&self) -> bool {
        self.recorded.lock().unwrap().cut_done
    }

    /// Every request seen, in order, with the status of the answer when it reached the client
    /// whole.
    pub fn exchanges(&self) -> Vec<Exchange> {
        let recorded = self.recorded.lock().unwrap();
        let mut all = Vec::new();
        for (connection, (up, down)) in recorded.connections.iter().enumerate() {
            let requests = parse_messages(up, true);
            let responses = parse_messages(down, false);
            for (index, request) in requests.into_iter().enumerate() {
                let (method, path) = {
                    let mut words = request.start.split(' ');
                    (words.next().unwrap_or_default().to_string(), words.next().unwrap_or_default().to_string())
                };
                let answer = responses.get(index);
                let status = answer.and_then(|r| r.start.split(' ').nth(1)?.parse().ok());
                all.push(Exchange {
                    connection,
                    method,
                    path,
                    headers: request.headers,
                    body: request.body,
                    status,
                    request_bytes: request.raw_len,
                    answer_bytes: answer.map(|r| r.raw_len),
                });
            }
        }
        all
    }

    /// The STOW-RS requests: (SOP Instance UIDs sent, answered 200/202 and received whole).
    pub fn stows(&self) -> Vec<(Vec<String>, bool)> {
        self.exchanges()
            .iter()
            .filter(|e| e.method == "POST")
            .map(|e| (e.stow_sop_uids(), matches!(e.status, Some(200) | Some(202))))
            .collect()
    }
}

/// Asserts that no instance acknowledged by an answer that reached the client was sent again
/// later; returns how many times each instance was sent.
pub fn assert_no_acknowledged_resent(stows: &[(Vec<String>, bool)]) -> std::collections::HashMap<String, usize> {
    let mut acknowledged = std::collections::HashSet::new();
    let mut sent = std::collections::HashMap::new();
    for (index, (uids, acked)) in stows.iter().enumerate() {
        for uid in uids {
            assert!(!acknowledged.contains(uid), "request {index} sent {uid} again after the server acknowledged it");
            *sent.entry(uid.clone()).or_insert(0) += 1;
        }
        if *acked {
            acknowledged.extend(uids.iter().cloned());
        }
    }
    sent
}

async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    index: usize,
    recorded: Arc<Mutex<Recorded>>,
    cut: Arc<Mutex<Cut>>,
) {
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let up = tokio::spawn(pump(
        client_read,
        upstream_write,
        true,
        index,
        recorded.clone(),
        cut.clone(),
        stop.clone(),
        stopped.clone(),
    ));
    let down = tokio::spawn(pump(upstream_read, client_write, false, index, recorded, cut, stop, stopped));
    let _ = tokio::join!(up, down);
}

/// Copies one direction, recording it; when the cut falls in a chunk, what precedes the cut
/// point is delivered and both directions stop (both sockets close).
#[allow(clippy::too_many_arguments)]
async fn pump(
    mut read: tokio::net::tcp::OwnedReadHalf,
    mut write: tokio::net::tcp::OwnedWriteHalf,
    from_client: bool,
    index: usize,
    recorded: Arc<Mutex<Recorded>>,
    cut: Arc<Mutex<Cut>>,
    stop: tokio::sync::watch::Sender<bool>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            n = read.read(&mut buffer) => match n { Ok(0) | Err(_) => break, Ok(n) => n },
            _ = stopped.changed() => break,
        };
        let allowed = {
            let mut recorded = recorded.lock().unwrap();
            let limit = match (*cut.lock().unwrap(), from_client, recorded.cut_done) {
                (_, _, true) => None,
                (Cut::AfterClientBytes(limit), true, false) => Some(limit.saturating_sub(recorded.client_total)),
                (Cut::AfterServerBytes(limit), false, false) => Some(limit.saturating_sub(recorded.server_total)),
                _ => None,
            };
            let allowed = limit.map_or(n, |left| (left as usize).min(n));
            if allowed < n {
                recorded.cut_done = true;
            }
            let (up, down) = &mut recorded.connections[index];
            if from_client {
                up.extend_from_slice(&buffer[..allowed]);
                recorded.client_total += allowed as u64;
            } else {
                down.extend_from_slice(&buffer[..allowed]);
                recorded.server_total += allowed as u64;
            }
            allowed
        };
        if allowed > 0 && write.write_all(&buffer[..allowed]).await.is_err() {
            break;
        }
        if allowed < n {
            let _ = write.flush().await;
            break;
        }
    }
    let _ = stop.send(true);
}

struct Message {
    raw_len: u64,
    start: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Complete HTTP/1.1 messages at the start of `bytes` (a message cut short is left out).
fn parse_messages(mut bytes: &[u8], requests: bool) -> Vec<Message> {
    let mut messages = Vec::new();
    while let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let start = lines.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':').map(|(n, v)| (n.trim().to_string(), v.trim().to_string())))
            .collect();
        let header = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
        let rest = &bytes[end + 4..];
        let no_body = !requests && (start.contains(" 204 ") || start.contains(" 304 "));
        let (body, used) = if no_body {
            (Vec::new(), 0)
        } else if let Some(length) = header("content-length") {
            let length: usize = length.parse().unwrap();
            if rest.len() < length {
                break;
            }
            (rest[..length].to_vec(), length)
        } else if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            match dechunk(rest) {
                Some(found) => found,
                None => break,
            }
        } else if requests {
            (Vec::new(), 0)
        } else {
            // Read to the end of the connection: whole only if the connection closed cleanly,
            // which a recording cannot tell; Kura always frames its answers.
            break;
        };
        messages.push(Message { raw_len: (end + 4 + used) as u64, start, headers, body });
        bytes = &rest[used..];
    }
    messages
}

/// A chunked body: (body, bytes used), or None when it is incomplete.
fn dechunk(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = bytes[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let size_text = String::from_utf8_lossy(&bytes[at..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailers (none expected), then the final CRLF.
            let end = bytes[at..].windows(2).position(|w| w == b"\r\n")? + at;
            return Some((body, end + 2));
        }
        if bytes.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&bytes[at..at + size]);
        at += size + 2;
    }
}
