//! WADO-RS Rendered and Thumbnail resources (PS3.18 §10.4.1.1.3, §10.4.1.1.4, §8.3.5): study,
//! series, instance and frames rendered to `image/jpeg` (the default) or `image/png`, with the
//! `quality`, `viewport` and `window` parameters; `annotation` is accepted but nothing is burnt
//! in (Warning 299). A single image goes as a single part; several (a series, a multi-frame
//! instance) as `multipart/related; type="image/…"`, rendered one instance at a time while the
//! response streams. A thumbnail is one image of a representative frame, 128 pixels at most
//! unless `viewport` says otherwise, with no patient information.

use std::sync::Arc;

use bytes::Bytes;
use dicom_dictionary_std::tags;
use dicom_pixeldata::VoiLutFunction;
use futures_util::stream;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use super::target_level;
use crate::archive::Archive;
use crate::archive::renditions::{DEFAULT_QUALITY, thumbnail_options};
use crate::dicom::render::{ImageFormat, RenderOptions, Viewport};
use crate::dicomweb::query::pairs;
use crate::dicomweb::{RequestContext, ResponseBody, accepted_types, full_body, stream_body};
use crate::error::{Error, ErrorKind};
use crate::media::mime::MULTIPART_RELATED;
use crate::media::multipart;
use crate::model::records::InstanceRecord;

/// Frames rendered per codec job when streaming a multipart response.
const FRAMES_PER_JOB: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Rendered,
    Thumbnail,
}

/// The Rendered or Thumbnail target: a study, series or instance, optionally frames of it.
pub struct Target<'a> {
    pub study: &'a str,
    pub series: Option<&'a str>,
    pub instance: Option<&'a str>,
    pub frames: Option<&'a str>,
}

/// Number of Frames (1 when absent), once the Image Pixel attributes proved consistent with
/// Pixel Data: never more frames than Pixel Data holds.
pub(crate) fn frame_total(record: &InstanceRecord) -> Result<u32, Error> {
    Ok(super::frames::description(record)?.frames)
}

/// The frames (0-based) one instance contributes: a list, or all of them, iterated (never
/// collected: a count can be large).
#[derive(Debug, Clone)]
enum Selection {
    List(Vec<u32>),
    All(std::ops::Range<u32>),
}

impl Selection {
    fn len(&self) -> u64 {
        match self {
            Selection::List(list) => list.len() as u64,
            Selection::All(range) => u64::from(range.end - range.start),
        }
    }

    fn first(&self) -> Option<u32> {
        match self {
            Selection::List(list) => list.first().copied(),
            Selection::All(range) => (!range.is_empty()).then_some(range.start),
        }
    }

    fn into_iter(self) -> Box<dyn Iterator<Item = u32> + Send> {
        match self {
            Selection::List(list) => Box::new(list.into_iter()),
            Selection::All(range) => Box::new(range),
        }
    }
}

/// Parses the rendering parameters of §8.3.5.1; returns them and whether `annotation` was given
/// (accepted, not applied).
pub fn options(query: Option<&str>, kind: Kind) -> Result<(RenderOptions, bool), Error> {
    // A thumbnail starts from the server's size and quality (§10.4.1.1.4), those made at store
    // time (`archive::renditions`); `viewport` may change its size.
    let mut options = match kind {
        Kind::Thumbnail => thumbnail_options(),
        Kind::Rendered => {
            RenderOptions { format: ImageFormat::Jpeg, quality: DEFAULT_QUALITY, viewport: None, window: None }
        }
    };
    let mut annotated = false;
    for (name, value) in pairs(query)? {
        match name.as_str() {
            "quality" if kind == Kind::Rendered => {
                options.quality =
                    value.parse::<u8>().ok().filter(|q| (1..=100).contains(q)).ok_or_else(|| {
                        Error::bad_request(format!("quality={value:?} is not an integer from 1 to 100"))
                    })?;
            }
            "viewport" => options.viewport = Some(viewport(&value, kind)?),
            "window" if kind == Kind::Rendered => options.window = Some(window(&value)?),
            "annotation" if kind == Kind::Rendered => {
                for keyword in value.split(',') {
                    if !matches!(keyword, "patient" | "technique") {
                        return Err(Error::bad_request(format!(
                            "annotation={value:?}: the keywords are patient and technique (§8.3.5.1.1)"
                        )));
                    }
                }
                annotated = true;
            }
            // Others (accept, iccprofile, charset, …) are handled elsewhere or ignored (§8.3).
            _ => {}
        }
    }
    Ok((options, annotated))
}

