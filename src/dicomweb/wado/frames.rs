//! WADO-RS frames (PS3.18 §10.4.1.1.5) and bulk data (§10.4.1.1.4): stored bytes cut out by
//! the layout recorded at store time and streamed. Native frames go as
//! `application/octet-stream`, compressed frames in their own media type (Table 8.7.3-5), or
//! decoded to native when the client asks for octet-stream without `transfer-syntax=*`.

use std::sync::Arc;

use bytes::Bytes;
use dicom_dictionary_std::tags;
use futures_util::{StreamExt, stream};
use http::{HeaderMap, Response, StatusCode, header};

use crate::archive::Archive;
use crate::dicom::encode::{self, Codec};
use crate::dicom::frames::{self, FrameError, FrameMap};
use crate::dicom::pixels::{self, PixelDescription};
use crate::dicom::transcode;
use crate::dicomweb::{RequestContext, ResponseBody, accepted_types, stream_body};
use crate::error::{Error, ErrorKind};
use crate::media::mime::{MULTIPART_RELATED, MediaType};
use crate::media::multipart;
use crate::model::records::InstanceRecord;

const OCTET_STREAM: &str = "application/octet-stream";
const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

fn frame_error(error: FrameError) -> Error {
    match error {
        FrameError::NoPixelData => Error::not_found(error.to_string()),
        FrameError::BitPacked | FrameError::Fragments(_) => Error::new(
            ErrorKind::NotAcceptable,
            format!("{error}; the instance is available as stored (application/dicom; transfer-syntax=*)"),
        ),
    }
}

/// The media type and transfer syntax the frames go out in, and where every frame's bytes are.
struct Frames {
    media_type: &'static str,
    transfer_syntax_uid: String,
    video: bool,
    map: Arc<FrameMap>,
    /// Stored re-encoded from native pixel data (`--store-compression`): a request that names
    /// no form gets the frames native, as received, as from a server that stores them so.
    received_native: bool,
}

/// The Image Pixel attributes of a stored instance, checked against its Pixel Data: the one
/// source of every frame count (issue 17: a count taken from NumberOfFrames alone once sized an
/// allocation of 16 GiB).
pub(crate) fn description(record: &InstanceRecord) -> Result<PixelDescription, Error> {
    let layout = record.pixel_data.as_ref().ok_or_else(|| frame_error(FrameError::NoPixelData))?;
    Ok(pixels::describe(|tag| record.number(tag), layout)?)
}

/// Maps the frames of an instance, on the blocking pool: offset tables and fragment markers are
/// read from the store, and the map takes time linear in the fragments.
async fn all_frames(archive: &Arc<Archive>, record: &InstanceRecord) -> Result<Frames, Error> {
    let description = description(record)?;
    let ts = record.transfer_syntax_uid.as_str();
    let layout = record.pixel_data.as_ref().ok_or_else(|| frame_error(FrameError::NoPixelData))?;
    let (media_type, transfer_syntax_uid, video) = if layout.length.is_some() {
        if !frames::is_native_little_endian(ts) {
            return Err(Error::new(
                ErrorKind::NotAcceptable,
                format!("frames of transfer syntax {ts} cannot be served"),
            ));
        }
        // Native data is little endian either way; the bytes are those of Explicit VR LE.
        (OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN.to_string(), false)
    } else {
        let (media_type, video) = frames::media_type(ts).ok_or_else(|| {
            Error::new(ErrorKind::NotAcceptable, format!("frames of transfer syntax {ts} cannot be served"))
        })?;
        (media_type, ts.to_string(), video)
    };
    let map = archive.frame_map(record, &description).await?.map_err(frame_error)?;
    let received_native = archive.original_form(record)?.is_some();
    Ok(Frames { media_type, transfer_syntax_uid, video, map: Arc::new(map), received_native })
}

