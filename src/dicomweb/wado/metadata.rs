//! WADO-RS metadata (PS3.18 §10.4.1.1.2, Annex F): the DICOM JSON of every instance of a study,
//! series or instance, as one JSON array (or, asked for, the Native DICOM Model XML of each as
//! multipart/related). Each instance's JSON was computed when it was stored
//! (`dicom::json`), so a 1,000-instance series is served without re-parsing a file; only the
//! base URL of its BulkDataURIs is filled in per request. The body is streamed one instance at a
//! time (a 10,000-instance study is never held whole), coded with brotli or gzip as it goes when
//! the client accepts them; the response holds a fixed share of the memory budget until it ends.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};

use crate::archive::Archive;
use crate::dicom::json::BASE_PLACEHOLDER;
use crate::dicomweb::{RequestContext, ResponseBody, accepted_types, stream_body};
use crate::error::{Error, ErrorKind};
use crate::media::compress;
use crate::media::mime::{APPLICATION_DICOM_JSON, APPLICATION_DICOM_XML, APPLICATION_JSON, MULTIPART_RELATED};
use crate::media::multipart;

/// The two forms of metadata (§10.4.1.1.2): DICOM JSON, the default, and the Native DICOM Model
/// XML, one part per instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Xml,
}

/// The first acceptable form in the client's order of preference; 406 when neither is.
fn negotiate(headers: &HeaderMap) -> Result<Format, Error> {
    let Some(accepted) = accepted_types(headers) else { return Ok(Format::Json) };
    accepted
        .iter()
        .find_map(|media| match media.essence.as_str() {
            APPLICATION_DICOM_JSON | APPLICATION_JSON | "application/*" | "*/*" => Some(Format::Json),
            MULTIPART_RELATED if media.param("type").is_some_and(|t| t.eq_ignore_ascii_case(APPLICATION_DICOM_XML)) => {
                Some(Format::Xml)
            }
            "multipart/*" => Some(Format::Xml),
            _ => None,
        })
        .ok_or_else(|| {
            Error::new(
                ErrorKind::NotAcceptable,
                "metadata is available as application/dicom+json and multipart/related; type=\"application/dicom+xml\"",
            )
        })
}

