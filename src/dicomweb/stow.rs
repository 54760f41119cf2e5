//! STOW-RS, the Store transaction (PS3.18 §10.5, Annex I).
//!
//! Parts are streamed into the archive one at a time with hard limits; each part succeeds or
//! fails on its own. The response is sent only after every stored instance is durable and
//! searchable.

use std::sync::Arc;

use bytes::Bytes;
use dicom_core::VR;
use dicom_dictionary_std::tags;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::BodyExt;

use super::dataset::{Dataset, Values};
use super::{RequestContext, ResponseBody, accepted_types, full_body};
use crate::archive::{Archive, InstanceFailure, StoreBatch, StoredInstance};
use crate::config::Config;
use crate::error::{Error, ErrorKind, FailureReason};
use crate::media::inflate::{self, Inflate, InflateLimits, RequestCoding};
use crate::media::mime::{APPLICATION_DICOM, APPLICATION_DICOM_XML, MULTIPART_RELATED, MediaType};
use crate::media::multipart::{self, BodyError, GuardedBody};

/// What happened to the instances of one request.
#[derive(Default)]
struct Outcome {
    stored: Vec<StoredInstance>,
    failed: Vec<InstanceFailure>,
    /// A failure of the request itself after which no further part could be read.
    request_error: Option<Error>,
}

fn body_error(error: BodyError) -> Error {
    match error {
        BodyError::RequestTooLarge(_)
        | BodyError::PartHeaderTooLarge(_)
        | BodyError::InflatedTooLarge(_)
        | BodyError::InflateRatio { .. } => Error::new(ErrorKind::PayloadTooLarge, error.to_string()),
        BodyError::PreambleTooLarge(_)
        | BodyError::EpilogueTooLarge(_)
        | BodyError::Transport(_)
        | BodyError::Coding(_) => Error::bad_request(error.to_string()),
    }
}

fn multer_error(error: multer::Error) -> Error {
    // multer wraps our GuardedBody errors; surface their kind.
    if let multer::Error::StreamReadFailed(inner) = &error
        && let Some(body) = inner.downcast_ref::<BodyError>()
    {
        return body_error(body.clone());
    }
    Error::bad_request(format!("malformed multipart/related body: {error}"))
}

/// `POST {root}/studies[/{study}]`.
pub async fn store<B>(
    archive: &Arc<Archive>,
    config: &Config,
    context: &RequestContext,
    study: Option<&str>,
    request: Request<B>,
) -> Result<Response<ResponseBody>, Error>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send + Sync,
{
    let want_xml = wants_xml(request.headers());
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(MediaType::parse)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::UnsupportedMediaType,
                "Content-Type must be multipart/related; type=\"application/dicom\"",
            )
        })?;
    if let Some(length) = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()) {
        let length: u64 = length.parse().map_err(|_| Error::bad_request("Content-Length is not a number"))?;
        if length > config.max_request_bytes {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "request body of {length} bytes is larger than the limit of {} bytes",
                    config.max_request_bytes
                ),
            ));
        }
    }
    // RFC 9110 §8.4: a coded body is inflated as it arrives (`media::inflate`), under the
    // request limit and the inflate ratio; everything after sees the inflated bytes.
    let coding = inflate::request_coding(request.headers())
        .map_err(|e| Error::new(ErrorKind::UnsupportedContentCoding, e.to_string()))?;
    let permit = match coding {
        // Brotli's window (up to 16 MiB) is the one decoder state worth counting.
        RequestCoding::Brotli => Some(archive.reserve_memory(inflate::BROTLI_MEMORY).await?),
        _ => None,
    };

    let related = if content_type.is(MULTIPART_RELATED) {
        Some(multipart::related(&content_type).map_err(|e| Error::bad_request(e.to_string()))?)
    } else {
        None
    };
    let raw = Shared(Arc::new(std::sync::Mutex::new(request.into_body().into_data_stream())));
    let limits = InflateLimits { max_bytes: config.max_request_bytes, max_ratio: config.max_inflate_ratio };
    let body = GuardedBody::new(
        Inflate::new(Shared(raw.0.clone()), coding, limits, permit),
        related.as_ref().map(|r| r.boundary.as_str()),
        config.max_request_bytes,
        config.max_part_header_bytes,
    );
    let outcome = if content_type.is(APPLICATION_DICOM) {
        // A single instance without multipart framing (accepted as Microsoft and Google do).
        single_part(archive, context, study, body).await
    } else if content_type.is(MULTIPART_RELATED) {
        let related = multipart::related(&content_type).map_err(|e| Error::bad_request(e.to_string()))?;
        if !related.root_type.is_empty() && related.root_type != APPLICATION_DICOM {
            return Err(Error::new(
                ErrorKind::UnsupportedMediaType,
                format!(
                    "multipart/related type=\"{}\" is not supported; send type=\"application/dicom\" (PS3.18 §10.5.1.4)",
                    related.root_type
                ),
            ));
        }
        multipart_parts(archive, config, context, study, body, &related.boundary).await
    } else {
        return Err(Error::new(
            ErrorKind::UnsupportedMediaType,
            format!(
                "Content-Type {} is not supported; send multipart/related; type=\"application/dicom\"",
                content_type.essence
            ),
        ));
    };

    if let Some(error) = &outcome.request_error
        && (error.kind != ErrorKind::PayloadTooLarge || coding != RequestCoding::Identity)
    {
        // A client still sending when the server answers and closes gets a reset, and with it
        // no response at all (a malformed part header at the start of a large body did that):
        // the rest of the body, bounded by the request limit, is read and dropped first. A
        // coded body over a limit is drained too: its limits count inflated bytes, so what is
        // left of the coded body is small beside them (a deflate bomb is a megabyte).
        drain(raw, config.max_request_bytes).await;
    }
    if !outcome.stored.is_empty() {
        // Acknowledge nothing before it is durable and searchable.
        archive.make_durable().await?;
    }
    render(context, study, outcome, want_xml)
}

