//! HTTP helpers: the one place that speaks to the server, so that each test is short.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub const BOUNDARY: &str = "kura-conformance-boundary-41c3";
pub const DICOM_ANY_TS: &str = "multipart/related; type=\"application/dicom\"; transfer-syntax=*";

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    /// Every Warning header value, joined.
    pub fn warnings(&self) -> String {
        self.headers.get_all("warning").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join("\n")
    }
}

/// Sends a request; `Err` when no response arrived (e.g. the server was killed).
pub async fn try_send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Reply, String> {
    let mut request = Request::builder().method(method.clone()).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.into())).map_err(|e| e.to_string())?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.request(request).await.map_err(|e| format!("{method} {url}: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply { status: parts.status, headers: parts.headers, body })
}

/// Sends a request from the local address `from` (any of 127.0.0.0/8 works on Linux): the
/// server's per-address limits then see a client of its own.
pub async fn send_from(
    from: std::net::IpAddr,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut request = Request::builder().method(method.clone()).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.into())).expect("request");
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_local_address(Some(from));
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
    let response = client.request(request).await.unwrap_or_else(|e| panic!("{method} {url} from {from}: {e}"));
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply { status: parts.status, headers: parts.headers, body }
}

/// Sends a request that must get a response.
pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
    try_send(method, url, headers, body).await.unwrap_or_else(|e| panic!("{e}"))
}

/// GET with the given Accept header ("" sends none).
pub async fn get(url: &str, accept: &str) -> Reply {
    if accept.is_empty() {
        send(Method::GET, url, &[], Bytes::new()).await
    } else {
        send(Method::GET, url, &[("accept", accept)], Bytes::new()).await
    }
}

/// A multipart/related body with one application/dicom part per payload.
pub fn multipart(parts: &[Vec<u8>]) -> Vec<u8> {
    multipart_typed(&parts.iter().map(|p| ("application/dicom", p.clone())).collect::<Vec<_>>())
}

/// A multipart/related body whose parts carry the given Content-Types.
pub fn multipart_typed(parts: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (content_type, part) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n").as_bytes());
        body.extend_from_slice(part);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

pub fn stow_content_type() -> String {
    format!("multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}")
}

/// STOW-RS of `parts` to `{base}/studies[/{study}]`, asking for DICOM JSON.
pub async fn stow(base: &str, study: Option<&str>, parts: &[Vec<u8>]) -> Reply {
    stow_accepting(base, study, parts, "application/dicom+json").await
}

pub async fn stow_accepting(base: &str, study: Option<&str>, parts: &[Vec<u8>], accept: &str) -> Reply {
    try_stow_accepting(base, study, parts, accept).await.unwrap_or_else(|e| panic!("{e}"))
}

/// STOW-RS that may find the server gone.
pub async fn try_stow(base: &str, study: Option<&str>, parts: &[Vec<u8>]) -> Result<Reply, String> {
    try_stow_accepting(base, study, parts, "application/dicom+json").await
}

async fn try_stow_accepting(base: &str, study: Option<&str>, parts: &[Vec<u8>], accept: &str) -> Result<Reply, String> {
    let url = match study {
        Some(study) => format!("{base}/studies/{study}"),
        None => format!("{base}/studies"),
    };
    let content_type = stow_content_type();
    try_send(Method::POST, &url, &[("content-type", content_type.as_str()), ("accept", accept)], multipart(parts)).await
}

/// QIDO-RS GET that must answer 200; the JSON array.
pub async fn qido(base: &str, path_and_query: &str) -> Vec<Value> {
    let reply = get(&format!("{base}{path_and_query}"), "application/dicom+json").await;
    assert_eq!(reply.status, StatusCode::OK, "{path_and_query}: {}", reply.text());
    reply.json().as_array().cloned().expect("array")
}

/// Percent-encodes a query value (everything but unreserved characters and the wildcards).
pub fn encode(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~*?".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The first value of `tag` (8 hex digits) in a DICOM JSON object, as a string; a PN gives
/// its Alphabetic group.
pub fn value_of(object: &Value, tag: &str) -> Option<String> {
    let value = object.get(tag)?.get("Value")?.get(0)?;
    Some(match value {
        Value::String(s) => s.clone(),
        Value::Object(groups) => groups.get("Alphabetic")?.as_str()?.to_string(),
        other => other.to_string(),
    })
}

fn items(response: &Value, tag: &str) -> Vec<Value> {
    response.get(tag).and_then(|e| e.get("Value")).and_then(Value::as_array).cloned().unwrap_or_default()
}

/// SOP Instance UIDs in a Store Instances Response's ReferencedSOPSequence.
pub fn referenced_sops(response: &Value) -> Vec<String> {
    items(response, "00081199").iter().filter_map(|item| value_of(item, "00081155")).collect()
}

/// FailureReason of each FailedSOPSequence item.
pub fn failure_reasons(response: &Value) -> Vec<u64> {
    items(response, "00081198").iter().map(|item| item["00081197"]["Value"][0].as_u64().expect("reason")).collect()
}

/// (SOP Instance UID or "", FailureReason) of each FailedSOPSequence item.
pub fn failed_sops(response: &Value) -> Vec<(String, u16)> {
    items(response, "00081198")
        .iter()
        .map(|item| {
            let reason = item["00081197"]["Value"][0].as_u64().expect("FailureReason") as u16;
            (value_of(item, "00081155").unwrap_or_default(), reason)
        })
        .collect()
}

/// FailureReason of each OtherFailuresSequence item.
pub fn other_failure_reasons(response: &Value) -> Vec<u64> {
    items(response, "0008119A").iter().map(|item| item["00081197"]["Value"][0].as_u64().expect("reason")).collect()
}

/// Splits a multipart body by the boundary in its Content-Type: (part headers, part body).
pub fn split_multipart(content_type: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let boundary =
        content_type.split(';').find_map(|p| p.trim().strip_prefix("boundary=")).expect("boundary").trim_matches('"');
    let delimiter = format!("--{boundary}");
    let find = |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).position(|w| w == needle);
    let mut parts = Vec::new();
    let start = find(body, delimiter.as_bytes()).expect("first boundary");
    let mut rest = &body[start + delimiter.len()..];
    while !rest.starts_with(b"--") {
        rest = rest.strip_prefix(b"\r\n").expect("CRLF after boundary");
        let header_end = find(rest, b"\r\n\r\n").expect("end of part headers");
        let headers = String::from_utf8_lossy(&rest[..header_end]).into_owned();
        rest = &rest[header_end + 4..];
        let next = find(rest, format!("\r\n{delimiter}").as_bytes()).expect("next boundary");
        parts.push((headers, rest[..next].to_vec()));
        rest = &rest[next + 2 + delimiter.len()..];
    }
    parts
}
