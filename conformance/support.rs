//! What the conformance tests share: an in-process server on a loopback port, DICOM instances
//! generated in code, and a few HTTP helpers. A trimmed copy of tests/it/support, so that the
//! conformance target stands on its own.

#![allow(dead_code)]

use std::sync::Arc;

use bytes::Bytes;
use dicom_core::{DataElement, PrimitiveValue, VR, dicom_value};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kura::{App, Archive, Config};
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// A Kura server for one test: a fresh data directory, the real `App`, 127.0.0.1:0.
pub struct Server {
    pub base: String,
    pub archive: Arc<Archive>,
    _dir: TempDir,
    _shutdown: oneshot::Sender<()>,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    /// Starts a server after `adjust` has changed its configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::with_data_dir(dir.path().join("data"));
        adjust(&mut config);
        let archive = Arc::new(Archive::open(&config.data_dir, config.archive.clone()).await.expect("open"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let base = format!("http://{address}{}", config.base_path);
        let app = App::new(archive.clone(), Arc::new(config));
        let (shutdown, signal) = oneshot::channel::<()>();
        tokio::spawn(kura::server::serve(listener, app, async move {
            let _ = signal.await;
        }));
        Server { base, archive, _dir: dir, _shutdown: shutdown }
    }

    /// A server holding `parts`, stored with one STOW-RS request that must succeed.
    pub async fn with(parts: &[Vec<u8>]) -> Server {
        let server = Server::start().await;
        let reply = stow(&server.base, None, parts).await;
        assert_eq!(reply.status, StatusCode::OK, "setup STOW: {}", reply.text());
        server
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

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

pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
    let mut request = Request::builder().method(method.clone()).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.into())).expect("request");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.request(request).await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply { status: parts.status, headers: parts.headers, body }
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
    let url = match study {
        Some(study) => format!("{base}/studies/{study}"),
        None => format!("{base}/studies"),
    };
    let content_type = stow_content_type();
    send(Method::POST, &url, &[("content-type", content_type.as_str()), ("accept", accept)], multipart(parts)).await
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

// ---------------------------------------------------------------------------------------------
// DICOM fixtures
// ---------------------------------------------------------------------------------------------

/// UID root of generated conformance data.
pub const ROOT: &str = "1.2.826.0.1.3680043.10.543.77";

/// What a generated instance looks like; indices make deterministic UIDs.
#[derive(Debug, Clone)]
pub struct Spec {
    pub study: u32,
    pub series: u32,
    pub instance: u32,
    pub patient_name: String,
    pub patient_id: String,
    pub study_date: String,
    pub study_time: String,
    pub modality: String,
    pub accession: String,
    /// Varies pixel content (and so the bytes) for the same UIDs.
    pub seed: u8,
}

impl Spec {
    pub fn new(study: u32, series: u32, instance: u32) -> Spec {
        Spec {
            study,
            series,
            instance,
            patient_name: format!("Doe^Patient{study}"),
            patient_id: format!("PID{study:05}"),
            study_date: "20240105".into(),
            study_time: "101500".into(),
            modality: "CT".into(),
            accession: format!("ACC{study}"),
            seed: 0,
        }
    }

    pub fn study_uid(&self) -> String {
        format!("{ROOT}.1.{}", self.study)
    }

    pub fn series_uid(&self) -> String {
        format!("{ROOT}.2.{}.{}", self.study, self.series)
    }

    pub fn sop_uid(&self) -> String {
        format!("{ROOT}.3.{}.{}.{}", self.study, self.series, self.instance)
    }

    pub fn study_url(&self, base: &str) -> String {
        format!("{base}/studies/{}", self.study_uid())
    }

    pub fn series_url(&self, base: &str) -> String {
        format!("{base}/studies/{}/series/{}", self.study_uid(), self.series_uid())
    }

