//! QIDO-RS, the Search transaction (PS3.18 §10.6): six resources, DICOM JSON (default) or
//! multipart Native DICOM Model XML, paging with the Warning header of §8.3.4.4.1.

use std::sync::Arc;

use bytes::Bytes;
use dicom_core::VR;
use dicom_dictionary_std::tags;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use super::dataset::Dataset;
use super::query::{self, IncludeFields, Search};
use super::{RequestContext, ResponseBody, accepted_types, full_body};
use crate::archive::Archive;
use crate::config::Config;
use crate::dicom::attrs::{self, Level, Return};
use crate::dicom::part10::AttributeValue;
use crate::error::{Error, ErrorKind};
use crate::index::DocKey;
use crate::media::mime::{APPLICATION_DICOM_JSON, APPLICATION_DICOM_XML, APPLICATION_JSON, MULTIPART_RELATED};
use crate::media::multipart;
use crate::server::router::Endpoint;

/// The representation of a search response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Representation {
    Json,
    Xml,
}

/// Chooses JSON or XML from Accept (PS3.18 §10.6.1: JSON is the default, XML is required).
fn representation(headers: &HeaderMap) -> Result<Representation, Error> {
    let Some(accepted) = accepted_types(headers) else { return Ok(Representation::Json) };
    for media in &accepted {
        let essence = media.essence.as_str();
        if [APPLICATION_DICOM_JSON, APPLICATION_JSON, "*/*", "application/*"].contains(&essence) {
            return Ok(Representation::Json);
        }
        if essence == MULTIPART_RELATED
            && media.param("type").is_some_and(|t| t.eq_ignore_ascii_case(APPLICATION_DICOM_XML))
        {
            return Ok(Representation::Xml);
        }
        if essence == APPLICATION_DICOM_XML {
            return Ok(Representation::Xml);
        }
    }
    Err(Error::new(
        ErrorKind::NotAcceptable,
        "search results are available as application/dicom+json or multipart/related; type=\"application/dicom+xml\"",
    ))
}