/// How frames go out: their stored bytes, decoded to native pixels, or encoded losslessly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameForm {
    Stored,
    Decoded,
    /// Encoded with the codec, labelled with the media type the client named (`image/jpx` may
    /// carry JPEG 2000 Part 1 codestreams; the others are the codec's own, Table 8.7.3-5).
    Encoded(Codec, &'static str),
}

/// The lossless codec a `multipart/related` range asks for: by its transfer-syntax parameter
/// when the part type can carry it (`type="*/*"` carries any), else the default syntax of the
/// part type (Table 8.7.3-5), with the label the parts will have.
fn requested_codec(kind: &str, ts: Option<&str>) -> Option<(Codec, &'static str)> {
    match ts {
        Some(ts) => {
            let codec = Codec::from_transfer_syntax(ts)?;
            if kind == "*/*" || codec.carried_by(kind) {
                Some((codec, if kind == "image/jpx" { "image/jpx" } else { codec.media_type() }))
            } else {
                None
            }
        }
        None => Codec::from_media_type(kind).map(|codec| (codec, codec.media_type())),
    }
}

/// The first form the Accept header admits, ranges in preference order (PS3.18 §8.7.8).
/// `transfer-syntax=*` means "as stored"; `application/octet-stream` without it (or with Explicit
/// VR Little Endian) asks compressed frames to be decoded, which Kura does when it has the codec.
///
/// `encodable` says whether a lossless codec can carry the instance's pixels (issue 19): a range
/// that asks for one the stored frames are not in gets them encoded.
fn choose_form(
    headers: &HeaderMap,
    frames: &Frames,
    single_part: bool,
    encodable: &dyn Fn(Codec) -> bool,
) -> Option<FrameForm> {
    // A wildcard that does not ask for the stored form (`transfer-syntax=*`) gets frames stored
    // re-encoded as they were received.
    let any = |ts: Option<&str>| {
        if frames.received_native && ts != Some("*") { FrameForm::Decoded } else { FrameForm::Stored }
    };
    let Some(accepted) = accepted_types(headers) else { return Some(any(None)) };
    let (media_type, stored_ts) = (frames.media_type, frames.transfer_syntax_uid.as_str());
    let decodable = media_type != OCTET_STREAM && transcode::can_decode(stored_ts);
    accepted.iter().find_map(|media: &MediaType| {
        let ts = media.param("transfer-syntax");
        let stored_ok = match ts {
            Some("*") | None => true,
            Some(ts) => ts == stored_ts,
        };
        match media.essence.as_str() {
            "*/*" | "multipart/*" => Some(any(ts)),
            MULTIPART_RELATED => {
                let kind = media.param("type").unwrap_or(OCTET_STREAM).to_ascii_lowercase();
                if kind == "*/*" && frames.received_native && ts.is_none() {
                    return Some(FrameForm::Decoded);
                }
                // `type="*/*"` (dicomweb-client's default for bulk data) takes any part type.
                if ((kind == media_type || kind == "*/*") && stored_ok) || (kind == OCTET_STREAM && ts == Some("*")) {
                    Some(FrameForm::Stored)
                } else if kind == OCTET_STREAM && decodable && ts.is_none_or(|ts| ts == EXPLICIT_VR_LITTLE_ENDIAN) {
                    Some(FrameForm::Decoded)
                } else if let Some((codec, label)) = requested_codec(&kind, ts)
                    && !frames.video
                    && encodable(codec)
                {
                    Some(FrameForm::Encoded(codec, label))
                } else {
                    None
                }
            }
            essence if single_part && essence == media_type && stored_ok => Some(FrameForm::Stored),
            _ => None,
        }
    })
}

