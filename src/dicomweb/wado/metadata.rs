//! WADO-RS metadata (PS3.18 §10.4.1.1.2, Annex F): the DICOM JSON of every instance of a study,
//! series or instance, as one JSON array. Each instance's JSON was computed when it was stored
//! (`dicom::json`), so a 1,000-instance series is served without re-parsing a file; only the
//! base URL of its BulkDataURIs is filled in per request.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};

use crate::archive::Archive;
use crate::dicom::json::BASE_PLACEHOLDER;
use crate::dicomweb::{RequestContext, ResponseBody, accepted_types, full_body};
use crate::error::{Error, ErrorKind};
use crate::media::mime::{APPLICATION_DICOM_JSON, APPLICATION_JSON};

/// JSON unless the client accepts nothing JSON-like (then 406; the XML form is not offered yet).
fn negotiate(headers: &HeaderMap) -> Result<(), Error> {
    let Some(accepted) = accepted_types(headers) else { return Ok(()) };
    let json_ok = accepted
        .iter()
        .any(|m| [APPLICATION_DICOM_JSON, APPLICATION_JSON, "application/*", "*/*"].contains(&m.essence.as_str()));
    if json_ok {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::NotAcceptable, "metadata is available as application/dicom+json"))
    }
}

/// A strong validator of the resource's current content: it changes whenever an instance is
/// added, replaced or removed.
fn entity_tag(records: &[crate::store::InstanceRecord]) -> String {
    // FNV-1a over (SOP Instance UID, store sequence number) of each instance.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for record in records {
        for byte in record.sop_instance_uid.bytes().chain(record.seq.to_le_bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("\"{hash:016x}-{}\"", records.len())
}

/// `GET {root}/studies/{study}[/series/{series}[/instances/{instance}]]/metadata`.
pub fn retrieve(
    archive: &Arc<Archive>,
    context: &RequestContext,
    study: &str,
    series: Option<&str>,
    instance: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response<ResponseBody>, Error> {
    negotiate(headers)?;
    let level = super::target_level(series, instance);
    let records = archive.instances_of(&context.principal, level, study, series, instance)?;
    let etag = entity_tag(&records);
    let not_modified = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|candidate| candidate.trim() == etag || candidate.trim() == "*");
    if not_modified {
        return Ok(Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .header(header::ETAG, &etag)
            .body(crate::dicomweb::empty_body())
            .expect("valid response"));
    }
    let mut body = Vec::with_capacity(records.len() * 4096);
    body.push(b'[');
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let json = archive.instance_metadata(record)?;
        append_with_base(&mut body, &json, context.base_url.as_bytes());
    }
    body.push(b']');
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, APPLICATION_DICOM_JSON)
        .header(header::ETAG, etag)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(full_body(Bytes::from(body)))
        .expect("valid response"))
}

/// Copies `json` into `out`, replacing each [`BASE_PLACEHOLDER`] with `base`.
fn append_with_base(out: &mut Vec<u8>, json: &[u8], base: &[u8]) {
    let placeholder = BASE_PLACEHOLDER.as_bytes();
    let mut rest = json;
    while let Some(at) = rest.windows(placeholder.len()).position(|w| w == placeholder) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(base);
        rest = &rest[at + placeholder.len()..];
    }
    out.extend_from_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_the_base_url() {
        let mut out = Vec::new();
        let json = format!("{{\"a\":\"{BASE_PLACEHOLDER}/studies/1/bulkdata/7FE00010\"}}");
        append_with_base(&mut out, json.as_bytes(), b"http://host/dicomweb");
        assert_eq!(String::from_utf8(out).unwrap(), "{\"a\":\"http://host/dicomweb/studies/1/bulkdata/7FE00010\"}");
    }
}