/// `GET` on one of the six search resources.
pub fn search(
    archive: &Arc<Archive>,
    config: &Config,
    context: &RequestContext,
    endpoint: &Endpoint,
    raw_query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response<ResponseBody>, Error> {
    let representation = representation(headers)?;
    // Table 10.6.1-4: which levels' attributes each resource matches and returns.
    let (level, levels, study, series): (Level, &[Level], _, _) = match endpoint {
        Endpoint::SearchStudies => (Level::Study, &[Level::Study], None, None),
        Endpoint::SearchSeries { study: None } => (Level::Series, &[Level::Study, Level::Series], None, None),
        Endpoint::SearchSeries { study } => (Level::Series, &[Level::Series], study.clone(), None),
        Endpoint::SearchInstances { study: None, .. } => {
            (Level::Instance, &[Level::Study, Level::Series, Level::Instance], None, None)
        }
        Endpoint::SearchInstances { study, series: None } => {
            (Level::Instance, &[Level::Series, Level::Instance], study.clone(), None)
        }
        Endpoint::SearchInstances { study, series } => {
            (Level::Instance, &[Level::Instance], study.clone(), series.clone())
        }
        _ => unreachable!("dispatch sends only search endpoints here"),
    };
    let mut search = query::parse(raw_query, level, levels, config.qido_max_results)?;
    search.query.study_uid = study;
    search.query.series_uid = series;

    let hits = archive.search(&context.principal, &search.query)?;
    let mut rows = Vec::with_capacity(hits.keys.len());
    for key in &hits.keys {
        if let Some(row) = result_row(archive, context, &search, levels, key)? {
            rows.push(row);
        }
    }
    let remaining = hits.total.saturating_sub(search.query.offset + rows.len());

    let (content_type, body) = match representation {
        Representation::Json => {
            let array: Vec<_> = rows.iter().map(Dataset::to_json).collect();
            (APPLICATION_DICOM_JSON.to_string(), serde_json::to_vec(&array).expect("json"))
        }
        Representation::Xml => {
            let boundary = multipart::new_boundary();
            let mut body = Vec::new();
            for row in &rows {
                let xml = row.to_xml();
                body.extend_from_slice(&multipart::part_header(
                    &boundary,
                    APPLICATION_DICOM_XML,
                    None,
                    Some(xml.len() as u64),
                ));
                body.extend_from_slice(xml.as_bytes());
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
            (format!("multipart/related; type=\"{APPLICATION_DICOM_XML}\"; boundary={boundary}"), body)
        }
    };
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .body(full_body(Bytes::from(body)))
        .expect("valid response");
    let mut warnings = Vec::new();
    if remaining > 0 {
        warnings.push(format!("There are {remaining} additional results that can be requested"));
    }
    if search.empty_value_matching_requested {
        warnings.push(
            "The emptyvaluematching parameter is not supported. Empty Value Matching has not been performed.".into(),
        );
    }
    if !search.ignored.is_empty() {
        warnings.push(format!(
            "The following attributes are not supported as match keys and were ignored: {}",
            search.ignored.join(", ")
        ));
    }
    for warning in warnings {
        if let Ok(value) = HeaderValue::from_str(&format!("299 {}: {warning}", context.base_url)) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    tracing::debug!(results = rows.len(), total = hits.total, "qido");
    Ok(response)
}

/// Adds the attributes of `level` that the request returns (§10.6.3.3).
fn put_level(dataset: &mut Dataset, level: Level, values: &[AttributeValue], search: &Search) {
    for attribute in attrs::at_level(level).filter(|a| !a.computed) {
        let found = values.iter().find(|v| v.tag() == attribute.tag);
        let has_value = found.is_some_and(|v| v.values.iter().any(|s| !s.is_empty()));
        let named = search.matched.contains(&attribute.tag) || search.include.includes(attribute.tag);
        let wanted = match attribute.ret {
            Return::Always => true,
            Return::IfPresent => has_value || named,
            Return::OnRequest => named && (has_value || !matches!(search.include, IncludeFields::All)),
        };
        if wanted {
            dataset.put_strings(attribute.tag, attribute.vr, found.map(|v| v.values.clone()).unwrap_or_default());
        }
    }
}

fn result_row(
    archive: &Archive,
    context: &RequestContext,
    search: &Search,
    levels: &[Level],
    key: &DocKey,
) -> Result<Option<Dataset>, Error> {
    let principal = &context.principal;
    let mut row = Dataset::new();
    if levels.contains(&Level::Study) {
        let Some(study) = archive.study(principal, &key.study_uid)? else {
            return Ok(None);
        };
        put_level(&mut row, Level::Study, &study.attributes, search);
        row.put_strings(tags::MODALITIES_IN_STUDY, VR::CS, study.modalities.clone());
        if search.include.includes(tags::SOP_CLASSES_IN_STUDY) || search.matched.contains(&tags::SOP_CLASSES_IN_STUDY) {
            row.put_strings(tags::SOP_CLASSES_IN_STUDY, VR::UI, study.sop_classes.clone());
        }
        row.put_str(tags::NUMBER_OF_STUDY_RELATED_SERIES, VR::IS, study.n_series.to_string());
        row.put_str(tags::NUMBER_OF_STUDY_RELATED_INSTANCES, VR::IS, study.n_instances.to_string());
        if key.level == Level::Study {
            row.put_str(tags::RETRIEVE_URL, VR::UR, context.study_url(&key.study_uid));
        }
    }
    if levels.contains(&Level::Series) {
        let series_uid = key.series_uid.as_deref().unwrap_or_default();
        let Some(series) = archive.series(principal, &key.study_uid, series_uid)? else {
            return Ok(None);
        };
        put_level(&mut row, Level::Series, &series.attributes, search);
        row.put_str(tags::NUMBER_OF_SERIES_RELATED_INSTANCES, VR::IS, series.n_instances.to_string());
        if key.level == Level::Series {
            row.put_str(tags::RETRIEVE_URL, VR::UR, context.series_url(&key.study_uid, series_uid));
        }
    }
    if levels.contains(&Level::Instance) {
        let Some(instance) = archive.instance(principal, key.sop_uid.as_deref().unwrap_or_default())? else {
            return Ok(None);
        };
        put_level(&mut row, Level::Instance, &instance.attributes, search);
        row.put_str(
            tags::RETRIEVE_URL,
            VR::UR,
            context.instance_url(&instance.study_uid, &instance.series_uid, &instance.sop_instance_uid),
        );
    }
    // QIDO-RS rows always carry the unique keys of the levels above (§10.6.3.3).
    row.put_str(tags::STUDY_INSTANCE_UID, VR::UI, &key.study_uid);
    if let Some(series) = &key.series_uid {
        row.put_str(tags::SERIES_INSTANCE_UID, VR::UI, series);
    }
    row.put_str(tags::INSTANCE_AVAILABILITY, VR::CS, "ONLINE");
    Ok(Some(row))
}