fn not_acceptable(frames: &Frames, unencodable: Option<String>) -> Error {
    let decoded = if frames.media_type != OCTET_STREAM && transcode::can_decode(&frames.transfer_syntax_uid) {
        ", or decoded as multipart/related; type=\"application/octet-stream\""
    } else {
        ""
    };
    let encoded = match unencodable {
        Some(why) => format!("; no lossless encoding: {why}"),
        None => ", or losslessly encoded as image/jls, image/jxl, image/jp2 or image/jphc".into(),
    };
    Error::new(
        ErrorKind::NotAcceptable,
        format!(
            "the frames are available as multipart/related; type=\"{}\"; transfer-syntax={} (or ask with \
             transfer-syntax=*){decoded}{encoded}",
            frames.media_type, frames.transfer_syntax_uid
        ),
    )
}

/// Parses `{frames}`: comma-separated frame numbers from 1 (PS3.18 §8.2).
// pub for the fuzz targets (tests/fuzz).
pub fn frame_numbers(list: &str, count: usize) -> Result<Vec<usize>, Error> {
    let mut numbers = Vec::new();
    for item in list.split(',') {
        let number: usize = item
            .trim()
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| Error::bad_request(format!("frame number {item:?} is not a positive integer")))?;
        if number > count {
            return Err(Error::not_found(format!("frame {number} does not exist; the instance has {count} frame(s)")));
        }
        numbers.push(number);
    }
    Ok(numbers)
}

/// What one part of a frames or bulk data response holds.
enum Part {
    /// These frames (0-based) of the map, one after the other.
    Frames(std::ops::Range<u32>),
    /// One stored value: offset and length.
    Value(u64, u64),
}

/// A multipart/related response with one part per item, each a list of stored byte ranges.
/// Parts and ranges are produced as the body streams: nothing is built per frame up front.
fn multipart_response(
    archive: &Arc<Archive>,
    record: &InstanceRecord,
    map: Option<Arc<FrameMap>>,
    media_type: &str,
    transfer_syntax_uid: &str,
    parts: impl Iterator<Item = (String, Part)> + Send + 'static,
) -> Response<ResponseBody> {
    let boundary = multipart::new_boundary();
    let part_type = format!("{media_type}; transfer-syntax={transfer_syntax_uid}");
    let layout = Arc::new(record.pixel_data.clone().unwrap_or_else(|| crate::dicom::layout::PixelDataLayout {
        offset: 0,
        length: Some(0),
        fragments: Vec::new(),
        vr: None,
    }));
    let (archive, record, head_boundary) = (archive.clone(), record.clone(), boundary.clone());
    let body = stream::iter(parts.enumerate()).flat_map(move |(i, (location, part))| {
        let ranges: Box<dyn Iterator<Item = (u64, u64)> + Send> = match (part, &map) {
            (Part::Value(offset, length), _) => Box::new(std::iter::once((offset, length))),
            (Part::Frames(frames), Some(map)) => {
                let (map, layout) = (map.clone(), layout.clone());
                Box::new(frames.flat_map(move |frame| map.ranges(&layout, frame).collect::<Vec<_>>()))
            }
            (Part::Frames(_), None) => Box::new(std::iter::empty()),
        };
        let ranges: Vec<(u64, u64)> = ranges.collect();
        let length: u64 = ranges.iter().map(|(_, l)| l).sum();
        let mut head = if i == 0 { Vec::new() } else { b"\r\n".to_vec() };
        head.extend_from_slice(&multipart::part_header(&head_boundary, &part_type, Some(&location), Some(length)));
        let (archive, record) = (archive.clone(), record.clone());
        stream::once(async move { Ok(Bytes::from(head)) }).chain(
            stream::iter(ranges).flat_map(move |(offset, length)| archive.payload_range(&record, offset, length)),
        )
    });
    let closing = multipart::closing(&boundary);
    let body = body.chain(stream::once(async move { Ok(closing) }));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, format!("{MULTIPART_RELATED}; type=\"{media_type}\"; boundary={boundary}"))
        .body(stream_body(body))
        .expect("valid response")
}