    pub fn instance_url(&self, base: &str) -> String {
        format!("{}/instances/{}", self.series_url(base), self.sop_uid())
    }
}

pub fn put(object: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, value: impl Into<PrimitiveValue>) {
    object.put(DataElement::new(tag, vr, value.into()));
}

/// The data set of `spec` (UTF-8, 16×16 16-bit CT), without file meta.
pub fn dataset(spec: &Spec) -> InMemDicomObject {
    let mut object = InMemDicomObject::new_empty();
    put(&mut object, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    put(&mut object, tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE);
    put(&mut object, tags::SOP_INSTANCE_UID, VR::UI, spec.sop_uid());
    put(&mut object, tags::STUDY_DATE, VR::DA, spec.study_date.as_str());
    put(&mut object, tags::STUDY_TIME, VR::TM, spec.study_time.as_str());
    put(&mut object, tags::ACCESSION_NUMBER, VR::SH, spec.accession.as_str());
    put(&mut object, tags::MODALITY, VR::CS, spec.modality.as_str());
    put(&mut object, tags::REFERRING_PHYSICIAN_NAME, VR::PN, "Ref^Doctor");
    put(&mut object, tags::STUDY_DESCRIPTION, VR::LO, format!("Study {}", spec.study));
    put(&mut object, tags::SERIES_DESCRIPTION, VR::LO, format!("Series {}", spec.series));
    put(&mut object, tags::PATIENT_NAME, VR::PN, spec.patient_name.as_str());
    put(&mut object, tags::PATIENT_ID, VR::LO, spec.patient_id.as_str());
    put(&mut object, tags::PATIENT_BIRTH_DATE, VR::DA, "19700101");
    put(&mut object, tags::PATIENT_SEX, VR::CS, "O");
    put(&mut object, tags::STUDY_INSTANCE_UID, VR::UI, spec.study_uid());
    put(&mut object, tags::SERIES_INSTANCE_UID, VR::UI, spec.series_uid());
    put(&mut object, tags::STUDY_ID, VR::SH, format!("S{}", spec.study));
    put(&mut object, tags::SERIES_NUMBER, VR::IS, spec.series.to_string());
    put(&mut object, tags::INSTANCE_NUMBER, VR::IS, spec.instance.to_string());
    put(&mut object, tags::SAMPLES_PER_PIXEL, VR::US, dicom_value!(U16, [1]));
    put(&mut object, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    put(&mut object, tags::ROWS, VR::US, dicom_value!(U16, [16]));
    put(&mut object, tags::COLUMNS, VR::US, dicom_value!(U16, [16]));
    put(&mut object, tags::BITS_ALLOCATED, VR::US, dicom_value!(U16, [16]));
    put(&mut object, tags::BITS_STORED, VR::US, dicom_value!(U16, [12]));
    put(&mut object, tags::HIGH_BIT, VR::US, dicom_value!(U16, [11]));
    put(&mut object, tags::PIXEL_REPRESENTATION, VR::US, dicom_value!(U16, [0]));
    let mut state = u32::from(spec.seed) ^ spec.instance.wrapping_mul(2_654_435_761) ^ spec.study;
    let pixels: Vec<u16> = (0..256)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((state >> 16) & 0x0FFF) as u16
        })
        .collect();
    put(&mut object, tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(pixels.into()));
    object
}

/// Serialises a data set as a PS3.10 file in the given transfer syntax.
pub fn part10_in(object: InMemDicomObject, transfer_syntax: &str) -> Vec<u8> {
    let file = object.with_meta(FileMetaTableBuilder::new().transfer_syntax(transfer_syntax)).expect("meta");
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).expect("write");
    bytes
}

/// Serialises a data set as a PS3.10 file in Explicit VR Little Endian.
pub fn part10(object: InMemDicomObject) -> Vec<u8> {
    part10_in(object, uids::EXPLICIT_VR_LITTLE_ENDIAN)
}

/// A complete Explicit VR Little Endian instance for `spec`.
pub fn instance(spec: &Spec) -> Vec<u8> {
    part10(dataset(spec))
}

/// The bytes Kura stores for `original`: the same, with the 128-byte preamble zeroed.
pub fn as_stored(original: &[u8]) -> Vec<u8> {
    let mut stored = original.to_vec();
    stored[..128].fill(0);
    stored
}

/// Replaces the value of a top-level short-VR element (tag, explicit VR, 16-bit length) in an
/// Explicit VR Little Endian file, e.g. to put bytes in a character set dicom-rs would not
/// write. Top-level elements carry their own lengths only, so the value may change size.
pub fn splice_element(file: &[u8], tag: dicom_core::Tag, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(&tag.group().to_le_bytes());
    header.extend_from_slice(&tag.element().to_le_bytes());
    header.extend_from_slice(vr);
    let start = 132
        + file[132..]
            .windows(header.len())
            .position(|w| w == header.as_slice())
            .unwrap_or_else(|| panic!("{tag} not found"));
    let length = u16::from_le_bytes([file[start + 6], file[start + 7]]) as usize;
    let mut value = value.to_vec();
    if value.len() % 2 == 1 {
        value.push(if vr == b"UI" { 0 } else { b' ' });
    }
    let mut out = file[..start].to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(&value);
    out.extend_from_slice(&file[start + 8 + length..]);
    out
}
