//! HTTP caching of retrieved content (RFC 9110 §8.8.3, §13.1.2; RFC 9111 §5.2): entity tags,
//! `If-None-Match` → 304, and `Cache-Control`, for WADO-RS instances, series and studies (every
//! representation), frames, bulk data, rendered images and thumbnails, and WADO-URI. Metadata
//! (`wado::metadata`) has its own tag (it is coded per Accept-Encoding) and shares the
//! `If-None-Match` matching here.
//!
//! **What an entity tag covers.** A response is a function of the stored bytes of the instances
//! it draws on and of the request: the path (frame list, bulk data tag), the query (rendering
//! parameters, WADO-URI parameters), the negotiated Accept header (transfer syntax, media type,
//! framing), the base URL (it is in Content-Location and in multipart part headers) and the
//! code that renders it (the Kura version). The tag is SHA-256 over all of those, each instance
//! given by its SOP Instance UID and the SHA-256 of its stored bytes (`PayloadRef::sha256`): a
//! re-store that replaces an instance (`--duplicates overwrite`) changes it, an identical re-send
//! does not, and a series or study tag changes when an instance is added or removed. The tags
//! are weak (`W/`, RFC 9110 §8.8.1): equal tags mean the same content, not always the same bytes
//! (a multipart boundary is random per response, a ZIP archive is not promised byte-equal), and
//! weak comparison is all If-None-Match uses (§13.1.2). The 304 is decided before the response
//! exists, so the tag cannot depend on what the response turns out to be.
//!
//! **Cache-Control.** Always `private`: the responses are patient data, for the one user who
//! asked, and a shared cache (a proxy, a CDN) must never keep them or hand them to someone else
//! (RFC 9111 §5.2.2.7). An instance-level resource cannot change while its SOP Instance UID
//! names it — DICOM gives changed content a new SOP Instance UID (PS3.3 C.12.1.1.1), and Kura by
//! default refuses a different object under a stored UID — so it is `max-age` a day and
//! `immutable`; a day, not a year, because a delete and a later store of a different object
//! under the same UID remain possible. Series and study resources gain instances, and with
//! `--duplicates overwrite` an instance can be replaced: those are `no-cache` (the browser keeps
//! them and revalidates with If-None-Match, a 304 when nothing changed).

use std::future::Future;

use http::{HeaderMap, HeaderValue, Response, StatusCode, Uri, header};
use sha2::{Digest, Sha256};

use super::{RequestContext, ResponseBody};
use crate::error::Error;
use crate::model::records::InstanceRecord;

/// `Cache-Control` of content that cannot change under its URL (see the module comment).
pub const IMMUTABLE: &str = "private, max-age=86400, immutable";
/// `Cache-Control` of content that can change: kept, but revalidated before every use.
pub const REVALIDATE: &str = "private, no-cache";

/// Whether an If-None-Match candidate names this content, in any content coding: the codings
/// differ only in bytes on the wire, so a client holding either is up to date. Comparison is
/// weak (RFC 9110 §13.1.2).
pub fn names_this_content(candidate: &str, etag: &str) -> bool {
    let candidate = candidate.trim().trim_start_matches("W/");
    let etag = etag.trim_start_matches("W/");
    if candidate == "*" || candidate == etag {
        return true;
    }
    let bare = etag.trim_end_matches('"');
    ["br", "gzip"].iter().any(|coding| candidate == format!("{bare}-{coding}\""))
}

/// Whether the request's If-None-Match names `etag` (RFC 9110 §13.1.2).
pub fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|candidate| names_this_content(candidate, etag))
}

/// The validator and caching policy of one response.
#[derive(Debug, Clone)]
pub struct Validator {
    pub etag: String,
    pub cache_control: &'static str,
}

impl Validator {
    /// The tag of what `request` retrieves from `records` (see the module comment). `immutable`:
    /// the resource names one instance and stored instances are never replaced.
    pub fn new(
        records: &[InstanceRecord],
        context: &RequestContext,
        uri: &Uri,
        headers: &HeaderMap,
        immutable: bool,
    ) -> Validator {
        let mut hash = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        };
        field(env!("CARGO_PKG_VERSION").as_bytes());
        field(context.base_url.as_bytes());
        field(uri.path().as_bytes());
        field(uri.query().unwrap_or_default().as_bytes());
        for accept in headers.get_all(header::ACCEPT) {
            field(accept.as_bytes());
        }
        field(b"instances");
        for record in records {
            field(record.sop_instance_uid.as_bytes());
            field(record.payload.sha256.as_bytes());
        }
        let digest = hash.finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        Validator {
            etag: format!("W/\"{hex}-{}\"", records.len()),
            cache_control: if immutable { IMMUTABLE } else { REVALIDATE },
        }
    }

    /// The 304 for a matching If-None-Match: the headers a 200 would have carried for caching
    /// (RFC 9110 §15.4.5), no body.
    pub fn not_modified_response(&self) -> Response<ResponseBody> {
        let mut response =
            Response::builder().status(StatusCode::NOT_MODIFIED).body(super::empty_body()).expect("valid response");
        self.apply(response.headers_mut());
        response
    }

    /// ETag, Cache-Control and `Vary: Accept` (the representation follows the Accept header).
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Ok(value) = HeaderValue::from_str(&self.etag) {
            headers.insert(header::ETAG, value);
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(self.cache_control));
        headers.append(header::VARY, HeaderValue::from_static("Accept"));
    }
}

/// Answers 304 when the request's If-None-Match names `validator`'s tag, without doing the
/// work; otherwise runs `respond` and tags its successful (200 or 206) answer.
pub async fn conditional<F>(
    headers: &HeaderMap,
    validator: Option<Validator>,
    respond: F,
) -> Result<Response<ResponseBody>, Error>
where
    F: Future<Output = Result<Response<ResponseBody>, Error>>,
{
    if let Some(validator) = &validator
        && not_modified(headers, &validator.etag)
    {
        return Ok(validator.not_modified_response());
    }
    let mut response = respond.await?;
    if let Some(validator) = validator
        && matches!(response.status(), StatusCode::OK | StatusCode::PARTIAL_CONTENT)
    {
        validator.apply(response.headers_mut());
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_coding_of_the_content_is_current() {
        let etag = "\"0123-5\"";
        assert!(names_this_content("\"0123-5\"", etag));
        assert!(names_this_content(" \"0123-5-br\"", etag));
        assert!(names_this_content("W/\"0123-5-gzip\"", etag));
        assert!(names_this_content("\"0123-5\"", "W/\"0123-5\""));
        assert!(!names_this_content("\"0123-6\"", etag));
        assert!(!names_this_content("\"0123-5-zstd\"", etag));
    }
}
