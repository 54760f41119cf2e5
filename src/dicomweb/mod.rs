//! DICOMweb transactions (PS3.18): one module per transaction, each parsing the request,
//! calling the archive and rendering the response. Shared vocabulary lives here.

pub mod cache;
pub mod capabilities;
pub mod dataset;
pub mod delete;
pub mod qido;
pub mod query;
pub mod stow;
pub mod ups;
pub mod ups_ws;
pub mod wado;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};

use crate::archive::Archive;
use crate::auth::Principal;
use crate::config::Config;
use crate::error::Error;
use crate::model::records::InstanceRecord;
use crate::server::router::Endpoint;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body: buffered or streamed.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// What a transaction knows about the caller beyond the request itself.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Absolute URL of the DICOMweb root, for RetrieveURL and Content-Location.
    pub base_url: String,
    pub principal: Principal,
}

impl RequestContext {
    pub fn study_url(&self, study: &str) -> String {
        format!("{}/studies/{study}", self.base_url)
    }

    pub fn series_url(&self, study: &str, series: &str) -> String {
        format!("{}/studies/{study}/series/{series}", self.base_url)
    }

    pub fn instance_url(&self, study: &str, series: &str, instance: &str) -> String {
        format!("{}/studies/{study}/series/{series}/instances/{instance}", self.base_url)
    }
}

pub fn full_body(bytes: Bytes) -> ResponseBody {
    BodyExt::boxed_unsync(Full::new(bytes).map_err(|never| match never {}))
}

pub fn empty_body() -> ResponseBody {
    full_body(Bytes::new())
}

pub fn stream_body<S, E>(stream: S) -> ResponseBody
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<BoxError>,
{
    BodyExt::boxed_unsync(StreamBody::new(stream.map(|item| item.map(Frame::data).map_err(Into::into))))
}

/// Routes an endpoint to its transaction.
pub async fn dispatch<B>(
    archive: &Arc<Archive>,
    config: &Config,
    context: &RequestContext,
    endpoint: Endpoint,
    mut request: Request<B>,
) -> Result<Response<ResponseBody>, Error>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send + Sync,
{
    check_charset_parameter(request.uri().query())?;
    // Instance-level content never changes under its URL unless stored instances can be replaced.
    let immutable = !config.archive.replaces_instances();
    // The URI service names its media types with contentType instead (§9.1.2.2.1).
    if endpoint != Endpoint::WadoUri {
        let query = request.uri().query().map(str::to_string);
        apply_accept_parameter(query.as_deref(), request.headers_mut())?;
    }
    match endpoint {
        // Answered by `server::admin` before dispatch; not a DICOMweb resource.
        Endpoint::Keys(_) | Endpoint::Shares(_) | Endpoint::Audit => Err(Error::not_found("no such DICOMweb resource")),
        Endpoint::Workitems(operation) => ups::handle(archive, config, context, operation, request).await,
        Endpoint::Store { study } => stow::store(archive, config, context, study.as_deref(), request).await,
        Endpoint::SearchStudies | Endpoint::SearchSeries { .. } | Endpoint::SearchInstances { .. } => {
            qido::search(archive, config, context, &endpoint, request.uri().query(), request.headers()).await
        }
        Endpoint::Retrieve { study, series, instance } => {
            let validator = target_validator(
                archive,
                context,
                &request,
                immutable,
                &study,
                series.as_deref(),
                instance.as_deref(),
            )?;
            let respond =
                wado::retrieve(archive, context, &study, series.as_deref(), instance.as_deref(), request.headers());
            cache::conditional(request.headers(), Some(validator), respond).await
        }
        Endpoint::Metadata { study, series, instance } => {
            wado::metadata::retrieve(
                archive,
                context,
                &study,
                series.as_deref(),
                instance.as_deref(),
                request.headers(),
            )
            .await
        }
        Endpoint::Frames { study, series, instance, frames } => {
            let record = archive.instance_in(&context.principal, &study, &series, &instance)?;
            let validator = instance_validator(&record, context, &request, immutable);
            let respond = wado::frames::frames(archive, context, &record, &frames, request.headers());
            cache::conditional(request.headers(), Some(validator), respond).await
        }
        Endpoint::Rendered { study, series, instance, frames, thumbnail } => {
            let kind = if thumbnail { wado::rendered::Kind::Thumbnail } else { wado::rendered::Kind::Rendered };
            let target = wado::rendered::Target {
                study: &study,
                series: series.as_deref(),
                instance: instance.as_deref(),
                frames: frames.as_deref(),
            };
            let validator = target_validator(
                archive,
                context,
                &request,
                immutable,
                &study,
                series.as_deref(),
                instance.as_deref(),
            )?;
            let respond =
                wado::rendered::retrieve(archive, context, kind, target, request.uri().query(), request.headers());
            cache::conditional(request.headers(), Some(validator), respond).await
        }
        Endpoint::Capabilities { path } => capabilities::describe(context, &path, request.headers()),
        Endpoint::WadoUri => {
            // Tagged when the parameters name an instance the caller may read; otherwise the
            // handler gives the error.
            let validator = wado::uri::target(request.uri().query())
                .and_then(|(study, series, object)| {
                    archive.instance_in(&context.principal, &study, &series, &object).ok()
                })
                .map(|record| instance_validator(&record, context, &request, immutable));
            let respond = wado::uri::retrieve(archive, context, request.uri().query(), request.headers());
            cache::conditional(request.headers(), validator, respond).await
        }
        Endpoint::Delete { study, series, instance } => {
            delete::delete(archive, context, &study, series.as_deref(), instance.as_deref()).await
        }
        Endpoint::Bulkdata { study, series, instance, tag } => {
            let record = archive.instance_in(&context.principal, &study, &series, &instance)?;
            let validator = instance_validator(&record, context, &request, immutable);
            let respond = wado::frames::bulkdata(archive, context, &record, &tag, request.headers());
            cache::conditional(request.headers(), Some(validator), respond).await
        }
    }
}

