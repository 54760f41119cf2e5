//! QIDO-RS, the Search transaction (PS3.18 §10.6): six resources, DICOM JSON (default) or
//! multipart Native DICOM Model XML, paging with the Warning header of §8.3.4.4.1.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use super::dataset::{Dataset, Values};
use super::query::{self, IncludeFields, Search};
use super::{RequestContext, ResponseBody, accepted_types, full_body};
use crate::archive::Archive;
use crate::config::Config;
use crate::dicom::attrs::{self, Level, Return};
use crate::dicom::part10::AttributeValue;
use crate::error::{Error, ErrorKind};
use crate::media::compress;
use crate::media::mime::{APPLICATION_DICOM_JSON, APPLICATION_DICOM_XML, APPLICATION_JSON, MULTIPART_RELATED};
use crate::media::multipart;
use crate::model::search::{Criterion, Hit, has_wildcard};
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
pub async fn search(
    archive: &Arc<Archive>,
    config: &Config,
    context: &RequestContext,
    endpoint: &Endpoint,
    raw_query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response<ResponseBody>, Error> {
    let representation = representation(headers)?;
    // Table 10.6.1-4: which levels' attributes each resource matches and returns.
    let (level, levels, study, series): (Level, &'static [Level], _, _) = match endpoint {
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
    let mut warnings = Vec::new();
    if !search.ignored.is_empty() {
        warnings.push(format!(
            "The following attributes are not supported as match keys and were ignored: {}",
            search.ignored.join(", ")
        ));
    }
    if !search.unsupported.is_empty() {
        // Names as the client sent them, shortened: they end up in a header.
        let names: Vec<String> = search.unsupported.iter().take(10).map(|n| n.chars().take(64).collect()).collect();
        warnings
            .push(format!("The following query parameters are not supported and were ignored: {}", names.join(", ")));
    }

    // The index search and the rendering of up to --qido-max-results rows are CPU work: they
    // run on the blocking pool, so that a large listing does not hold up the async workers.
    // Capping concurrent searches at the number of cores (a semaphore) was measured and cost a
    // quarter of the 8-client throughput (benches/README.md), so they are not capped.
    // Read-your-writes: the index first takes in every change acknowledged before now.
    archive.catch_up_index().await?;
    let (archive, blocking_context, request_headers) = (archive.clone(), context.clone(), headers.clone());
    let (content_type, body, remaining, coding) = tokio::task::spawn_blocking(move || {
        let (content_type, body, remaining) = respond(&archive, &blocking_context, &search, levels, representation)?;
        // Content coding as for metadata (RFC 9110 §8.4): a page of 1,000 studies is ~1 MB of
        // JSON that compresses about tenfold.
        Ok::<_, Error>(match compress::negotiate(&request_headers, body.len()) {
            Some(coding) => (content_type, compress::encode(coding, &body), remaining, Some(coding)),
            None => (content_type, body, remaining, None),
        })
    })
    .await
    .map_err(Error::internal)??;
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::VARY, "Accept-Encoding")
        .body(full_body(Bytes::from(body)))
        .expect("valid response");
    if let Some(coding) = coding {
        response.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
    }
    if remaining > 0 {
        warnings.insert(0, format!("There are {remaining} additional results that can be requested"));
    }
    for warning in warnings {
        if let Ok(value) = HeaderValue::from_str(&format!("299 {}: {warning}", context.base_url)) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    Ok(response)
}

/// Searches and renders the page: (Content-Type, body, results remaining after it).
fn respond(
    archive: &Archive,
    context: &RequestContext,
    search: &Search,
    levels: &[Level],
    representation: Representation,
) -> Result<(String, Vec<u8>, usize), Error> {
    let hits = archive.search(&context.principal, &search.query)?;
    let rows = result_rows(archive, context, search, levels, &hits.hits)?;
    let remaining = hits.total.saturating_sub(search.query.offset.saturating_add(rows.len()));
    tracing::debug!(results = rows.len(), total = hits.total, "qido");
    Ok(match representation {
        Representation::Json => {
            let array: Vec<_> = rows.iter().map(Dataset::to_json).collect();
            (APPLICATION_DICOM_JSON.to_string(), serde_json::to_vec(&array).expect("json"), remaining)
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
            (format!("multipart/related; type=\"{APPLICATION_DICOM_XML}\"; boundary={boundary}"), body, remaining)
        }
    })
}

/// Adds the attributes of `level` that the request returns (§10.6.3.3).
fn put_level(dataset: &mut Dataset, level: Level, values: &[AttributeValue], search: &Search) {
    for attribute in attrs::at_level(level).filter(|a| !a.computed && a.sequence.is_none()) {
        let found = values.iter().find(|v| v.is(attribute));
        let has_value = found.is_some_and(|v| v.values.iter().any(|s| !s.is_empty()));
        let named = search.named(attribute);
        let wanted = match attribute.ret {
            Return::Always => true,
            Return::IfPresent => has_value || named,
            Return::OnRequest => named && (has_value || !matches!(search.include, IncludeFields::All)),
        };
        if wanted {
            dataset.put_strings(attribute.tag, attribute.vr, found.map(|v| v.values.clone()).unwrap_or_default());
        }
    }
    put_sequences(dataset, level, values, search);
}

/// Adds the sequences of `level` whose item attributes the request returns: the items that
/// match the query's keys on the sequence, with the item attributes that were asked for (or are
/// returned unasked), as PS3.4 C.2.2.2.6 says. A sequence is returned when one of its item
/// attributes was named, or when one that is returned unasked has items.
fn put_sequences(dataset: &mut Dataset, level: Level, values: &[AttributeValue], search: &Search) {
    for sequence in attrs::sequences_at(level) {
        let in_sequence = || attrs::at_level(level).filter(move |a| a.sequence == Some(sequence));
        let wanted: Vec<_> = in_sequence().filter(|a| a.ret != Return::OnRequest || search.named(a)).collect();
        let item_values =
            |attribute: &attrs::Attribute| values.iter().find(|v| v.is(attribute)).map_or(&[][..], |v| &v.values[..]);
        let n_items = in_sequence().map(|a| item_values(a).len()).max().unwrap_or(0);
        // Named by a key or by includefield other than `all` (which returns only what exists).
        let asked = in_sequence().any(|a| {
            search.matched.iter().any(|m| m.keyword == a.keyword)
                || (!matches!(search.include, IncludeFields::All) && search.include.includes(a))
        });
        if wanted.is_empty() || !(asked || n_items > 0) {
            continue;
        }
        let filters: Vec<_> = search.query.filters.iter().filter(|f| f.attribute.sequence == Some(sequence)).collect();
        let value = |attribute: &attrs::Attribute, index: usize| {
            item_values(attribute).get(index).map(String::as_str).unwrap_or("")
        };
        let mut items = Vec::new();
        for index in 0..n_items {
            let matches = filters.iter().all(|f| {
                let value = value(f.attribute, index);
                item_matches(&f.criterion, value) || (search.query.empty_value_matching && value.is_empty())
            });
            if !matches {
                continue;
            }
            let mut item = Dataset::new();
            for attribute in &wanted {
                let value = value(attribute, index);
                let values = if value.is_empty() { Vec::new() } else { vec![value.to_string()] };
                item.put_strings(attribute.tag, attribute.vr, values);
            }
            items.push(item);
        }
        dataset.put(sequence, VR::SQ, Values::Items(items));
    }
}

/// Whether one item's value of a text or UID attribute matches a criterion (PS3.4 C.2.2.2.1,
/// C.2.2.2.2, C.2.2.2.4), as the index matched it.
fn item_matches(criterion: &Criterion, value: &str) -> bool {
    match criterion {
        Criterion::UidList(uids) => uids.iter().any(|uid| uid == value),
        Criterion::Text(pattern) if has_wildcard(pattern) => wildcard_matches(pattern, value),
        Criterion::Text(pattern) => pattern == value,
        Criterion::Empty => value.is_empty(),
        _ => true,
    }
}

/// `*` (any run of characters) and `?` (one character) matching of a whole value.
fn wildcard_matches(pattern: &str, value: &str) -> bool {
    let (pattern, value): (Vec<char>, Vec<char>) = (pattern.chars().collect(), value.chars().collect());
    // Greedy matching with backtracking to the last `*`.
    let (mut p, mut v, mut star, mut mark) = (0, 0, None, 0);
    while v < value.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == value[v]) {
            p += 1;
            v += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some(p);
            mark = v;
            p += 1;
        } else if let Some(star) = star {
            p = star + 1;
            mark += 1;
            v = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

fn strings(values: &[AttributeValue], tag: Tag) -> Vec<String> {
    values.iter().find(|v| v.tag() == tag && v.sequence.is_none()).map(|v| v.values.clone()).unwrap_or_default()
}

/// The study's values (PS3.18 Table 10.6.3-3) as the index or `Archive::study_row` gives them.
fn put_study(row: &mut Dataset, values: &[AttributeValue], search: &Search) {
    put_level(row, Level::Study, values, search);
    row.put_strings(tags::MODALITIES_IN_STUDY, VR::CS, strings(values, tags::MODALITIES_IN_STUDY));
    if search.named(attrs::by_tag(tags::SOP_CLASSES_IN_STUDY).expect("in table")) {
        row.put_strings(tags::SOP_CLASSES_IN_STUDY, VR::UI, strings(values, tags::SOP_CLASSES_IN_STUDY));
    }
    for tag in [tags::NUMBER_OF_STUDY_RELATED_SERIES, tags::NUMBER_OF_STUDY_RELATED_INSTANCES] {
        row.put_strings(tag, VR::IS, strings(values, tag));
    }
}

/// Renders the hits. A hit's own level comes from the values its index document stores; the
/// higher levels of a relational resource (e.g. the study of each `/series` hit) are read from
/// the store once per study or series of the page.
fn result_rows(
    archive: &Archive,
    context: &RequestContext,
    search: &Search,
    levels: &[Level],
    hits: &[Hit],
) -> Result<Vec<Dataset>, Error> {
    let principal = &context.principal;
    let mut studies: HashMap<String, Option<Vec<AttributeValue>>> = HashMap::new();
    let mut series_rows: HashMap<(String, String), Option<Vec<AttributeValue>>> = HashMap::new();
    let mut rows = Vec::with_capacity(hits.len());
    for Hit { key, row: values } in hits {
        let mut row = Dataset::new();
        let series_uid = key.series_uid.as_deref().unwrap_or_default();
        if levels.contains(&Level::Study) {
            let study = if key.level == Level::Study {
                Some(values)
            } else {
                if !studies.contains_key(&key.study_uid) {
                    studies.insert(key.study_uid.clone(), archive.study_row(principal, &key.study_uid)?);
                }
                studies[&key.study_uid].as_ref()
            };
            let Some(study) = study else { continue };
            put_study(&mut row, study, search);
            if key.level == Level::Study {
                row.put_str(tags::RETRIEVE_URL, VR::UR, context.study_url(&key.study_uid));
            }
        }
        if levels.contains(&Level::Series) {
            let series = if key.level == Level::Series {
                Some(values)
            } else {
                let uids = (key.study_uid.clone(), series_uid.to_string());
                if !series_rows.contains_key(&uids) {
                    let found = archive.series_row(principal, &key.study_uid, series_uid)?;
                    series_rows.insert(uids.clone(), found);
                }
                series_rows[&uids].as_ref()
            };
            let Some(series) = series else { continue };
            put_level(&mut row, Level::Series, series, search);
            let n_instances = strings(series, tags::NUMBER_OF_SERIES_RELATED_INSTANCES);
            row.put_strings(tags::NUMBER_OF_SERIES_RELATED_INSTANCES, VR::IS, n_instances);
            if key.level == Level::Series {
                row.put_str(tags::RETRIEVE_URL, VR::UR, context.series_url(&key.study_uid, series_uid));
            }
        }
        if levels.contains(&Level::Instance) {
            put_level(&mut row, Level::Instance, values, search);
            let sop_uid = key.sop_uid.as_deref().unwrap_or_default();
            row.put_str(tags::RETRIEVE_URL, VR::UR, context.instance_url(&key.study_uid, series_uid, sop_uid));
        }
        // QIDO-RS rows always carry the unique keys of the levels above (§10.6.3.3).
        row.put_str(tags::STUDY_INSTANCE_UID, VR::UI, &key.study_uid);
        if let Some(series) = &key.series_uid {
            row.put_str(tags::SERIES_INSTANCE_UID, VR::UI, series);
        }
        row.put_str(tags::INSTANCE_AVAILABILITY, VR::CS, "ONLINE");
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_whole_values() {
        for (pattern, value, expected) in [
            ("RP*", "RP1", true),
            ("RP?", "RP12", false),
            ("*1", "RP1", true),
            ("R*P*1", "RXPY1", true),
            ("*", "", true),
            ("a*b", "acbcb", true),
            ("a*b", "acbc", false),
        ] {
            assert_eq!(wildcard_matches(pattern, value), expected, "{pattern} {value}");
        }
    }
}