/// A multipart/related response of native pixel bytes decoded from compressed frames.
fn decoded_response(parts: Vec<(String, Vec<Bytes>)>) -> Response<ResponseBody> {
    computed_response(parts, OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN)
}

/// A multipart/related response of frames computed on request (decoded or encoded), each part
/// `media_type; transfer-syntax=…`.
fn computed_response(parts: Vec<(String, Vec<Bytes>)>, media_type: &str, ts: &str) -> Response<ResponseBody> {
    // The decoded bytes are sent as they are, not copied into one body: they hold the memory
    // budget's reservation until the last of them has been sent (or the client has gone).
    let boundary = multipart::new_boundary();
    let part_type = format!("{media_type}; transfer-syntax={ts}");
    let mut pieces: Vec<Bytes> = Vec::with_capacity(parts.len() * 2 + 1);
    for (i, (location, chunks)) in parts.into_iter().enumerate() {
        let length = chunks.iter().map(|chunk| chunk.len() as u64).sum();
        let mut head = if i > 0 { b"\r\n".to_vec() } else { Vec::new() };
        head.extend_from_slice(&multipart::part_header(&boundary, &part_type, Some(&location), Some(length)));
        pieces.push(Bytes::from(head));
        pieces.extend(chunks);
    }
    pieces.push(multipart::closing(&boundary));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, format!("{MULTIPART_RELATED}; type=\"{media_type}\"; boundary={boundary}"))
        .body(stream_body(stream::iter(pieces.into_iter().map(Ok::<_, std::convert::Infallible>))))
        .expect("valid response")
}

/// `GET …/instances/{instance}/frames/{frames}`.
pub async fn frames(
    archive: &Arc<Archive>,
    context: &RequestContext,
    record: &InstanceRecord,
    list: &str,
    headers: &HeaderMap,
) -> Result<Response<ResponseBody>, Error> {
    let all = all_frames(archive, record).await?;
    let numbers = frame_numbers(list, all.map.len() as usize)?;
    // The pixel format is read from the stored header only when a lossless syntax is asked for.
    let encodability = if crate::dicomweb::asks_for_encoding(headers) {
        let format = archive.pixel_formats(std::slice::from_ref(record)).await?.pop().flatten();
        let ts = record.transfer_syntax_uid.clone();
        Some(move |codec| encode::can_encode(&ts, format.as_ref(), codec))
    } else {
        None
    };
    let encodable = |codec| encodability.as_ref().is_some_and(|check| check(codec).is_ok());
    let form = choose_form(headers, &all, false, &encodable).ok_or_else(|| {
        let why = encodability
            .as_ref()
            .and_then(|check| Codec::SMALLEST_FIRST.into_iter().find_map(|codec| check(codec).err()));
        not_acceptable(&all, why)
    })?;
    let instance_url = context.instance_url(&record.study_uid, &record.series_uid, &record.sop_instance_uid);
    if let FrameForm::Encoded(codec, label) = form {
        let indices = numbers.iter().map(|n| *n as u32 - 1).collect();
        let encoded = archive.encoded_frames(record, indices, codec).await?;
        let locations = numbers.iter().map(|n| format!("{instance_url}/frames/{n}"));
        let parts = locations.zip(encoded.into_iter().map(|frame| vec![frame])).collect();
        return Ok(computed_response(parts, label, codec.transfer_syntax()));
    }
    if form == FrameForm::Decoded {
        let indices = numbers.iter().map(|n| *n as u32 - 1).collect();
        let decoded = archive.decoded_frames(record, indices).await?;
        let locations = numbers.iter().map(|n| format!("{instance_url}/frames/{n}"));
        return Ok(decoded_response(locations.zip(decoded.into_iter().map(|frame| vec![frame])).collect()));
    }
    let parts: Vec<(String, Part)> = if all.video {
        // Video: all frames in one part (§8.7.3.3.2).
        vec![(format!("{instance_url}/frames/{list}"), Part::Frames(0..all.map.len()))]
    } else {
        let frame = |n: usize| Part::Frames(n as u32 - 1..n as u32);
        numbers.iter().map(|n| (format!("{instance_url}/frames/{n}"), frame(*n))).collect()
    };
    tracing::debug!(frames = parts.len(), "wado frames");
    let map = Some(all.map.clone());
    Ok(multipart_response(archive, record, map, all.media_type, &all.transfer_syntax_uid, parts.into_iter()))
}