/// The cache validator of a response made from one instance.
fn instance_validator<B>(
    record: &InstanceRecord,
    context: &RequestContext,
    request: &Request<B>,
    immutable: bool,
) -> cache::Validator {
    cache::Validator::new(std::slice::from_ref(record), context, request.uri(), request.headers(), immutable)
}

/// The cache validator of a response made from the instances of a study, series or instance:
/// only an instance-level one can be immutable (a series or study gains instances).
fn target_validator<B>(
    archive: &Archive,
    context: &RequestContext,
    request: &Request<B>,
    immutable: bool,
    study: &str,
    series: Option<&str>,
    instance: Option<&str>,
) -> Result<cache::Validator, Error> {
    let level = wado::target_level(series, instance);
    let records = archive.instances_of(&context.principal, level, study, series, instance)?;
    let immutable = immutable && level == crate::dicom::attrs::Level::Instance;
    Ok(cache::Validator::new(&records, context, request.uri(), request.headers(), immutable))
}

/// Folds the `accept` query parameter (PS3.18 §8.3.3.1) into the Accept header: the selection
/// algorithm (§8.7.8.1) tries the parameter's media types first, in their own q order, then the
/// header's. The header is rewritten with descending q-values that encode exactly that order, so
/// every transaction negotiates from one list. Wildcards are not allowed in the parameter (400).
fn apply_accept_parameter(query: Option<&str>, headers: &mut HeaderMap) -> Result<(), Error> {
    use crate::media::mime::{MediaType, split_outside_quotes};
    let mut items = Vec::new();
    for pair in query.unwrap_or_default().split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "accept" {
            continue;
        }
        // `+` is literal here: it belongs to media types such as application/dicom+json.
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| Error::bad_request("the accept query parameter is not UTF-8"))?;
        for item in split_outside_quotes(&value, ',') {
            let item = item.trim();
            let media = MediaType::parse(item)
                .ok_or_else(|| Error::bad_request(format!("accept={item:?} is not a media type")))?;
            if media.essence.contains('*') {
                return Err(Error::bad_request(format!(
                    "accept={item:?}: the accept query parameter does not allow wildcards (PS3.18 §8.3.3.1)"
                )));
            }
            items.push(item.to_string());
        }
    }
    if items.is_empty() {
        return Ok(());
    }
    let from_parameter = ranked_types(items.iter().map(String::as_str));
    let from_header = accepted_types(headers).unwrap_or_else(|| vec![MediaType::parse("*/*").expect("valid")]);
    let mut merged = Vec::new();
    for (i, mut media) in from_parameter.into_iter().chain(from_header).enumerate() {
        media.params.retain(|(name, _)| name != "q");
        let q = 1000usize.saturating_sub(i).max(1);
        merged.push(format!("{media}; q={}.{:03}", q / 1000, q % 1000));
    }
    let value = http::HeaderValue::from_str(&merged.join(", "))
        .map_err(|_| Error::bad_request("the accept query parameter holds characters not allowed in a header"))?;
    headers.insert(http::header::ACCEPT, value);
    Ok(())
}

