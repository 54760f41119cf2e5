//! The Worklist service, UPS-RS (PS3.18 Chapter 11): parse each transaction's request, call the
//! archive's worklist, render the status, headers and DICOM JSON the standard fixes. The state
//! machine, the Transaction UID rules and the events are the domain's (`archive::worklist`).

use std::sync::Arc;

use bytes::Bytes;
use dicom_dictionary_std::tags;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::BodyExt;

use super::query;
use super::{RequestContext, ResponseBody, empty_body, full_body};
use crate::archive::Archive;
use crate::archive::worklist::dataset::{self, Dataset, MatchKey};
use crate::archive::worklist::{MAX_WORKITEM_BYTES, ProcedureStepState, SubscriptionScope};
use crate::config::Config;
use crate::error::{Error, ErrorKind};
use crate::media::mime::{APPLICATION_DICOM_JSON, APPLICATION_JSON};
use crate::server::router::{SubscriptionTarget, WorkitemOperation};

/// Most match keys in one search or filter.
const MAX_MATCH_KEYS: usize = 64;

/// Serves one Worklist transaction. Refusals that carry a Warning text of the standard get it
/// as `Warning: 299 {service}: {text}` (PS3.18 §8.4, §11).
pub async fn handle<B>(
    archive: &Arc<Archive>,
    config: &Config,
    context: &RequestContext,
    operation: WorkitemOperation,
    request: Request<B>,
) -> Result<Response<ResponseBody>, Error>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send + Sync,
{
    let result = serve(archive, config, context, operation, request).await;
    result.or_else(|error| match error.warning {
        Some(text) => {
            let mut response = crate::server::service::render_error(&error);
            add_warning(&mut response, context, text);
            Ok(response)
        }
        None => Err(error),
    })
}

async fn serve<B>(
    archive: &Arc<Archive>,
    config: &Config,
    context: &RequestContext,
    operation: WorkitemOperation,
    request: Request<B>,
) -> Result<Response<ResponseBody>, Error>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send + Sync,
{
    let worklist = archive.worklist();
    let principal = &context.principal;
    let query = request.uri().query().map(str::to_string);
    match operation {
        WorkitemOperation::Create => {
            let uid = bare_uid(query.as_deref())?;
            let workitem = read_dataset(request).await?;
            let (uid, modified) = worklist.create(principal, uid.as_deref(), workitem).await?;
            let url = format!("{}/workitems/{uid}", context.base_url);
            let mut response = status(StatusCode::CREATED);
            response.headers_mut().insert(header::LOCATION, header_value(&url)?);
            if modified {
                add_warning(&mut response, context, "The Workitem was created with modifications.");
            }
            Ok(response)
        }
        WorkitemOperation::Retrieve { workitem } => {
            check_accept(&request)?;
            let found = worklist.retrieve(principal, &workitem)?;
            Ok(json_response(vec![found]))
        }
        WorkitemOperation::Update { workitem } => {
            let transaction_uid = transaction_uid(query.as_deref())?;
            let changes = read_dataset(request).await?;
            worklist.update(principal, &workitem, transaction_uid.as_deref(), changes).await?;
            Ok(status(StatusCode::OK))
        }
        WorkitemOperation::ChangeState { workitem } => {
            let body = read_dataset(request).await?;
            let transaction_uid = dataset::first_text(&body, tags::TRANSACTION_UID);
            let target = dataset::first_text(&body, tags::PROCEDURE_STEP_STATE).ok_or_else(|| {
                Error::bad_request("the payload has no Procedure Step State (0074,1000) (PS3.18 §11.7.1.4)")
            })?;
            let already = worklist.change_state(principal, &workitem, transaction_uid.as_deref(), &target).await?;
            let mut response = status(StatusCode::OK);
            match already {
                Some(ProcedureStepState::Completed) => {
                    add_warning(&mut response, context, "The UPS is already in the requested state of COMPLETED.")
                }
                Some(ProcedureStepState::Canceled) => {
                    add_warning(&mut response, context, "The UPS is already in the requested state of CANCELED.")
                }
                _ => {}
            }
            Ok(response)
        }
        WorkitemOperation::RequestCancellation { workitem } => {
            let body = read_optional_dataset(request).await?;
            let requesting_ae = dataset::first_text(&body, tags::REQUESTING_AE)
                .filter(|ae| crate::archive::worklist::validate_ae(ae).is_ok())
                .unwrap_or_else(|| "DICOMWEB".to_string());
            let already_canceled = worklist.request_cancellation(principal, &workitem, &requesting_ae, body).await?;
            let mut response = status(StatusCode::ACCEPTED);
            if already_canceled {
                add_warning(&mut response, context, "The UPS is already in the requested state of CANCELED.");
            }
            Ok(response)
        }
        WorkitemOperation::Search => search(archive, config, context, query.as_deref()).await,
        WorkitemOperation::Subscribe { target, aetitle } => {
            let pairs = query::pairs(query.as_deref())?;
            let deletion_lock = match pairs.iter().find(|(name, _)| name == "deletionlock").map(|(_, v)| v.as_str()) {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => return Err(Error::bad_request(format!("deletionlock={other:?} is not true or false"))),
            };
            let filter = match &target {
                SubscriptionTarget::FilteredWorklist => {
                    let text = pairs.iter().find(|(name, _)| name == "filter").map(|(_, v)| v.as_str()).unwrap_or("");
                    Some(parse_filter(text)?)
                }
                _ => None,
            };
            let lock_granted = worklist.subscribe(principal, &aetitle, scope(target), filter, deletion_lock).await?;
            let mut response = status(StatusCode::CREATED);
            response
                .headers_mut()
                .insert(header::CONTENT_LOCATION, header_value(&notification_url(context, &aetitle))?);
            if !lock_granted {
                add_warning(&mut response, context, "Deletion Lock not granted.");
            }
            Ok(response)
        }
        WorkitemOperation::Unsubscribe { target, aetitle } => {
            worklist.unsubscribe(principal, &aetitle, scope(target)).await?;
            Ok(status(StatusCode::OK))
        }
        WorkitemOperation::Suspend { aetitle, .. } => {
            worklist.suspend(principal, &aetitle).await?;
            Ok(status(StatusCode::OK))
        }
        WorkitemOperation::Notifications { aetitle } => super::ups_ws::upgrade(archive, principal, &aetitle, request),
    }
}