/// A single `bytes=` range of a value of `length` bytes (RFC 9110 §14.1.2); `None` when absent or
/// not understood (the whole value is then sent), `Err` when unsatisfiable.
// pub for the fuzz targets (tests/fuzz).
pub fn byte_range(headers: &HeaderMap, length: u64) -> Result<Option<(u64, u64)>, Error> {
    let Some(spec) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else { return Ok(None) };
    let Some(spec) = spec.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.split_once('-') else { return Ok(None) };
    let (first, last) = (first.trim(), last.trim());
    let unsatisfiable = || Error::new(ErrorKind::RangeNotSatisfiable, format!("the value has {length} bytes"));
    let range = match (first.parse::<u64>().ok(), last.parse::<u64>().ok()) {
        (Some(first), Some(last)) if first <= last => (first, last.min(length.saturating_sub(1))),
        (Some(first), None) if last.is_empty() => (first, length.saturating_sub(1)),
        (None, Some(suffix)) if first.is_empty() && suffix > 0 => {
            (length.saturating_sub(suffix), length.saturating_sub(1))
        }
        _ => return Ok(None),
    };
    if range.0 >= length {
        return Err(unsatisfiable());
    }
    Ok(Some(range))
}

/// A bulk data value computed in memory (Pixel Data of an instance stored re-encoded), answered
/// as `bulkdata` answers a stored value: one part, or with `application/octet-stream` first a
/// single body where HTTP Range applies.
fn value_response(headers: &HeaderMap, location: String, value: Bytes) -> Result<Response<ResponseBody>, Error> {
    if !single_part_wanted(headers)? {
        return Ok(decoded_response(vec![(location, vec![value])]));
    }
    let length = value.len() as u64;
    ranged_response(headers, length, location, |first, served| {
        crate::dicomweb::full_body(value.slice(first as usize..(first + served) as usize))
    })
}

/// Whether a bulk data request asks for a single body (`application/octet-stream` first, where
/// HTTP Range applies) rather than one part; 406 when neither form is acceptable.
fn single_part_wanted(headers: &HeaderMap) -> Result<bool, Error> {
    let single_part =
        accepted_types(headers).is_some_and(|accepted| accepted.first().is_some_and(|m| m.essence == OCTET_STREAM));
    if !single_part {
        let native = Frames {
            media_type: OCTET_STREAM,
            transfer_syntax_uid: EXPLICIT_VR_LITTLE_ENDIAN.into(),
            video: false,
            map: Arc::new(FrameMap::Single),
            received_native: false,
        };
        if choose_form(headers, &native, false, &|_| false).is_none() {
            return Err(Error::new(ErrorKind::NotAcceptable, "bulk data is available as application/octet-stream"));
        }
    }
    Ok(single_part)
}

/// A single-part bulk data answer of a value of `length` bytes: 200, or 206 for one satisfiable
/// `Range`; `body` gives the `served` bytes from `first`.
fn ranged_response(
    headers: &HeaderMap,
    length: u64,
    location: String,
    body: impl FnOnce(u64, u64) -> ResponseBody,
) -> Result<Response<ResponseBody>, Error> {
    let (status, first, last) = match byte_range(headers, length)? {
        Some((first, last)) => (StatusCode::PARTIAL_CONTENT, first, last),
        None => (StatusCode::OK, 0, length.saturating_sub(1)),
    };
    let served = if length == 0 { 0 } else { last - first + 1 };
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, OCTET_STREAM)
        .header(header::CONTENT_LENGTH, served)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LOCATION, location);
    if status == StatusCode::PARTIAL_CONTENT {
        response = response.header(header::CONTENT_RANGE, format!("bytes {first}-{last}/{length}"));
    }
    Ok(response.body(body(first, served)).expect("valid response"))
}

