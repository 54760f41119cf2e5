//! DICOMweb transactions (PS3.18): one module per transaction, each parsing the request,
//! calling the archive and rendering the response. Shared vocabulary lives here.

pub mod dataset;
pub mod qido;
pub mod query;
pub mod stow;
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
    request: Request<B>,
) -> Result<Response<ResponseBody>, Error>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send + Sync,
{
    match endpoint {
        Endpoint::Store { study } => stow::store(archive, config, context, study.as_deref(), request).await,
        Endpoint::SearchStudies | Endpoint::SearchSeries { .. } | Endpoint::SearchInstances { .. } => {
            qido::search(archive, config, context, &endpoint, request.uri().query(), request.headers()).await
        }
        Endpoint::Retrieve { study, series, instance } => {
            wado::retrieve(archive, context, &study, series.as_deref(), instance.as_deref(), request.headers()).await
        }
        Endpoint::Metadata { study, series, instance } => wado::metadata::retrieve(
            archive,
            context,
            &study,
            series.as_deref(),
            instance.as_deref(),
            request.headers(),
        ),
        Endpoint::Frames { study, series, instance, frames } => {
            let record = archive.instance_in(&context.principal, &study, &series, &instance)?;
            wado::frames::frames(archive, context, &record, &frames, request.headers())
        }
        Endpoint::WadoUri => wado::uri::retrieve(archive, context, request.uri().query(), request.headers()).await,
        Endpoint::Bulkdata { study, series, instance, tag } => {
            let record = archive.instance_in(&context.principal, &study, &series, &instance)?;
            wado::frames::bulkdata(archive, context, &record, &tag, request.headers())
        }
    }
}

/// The media ranges of the `Accept` header in preference order (q-value, then header order;
/// PS3.18 §8.7.5), without those with q=0. `None` when the request has no Accept header, which
/// Kura treats as `*/*` (a choice recorded in conformance/STATEMENT.md).
pub fn accepted_types(headers: &HeaderMap) -> Option<Vec<crate::media::mime::MediaType>> {
    let mut ranked = Vec::new();
    let mut present = false;
    for value in headers.get_all(http::header::ACCEPT) {
        let Ok(text) = value.to_str() else { continue };
        for item in crate::media::mime::split_outside_quotes(text, ',') {
            if item.trim().is_empty() {
                continue;
            }
            present = true;
            // Invalid ranges are ignored (§8.7.7).
            let Some(media) = crate::media::mime::MediaType::parse(item.trim()) else { continue };
            let quality =
                media.param("q").map_or(Some(1.0), |q| q.parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q)));
            match quality {
                Some(q) if q > 0.0 => ranked.push((q, media)),
                _ => {}
            }
        }
    }
    if !present {
        return None;
    }
    // A stable sort keeps header order among equal q-values.
    ranked.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
    Some(ranked.into_iter().map(|(_, media)| media).collect())
}
