//! The HTTP edge under abuse and under clients that do things differently: offsets of any
//! size, connection floods and stalls, broken multipart framing, Host and Origin checks.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

/// Three studies of one instance each.
async fn three_studies() -> Server {
    Server::with(&[ct_slice(61, 1, 1), ct_slice(62, 1, 1), ct_slice(63, 1, 1)]).await
}

fn address_of(base: &str) -> SocketAddr {
    let authority = base.strip_prefix("http://").unwrap().split('/').next().unwrap();
    authority.parse().unwrap()
}

/// A connection to `server` from the loopback address `from` (127.0.0.2, …).
async fn connect_from(from: &str, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(server).await
}

/// Whether the server closed `stream` (EOF or reset) within `within`; bytes it sent first
/// (such as an error response) are read and ignored.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// The studies the archive lists, after whatever went before.
async fn still_answers(server: &Server, expected: usize) {
    let started = Instant::now();
    let studies = qido(&server.base, "/studies").await;
    assert_eq!(studies.len(), expected, "a normal QIDO still answers correctly");
    assert!(started.elapsed() < Duration::from_secs(1), "and promptly: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qido_offsets_of_any_size_answer_an_empty_page_and_the_server_lives() {
    let server = three_studies().await;
    // 10^13 made tantivy allocate for the offset (the process aborted); ~2^64 overflowed the
    // capacity (500); 10,000 and more take the deep-page path, which collects the matches.
    for offset in ["3", "10000", "10000000000000", "18446744073709551000", "18446744073709551615"] {
        for query in
            [format!("offset={offset}"), format!("offset={offset}&limit=1000"), format!("offset={offset}&limit=0")]
        {
            let reply = get(&format!("{}/studies?{query}", server.base), "application/dicom+json").await;
            assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.text());
            assert_eq!(reply.json(), serde_json::json!([]), "{query}");
            assert_eq!(reply.warnings(), "", "{query}: nothing remains after the end");
        }
        still_answers(&server, 3).await;
    }
    // Paging is exact around the end, and the Warning counts what remains.
    let page = get(&format!("{}/studies?offset=1&limit=1", server.base), "application/dicom+json").await;
    assert_eq!(page.json().as_array().unwrap().len(), 1);
    assert!(page.warnings().contains("There are 1 additional results"), "{}", page.warnings());
    let last = get(&format!("{}/studies?offset=2&limit=5", server.base), "application/dicom+json").await;
    assert_eq!(last.json().as_array().unwrap().len(), 1);
    assert_eq!(last.warnings(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qido_unparsable_offsets_and_limits_are_400() {
    let server = three_studies().await;
    for query in ["offset=18446744073709551616", "offset=-1", "offset=1e3", "limit=ten", "limit=99999999999999999999"] {
        let reply = get(&format!("{}/studies?{query}", server.base), "application/dicom+json").await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
        let name = query.split('=').next().unwrap();
        assert!(reply.json()["message"].as_str().unwrap().contains(name), "{query}: {}", reply.text());
    }
    still_answers(&server, 3).await;
}

/// 1,100 connections that send nothing, from one address, and slow ones that trickle a
/// request head from another: a client from 127.0.0.1 is served within 1 s all along, and
/// the server closes every flood connection once the header timeout has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_connection_floods_leave_other_clients_served() {
    let header_timeout = Duration::from_secs(2);
    let server = Server::with_config(&[ct_slice(64, 1, 1)], |c| c.connections.header_timeout = header_timeout).await;
    let address = address_of(&server.base);
    let mut silent = Vec::new();
    for _ in 0..1100 {
        match connect_from("127.0.0.2", address).await {
            Ok(stream) => silent.push(stream),
            Err(error) => panic!("flood connection failed: {error}"),
        }
    }
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut stream = connect_from("127.0.0.3", address).await.unwrap();
        stream.write_all(b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
        slow.push(stream);
    }
    let trickle = tokio::spawn(async move {
        // One header byte per 200 ms per connection: never a complete request head.
        let deadline = Instant::now() + Duration::from_secs(6);
        let mut closed = 0;
        while Instant::now() < deadline && closed < slow.len() {
            closed = 0;
            for stream in &mut slow {
                if stream.write_all(b"X").await.is_err() {
                    closed += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        slow
    });
    for _ in 0..3 {
        still_answers(&server, 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let started = Instant::now();
    let mut open = 0;
    for stream in &mut silent {
        let left = (header_timeout * 3).saturating_sub(started.elapsed());
        if !closed_by_server(stream, left.max(Duration::from_millis(10))).await {
            open += 1;
        }
    }
    assert_eq!(open, 0, "silent connections still open {:?} after the flood", started.elapsed());
    let mut slow = trickle.await.unwrap();
    for stream in &mut slow {
        assert!(closed_by_server(stream, header_timeout * 2).await, "a slow request head is cut off");
    }
    still_answers(&server, 1).await;
}

/// An HTTP/2 connection that sends the preface and then no stream, and an HTTP/1 connection
/// that stays open after its request, are closed: the first by the header timeout, the
/// second by the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http1_and_http2_connections_are_closed() {
    let server = Server::with_config(&[ct_slice(65, 1, 1)], |c| {
        c.connections.header_timeout = Duration::from_secs(1);
        c.connections.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let address = address_of(&server.base);
    let mut h2 = TcpStream::connect(address).await.unwrap();
    // The preface and an empty SETTINGS frame.
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let started = Instant::now();
    assert!(closed_by_server(&mut h2, Duration::from_secs(4)).await, "HTTP/2 without a stream");
    assert!(started.elapsed() >= Duration::from_millis(900), "not before the timeout: {:?}", started.elapsed());

    let mut h1 = TcpStream::connect(address).await.unwrap();
    h1.write_all(b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut buffer = vec![0u8; 65536];
    let n = h1.read(&mut buffer).await.unwrap();
    assert!(buffer[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buffer[..n]));
    let served = Instant::now();
    assert!(closed_by_server(&mut h1, Duration::from_secs(5)).await, "idle keep-alive connection");
    assert!(served.elapsed() >= Duration::from_millis(1900), "kept alive for the idle timeout: {:?}", served.elapsed());
    still_answers(&server, 1).await;
}

/// A client that stops sending in the middle of a STOW body: the request fails after the
/// body timeout with a 400 that says so, nothing is stored, the connection is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_fails_after_the_body_timeout() {
    let server = Server::start_with(|c| c.connections.body_timeout = Duration::from_secs(1)).await;
    let body = multipart(&[ct_slice(66, 1, 1)]);
    let mut stream = TcpStream::connect(address_of(&server.base)).await.unwrap();
    let head = format!(
        "POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        stow_content_type(),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..body.len() / 2]).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("no request body byte for 1 s"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(server.archive.count_instances().unwrap(), 0, "nothing stored");
}

/// A client that asks for a large instance and then reads nothing: the server keeps the
/// connection (and its slot) while the send timeout runs, then drops it, and the address's
/// only connection slot (`max_per_address` 1) is free again for a normal request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_is_dropped_after_the_send_timeout() {
    let send_timeout = Duration::from_secs(2);
    // 512 × 512 × 16 bits × 24 frames: 12 MiB, far more than the socket buffers hold.
    let big = instance(&Spec::new(68, 1, 1).size(512, 512, 24));
    let spec = Spec::new(68, 1, 1);
    let server = Server::with_config(std::slice::from_ref(&big), |c| {
        c.connections.send_timeout = send_timeout;
        c.connections.max_per_address = 1;
        c.connections.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let address = address_of(&server.base);
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut stuck = socket.connect(address).await.unwrap();
    let path = spec.instance_url(&server.base).replace(&format!("http://{address}"), "");
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/dicom\r\n\r\n");
    stuck.write_all(request.as_bytes()).await.unwrap();
    let asked = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The response is in progress and holds the address's one slot: a second connection from
    // 127.0.0.2 is closed at once without an answer.
    let mut second = connect_from("127.0.0.2", address).await.unwrap();
    let _ = second.write_all(b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), second.read_to_end(&mut answer)).await;
    assert!(answer.is_empty(), "the slot is still held: {}", String::from_utf8_lossy(&answer));
    // Read nothing until well past the send timeout, then find the connection closed after
    // part of the response.
    tokio::time::sleep((send_timeout + Duration::from_millis(1500)).saturating_sub(asked.elapsed())).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stuck.read_to_end(&mut received)).await;
    assert!(
        received.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&received[..received.len().min(200)])
    );
    assert!(received.len() < big.len(), "the response was cut off: {} of {} bytes", received.len(), big.len());
    // The slot came back: the same address is served again.
    let mut again = connect_from("127.0.0.2", address).await.unwrap();
    again.write_all(b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), again.read_to_end(&mut answer)).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    still_answers(&server, 1).await;
}

/// Raw HTTP/1.1 exchange: the request as given, the whole answer until the server closes
/// (or 5 s pass).
async fn raw_exchange(server: &Server, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address_of(&server.base)).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn stow_request(body: &[u8], content_length: usize) -> Vec<u8> {
    let mut request = format!(
        "POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAccept: application/dicom+json\r\n\
         Content-Type: {}\r\nContent-Length: {content_length}\r\n\r\n",
        stow_content_type()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_multipart_framing_is_400_with_a_message() {
    let server = Server::start().await;
    let part = ct_slice(67, 1, 1);
    // Headers that never end before the closing delimiter, a delimiter followed by garbage,
    // and a part header line without a colon.
    let mut no_crlf_after_delimiter = format!("--{BOUNDARY}garbage\r\n\r\n").into_bytes();
    no_crlf_after_delimiter.extend_from_slice(&part);
    no_crlf_after_delimiter.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let mut bad_header = format!("--{BOUNDARY}\r\nthis is not a header\r\n\r\n").into_bytes();
    bad_header.extend_from_slice(&part);
    bad_header.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let unterminated = format!("--{BOUNDARY}\r\nContent-Type: application/dicom\r\n--{BOUNDARY}--\r\n").into_bytes();
    for (what, body) in [
        ("garbage after delimiter", no_crlf_after_delimiter),
        ("bad header", bad_header),
        ("unterminated", unterminated),
    ] {
        let answer = raw_exchange(&server, &stow_request(&body, body.len())).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer:?}");
        assert!(answer.contains("multipart"), "{what}: the message names the framing: {answer}");
    }
    // The same with a large body behind the malformed part: the answer must reach a client
    // that is still sending (closing with unread bytes resets the connection, and the client
    // sees no response at all).
    let mut large = format!("--{BOUNDARY}\r\nthis is not a header\r\n\r\n").into_bytes();
    large.extend(std::iter::repeat_n(b'x', 16 << 20));
    large.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let content_type = stow_content_type();
    let url = format!("{}/studies", server.base);
    let reply = try_send(Method::POST, &url, &[("content-type", content_type.as_str())], large).await;
    let reply = reply.unwrap_or_else(|e| panic!("no response to a malformed multipart body: {e}"));
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert!(reply.text().contains("multipart"), "{}", reply.text());
    assert_eq!(server.archive.count_instances().unwrap(), 0);
    still_answers(&server, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_body_shorter_than_its_content_length_is_not_acknowledged() {
    let server = Server::start().await;
    let body = multipart(&[ct_slice(68, 1, 1)]);
    // The whole multipart, closing delimiter included, but Content-Length promises more: the
    // request is not complete, so nothing may be acknowledged or stored.
    let mut stream = TcpStream::connect(address_of(&server.base)).await.unwrap();
    stream.write_all(&stow_request(&body, body.len() + 1000)).await.unwrap();
    let mut buffer = vec![0u8; 4096];
    let early = tokio::time::timeout(Duration::from_millis(1500), stream.read(&mut buffer)).await;
    if let Ok(Ok(n)) = early {
        assert!(!String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"), "acknowledged before the end");
    }
    assert_eq!(server.archive.count_instances().unwrap(), 0, "nothing stored before the request is complete");
    // The rest arrives: bytes after the closing delimiter are the epilogue, which RFC 2046
    // says to ignore, so now the instance is stored.
    stream.write_all(&[b' '; 1000]).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(server.archive.count_instances().unwrap(), 1);

    // Cut off for good: the connection closes before Content-Length; nothing is stored.
    let other = multipart(&[ct_slice(69, 1, 1)]);
    let mut stream = TcpStream::connect(address_of(&server.base)).await.unwrap();
    stream.write_all(&stow_request(&other, other.len() + 1000)).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.archive.count_instances().unwrap(), 1, "the cut-off request stored nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_without_a_delimiter_is_refused_after_the_preamble_limit() {
    let server = Server::start().await;
    // 64 MiB with no delimiter, sent as it is produced: multer kept all of it before.
    let url = format!("{}/studies", server.base);
    let content_type = stow_content_type();
    let body = Bytes::from(vec![b'x'; 64 << 20]);
    let reply = send(Method::POST, &url, &[("content-type", content_type.as_str())], body).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert!(reply.text().contains("before the first multipart delimiter"), "{}", reply.text());
    still_answers(&server, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_other_host_names_are_421() {
    let server = three_studies().await;
    let port = address_of(&server.base).port();
    for host in ["attacker.example", "attacker.example:80", "127.0.0.1.nip.io", "localhost.evil.example"] {
        let reply = send(Method::GET, &format!("{}/studies", server.base), &[("host", host)], Bytes::new()).await;
        assert_eq!(reply.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert!(reply.json()["message"].as_str().unwrap().contains("--allowed-hosts"), "{}", reply.text());
    }
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("LOCALHOST:{port}"), "[::1]".into()]
    {
        let reply = send(Method::GET, &format!("{}/studies", server.base), &[("host", &host)], Bytes::new()).await;
        assert_eq!(reply.status, StatusCode::OK, "{host}");
        let url = reply.json()[0]["00081190"]["Value"][0].as_str().unwrap().to_string();
        assert!(url.starts_with(&format!("http://{}", host)), "RetrieveURL from an allowed Host: {url}");
    }
    let configured = Server::start_with(|c| c.allowed_hosts.push("archive.example".into())).await;
    let reply =
        send(Method::GET, &format!("{}/studies", configured.base), &[("host", "archive.example")], Bytes::new()).await;
    assert_eq!(reply.status, StatusCode::OK, "a configured name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_origins_are_allowed_by_default() {
    let server = three_studies().await;
    let url = format!("{}/studies", server.base);
    for origin in ["http://localhost:3000", "http://127.0.0.1:5173", "http://[::1]:3000"] {
        let preflight =
            send(Method::OPTIONS, &url, &[("origin", origin), ("access-control-request-method", "GET")], Bytes::new())
                .await;
        assert_eq!(preflight.status, StatusCode::NO_CONTENT, "{origin}");
        assert_eq!(preflight.header("access-control-allow-origin"), Some(origin));
        let reply = send(Method::GET, &url, &[("origin", origin)], Bytes::new()).await;
        assert_eq!(reply.header("access-control-allow-origin"), Some(origin));
    }
    for origin in ["http://evil.example", "http://localhost.evil.example:3000", "null"] {
        let reply = send(Method::GET, &url, &[("origin", origin)], Bytes::new()).await;
        assert_eq!(reply.header("access-control-allow-origin"), None, "{origin}");
    }
    let configured = Server::start_with(|c| {
        c.cors_origins = vec!["https://viewer.example".into()];
        c.cors_loopback = false;
    })
    .await;
    let reply = send(
        Method::GET,
        &format!("{}/studies", configured.base),
        &[("origin", "http://localhost:3000")],
        Bytes::new(),
    )
    .await;
    assert_eq!(reply.header("access-control-allow-origin"), None, "--cors-origins replaces the default");
}

/// PS3.4 C.2.2.2.2: a UID list separated by backslashes, as DIMSE-minded clients send it (and
/// mixed with commas, PS3.18 §8.3.4.1's separator).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uid_lists_separated_by_backslash_match() {
    let server = three_studies().await;
    let (a, b) = (Spec::new(61, 1, 1).study_uid(), Spec::new(63, 1, 1).study_uid());
    for separator in ["%5C", ","] {
        let rows = qido(&server.base, &format!("/studies?StudyInstanceUID={a}{separator}{b}")).await;
        let mut found: Vec<String> = rows.iter().filter_map(|r| value_of(r, "0020000D")).collect();
        found.sort();
        assert_eq!(found, [a.clone(), b.clone()], "separator {separator}");
    }
    let series = Spec::new(62, 1, 1).series_uid();
    let rows = qido(&server.base, &format!("/series?SeriesInstanceUID={series}%5C1.2.3")).await;
    assert_eq!(rows.len(), 1);
    let reply = get(&format!("{}/studies?StudyInstanceUID={a}%5C1.2.x", server.base), "").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "each UID of the list is still validated");
}

/// QIDO-RS JSON honours Accept-Encoding (gzip, br) as metadata does; small pages and clients
/// that ask for no coding get identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qido_json_is_compressed_when_the_client_accepts_it() {
    use std::io::Read;
    let parts: Vec<Vec<u8>> = (1..=40).map(|i| ct_slice(70, 1, i)).collect();
    let server = Server::with(&parts).await;
    let url = format!("{}/instances?includefield=all", server.base);
    let plain = send(Method::GET, &url, &[], Bytes::new()).await;
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.json().as_array().unwrap().len(), 40);
    assert!(plain.header("vary").unwrap_or("").contains("Accept-Encoding"));
    let gzip = send(Method::GET, &url, &[("accept-encoding", "gzip")], Bytes::new()).await;
    assert_eq!(gzip.header("content-encoding"), Some("gzip"));
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(&gzip.body[..]).read_to_end(&mut decoded).unwrap();
    assert_eq!(decoded, plain.body, "the same JSON");
    assert!(gzip.body.len() * 4 < plain.body.len(), "{} vs {}", gzip.body.len(), plain.body.len());
    let br = send(Method::GET, &url, &[("accept-encoding", "gzip, deflate, br")], Bytes::new()).await;
    assert_eq!(br.header("content-encoding"), Some("br"));
    let mut decoded = Vec::new();
    brotli::Decompressor::new(&br.body[..], 4096).read_to_end(&mut decoded).unwrap();
    assert_eq!(decoded, plain.body);
    let small =
        send(Method::GET, &format!("{}/studies?limit=0", server.base), &[("accept-encoding", "gzip")], Bytes::new())
            .await;
    assert_eq!(small.header("content-encoding"), None, "an empty page goes as it is");
}

/// dicomweb-client's retrieve_bulkdata asks `multipart/related; type="*/*"` unless told
/// otherwise; for the Pixel Data of a native CT that was 406.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_data_is_served_for_a_multipart_wildcard_type() {
    let server = Server::with(&[ct_slice(71, 1, 1)]).await;
    let url = format!("{}/bulkdata/7FE00010", Spec::new(71, 1, 1).instance_url(&server.base));
    let single = get(&url, "application/octet-stream").await;
    assert_eq!(single.status, StatusCode::OK);
    let reply = get(&url, "multipart/related; type=\"*/*\"").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let parts = split_multipart(reply.content_type(), &reply.body);
    assert_eq!(parts.len(), 1);
    assert!(parts[0].0.to_ascii_lowercase().contains("content-type: application/octet-stream"), "{}", parts[0].0);
    assert_eq!(parts[0].1, single.body.to_vec(), "the Pixel Data value");
}

/// Pages from offset 10,000 on take the deep-page path (every match collected and sorted):
/// they must agree with the order of the shallow pages and count what remains exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_pages_agree_with_shallow_ones() {
    let server = Server::start().await;
    let n = 10_004u32;
    let parts: Vec<Vec<u8>> = (1..=n).map(|i| instance(&Spec::new(72, 1, i).size(1, 1, 1))).collect();
    for batch in parts.chunks(5_000) {
        assert_eq!(stow(&server.base, None, batch).await.status, StatusCode::OK);
    }
    let spec = Spec::new(72, 1, 1);
    let url = |query: &str| {
        format!("{}/studies/{}/series/{}/instances?{query}", server.base, spec.study_uid(), spec.series_uid())
    };
    let numbers = |reply: &Reply| -> Vec<String> {
        reply.json().as_array().unwrap().iter().map(|r| value_of(r, "00200013").unwrap()).collect()
    };
    // Instances come in the order they were stored: 1, 2, … n.
    let deep = get(&url("offset=10000&limit=3"), "application/dicom+json").await;
    assert_eq!(numbers(&deep), ["10001", "10002", "10003"]);
    assert!(deep.warnings().contains("There are 1 additional results"), "{}", deep.warnings());
    let shallow = get(&url("offset=9998&limit=3"), "application/dicom+json").await;
    assert_eq!(numbers(&shallow), ["9999", "10000", "10001"]);
    let last = get(&url("offset=10003&limit=10"), "application/dicom+json").await;
    assert_eq!(numbers(&last), ["10004"]);
    assert_eq!(last.warnings(), "");
    let past = get(&url("offset=10004"), "application/dicom+json").await;
    assert_eq!(past.json(), serde_json::json!([]));
}
