//! WADO-RS, the Retrieve transaction (PS3.18 §10.4): study, series and instance resources as
//! `multipart/related; type="application/dicom"`, streamed part by part from the store.

pub mod frames;
pub mod metadata;
pub mod rendered;
pub mod uri;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{HeaderMap, Response, StatusCode, header};

use super::{RequestContext, ResponseBody, accepted_types, stream_body};
use crate::archive::Archive;
use crate::dicom::attrs::Level;
use crate::dicom::encode::{self, Codec, PixelFormat};
use crate::dicom::transcode;
use crate::error::{Error, ErrorKind};
use crate::media::mime::{APPLICATION_DICOM, APPLICATION_ZIP, MULTIPART_RELATED};
use crate::media::multipart;
use crate::media::zip::ZipWriter;
use crate::model::records::InstanceRecord;

/// Explicit VR Little Endian, the default transfer syntax of web services (PS3.18 §8.7.3.4).
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

/// How the instances are framed in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Multipart,
    /// Single-part `application/dicom`, only for an Instance resource (§10.4.4, 2025a).
    Single,
    /// `application/zip`: one archive of PS3.10 files, for downloading a study at once.
    Zip,
}

/// What one instance is sent as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Representation {
    /// The stored bytes.
    Stored,
    /// Re-encoded in Explicit VR Little Endian (`dicom::transcode`).
    ExplicitLittleEndian,
    /// Pixel data encoded losslessly on request (`dicom::encode`).
    Encoded(Codec),
}

/// How a media range's transfer-syntax parameter can be met for an instance stored in
/// `stored_ts` (§8.7.3.5.2: absent means Explicit VR Little Endian, `*` means as stored). Pixel
/// data held only in lossy form goes as stored unless Explicit VR Little Endian is named
/// (§8.7.3.4 allows it; decompressing adds bytes, not quality). `lenient` (wildcard ranges, or
/// no Accept) sends what cannot be converted as stored rather than 406.
///
/// A lossless syntax Kura encodes (`Codec`) is offered when `format` (the instance's Image Pixel
/// attributes) says the codec reproduces the pixels exactly and they are not stored lossy
/// (issue 19); an instance without Pixel Data goes in Explicit VR Little Endian instead, as each
/// part may have its own transfer syntax (§8.7.8.2).
pub(crate) fn representation(
    requested: Option<&str>,
    record: &InstanceRecord,
    lenient: bool,
    format: Option<&PixelFormat>,
) -> Option<Representation> {
    let stored_ts = record.transfer_syntax_uid.as_str();
    if let Some(codec) = requested.and_then(Codec::from_transfer_syntax)
        && codec.transfer_syntax() != stored_ts
    {
        if record.pixel_data.is_none() {
            return representation(Some(EXPLICIT_VR_LITTLE_ENDIAN), record, lenient, None);
        }
        return encode::can_encode(stored_ts, format, codec).is_ok().then_some(Representation::Encoded(codec));
    }
    let convertible = transcode::can_convert_to_explicit_little_endian(stored_ts, record.bits_allocated());
    // Implicit VR Little Endian and Explicit VR Big Endian are never sent (§8.7.3).
    let forbidden = transcode::is_forbidden_on_the_web(stored_ts);
    match requested {
        Some("*") if forbidden && convertible => Some(Representation::ExplicitLittleEndian),
        Some("*") => Some(Representation::Stored),
        Some(ts) if ts == stored_ts && !forbidden => Some(Representation::Stored),
        Some(EXPLICIT_VR_LITTLE_ENDIAN) if convertible => Some(Representation::ExplicitLittleEndian),
        None if stored_ts == EXPLICIT_VR_LITTLE_ENDIAN => Some(Representation::Stored),
        None if transcode::is_lossy(stored_ts) => Some(Representation::Stored),
        None if convertible => Some(Representation::ExplicitLittleEndian),
        None if lenient => Some(Representation::Stored),
        _ => None,
    }
}