/// A strong validator of the resource's current content: it changes whenever an instance is
/// added, replaced or removed.
fn entity_tag(records: &[crate::model::records::InstanceRecord]) -> String {
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
pub async fn retrieve(
    archive: &Arc<Archive>,
    context: &RequestContext,
    study: &str,
    series: Option<&str>,
    instance: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response<ResponseBody>, Error> {
    let format = negotiate(headers)?;
    let level = super::target_level(series, instance);
    let records = archive.instances_of(&context.principal, level, study, series, instance)?;
    let etag = match format {
        Format::Json => entity_tag(&records),
        Format::Xml => format!("{}-xml\"", entity_tag(&records).trim_end_matches('"')),
    };
    if crate::dicomweb::cache::not_modified(headers, &etag) {
        return Ok(Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .header(header::ETAG, &etag)
            .body(crate::dicomweb::empty_body())
            .expect("valid response"));
    }
    let boundary = multipart::new_boundary();
    let content_type = match format {
        Format::Json => APPLICATION_DICOM_JSON.to_string(),
        Format::Xml => format!("{MULTIPART_RELATED}; type=\"{APPLICATION_DICOM_XML}\"; boundary={boundary}"),
    };
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::VARY, "Accept-Encoding");
    // The length is not known before the body is streamed: the smallest resource, one instance,
    // is well above the size below which coding does not pay.
    let coding = compress::negotiate(headers, usize::MAX);
    let encoder_memory = coding.map_or(0, compress::StreamEncoder::memory);
    let memory = archive.reserve_memory(PIECE_MEMORY + encoder_memory).await?;
    let encoder = match coding {
        Some(coding) => {
            // A distinct validator per coding (RFC 9110 §8.8.3.3).
            let etag = format!("{}-{}\"", etag.trim_end_matches('"'), coding.token());
            response = response.header(header::CONTENT_ENCODING, coding.token()).header(header::ETAG, etag);
            Some(compress::StreamEncoder::new(coding))
        }
        None => {
            response = response.header(header::ETAG, etag);
            None
        }
    };
    let pieces = Pieces {
        archive: archive.clone(),
        context: context.clone(),
        format,
        boundary,
        records: records.into_iter(),
        sent: 0,
        encoder,
        finished: false,
        _memory: memory,
    };
    let body = futures_util::stream::unfold(pieces, |mut pieces| async move {
        let piece = pieces.next()?;
        Some((piece, pieces))
    });
    Ok(response.body(stream_body(body)).expect("valid response"))
}

/// What one metadata response holds in memory while it streams: one instance's document (at most
/// 512 KiB of stored DICOM JSON; its XML a few times that) being built, one being sent.
const PIECE_MEMORY: u64 = 4 * 1024 * 1024;

/// The body of a metadata response, one instance at a time: the array's (or multipart's)
/// framing, each instance's stored document with the base URL filled in, coded when asked. The
/// memory reservation is held until the body is dropped (sent, or its client gone).
struct Pieces {
    archive: Arc<Archive>,
    context: RequestContext,
    format: Format,
    boundary: String,
    records: std::vec::IntoIter<crate::model::records::InstanceRecord>,
    /// Instances sent so far.
    sent: usize,
    encoder: Option<compress::StreamEncoder>,
    finished: bool,
    _memory: crate::memory::MemoryPermit,
}

impl Pieces {
    /// The next piece of the body; `None` at its end.
    fn next(&mut self) -> Option<Result<Bytes, Error>> {
        loop {
            if self.finished {
                return None;
            }
            let plain = match self.records.next() {
                Some(record) => match self.instance(self.sent, &record) {
                    Ok(Some(plain)) => {
                        self.sent += 1;
                        plain
                    }
                    // Deleted since the records were read: the response is as if it had gone first.
                    Ok(None) => continue,
                    Err(error) => {
                        self.finished = true;
                        return Some(Err(error));
                    }
                },
                None => {
                    self.finished = true;
                    let mut end = match self.format {
                        Format::Json if self.sent == 0 => b"[]".to_vec(),
                        Format::Json => b"]".to_vec(),
                        Format::Xml => multipart::closing(&self.boundary).to_vec(),
                    };
                    if let Some(mut encoder) = self.encoder.take() {
                        let mut coded = encoder.push(&end);
                        coded.extend(encoder.finish());
                        end = coded;
                    }
                    return Some(Ok(Bytes::from(end)));
                }
            };
            let piece = match self.encoder.as_mut() {
                Some(encoder) => encoder.push(&plain),
                None => plain,
            };
            // A coder may hold a small piece back entirely: nothing to send yet.
            if !piece.is_empty() {
                return Some(Ok(Bytes::from(piece)));
            }
        }
    }

    /// Instance `i` of the resource, framed: `[` or `,` then its DICOM JSON; or its multipart
    /// part. `None` when the instance was deleted after its record was read.
    fn instance(&self, i: usize, record: &crate::model::records::InstanceRecord) -> Result<Option<Vec<u8>>, Error> {
        let Some(stored) = self.archive.instance_metadata(record)? else { return Ok(None) };
        let base = self.context.base_url.as_bytes();
        match self.format {
            Format::Json => {
                let mut out = Vec::with_capacity(stored.len() + 64);
                out.push(if i == 0 { b'[' } else { b',' });
                append_with_base(&mut out, &stored, base);
                Ok(Some(out))
            }
            Format::Xml => {
                let mut json = Vec::with_capacity(stored.len() + 64);
                append_with_base(&mut json, &stored, base);
                let object: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(&json).map_err(Error::internal)?;
                let xml = crate::dicomweb::dataset::xml_from_json(&object);
                let context = &self.context;
                let location = context.instance_url(&record.study_uid, &record.series_uid, &record.sop_instance_uid);
                let mut out = if i > 0 { b"\r\n".to_vec() } else { Vec::new() };
                out.extend_from_slice(&multipart::part_header(
                    &self.boundary,
                    APPLICATION_DICOM_XML,
                    Some(&location),
                    Some(xml.len() as u64),
                ));
                out.extend_from_slice(xml.as_bytes());
                Ok(Some(out))
            }
        }
    }
}

/// Copies `json` into `out`, replacing each [`BASE_PLACEHOLDER`] with `base`.
fn append_with_base(out: &mut Vec<u8>, json: &[u8], base: &[u8]) {
    let placeholder = BASE_PLACEHOLDER.as_bytes();
    let mut copied = 0;
    for at in memchr::memmem::find_iter(json, placeholder) {
        out.extend_from_slice(&json[copied..at]);
        out.extend_from_slice(base);
        copied = at + placeholder.len();
    }
    out.extend_from_slice(&json[copied..]);
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