/// `viewport=vw,vh[,sx,sy,sw,sh]` (§8.3.5.1.3); elided values keep their commas.
fn viewport(value: &str, kind: Kind) -> Result<Viewport, Error> {
    let bad = || Error::bad_request(format!("viewport={value:?} is not vw,vh[,sx,sy,sw,sh] (§8.3.5.1.3)"));
    let parts: Vec<&str> = value.split(',').collect();
    if !(2..=6).contains(&parts.len()) {
        return Err(bad());
    }
    let size = |text: &str| text.parse::<u32>().ok().filter(|n| (1..=16_384).contains(n));
    let (width, height) = (size(parts[0]).ok_or_else(bad)?, size(parts[1]).ok_or_else(bad)?);
    if kind == Kind::Thumbnail && parts.len() > 2 {
        return Err(Error::bad_request("a thumbnail's viewport is vw,vh only (§8.3.5.1.3)"));
    }
    let optional = |index: usize| -> Result<Option<i64>, Error> {
        match parts.get(index).map(|t| t.trim()) {
            None | Some("") => Ok(None),
            Some(text) => text.parse::<i64>().map(Some).map_err(|_| bad()),
        }
    };
    let (sx, sy) = (optional(2)?.unwrap_or(0), optional(3)?.unwrap_or(0));
    if sx < 0 || sy < 0 {
        return Err(bad());
    }
    Ok(Viewport { width, height, sx, sy, sw: optional(4)?, sh: optional(5)? })
}

/// `window=center,width,function` (§8.3.5.1.4).
fn window(value: &str) -> Result<(f64, f64, VoiLutFunction), Error> {
    let bad = || {
        Error::bad_request(format!(
            "window={value:?} is not center,width,function with function linear, linear-exact or sigmoid (§8.3.5.1.4)"
        ))
    };
    let [center, width, function] = value.split(',').collect::<Vec<_>>()[..] else { return Err(bad()) };
    let center: f64 = center.trim().parse().ok().filter(|c: &f64| c.is_finite()).ok_or_else(bad)?;
    let width: f64 = width.trim().parse().ok().filter(|w: &f64| w.is_finite() && *w > 0.0).ok_or_else(bad)?;
    let function = match function.trim() {
        "linear" => VoiLutFunction::Linear,
        "linear-exact" => VoiLutFunction::LinearExact,
        "sigmoid" => VoiLutFunction::Sigmoid,
        _ => return Err(bad()),
    };
    Ok((center, width, function))
}

/// The image format and whether the answer is multipart, from the Accept header (§8.7.4, §8.7.5).
/// Several images need a multipart type; a single-part type alone is then 406 (§10.4.4, 2025a).
fn negotiate(headers: &HeaderMap, several: bool) -> Result<(ImageFormat, bool), Error> {
    let Some(accepted) = accepted_types(headers) else { return Ok((ImageFormat::Jpeg, several)) };
    let format_of = |essence: &str| match essence {
        "image/jpeg" | "image/*" => Some(ImageFormat::Jpeg),
        "image/png" => Some(ImageFormat::Png),
        _ => None,
    };
    let dicom = accepted.iter().any(|m| {
        m.essence.starts_with("application/")
            || (m.essence == MULTIPART_RELATED && m.param("type").is_some_and(|t| t.starts_with("application/")))
    });
    let rendered = accepted.iter().any(|m| {
        m.essence.starts_with("image/")
            || (m.essence == MULTIPART_RELATED && m.param("type").is_some_and(|t| t.starts_with("image/")))
    });
    if dicom && rendered {
        return Err(Error::bad_request("Accept mixes DICOM and rendered media types (§8.7.5)"));
    }
    for media in &accepted {
        let choice = match media.essence.as_str() {
            "*/*" => Some((ImageFormat::Jpeg, several)),
            "multipart/*" => Some((ImageFormat::Jpeg, true)),
            MULTIPART_RELATED => {
                media.param("type").and_then(|t| format_of(&t.to_ascii_lowercase())).map(|f| (f, true))
            }
            essence if !several => format_of(essence).map(|f| (f, false)),
            _ => None,
        };
        if let Some(choice) = choice {
            return Ok(choice);
        }
    }
    Err(Error::new(
        ErrorKind::NotAcceptable,
        if several {
            "several images are available as multipart/related; type=\"image/jpeg\" or type=\"image/png\""
        } else {
            "rendered images are available as image/jpeg and image/png"
        },
    ))
}

/// The frames (0-based, per instance) a target names.
fn images(
    archive: &Archive,
    context: &RequestContext,
    kind: Kind,
    target: &Target<'_>,
) -> Result<Vec<(InstanceRecord, Selection)>, Error> {
    let level = target_level(target.series, target.instance);
    let mut records = archive.instances_of(&context.principal, level, target.study, target.series, target.instance)?;
    if records.iter().all(|r| r.pixel_data.is_none()) {
        return Err(Error::not_found("nothing here has pixel data to render"));
    }
    records.retain(|r| r.pixel_data.is_some());
    if let Some(list) = target.frames {
        let record = records.swap_remove(0);
        let count = frame_total(&record)?;
        let numbers = super::frames::frame_numbers(list, count as usize)?;
        let mut frames: Vec<u32> = numbers.into_iter().map(|n| n as u32 - 1).collect();
        if kind == Kind::Thumbnail {
            frames.truncate(1);
        }
        return Ok(vec![(record, Selection::List(frames))]);
    }
    if kind == Kind::Thumbnail {
        // The middle image: in a series sorted by Instance Number, or of a multi-frame instance.
        records.sort_by_key(|r| (r.series_uid.clone(), r.number(tags::INSTANCE_NUMBER).unwrap_or(0)));
        let series = records[0].series_uid.clone();
        records.retain(|r| r.series_uid == series);
        let record = records.swap_remove(records.len() / 2);
        let frame = frame_total(&record)? / 2;
        return Ok(vec![(record, Selection::List(vec![frame]))]);
    }
    records.sort_by_key(|r| (r.series_uid.clone(), r.number(tags::INSTANCE_NUMBER).unwrap_or(0)));
    // Every instance is checked before the response starts, so that a bad one is a 4xx, not a
    // broken stream.
    records.into_iter().map(|r| Ok((r.clone(), Selection::All(0..frame_total(&r)?)))).collect()
}