/// Picks the framing and each instance's representation from the Accept header, ranges in
/// preference order (§8.7.8); 406 when no range can serve every instance.
fn negotiate(
    headers: &HeaderMap,
    single_instance: bool,
    records: &[InstanceRecord],
    formats: &[Option<PixelFormat>],
) -> Result<(Framing, Vec<Representation>), Error> {
    let plan = |requested: Option<&str>, lenient: bool| -> Option<Vec<Representation>> {
        records
            .iter()
            .enumerate()
            .map(|(i, r)| representation(requested, r, lenient, formats.get(i).and_then(Option::as_ref)))
            .collect()
    };
    let Some(accepted) = accepted_types(headers) else {
        return Ok((Framing::Multipart, plan(None, true).expect("lenient plans always succeed")));
    };
    for media in &accepted {
        let essence = media.essence.as_str();
        let requested = media.param("transfer-syntax");
        let related_dicom = essence == MULTIPART_RELATED
            && media.param("type").is_none_or(|t| t.eq_ignore_ascii_case(APPLICATION_DICOM));
        let (framing, lenient) = match essence {
            _ if related_dicom => (Framing::Multipart, false),
            APPLICATION_DICOM if single_instance => (Framing::Single, false),
            APPLICATION_ZIP => (Framing::Zip, false),
            "*/*" | "multipart/*" => (Framing::Multipart, true),
            _ => continue,
        };
        if let Some(representations) = plan(requested, lenient) {
            return Ok((framing, representations));
        }
    }
    // Why a lossless syntax asked for cannot be produced, for the first instance it fails on.
    let reason = accepted
        .iter()
        .filter_map(|m| m.param("transfer-syntax").and_then(Codec::from_transfer_syntax))
        .find_map(|codec| {
            records.iter().enumerate().find_map(|(i, r)| {
                let format = formats.get(i).and_then(Option::as_ref);
                let ts = r.transfer_syntax_uid.as_str();
                (r.pixel_data.is_some() && ts != codec.transfer_syntax())
                    .then(|| encode::can_encode(ts, format, codec).err())
                    .flatten()
                    .map(|why| format!("; {}: {why}", codec.name()))
            })
        })
        .unwrap_or_default();
    Err(Error::new(
        ErrorKind::NotAcceptable,
        format!(
            "the instances can be served in their stored transfer syntax (ask with transfer-syntax=*), in Explicit \
             VR Little Endian, or losslessly encoded in JPEG-LS (1.2.840.10008.1.2.4.80), JPEG XL \
             (1.2.840.10008.1.2.4.110), JPEG 2000 (1.2.840.10008.1.2.4.90) or HTJ2K (1.2.840.10008.1.2.4.201) \
             when their pixels allow it{reason}"
        ),
    ))
}

/// The bytes of one instance as `representation` says, with their length when known upfront.
fn instance_body(
    archive: &Arc<Archive>,
    record: &InstanceRecord,
    representation: Representation,
) -> (String, Option<u64>, futures_util::stream::BoxStream<'static, Result<Bytes, crate::dicomweb::BoxError>>) {
    match representation {
        Representation::Stored => (
            record.transfer_syntax_uid.clone(),
            Some(record.payload.length),
            archive.payload(record).map(|r| r.map_err(Into::into)).boxed(),
        ),
        Representation::ExplicitLittleEndian => {
            let (archive, record) = (archive.clone(), record.clone());
            let converted = stream::once(async move {
                archive.explicit_little_endian(&record).await.map_err(|e| -> crate::dicomweb::BoxError { Box::new(e) })
            });
            (EXPLICIT_VR_LITTLE_ENDIAN.to_string(), None, converted.boxed())
        }
        Representation::Encoded(codec) => {
            let (archive, record) = (archive.clone(), record.clone());
            let encoded = stream::once(async move {
                archive.encoded_instance(&record, codec).await.map_err(|e| -> crate::dicomweb::BoxError { Box::new(e) })
            });
            (codec.transfer_syntax().to_string(), None, encoded.boxed())
        }
    }
}