/// The request body, read by multer (through [`GuardedBody`]) while parts are read, and then
/// by [`drain`]: never both at once.
struct Shared<S>(Arc<std::sync::Mutex<S>>);

impl<S: futures_util::Stream + Unpin> futures_util::Stream for Shared<S> {
    type Item = S::Item;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<S::Item>> {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        std::pin::Pin::new(&mut *inner).poll_next(cx)
    }
}

/// Reads and drops what is left of a request body, up to `limit` bytes.
async fn drain<S, E>(mut body: Shared<S>, limit: u64)
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
{
    let mut seen = 0u64;
    while let Some(Ok(bytes)) = body.next().await {
        seen += bytes.len() as u64;
        if seen > limit {
            break;
        }
    }
}

impl Outcome {
    /// Takes in what a batch recorded.
    async fn settle(&mut self, batch: StoreBatch<'_>) {
        for result in batch.finish().await {
            match result {
                Ok(stored) => self.stored.push(stored),
                Err(failure) => self.failed.push(failure),
            }
        }
    }
}

async fn single_part<S>(archive: &Archive, context: &RequestContext, study: Option<&str>, body: S) -> Outcome
where
    S: futures_util::Stream<Item = Result<Bytes, BodyError>> + Unpin,
{
    let mut outcome = Outcome::default();
    let mut batch = archive.begin_store(&context.principal);
    if let Err(error) = batch.add(study, body).await {
        outcome.request_error = Some(body_error(error));
    }
    outcome.settle(batch).await;
    outcome
}

async fn multipart_parts<S>(
    archive: &Archive,
    config: &Config,
    context: &RequestContext,
    study: Option<&str>,
    body: S,
    boundary: &str,
) -> Outcome
where
    S: futures_util::Stream<Item = Result<Bytes, BodyError>> + Send + Unpin + 'static,
{
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(config.max_request_bytes));
    let mut parts = multer::Multipart::with_constraints(body, boundary.to_string(), constraints);
    let mut outcome = Outcome::default();
    let mut batch = archive.begin_store(&context.principal);
    let mut n_parts = 0usize;
    loop {
        let field = match parts.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(error) => {
                outcome.request_error = Some(multer_error(error));
                break;
            }
        };
        n_parts += 1;
        if n_parts > config.max_parts {
            outcome.request_error = Some(Error::new(
                ErrorKind::PayloadTooLarge,
                format!("request has more than the limit of {} parts", config.max_parts),
            ));
            break;
        }
        if let Some(part_type) = field.content_type()
            && part_type.essence_str() != APPLICATION_DICOM
        {
            outcome.failed.push(InstanceFailure {
                sop_class_uid: None,
                sop_instance_uid: None,
                reason: FailureReason::CannotUnderstand,
                message: format!("part Content-Type {part_type} is not application/dicom"),
            });
            continue;
        }
        let field_stream = field.map(|chunk| chunk.map_err(multer_error));
        if let Err(error) = batch.add(study, field_stream).await {
            outcome.request_error = Some(error);
            break;
        }
    }
    outcome.settle(batch).await;
    if n_parts == 0 && outcome.request_error.is_none() {
        outcome.request_error = Some(Error::bad_request("the request contains no parts"));
    }
    outcome
}

/// Whether the response should be XML: the first acceptable of the two representations
/// (PS3.18 §10.5.3.3: JSON is the default).
fn wants_xml(headers: &HeaderMap) -> bool {
    let Some(accepted) = accepted_types(headers) else { return false };
    for media in accepted {
        if media.is(APPLICATION_DICOM_XML)
            || (media.is(MULTIPART_RELATED)
                && media.param("type").is_some_and(|t| t.eq_ignore_ascii_case(APPLICATION_DICOM_XML)))
        {
            return true;
        }
        if media.is(super::query::APPLICATION_DICOM_JSON)
            || media.is("application/json")
            || media.essence.ends_with("/*")
        {
            return false;
        }
    }
    false
}

