//! WADO-URI, the URI service (PS3.18 Chapter 9): Retrieve DICOM Instance (§9.4) as
//! `application/dicom`, and Retrieve Rendered Instance (§9.5) as image/jpeg or image/png.

use std::sync::Arc;

use http::{HeaderMap, Response};

use super::{EXPLICIT_VR_LITTLE_ENDIAN, representation, single_instance};
use crate::archive::Archive;
use crate::dicom::render::{ImageFormat, RenderOptions, Viewport};
use crate::dicom::uid;
use crate::dicomweb::query::pairs;
use crate::dicomweb::{RequestContext, ResponseBody, accepted_types};
use crate::error::{Error, ErrorKind};
use crate::media::mime::APPLICATION_DICOM;

/// Parameters only the rendered transaction takes (§9.5.1.2); with application/dicom they are 400.
const RENDERED_ONLY: &[&str] = &[
    "annotation",
    "imageAnnotation",
    "rows",
    "columns",
    "region",
    "windowCenter",
    "windowWidth",
    "frameNumber",
    "imageQuality",
    "presentationUID",
    "presentationSeriesUID",
];

/// The study, series and object UIDs a WADO-URI query names, when it names each once
/// (for the cache validator; `retrieve` checks the query in full).
pub(crate) fn target(raw_query: Option<&str>) -> Option<(String, String, String)> {
    let params = pairs(raw_query).ok()?;
    let one = |name: &str| {
        let mut values = params.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone());
        let first = values.next();
        if values.next().is_some() { None } else { first }
    };
    Some((one("studyUID")?, one("seriesUID")?, one("objectUID")?))
}

/// `GET {wado path}?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…[&contentType=…][&transferSyntax=…]`.
pub async fn retrieve(
    archive: &Arc<Archive>,
    context: &RequestContext,
    raw_query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response<ResponseBody>, Error> {
    let params = pairs(raw_query)?;
    let one = |name: &str| -> Result<Option<&str>, Error> {
        let mut values = params.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(Error::bad_request(format!("{name} is given more than once")));
        }
        Ok(first)
    };
    match one("requestType")? {
        Some("WADO") => {}
        Some(other) => return Err(Error::bad_request(format!("requestType={other:?} is not supported; use WADO"))),
        None => return Err(Error::bad_request("requestType=WADO is required (PS3.18 §9.1.2.1.1)")),
    }
    let uid_of = |name: &str| -> Result<String, Error> {
        let value = one(name)?.ok_or_else(|| Error::bad_request(format!("{name} is required")))?;
        uid::validate(value).map_err(|e| Error::bad_request(format!("{name} is not a valid UID: {e}")))?;
        Ok(value.to_string())
    };
    let (study, series, object) = (uid_of("studyUID")?, uid_of("seriesUID")?, uid_of("objectUID")?);
    if one("anonymize")?.is_some() {
        return Err(Error::bad_request("anonymize is not supported (PS3.18 §9.4.1.2.1 lets the server refuse it)"));
    }

    // §9.3: the selected media type decides between DICOM and rendered retrieval; contentType's
    // types are in preference order, and without it Accept decides (`*/*` → image/jpeg).
    let selected = match one("contentType")? {
        Some(types) => {
            if types.contains(';') {
                return Err(Error::bad_request(
                    "contentType may not carry parameters (§9.1.2.2.1); use transferSyntax",
                ));
            }
            types.split(',').map(|t| t.trim().to_ascii_lowercase()).find_map(|t| selectable(&t)).ok_or_else(|| {
                Error::new(ErrorKind::NotAcceptable, "contentType may be application/dicom, image/jpeg or image/png")
            })?
        }
        None => match accepted_types(headers) {
            None => Selected::Rendered(ImageFormat::Jpeg),
            Some(accepted) => accepted
                .iter()
                .find_map(|m| {
                    if m.essence == "*/*" {
                        Some(Selected::Rendered(ImageFormat::Jpeg))
                    } else {
                        selectable(&m.essence)
                    }
                })
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotAcceptable,
                        "the URI service answers application/dicom, image/jpeg or image/png",
                    )
                })?,
        },
    };
    if let Selected::Rendered(format) = selected {
        let record = archive.instance_in(&context.principal, &study, &series, &object)?;
        return rendered(archive, context, &record, &params, format).await;
    }
    if let Some((name, _)) = params.iter().find(|(name, _)| RENDERED_ONLY.contains(&name.as_str())) {
        return Err(Error::bad_request(format!("{name} applies to rendered images, not to application/dicom")));
    }
    // Absent means the default, Explicit VR Little Endian (§9.4.2.4), as in WADO-RS: lossy-only
    // pixel data then goes as stored.
    let requested_ts = one("transferSyntax")?;
    if let Some(ts) = requested_ts {
        uid::validate(ts).map_err(|e| Error::bad_request(format!("transferSyntax is not a valid UID: {e}")))?;
    }

    let record = archive.instance_in(&context.principal, &study, &series, &object)?;
    // The lossless syntaxes Kura encodes are offered here too (`transferSyntax=1.2.840.10008.1.2.4.80`).
    let format = match requested_ts.and_then(crate::dicom::encode::Codec::from_transfer_syntax) {
        Some(_) => archive.pixel_formats(std::slice::from_ref(&record)).await?.pop().flatten(),
        None => None,
    };
    let served = representation(requested_ts, &record, false, format.as_ref()).ok_or_else(|| {
        let requested_ts = requested_ts.unwrap_or(EXPLICIT_VR_LITTLE_ENDIAN);
        Error::new(
            ErrorKind::NotAcceptable,
            format!(
                "the instance is stored in {} and cannot be converted to {requested_ts} (§9.4.2.4)",
                record.transfer_syntax_uid
            ),
        )
    })?;
    single_instance(archive, context, &record, served).await
}