/// The `charset` query parameter (PS3.18 §8.3.3.2, §9.1.2.2.2): Kura answers in UTF-8 only, so
/// a list that names neither `UTF-8` nor the Defined Term `ISO_IR 192` is 400, as is a
/// wildcard. Accept-Charset needs no check: an unsupported value there falls back to the media
/// type's default, UTF-8 (§8.8.5).
fn check_charset_parameter(query: Option<&str>) -> Result<(), Error> {
    for pair in query.unwrap_or_default().split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "charset" {
            continue;
        }
        let value = percent_encoding::percent_decode_str(&value.replace('+', " ")).decode_utf8_lossy().into_owned();
        let names: Vec<&str> = value.split(',').map(|v| v.split(';').next().unwrap_or_default().trim()).collect();
        let supported = names.iter().any(|n| n.eq_ignore_ascii_case("utf-8") || n.eq_ignore_ascii_case("iso_ir 192"));
        if names.contains(&"*") || !supported {
            return Err(Error::bad_request(format!(
                "charset={value:?}: Kura answers in UTF-8 only; ask for UTF-8 or leave charset out (PS3.18 §8.3.3.2)"
            )));
        }
    }
    Ok(())
}

/// Media ranges in preference order (q-value, then the order given; PS3.18 §8.7.5), without
/// those with q=0 or that do not parse (ignored, §8.7.7).
fn ranked_types<'a>(items: impl Iterator<Item = &'a str>) -> Vec<crate::media::mime::MediaType> {
    let mut ranked = Vec::new();
    for item in items {
        let Some(media) = crate::media::mime::MediaType::parse(item.trim()) else { continue };
        let quality = media.param("q").map_or(Some(1.0), |q| q.parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q)));
        match quality {
            Some(q) if q > 0.0 => ranked.push((q, media)),
            _ => {}
        }
    }
    // Among equal q-values the smallest lossless syntax comes first (the server's choice on a
    // tie, §8.7.8.1; the order is `Codec::SMALLEST_FIRST`), then the order given: a stable sort.
    ranked.sort_by(|a, b| {
        b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal).then(lossless_rank(&a.1).cmp(&lossless_rank(&b.1)))
    });
    ranked.into_iter().map(|(_, media)| media).collect()
}

/// Where a media range's lossless syntax stands in `Codec::SMALLEST_FIRST` (after all of them
/// when it names none): its transfer-syntax parameter, else the default syntax of its bulk data
/// type (`type="image/jls"` …).
fn lossless_rank(media: &crate::media::mime::MediaType) -> usize {
    use crate::dicom::encode::Codec;
    let codec = match media.param("transfer-syntax") {
        Some(ts) => Codec::from_transfer_syntax(ts),
        None => media.param("type").and_then(Codec::from_media_type),
    };
    codec.and_then(|c| Codec::SMALLEST_FIRST.iter().position(|s| *s == c)).unwrap_or(Codec::SMALLEST_FIRST.len())
}

/// Whether any acceptable range asks for a syntax Kura encodes on request (then the pixel
/// formats of the instances are read to see which of them can be offered).
pub(crate) fn asks_for_encoding(headers: &HeaderMap) -> bool {
    accepted_types(headers).is_some_and(|accepted| accepted.iter().any(|m| lossless_rank(m) < 4))
}

/// The media ranges of the `Accept` header in preference order (see [`ranked_types`]). `None`
/// when the request has no Accept header, which Kura treats as `*/*` (a choice recorded in
/// conformance/STATEMENT.md).
pub fn accepted_types(headers: &HeaderMap) -> Option<Vec<crate::media::mime::MediaType>> {
    let items: Vec<&str> = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|text| crate::media::mime::split_outside_quotes(text, ','))
        .filter(|item| !item.trim().is_empty())
        .collect();
    if items.is_empty() {
        return None;
    }
    Some(ranked_types(items.into_iter()))
}