/// The Store Instances Response Module (Annex I, Table I.1-1), with the status of
/// Table 10.5.3-1: 200 all stored, 202 some failed, 409 none stored.
fn render(
    context: &RequestContext,
    study: Option<&str>,
    outcome: Outcome,
    want_xml: bool,
) -> Result<Response<ResponseBody>, Error> {
    if let Some(error) = &outcome.request_error
        && outcome.stored.is_empty()
        && outcome.failed.is_empty()
    {
        return Err(Error::new(error.kind, error.message.clone()));
    }
    let mut response = Dataset::new();
    let mut studies: Vec<&str> = outcome.stored.iter().map(|s| s.study_uid.as_str()).collect();
    studies.sort_unstable();
    studies.dedup();
    let study_url = study.or(match studies.as_slice() {
        [only] => Some(*only),
        _ => None,
    });
    match study_url {
        Some(uid) => response.put_str(tags::RETRIEVE_URL, VR::UR, context.study_url(uid)),
        None => response.put(tags::RETRIEVE_URL, VR::UR, Values::Empty),
    };
    if !outcome.failed.is_empty() {
        let items = outcome
            .failed
            .iter()
            .map(|failure| {
                let mut item = Dataset::new();
                item.put_strings(
                    tags::REFERENCED_SOP_CLASS_UID,
                    VR::UI,
                    failure.sop_class_uid.iter().cloned().collect(),
                );
                item.put_strings(
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    VR::UI,
                    failure.sop_instance_uid.iter().cloned().collect(),
                );
                item.put_str(tags::FAILURE_REASON, VR::US, failure.reason.code().to_string());
                item
            })
            .collect();
        response.put(tags::FAILED_SOP_SEQUENCE, VR::SQ, Values::Items(items));
    }
    if !outcome.stored.is_empty() {
        let items = outcome
            .stored
            .iter()
            .map(|stored| {
                let mut item = Dataset::new();
                item.put_str(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &stored.sop_class_uid);
                item.put_str(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &stored.sop_instance_uid);
                item.put_str(
                    tags::RETRIEVE_URL,
                    VR::UR,
                    context.instance_url(&stored.study_uid, &stored.series_uid, &stored.sop_instance_uid),
                );
                item
            })
            .collect();
        response.put(tags::REFERENCED_SOP_SEQUENCE, VR::SQ, Values::Items(items));
    }
    let status = match (&outcome.request_error, outcome.stored.is_empty(), outcome.failed.is_empty()) {
        (Some(error), _, _) => {
            let mut item = Dataset::new();
            let code = if error.kind == ErrorKind::PayloadTooLarge { 0xA700u16 } else { 0xC000 };
            item.put_str(tags::FAILURE_REASON, VR::US, code.to_string());
            response.put(tags::OTHER_FAILURES_SEQUENCE, VR::SQ, Values::Items(vec![item]));
            error.kind.http_status()
        }
        (None, false, true) => StatusCode::OK,
        (None, false, false) => StatusCode::ACCEPTED,
        (None, true, _) => StatusCode::CONFLICT,
    };

    let (content_type, body) = if want_xml {
        let boundary = multipart::new_boundary();
        let xml = response.to_xml();
        let mut body = multipart::part_header(&boundary, APPLICATION_DICOM_XML, None, Some(xml.len() as u64)).to_vec();
        body.extend_from_slice(xml.as_bytes());
        body.extend_from_slice(&multipart::closing(&boundary));
        (format!("multipart/related; type=\"{APPLICATION_DICOM_XML}\"; boundary={boundary}"), body)
    } else {
        ("application/dicom+json".to_string(), serde_json::to_vec(&response.to_json()).expect("json"))
    };
    // RFC 9110 §12.5.3: the codings a STOW-RS body may use, for clients that look.
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ACCEPT_ENCODING, inflate::ACCEPTED_CODINGS);
    if let Some(uid) = study_url
        && !outcome.stored.is_empty()
    {
        // Table 10.5.3-2: Content-Location and Location name the study the instances went to.
        builder = builder
            .header(header::CONTENT_LOCATION, context.study_url(uid))
            .header(header::LOCATION, context.study_url(uid));
    }
    let mut response = builder.body(full_body(Bytes::from(body))).expect("valid response");
    add_warnings(response.headers_mut(), context, &outcome);
    // For the audit trail (`server::service` records it): the studies stored into.
    response.extensions_mut().insert(crate::audit::AuditNote {
        studies: studies.iter().map(|uid| uid.to_string()).collect(),
        detail: Some(format!("{} stored, {} failed", outcome.stored.len(), outcome.failed.len())),
    });
    tracing::info!(stored = outcome.stored.len(), failed = outcome.failed.len(), "stow");
    Ok(response)
}

/// `Warning: 299 {service}: {code} {text}` per failure (PS3.18 §10.5.3.2), so that a human
/// with curl sees why; at most ten.
fn add_warnings(headers: &mut HeaderMap, context: &RequestContext, outcome: &Outcome) {
    let messages = outcome
        .failed
        .iter()
        .map(|f| format!("{:04X} {}", f.reason.code(), f.message))
        .chain(outcome.request_error.iter().map(|e| e.public_message().to_string()));
    for message in messages.take(10) {
        let text = format!("299 {}: {}", context.base_url, message.replace(['"', '\r', '\n'], " "));
        if let Ok(value) = HeaderValue::from_str(&text) {
            headers.append(header::WARNING, value);
        }
    }
}
