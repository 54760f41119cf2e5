//! The audit query API (administrators only; not DICOMweb):
//! `GET /admin/audit?study={uid}&principal={subject or key id}&action={name}&since={time}&until={time}&after={seq}&limit={n}`
//! → `{"records": [...], "next": seq|null}`, oldest first. Times are RFC 3339 UTC
//! (`2026-12-02T19:00:00Z`) or Unix seconds; `limit` is at most 1000 (default 100); `next`,
//! when not null, is the `after` of the following page. Every filter is optional.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode, header};

use crate::audit::{AuditLog, AuditQuery, AuditRecord, MAX_QUERY_LIMIT};
use crate::auth::{Principal, Scope};
use crate::dicomweb::{self, ResponseBody};
use crate::error::Error;

const DEFAULT_LIMIT: usize = 100;
/// Longest query string read.
const MAX_QUERY_BYTES: usize = 4096;

/// A record as the API shows it (the stored form is the chain's, `audit::AuditRecord`).
#[derive(serde::Serialize)]
struct Entry<'a> {
    seq: u64,
    time: String,
    action: &'a str,
    status: u16,
    subject: Option<&'a str>,
    key_id: Option<&'a str>,
    institution: Option<&'a str>,
    address: Option<&'a str>,
    studies: &'a [String],
    series: Option<&'a str>,
    detail: Option<&'a str>,
}

impl<'a> From<&'a AuditRecord> for Entry<'a> {
    fn from(record: &'a AuditRecord) -> Entry<'a> {
        Entry {
            seq: record.seq,
            time: crate::audit::atna::timestamp(record.time),
            action: &record.action,
            status: record.outcome,
            subject: record.subject.as_deref(),
            key_id: record.key_id.as_deref(),
            institution: record.institution.as_deref(),
            address: record.address.as_deref(),
            studies: &record.studies,
            series: record.series.as_deref(),
            detail: record.detail.as_deref(),
        }
    }
}

/// Unix milliseconds of `2026-12-02T19:00:00Z` (seconds fraction allowed) or of Unix seconds.
pub fn parse_time(text: &str) -> Option<u64> {
    if !text.is_empty() && text.len() <= 12 && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u64>().ok().map(|s| s * 1000);
    }
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes.len() > 30 || !text.ends_with(['Z', 'z']) {
        return None;
    }
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let separators_ok = bytes[4] == b'-'
        && bytes[7] == b'-'
        && matches!(bytes[10], b'T' | b't')
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !separators_ok
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let fraction = &text[19..text.len() - 1];
    let millis = match fraction.strip_prefix('.') {
        None if fraction.is_empty() => 0,
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{digits:0<3}")[..3].parse::<i64>().ok()?
        }
        _ => return None,
    };
    let days = crate::civil::days_from_date(year, month, day);
    let ms = ((days * 86_400 + hour * 3600 + minute * 60 + second) * 1000) + millis;
    u64::try_from(ms).ok()
}

fn parse_query(query: Option<&str>) -> Result<AuditQuery, Error> {
    let query = query.unwrap_or("");
    if query.len() > MAX_QUERY_BYTES {
        return Err(Error::bad_request(format!("the query is longer than {MAX_QUERY_BYTES} bytes")));
    }
    let mut parsed = AuditQuery { limit: DEFAULT_LIMIT, ..Default::default() };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(&raw.replace('+', " ")).decode_utf8_lossy().into_owned();
        let time = |value: &str| {
            parse_time(value).ok_or_else(|| {
                Error::bad_request(format!("{name}={value:?} is not a time: use 2026-12-02T19:00:00Z or Unix seconds"))
            })
        };
        match name {
            "study" => {
                crate::dicom::uid::validate(&value).map_err(|e| Error::bad_request(format!("study: {e}")))?;
                parsed.study = Some(value);
            }
            "principal" if !value.is_empty() && value.len() <= 256 => parsed.principal = Some(value),
            "action" if !value.is_empty() && value.len() <= 64 => parsed.action = Some(value),
            "since" => parsed.since = Some(time(&value)?),
            "until" => parsed.until = Some(time(&value)?),
            "after" => {
                parsed.after = Some(value.parse().map_err(|_| Error::bad_request("after must be a sequence number"))?)
            }
            "limit" => {
                let limit: usize = value.parse().map_err(|_| Error::bad_request("limit must be a number"))?;
                if limit == 0 || limit > MAX_QUERY_LIMIT {
                    return Err(Error::bad_request(format!("limit must be 1 to {MAX_QUERY_LIMIT}")));
                }
                parsed.limit = limit;
            }
            _ => {
                return Err(Error::bad_request(format!(
                    "unknown or empty audit query parameter {name:?}: use study, principal, action, since, until, \
                     after, limit"
                )));
            }
        }
    }
    Ok(parsed)
}

/// `GET /admin/audit`: an administrator reads the records of its own institution's callers;
/// the local caller (no authentication, loopback) the whole trail.
pub async fn query(
    audit: &Arc<AuditLog>,
    principal: &Principal,
    query_string: Option<&str>,
) -> Result<Response<ResponseBody>, Error> {
    let mut query = parse_query(query_string)?;
    if principal.scope != Scope::Deployment {
        query.institution = Some(principal.institution.clone());
    }
    let audit = audit.clone();
    let page = tokio::task::spawn_blocking(move || audit.query(&query)).await.map_err(Error::internal)??;
    let entries: Vec<Entry> = page.records.iter().map(Entry::from).collect();
    let body = serde_json::json!({ "records": entries, "next": page.next });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(dicomweb::full_body(Bytes::from(body.to_string())))
        .expect("valid response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("0"), Some(0));
        assert_eq!(parse_time("1798761599"), Some(1_798_761_599_000));
        assert_eq!(parse_time("2026-12-31T23:59:59Z"), Some(1_798_761_599_000));
        assert_eq!(parse_time("2026-12-31T23:59:59.5Z"), Some(1_798_761_599_500));
        assert_eq!(parse_time("2026-13-31T23:59:59Z"), None);
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn queries_are_checked() {
        assert_eq!(parse_query(Some("limit=5&principal=key%3Aab")).unwrap().principal.as_deref(), Some("key:ab"));
        assert!(parse_query(Some("limit=100000")).is_err());
        assert!(parse_query(Some("study=not-a-uid")).is_err());
        assert!(parse_query(Some("PatientName=Doe")).is_err());
    }
}