fn scope(target: SubscriptionTarget) -> SubscriptionScope {
    match target {
        SubscriptionTarget::Workitem(uid) => SubscriptionScope::Workitem(uid),
        SubscriptionTarget::Worklist => SubscriptionScope::Worklist,
        SubscriptionTarget::FilteredWorklist => SubscriptionScope::FilteredWorklist,
    }
}

/// The WebSocket URL of an AE's notification connection (PS3.18 §8.10, §11.10.3: the
/// Subscribe response's Content-Location): the service's base URL with `ws`/`wss` for
/// `http`/`https`, then `/subscribers/{aetitle}`.
pub fn notification_url(context: &RequestContext, aetitle: &str) -> String {
    let base = &context.base_url;
    let ws_base = match base.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}"),
        None => format!("ws://{}", base.strip_prefix("http://").unwrap_or(base)),
    };
    let encoded = percent_encoding::utf8_percent_encode(aetitle, percent_encoding::NON_ALPHANUMERIC);
    format!("{ws_base}/subscribers/{encoded}")
}

/// Search (PS3.18 §11.9): match keys by keyword, tag or dotted sequence path (§8.3.1), matched
/// as PS3.4 C.2.2.2 prescribes; `limit` and `offset`; every workitem returned whole (a superset
/// of the required return keys and of any `includefield`), without its Transaction UID.
async fn search(
    archive: &Arc<Archive>,
    config: &Config,
    context: &RequestContext,
    query: Option<&str>,
) -> Result<Response<ResponseBody>, Error> {
    let mut keys = Vec::new();
    let (mut offset, mut limit) = (0usize, config.qido_max_results);
    let mut warnings = Vec::new();
    for (name, value) in query::pairs(query)? {
        let number = || {
            value
                .parse::<usize>()
                .map_err(|_| Error::bad_request(format!("{name}={value:?} is not an unsigned integer")))
        };
        match name.as_str() {
            "limit" => limit = number()?.min(config.qido_max_results),
            "offset" => offset = number()?,
            "fuzzymatching" if value == "true" => warnings.push(
                "The fuzzymatching parameter is not supported. Only literal matching has been performed.".to_string(),
            ),
            "includefield" | "fuzzymatching" | "emptyvaluematching" | "accept" | "charset" => {}
            // §8.3: parameters that name no attribute are ignored.
            _ => {
                if let Some(path) = match_path(&name) {
                    keys.push(match_key(&name, &path, &value)?);
                }
            }
        }
        if keys.len() > MAX_MATCH_KEYS {
            return Err(Error::bad_request(format!("at most {MAX_MATCH_KEYS} match keys")));
        }
    }
    let (worklist, principal) = (archive.worklist().clone(), context.principal.clone());
    // Parsing every stored workitem is blocking work: off the async workers.
    let (page, total) = tokio::task::spawn_blocking(move || worklist.search(&principal, &keys, offset, limit))
        .await
        .map_err(Error::internal)??;
    let remaining = total.saturating_sub(offset.saturating_add(page.len()));
    let mut response = json_response(page);
    if remaining > 0 {
        warnings.insert(0, format!("There are {remaining} additional results that can be requested"));
    }
    for warning in warnings {
        add_warning(&mut response, context, &warning);
    }
    Ok(response)
}