/// One part of a multipart response: its header, then its bytes; or nothing when the instance
/// was deleted after the listing (its first piece is read before the header is sent: a missing
/// file fails at open, and a pack entry is read whole in one piece), so a concurrent delete
/// leaves an instance out instead of cutting the response short.
fn part_unless_deleted(
    head: Bytes,
    mut bytes: stream::BoxStream<'static, Result<Bytes, crate::dicomweb::BoxError>>,
) -> stream::BoxStream<'static, Result<Bytes, crate::dicomweb::BoxError>> {
    stream::once(async move {
        match bytes.next().await {
            Some(Err(error)) if was_deleted(error.as_ref()) => stream::empty().boxed(),
            first => stream::iter([Ok(head)]).chain(stream::iter(first)).chain(bytes).boxed(),
        }
    })
    .flatten()
    .boxed()
}

fn was_deleted(error: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    matches!(error.downcast_ref::<crate::blob::BlobError>(), Some(crate::blob::BlobError::Missing(_)))
        || error.downcast_ref::<Error>().is_some_and(|error| error.kind == ErrorKind::NotFound)
}

/// What a ZIP response holds in memory besides its conversions (which reserve their own): the
/// channel's chunks of up to 1 MiB, the blob store's read-ahead, the writer's entries.
const ZIP_MEMORY: u64 = 12 * 1024 * 1024;

/// The instances as one ZIP archive, `{study}/{series}/{instance}.dcm` each, streamed: a producer
/// task writes the archive into a small channel, so at most a few chunks wait in memory and a
/// client that goes away stops it. The producer holds [`ZIP_MEMORY`] of the memory budget until
/// it ends.
async fn zip_response(
    archive: &Arc<Archive>,
    name: &str,
    records: Vec<InstanceRecord>,
    representations: Vec<Representation>,
) -> Result<Response<ResponseBody>, Error> {
    type Item = Result<Bytes, crate::dicomweb::BoxError>;
    let memory = archive.reserve_memory(ZIP_MEMORY + records.len() as u64 * 128).await?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Item>(8);
    let archive = archive.clone();
    tokio::spawn(async move {
        let _memory = memory;
        let mut zip = ZipWriter::default();
        let send = |item: Item| {
            let sender = sender.clone();
            async move { sender.send(item).await.is_ok() }
        };
        for (record, representation) in records.into_iter().zip(representations) {
            let name = format!("{}/{}/{}.dcm", record.study_uid, record.series_uid, record.sop_instance_uid);
            match representation {
                Representation::Stored => {
                    let mut chunks = std::pin::pin!(archive.payload(&record));
                    // The first piece is read before the entry begins, so an instance deleted
                    // since the listing is left out (as metadata does) instead of cutting the
                    // archive short: a missing file fails at open, and a pack entry (at most
                    // 256 KiB) is read whole in one piece, checked against a concurrent delete.
                    let first = match chunks.next().await {
                        None => Bytes::new(),
                        Some(Ok(chunk)) => chunk,
                        Some(Err(crate::blob::BlobError::Missing(_))) => continue,
                        Some(Err(error)) => {
                            send(Err(error.into())).await;
                            return;
                        }
                    };
                    if !send(Ok(zip.begin(&name, record.payload.length).into())).await {
                        return;
                    }
                    zip.data(&first);
                    if !send(Ok(first)).await {
                        return;
                    }
                    while let Some(chunk) = chunks.next().await {
                        let chunk = match chunk {
                            Ok(chunk) => chunk,
                            Err(error) => {
                                send(Err(error.into())).await;
                                return;
                            }
                        };
                        zip.data(&chunk);
                        if !send(Ok(chunk)).await {
                            return;
                        }
                    }
                }
                Representation::ExplicitLittleEndian | Representation::Encoded(_) => {
                    let converted = match representation {
                        Representation::Encoded(codec) => archive.encoded_instance(&record, codec).await,
                        _ => archive.explicit_little_endian(&record).await,
                    };
                    let bytes = match converted {
                        Ok(bytes) => bytes,
                        Err(error) if error.kind == ErrorKind::NotFound => continue,
                        Err(error) => {
                            send(Err(Box::new(error))).await;
                            return;
                        }
                    };
                    let header = zip.begin(&name, bytes.len() as u64);
                    zip.data(&bytes);
                    if !send(Ok(header.into())).await || !send(Ok(bytes)).await {
                        return;
                    }
                }
            }
            match zip.end() {
                Ok(descriptor) => {
                    if !send(Ok(descriptor.into())).await {
                        return;
                    }
                }
                Err(error) => {
                    send(Err(error.into())).await;
                    return;
                }
            }
        }
        send(Ok(zip.finish().into())).await;
    });
    let body =
        stream::unfold(receiver, |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, APPLICATION_ZIP)
        .header(header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}.zip\""))
        .body(stream_body(body))
        .expect("valid response"))
}