/// A nested bulk data path, `{sequence}/{item}/…/{tag}`: tags of 8 hex digits, item numbers
/// from 1 (the form `dicom::json::nested_bulk_path` writes).
fn nested_path(text: &str) -> Option<Vec<u32>> {
    text.split('/')
        .enumerate()
        .map(|(i, segment)| match i % 2 {
            0 => u32::from_str_radix(segment, 16).ok().filter(|_| segment.len() == 8),
            _ => segment.parse::<u32>().ok().filter(|n| *n >= 1 && !segment.starts_with(['0', '+'])),
        })
        .collect()
}

/// `GET …/instances/{instance}/bulkdata/{tag}`: the value of a top-level element that the
/// metadata gave as BulkDataURI, or `…/bulkdata/{sequence}/{item}/…/{tag}` for a large value
/// inside a sequence. Pixel Data of compressed instances goes as its frames.
pub async fn bulkdata(
    archive: &Arc<Archive>,
    context: &RequestContext,
    record: &InstanceRecord,
    tag_text: &str,
    headers: &HeaderMap,
) -> Result<Response<ResponseBody>, Error> {
    let path = nested_path(tag_text).ok_or_else(|| {
        Error::bad_request(format!(
            "{tag_text:?} is not a bulk data reference (a tag of 8 hex digits, or sequence/item/…/tag)"
        ))
    })?;
    let tag = path[0];
    let location = format!(
        "{}/bulkdata/{tag_text}",
        context.instance_url(&record.study_uid, &record.series_uid, &record.sop_instance_uid)
    );
    let pixel_data = (u32::from(tags::PIXEL_DATA.group()) << 16) | u32::from(tags::PIXEL_DATA.element());
    let (offset, length) = if path.len() > 1 {
        archive
            .nested_value(record, path)
            .await?
            .ok_or_else(|| Error::not_found(format!("no bulk data {tag_text} in this instance")))?
    } else if tag == pixel_data {
        // Stored re-encoded (`--store-compression`): the value as received, as when stored so.
        if let Some(value) = archive.received_pixel_data(record).await? {
            return value_response(headers, location, value);
        }
        let layout = record.pixel_data.as_ref().ok_or_else(|| Error::not_found("the instance has no pixel data"))?;
        match layout.length {
            Some(length) => (layout.offset, length),
            None => {
                let all = all_frames(archive, record).await?;
                let form = choose_form(headers, &all, false, &|_| false).ok_or_else(|| not_acceptable(&all, None))?;
                if form == FrameForm::Decoded {
                    let indices = (0..all.map.len()).collect();
                    let native = archive.decoded_frames(record, indices).await?;
                    return Ok(decoded_response(vec![(location, native)]));
                }
                let parts = (0..all.map.len()).map(move |frame| (location.clone(), Part::Frames(frame..frame + 1)));
                let map = Some(all.map.clone());
                return Ok(multipart_response(archive, record, map, all.media_type, &all.transfer_syntax_uid, parts));
            }
        }
    } else {
        let value = record
            .large_values
            .iter()
            .find(|v| v.tag == tag)
            .ok_or_else(|| Error::not_found(format!("no bulk data {tag_text} in this instance")))?;
        (value.offset, value.length)
    };
    if !single_part_wanted(headers)? {
        let parts = std::iter::once((location, Part::Value(offset, length)));
        return Ok(multipart_response(archive, record, None, OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, parts));
    }
    // Single part: HTTP Range applies to the value's bytes.
    ranged_response(headers, length, location, |first, served| {
        stream_body(archive.payload_range(record, offset + first, served))
    })
}