/// The tags of a match-key name: a keyword or tag, or a dotted path whose every component but
/// the last is a sequence (PS3.18 §8.3.1). `None` when it names no attribute.
fn match_path(name: &str) -> Option<Vec<dicom_core::Tag>> {
    let components: Vec<&str> = name.split('.').collect();
    let mut path = Vec::with_capacity(components.len());
    for (index, component) in components.iter().enumerate() {
        let tag = query::dictionary_tag(component)?;
        if query::is_sequence(tag) != (index + 1 < components.len()) {
            return None;
        }
        path.push(tag);
    }
    Some(path)
}

fn match_key(name: &str, path: &[dicom_core::Tag], value: &str) -> Result<MatchKey, Error> {
    if value.contains('\0') || value.len() > 1024 {
        return Err(Error::bad_request(format!("the value of {name} is not a valid match value")));
    }
    if path.contains(&tags::TRANSACTION_UID) {
        // The lock is never disclosed, not even by whether a guess matches (CC.2.7.3).
        return Err(Error::bad_request("the Transaction UID (0008,1195) is not a match key"));
    }
    Ok(MatchKey::new(path, value))
}

/// The filter of a filtered worklist subscription (PS3.18 §11.10.1.2): `attribute=value`
/// match keys separated by commas (a piece without `=` continues the previous value, as in a
/// UID list).
fn parse_filter(text: &str) -> Result<Vec<MatchKey>, Error> {
    let mut pieces: Vec<(String, String)> = Vec::new();
    for piece in text.split(',').filter(|p| !p.is_empty()) {
        match piece.split_once('=') {
            Some((name, value)) => pieces.push((name.to_string(), value.to_string())),
            None => match pieces.last_mut() {
                Some((_, value)) => {
                    value.push(',');
                    value.push_str(piece);
                }
                None => return Err(Error::bad_request(format!("filter piece {piece:?} is not attribute=value"))),
            },
        }
    }
    if pieces.len() > MAX_MATCH_KEYS {
        return Err(Error::bad_request(format!("at most {MAX_MATCH_KEYS} filter keys")));
    }
    pieces
        .iter()
        .map(|(name, value)| {
            let path = match_path(name)
                .ok_or_else(|| Error::bad_request(format!("filter attribute {name:?} names no DICOM attribute")))?;
            match_key(name, &path, value)
        })
        .collect()
}

/// The `?{workitem}` of Create (PS3.18 §11.4.1): a bare UID as the query, or `workitem=`.
fn bare_uid(query: Option<&str>) -> Result<Option<String>, Error> {
    for (name, value) in query::pairs(query)? {
        let uid = match (name.as_str(), value.is_empty()) {
            ("workitem", false) => value,
            (name, true) if name.starts_with(|c: char| c.is_ascii_digit()) => name.to_string(),
            _ => continue,
        };
        crate::dicom::uid::validate(&uid)
            .map_err(|e| Error::bad_request(format!("the Workitem UID in the query is not valid: {e}")))?;
        return Ok(Some(uid));
    }
    Ok(None)
}

/// The Transaction UID of Update (PS3.18 §11.6.1): `?transaction-uid={uid}` (the digest's
/// reading of the template `?{transaction-uid}`), or the bare UID as the query.
fn transaction_uid(query: Option<&str>) -> Result<Option<String>, Error> {
    for (name, value) in query::pairs(query)? {
        let uid = match (name.as_str(), value.is_empty()) {
            ("transaction-uid" | "transactionuid" | "TransactionUID", false) => value,
            (name, true) if name.starts_with(|c: char| c.is_ascii_digit()) => name.to_string(),
            _ => continue,
        };
        crate::dicom::uid::validate(&uid)
            .map_err(|e| Error::bad_request(format!("the Transaction UID in the query is not valid: {e}")))?;
        return Ok(Some(uid));
    }
    Ok(None)
}