/// The level a `{study}[/{series}[/{instance}]]` path addresses.
pub(crate) fn target_level(series: Option<&str>, instance: Option<&str>) -> Level {
    match (series, instance) {
        (Some(_), Some(_)) => Level::Instance,
        (Some(_), None) => Level::Series,
        _ => Level::Study,
    }
}

/// One instance as a single-part `application/dicom` response (WADO-RS Instance, WADO-URI).
pub(crate) async fn single_instance(
    archive: &Arc<Archive>,
    context: &RequestContext,
    record: &InstanceRecord,
    representation: Representation,
) -> Result<Response<ResponseBody>, Error> {
    let (body, ts, length) = match representation {
        Representation::Stored => {
            (stream_body(archive.payload(record)), record.transfer_syntax_uid.clone(), record.payload.length)
        }
        Representation::ExplicitLittleEndian => {
            let bytes = archive.explicit_little_endian(record).await?;
            let length = bytes.len() as u64;
            (super::full_body(bytes), EXPLICIT_VR_LITTLE_ENDIAN.to_string(), length)
        }
        Representation::Encoded(codec) => {
            let bytes = archive.encoded_instance(record, codec).await?;
            let length = bytes.len() as u64;
            (super::full_body(bytes), codec.transfer_syntax().to_string(), length)
        }
    };
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_LENGTH, length)
        .header(header::CONTENT_TYPE, format!("{APPLICATION_DICOM}; transfer-syntax={ts}"))
        .header(header::CONTENT_DISPOSITION, "attachment")
        .header(
            header::CONTENT_LOCATION,
            context.instance_url(&record.study_uid, &record.series_uid, &record.sop_instance_uid),
        )
        .body(body)
        .expect("valid response"))
}

/// `GET {root}/studies/{study}[/series/{series}[/instances/{instance}]]`.
pub async fn retrieve(
    archive: &Arc<Archive>,
    context: &RequestContext,
    study: &str,
    series: Option<&str>,
    instance: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response<ResponseBody>, Error> {
    let level = target_level(series, instance);
    let records = archive.instances_of(&context.principal, level, study, series, instance)?;
    let formats = if super::asks_for_encoding(headers) { archive.pixel_formats(&records).await? } else { Vec::new() };
    let (framing, representations) = negotiate(headers, level == Level::Instance, &records, &formats)?;
    tracing::debug!(instances = records.len(), "wado");

    if framing == Framing::Single {
        return single_instance(archive, context, &records[0], representations[0]).await;
    }
    if framing == Framing::Zip {
        let name = match level {
            Level::Study => study,
            Level::Series => series.unwrap_or_default(),
            Level::Instance => instance.unwrap_or_default(),
        };
        return zip_response(archive, name, records, representations).await;
    }

    let boundary = multipart::new_boundary();
    let mut pieces = Vec::with_capacity(records.len());
    for (i, (record, representation)) in records.iter().zip(representations).enumerate() {
        let location = context.instance_url(&record.study_uid, &record.series_uid, &record.sop_instance_uid);
        let (ts, length, bytes) = instance_body(archive, record, representation);
        let content_type = format!("{APPLICATION_DICOM}; transfer-syntax={ts}");
        let mut head = if i == 0 { Vec::new() } else { b"\r\n".to_vec() };
        head.extend_from_slice(&multipart::part_header(&boundary, &content_type, Some(&location), length));
        pieces.push(part_unless_deleted(Bytes::from(head), bytes));
    }
    let closing = stream::once({
        let boundary = boundary.clone();
        async move { Ok::<_, crate::dicomweb::BoxError>(multipart::closing(&boundary)) }
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