/// What a WADO-URI request asks for (§9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Selected {
    Dicom,
    Rendered(ImageFormat),
}

fn selectable(media_type: &str) -> Option<Selected> {
    match media_type {
        APPLICATION_DICOM => Some(Selected::Dicom),
        "image/jpeg" | "image/*" => Some(Selected::Rendered(ImageFormat::Jpeg)),
        "image/png" => Some(Selected::Rendered(ImageFormat::Png)),
        _ => None,
    }
}

/// Retrieve Rendered Instance (§9.5): one frame as JPEG or PNG, with `frameNumber`, `rows` and
/// `columns` (maxima, aspect kept), `region` (normalised crop), `windowCenter`/`windowWidth`
/// and `imageQuality`. Presentation states are not supported (400); annotation is ignored with
/// a Warning.
async fn rendered(
    archive: &Arc<Archive>,
    context: &RequestContext,
    record: &crate::model::records::InstanceRecord,
    params: &[(String, String)],
    format: ImageFormat,
) -> Result<Response<ResponseBody>, Error> {
    let value = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    if value("transferSyntax").is_some() {
        return Err(Error::bad_request("transferSyntax applies to application/dicom only (§9.5)"));
    }
    if value("presentationUID").is_some() || value("presentationSeriesUID").is_some() {
        return Err(Error::bad_request("presentation states are not supported (§9.5.2.3)"));
    }
    let positive = |name: &str| -> Result<Option<u32>, Error> {
        value(name)
            .map(|v| {
                v.parse::<u32>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| Error::bad_request(format!("{name}={v:?} is not a positive integer")))
            })
            .transpose()
    };
    let frames = super::rendered::frame_total(record)?;
    let frame = match positive("frameNumber")? {
        Some(n) if n > frames => {
            return Err(Error::bad_request(format!("frameNumber {n}: the instance has {frames} frame(s) (§9.5.2.1)")));
        }
        Some(n) => n - 1,
        None => 0,
    };
    let mut options = RenderOptions { format, quality: 90, viewport: None, window: None };
    if let Some(q) = value("imageQuality") {
        options.quality = q
            .parse::<u8>()
            .ok()
            .filter(|q| (1..=100).contains(q))
            .ok_or_else(|| Error::bad_request(format!("imageQuality={q:?} is not an integer from 1 to 100")))?;
    }
    match (value("windowCenter"), value("windowWidth")) {
        (Some(center), Some(width)) => {
            // Rust parses "NaN", "inf" and "1e999" (infinite) as floats; none is a decimal
            // string (DS), and a VOI LUT cannot be built from them (§9.5.1.2.6): 400, not 406.
            let center: f64 = center
                .parse()
                .ok()
                .filter(|c: &f64| c.is_finite())
                .ok_or_else(|| Error::bad_request(format!("windowCenter={center:?} is not a finite number")))?;
            let width: f64 =
                width.parse().ok().filter(|w: &f64| w.is_finite() && *w > 0.0).ok_or_else(|| {
                    Error::bad_request(format!("windowWidth={width:?} is not a finite positive number"))
                })?;
            options.window = Some((center, width, dicom_pixeldata::VoiLutFunction::Linear));
        }
        (None, None) => {}
        _ => return Err(Error::bad_request("windowCenter and windowWidth go together (§9.5.1.2.6)")),
    }
    let (rows, columns) = (positive("rows")?, positive("columns")?);
    let region = match value("region") {
        None => None,
        Some(text) => {
            let numbers: Vec<f64> = text.split(',').filter_map(|v| v.trim().parse().ok()).collect();
            match numbers[..] {
                [x0, y0, x1, y1]
                    if (0.0..=1.0).contains(&x0)
                        && (0.0..=1.0).contains(&y0)
                        && x0 < x1
                        && y0 < y1
                        && x1 <= 1.0
                        && y1 <= 1.0 =>
                {
                    Some((x0, y0, x1, y1))
                }
                _ => {
                    return Err(Error::bad_request(format!(
                        "region={text:?} is not xmin,ymin,xmax,ymax within 0..1 (§9.5.2.4)"
                    )));
                }
            }
        }
    };
    if rows.is_some() || columns.is_some() || region.is_some() {
        let number = |tag| record.number(tag).unwrap_or(1) as f64;
        let (height, width) = (number(dicom_dictionary_std::tags::ROWS), number(dicom_dictionary_std::tags::COLUMNS));
        let (x0, y0, x1, y1) = region.unwrap_or((0.0, 0.0, 1.0, 1.0));
        let (sx, sy) = ((x0 * width).floor() as i64, (y0 * height).floor() as i64);
        let (sw, sh) = (((x1 - x0) * width).round().max(1.0) as i64, ((y1 - y0) * height).round().max(1.0) as i64);
        // Only one of rows and columns: the other follows from the aspect ratio (§9.5.2.5).
        let (vw, vh) = match (columns, rows) {
            (Some(c), Some(r)) => (c, r),
            (Some(c), None) => (c, u32::MAX),
            (None, Some(r)) => (u32::MAX, r),
            (None, None) => (sw as u32, sh as u32),
        };
        options.viewport =
            Some(Viewport { width: vw.min(16_384), height: vh.min(16_384), sx, sy, sw: Some(sw), sh: Some(sh) });
    }
    let image = archive.rendered_frames(record, vec![frame], options).await?.swap_remove(0);
    let mut response = Response::builder()
        .status(http::StatusCode::OK)
        .header(http::header::CONTENT_TYPE, format.media_type())
        .header(http::header::CONTENT_LENGTH, image.len())
        .header(
            http::header::CONTENT_LOCATION,
            format!(
                "{}/rendered",
                context.instance_url(&record.study_uid, &record.series_uid, &record.sop_instance_uid)
            ),
        );
    if value("annotation").is_some() || value("imageAnnotation").is_some() {
        response = response.header(
            http::header::WARNING,
            format!("299 {}: annotation is not supported and was ignored", context.base_url),
        );
    }
    Ok(response.body(crate::dicomweb::full_body(image)).expect("valid response"))
}
