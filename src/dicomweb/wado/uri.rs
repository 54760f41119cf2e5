//! WADO-URI, the URI service (PS3.18 Chapter 9): Retrieve DICOM Instance (§9.4) as
//! `application/dicom`. Retrieve Rendered Instance (§9.5) is not offered yet (406).

use std::sync::Arc;

use http::{HeaderMap, Response};

use super::{EXPLICIT_VR_LITTLE_ENDIAN, representation, single_instance};
use crate::archive::Archive;
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

    // §9.3: the selected media type decides between DICOM and rendered retrieval.
    let wants_dicom = match one("contentType")? {
        Some(types) => {
            if types.contains(';') {
                return Err(Error::bad_request(
                    "contentType may not carry parameters (§9.1.2.2.1); use transferSyntax",
                ));
            }
            types.split(',').any(|t| t.trim().eq_ignore_ascii_case(APPLICATION_DICOM))
        }
        None => accepted_types(headers).is_some_and(|accepted| accepted.iter().any(|m| m.is(APPLICATION_DICOM))),
    };
    if !wants_dicom {
        return Err(Error::new(
            ErrorKind::NotAcceptable,
            "rendered images (image/jpeg) are not available yet; ask with contentType=application/dicom",
        ));
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
    let served = representation(requested_ts, &record, false).ok_or_else(|| {
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
