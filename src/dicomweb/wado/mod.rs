//! WADO-RS, the Retrieve transaction (PS3.18 §10.4): study, series and instance resources as
//! `multipart/related; type="application/dicom"`, streamed part by part from the store.

pub mod frames;
pub mod metadata;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{HeaderMap, Response, StatusCode, header};

use super::{RequestContext, ResponseBody, accepted_types, stream_body};
use crate::archive::Archive;
use crate::dicom::attrs::Level;
use crate::error::{Error, ErrorKind};
use crate::media::mime::{APPLICATION_DICOM, MULTIPART_RELATED, MediaType};
use crate::media::multipart;
use crate::store::InstanceRecord;

/// Explicit VR Little Endian, the default transfer syntax of web services (PS3.18 §8.7.3.4).
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

/// How the instances are framed in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Multipart,
    /// Single-part `application/dicom`, only for an Instance resource (§10.4.4, 2025a).
    Single,
}

/// Whether a media range accepts an instance stored in `stored_ts` without transcoding.
fn accepts_stored(media: &MediaType, stored_ts: &str) -> bool {
    match media.param("transfer-syntax") {
        Some("*") => true,
        Some(ts) => ts == stored_ts,
        None => stored_ts == EXPLICIT_VR_LITTLE_ENDIAN,
    }
}

/// Picks the framing; 406 when no acceptable representation exists (§8.7.8.1 step 5).
fn negotiate(headers: &HeaderMap, single_instance: bool, records: &[InstanceRecord]) -> Result<Framing, Error> {
    let all_acceptable = |media: &MediaType| records.iter().all(|r| accepts_stored(media, &r.transfer_syntax_uid));
    let Some(accepted) = accepted_types(headers) else { return Ok(Framing::Multipart) };
    for media in &accepted {
        let essence = media.essence.as_str();
        let related_dicom = essence == MULTIPART_RELATED
            && media.param("type").is_none_or(|t| t.eq_ignore_ascii_case(APPLICATION_DICOM));
        if related_dicom && all_acceptable(media) {
            return Ok(Framing::Multipart);
        }
        if essence == APPLICATION_DICOM && single_instance && all_acceptable(media) {
            return Ok(Framing::Single);
        }
        if essence == "*/*" || essence == "multipart/*" {
            return Ok(Framing::Multipart);
        }
    }
    Err(Error::new(
        ErrorKind::NotAcceptable,
        "the instances can be served as multipart/related; type=\"application/dicom\" in their stored transfer \
         syntax (ask with transfer-syntax=*); transcoding is not available yet",
    ))
}

/// `GET {root}/studies/{study}[/series/{series}[/instances/{instance}]]`.
pub fn retrieve(
    archive: &Arc<Archive>,
    context: &RequestContext,
    study: &str,
    series: Option<&str>,
    instance: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response<ResponseBody>, Error> {
    let level = match (series, instance) {
        (Some(_), Some(_)) => Level::Instance,
        (Some(_), None) => Level::Series,
        _ => Level::Study,
    };
    let records = archive.instances_of(&context.principal, level, study, series, instance)?;
    let framing = negotiate(headers, level == Level::Instance, &records)?;
    tracing::debug!(instances = records.len(), "wado");

    if framing == Framing::Single {
        let record = &records[0];
        let content_type = format!("{APPLICATION_DICOM}; transfer-syntax={}", record.transfer_syntax_uid);
        return Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, record.payload.length)
            .header(header::CONTENT_DISPOSITION, "attachment")
            .header(
                header::CONTENT_LOCATION,
                context.instance_url(&record.study_uid, &record.series_uid, &record.sop_instance_uid),
            )
            .body(stream_body(archive.payload(record)))
            .expect("valid response"));
    }

    let boundary = multipart::new_boundary();
    let mut pieces = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        let location = context.instance_url(&record.study_uid, &record.series_uid, &record.sop_instance_uid);
        let content_type = format!("{APPLICATION_DICOM}; transfer-syntax={}", record.transfer_syntax_uid);
        let mut head = if i == 0 { Vec::new() } else { b"\r\n".to_vec() };
        head.extend_from_slice(&multipart::part_header(
            &boundary,
            &content_type,
            Some(&location),
            Some(record.payload.length),
        ));
        let head = stream::once(async move { Ok(Bytes::from(head)) });
        pieces.push(head.chain(archive.payload(record)).boxed());
    }
    let closing = stream::once({
        let boundary = boundary.clone();
        async move { Ok(multipart::closing(&boundary)) }
    });
    let body = stream::iter(pieces).flatten().chain(closing);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, format!("{MULTIPART_RELATED}; type=\"{APPLICATION_DICOM}\"; boundary={boundary}"))
        .header(
            header::CONTENT_LOCATION,
            match level {
                Level::Study => context.study_url(study),
                Level::Series => context.series_url(study, series.unwrap_or_default()),
                Level::Instance => {
                    context.instance_url(study, series.unwrap_or_default(), instance.unwrap_or_default())
                }
            },
        )
        .body(stream_body(body))
        .expect("valid response"))
}