/// 406 unless the Accept header allows DICOM JSON (PS3.18 §11.1.3; the XML representation is
/// not offered, conformance/STATEMENT.md).
fn check_accept<B>(request: &Request<B>) -> Result<(), Error> {
    let Some(ranges) = super::accepted_types(request.headers()) else { return Ok(()) };
    let acceptable = ranges.iter().any(|media| {
        matches!(media.essence.as_str(), "*/*" | "application/*" | APPLICATION_DICOM_JSON | APPLICATION_JSON)
    });
    if acceptable {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::NotAcceptable, "workitems are available as application/dicom+json"))
    }
}

/// Reads the request body (at most [`MAX_WORKITEM_BYTES`]) as one DICOM JSON data set: an
/// object or an array holding one (PS3.18 §11.4.1.4: a single workitem).
async fn read_dataset<B>(request: Request<B>) -> Result<Dataset, Error>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let bytes = read_body(request).await?;
    parse_dataset(&bytes)
}

/// As [`read_dataset`], but an empty body is an empty data set (Request Cancellation's payload
/// is optional, §11.8.1.4).
async fn read_optional_dataset<B>(request: Request<B>) -> Result<Dataset, Error>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let bytes = read_body(request).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) { Ok(Dataset::new()) } else { parse_dataset(&bytes) }
}

async fn read_body<B>(request: Request<B>) -> Result<Vec<u8>, Error>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_WORKITEM_BYTES as u64) {
        return Err(too_large());
    }
    let mut body = request.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::bad_request(format!("reading the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_WORKITEM_BYTES {
                return Err(too_large());
            }
            bytes.extend_from_slice(&data);
        }
    }
    if !bytes.is_empty() && essence != APPLICATION_DICOM_JSON && essence != APPLICATION_JSON {
        return Err(Error::new(
            ErrorKind::UnsupportedMediaType,
            format!("a workitem is sent as {APPLICATION_DICOM_JSON}, not {content_type:?}"),
        ));
    }
    Ok(bytes)
}

fn too_large() -> Error {
    Error::new(ErrorKind::PayloadTooLarge, format!("a workitem payload is at most {MAX_WORKITEM_BYTES} bytes"))
}

fn parse_dataset(bytes: &[u8]) -> Result<Dataset, Error> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Error::bad_request(format!("the payload is not DICOM JSON: {e}")))?;
    match value {
        serde_json::Value::Object(dataset) => Ok(dataset),
        serde_json::Value::Array(mut items) if items.len() == 1 => match items.remove(0) {
            serde_json::Value::Object(dataset) => Ok(dataset),
            _ => Err(Error::bad_request("the payload's array does not hold a DICOM JSON data set")),
        },
        _ => Err(Error::bad_request("the payload must be one DICOM JSON data set (PS3.18 F.2)")),
    }
}

fn status(code: StatusCode) -> Response<ResponseBody> {
    Response::builder().status(code).body(empty_body()).expect("valid response")
}

fn json_response(datasets: Vec<Dataset>) -> Response<ResponseBody> {
    let body = serde_json::to_vec(&datasets).expect("serialises");
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, APPLICATION_DICOM_JSON)
        .body(full_body(Bytes::from(body)))
        .expect("valid response")
}

fn header_value(text: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(text).map_err(|_| Error::bad_request("a URL with characters not allowed in a header"))
}

fn add_warning(response: &mut Response<ResponseBody>, context: &RequestContext, text: &str) {
    if let Ok(value) = HeaderValue::from_str(&format!("299 {}: {text}", context.base_url)) {
        response.headers_mut().append(header::WARNING, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_query_uids() {
        let keys =
            parse_filter("ScheduledProcedureStepPriority=HIGH,InputInformationSequence.StudyInstanceUID=1.2,1.3")
                .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].value, "1.2,1.3");
        assert!(parse_filter("NoSuchKeyword=1").is_err());
        assert!(parse_filter("InputInformationSequence=1").is_err(), "the last component is not a sequence");
        assert_eq!(bare_uid(Some("1.2.3")).unwrap().as_deref(), Some("1.2.3"));
        assert_eq!(bare_uid(Some("workitem=1.2.3")).unwrap().as_deref(), Some("1.2.3"));
        assert!(bare_uid(Some("1.2.x")).is_err());
        assert_eq!(transaction_uid(Some("transaction-uid=2.25.7")).unwrap().as_deref(), Some("2.25.7"));
        assert_eq!(transaction_uid(None).unwrap(), None);
        assert!(match_key("TransactionUID", &[tags::TRANSACTION_UID], "1.2").is_err());
    }
}