fn annotation_warning(context: &RequestContext) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "299 {}: annotation is not supported and was ignored; nothing is burnt in",
        context.base_url
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("299 - \"annotation was ignored\""))
}

/// `GET …/rendered`, `…/frames/{frames}/rendered`, `…/thumbnail`, `…/frames/{frame}/thumbnail`.
pub async fn retrieve(
    archive: &Arc<Archive>,
    context: &RequestContext,
    kind: Kind,
    target: Target<'_>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response<ResponseBody>, Error> {
    let (mut options, annotated) = options(query, kind)?;
    let images = images(archive, context, kind, &target)?;
    let count: u64 = images.iter().map(|(_, frames)| frames.len()).sum();
    let (format, multipart) = negotiate(headers, count > 1)?;
    options.format = format;
    let mut response = Response::builder().status(StatusCode::OK);
    if annotated {
        response = response.header(header::WARNING, annotation_warning(context));
    }
    if !multipart {
        let (record, frames) = &images[0];
        let frame = frames.first().ok_or_else(|| Error::not_found("no frame to render"))?;
        let image = archive.rendered_frames(record, vec![frame], options).await?.swap_remove(0);
        return Ok(response
            .header(header::CONTENT_TYPE, format.media_type())
            .header(header::CONTENT_LENGTH, image.len())
            .body(full_body(image))
            .expect("valid response"));
    }
    // Several images: a producer renders a few frames at a time into a small channel.
    type Item = Result<Bytes, crate::dicomweb::BoxError>;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Item>(4);
    let boundary = multipart::new_boundary();
    let (archive, context, part_boundary) = (archive.clone(), context.clone(), boundary.clone());
    let suffix = if kind == Kind::Rendered { "rendered" } else { "thumbnail" };
    tokio::spawn(async move {
        let mut first = true;
        for (record, frames) in images {
            let url = context.instance_url(&record.study_uid, &record.series_uid, &record.sop_instance_uid);
            let mut frames = frames.into_iter();
            loop {
                let batch: Vec<u32> = frames.by_ref().take(FRAMES_PER_JOB).collect();
                if batch.is_empty() {
                    break;
                }
                let rendered = match archive.rendered_frames(&record, batch.clone(), options.clone()).await {
                    Ok(rendered) => rendered,
                    Err(error) => {
                        let _ = sender.send(Err(Box::new(error))).await;
                        return;
                    }
                };
                for (frame, image) in batch.iter().zip(rendered) {
                    let mut part = if first { Vec::new() } else { b"\r\n".to_vec() };
                    first = false;
                    let location = format!("{url}/frames/{}/{suffix}", frame + 1);
                    let head = multipart::part_header(
                        &part_boundary,
                        format.media_type(),
                        Some(&location),
                        Some(image.len() as u64),
                    );
                    part.extend_from_slice(&head);
                    part.extend_from_slice(&image);
                    if sender.send(Ok(Bytes::from(part))).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sender.send(Ok(multipart::closing(&part_boundary))).await;
    });
    let body =
        stream::unfold(receiver, |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) });
    Ok(response
        .header(
            header::CONTENT_TYPE,
            format!("{MULTIPART_RELATED}; type=\"{}\"; boundary={boundary}", format.media_type()),
        )
        .body(stream_body(body))
        .expect("valid response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewport_syntax() {
        let v = viewport("512,512", Kind::Rendered).unwrap();
        assert_eq!((v.width, v.height, v.sx, v.sy, v.sw, v.sh), (512, 512, 0, 0, None, None));
        let v = viewport("256,256,,,-100,50", Kind::Rendered).unwrap();
        assert_eq!((v.sx, v.sy, v.sw, v.sh), (0, 0, Some(-100), Some(50)));
        assert!(viewport("0,512", Kind::Rendered).is_err());
        assert!(viewport("512", Kind::Rendered).is_err());
        assert!(viewport("64,64,1,1,10,10", Kind::Thumbnail).is_err());
    }

    #[test]
    fn window_syntax() {
        assert_eq!(window("40,400,linear").unwrap(), (40.0, 400.0, VoiLutFunction::Linear));
        assert!(window("40,400").is_err());
        assert!(window("40,0,linear").is_err());
        assert!(window("40,400,cubic").is_err());
    }
}
