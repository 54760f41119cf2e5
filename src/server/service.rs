//! `App::handle`: the one place for request spans, routing, dispatch to a transaction, error
//! rendering and the headers every response carries.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body::Body;
use tracing::Instrument;

use super::access::Access;
use super::router::{self, Endpoint};
use crate::archive::Archive;
use crate::audit::{AuditEvent, AuditNote, OpenAccess};
use crate::auth::{Principal, Scope};
use crate::config::Config;
use crate::dicomweb::{self, RequestContext, ResponseBody};
use crate::error::{Error, ErrorKind};

/// The local address a request arrived on (inserted by the accept loop).
#[derive(Debug, Clone, Copy)]
pub struct LocalAddr(pub std::net::SocketAddr);

/// The application: configuration plus the archive, shared by every connection.
#[derive(Clone)]
pub struct App {
    archive: Arc<Archive>,
    config: Arc<Config>,
    access: Arc<Access>,
}

impl App {
    /// The application; panics where [`App::try_new`] fails (configurations validated by
    /// `Config::from_args` do not).
    pub fn new(archive: Arc<Archive>, config: Arc<Config>) -> App {
        App::try_new(archive, config).expect("a validated configuration")
    }

    /// The application, or why the security configuration cannot be used.
    pub fn try_new(archive: Arc<Archive>, config: Arc<Config>) -> Result<App, String> {
        let access = Arc::new(Access::new(archive.keys().clone(), &config.security)?);
        archive.start_background_work();
        Ok(App { archive, config, access })
    }

    /// How requests are authenticated (the JWT verifier's counters, for tests).
    pub fn access(&self) -> &Arc<Access> {
        &self.access
    }

    pub fn archive(&self) -> &Arc<Archive> {
        &self.archive
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Handles one request. Generic over the body so that tests can call it in-process.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send + Sync,
    {
        let started = Instant::now();
        let method = request.method().clone();
        if let Err(error) = self.check_host(&request) {
            return render_error(&error);
        }
        let origin = self.allowed_origin(&request);
        if let Some(origin) = &origin
            && method == http::Method::OPTIONS
            && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return preflight(origin);
        }
        // A share link's root, `/share/{token}/dicomweb/…`: the token is the credential, and
        // the link's own root is the base of every URL minted in its answers.
        let link = router::split_share_link(request.uri().path())
            .map(|(token, relative)| (token.to_string(), relative.to_string()));
        let route = match &link {
            Some((_, relative)) => router::route(request.method(), relative),
            None => self.route(&request),
        };
        let endpoint_name = route.as_ref().map_or("none", |e| e.name());
        let span = tracing::info_span!("request", %method, endpoint = endpoint_name, caller = tracing::field::Empty);
        let head_only = method == http::Method::HEAD;
        let credentials = self.access.credentials(&request);
        let address = credentials.address;
        // What the audit trail records of this request (`crate::audit`); the status is filled
        // in from the response.
        let mut audit: Option<AuditEvent> = None;
        // The access, on record before the work starts (`crate::audit`, "Durability").
        let mut access: Option<OpenAccess> = None;
        let mut response = async {
            // Authentication before routing: without credentials, where they are required, no
            // answer says which resources exist.
            let principal = match &link {
                Some((token, _)) => match self.access.authenticate_link(&request, self.archive.shares(), token) {
                    Ok(principal) => principal,
                    Err(error) => {
                        if error.kind == ErrorKind::NotFound {
                            audit = Some(auth_failure_event(address, "share link not valid"));
                        }
                        return Err(error);
                    }
                },
                None => match self.access.authenticate(credentials).await {
                    Ok(principal) => principal,
                    Err(failure) => {
                        if let Some(reason) = failure.reason {
                            audit = Some(auth_failure_event(address, reason));
                        }
                        return Err(failure.error);
                    }
                },
            };
            tracing::Span::current().record("caller", principal.subject.as_str());
            let endpoint = route?;
            audit = audit_event(&endpoint, &principal, address, request.uri().query());
            if let Some(event) = &audit {
                // A request whose access cannot be recorded is refused.
                access = self.archive.audit().open_access(event).map_err(Error::internal)?;
            }
            Access::authorize(&principal, endpoint.required_role()).or_else(|refused| {
                match endpoint.alternative_role() {
                    Some(role) if principal.has(role) => Ok(()),
                    _ => Err(refused),
                }
            })?;
            // A share link reads its study and nothing else: the worklist is not part of it,
            // though the link's principal holds the reader role UPS-RS asks of performers.
            if matches!(principal.scope, Scope::Link(_)) && matches!(endpoint, Endpoint::Workitems(_)) {
                return Err(Error::new(
                    ErrorKind::Forbidden,
                    "a share link gives read access to the shared study only; the worklist needs an API key or token",
                ));
            }
            match endpoint {
                Endpoint::Keys(operation) => {
                    return super::admin::keys(&self.archive, &principal, operation, request).await;
                }
                Endpoint::Shares(operation) => {
                    let origin = self.origin(&request);
                    return super::admin::shares(&self.archive, &principal, &origin, operation, request).await;
                }
                Endpoint::Audit => {
                    return super::audit_api::query(self.archive.audit(), &principal, request.uri().query()).await;
                }
                _ => {}
            }
            let context = self.context(&request, principal, link.as_ref().map(|(token, _)| token.as_str()));
            dicomweb::dispatch(&self.archive, &self.config, &context, endpoint, request).await
        }
        .instrument(span.clone())
        .await
        .unwrap_or_else(|error| render_error(&error));
        if let Some(mut event) = audit {
            event.outcome = response.status().as_u16();
            if let Some(note) = response.extensions_mut().remove::<AuditNote>() {
                for study in note.studies {
                    if !event.studies.contains(&study) {
                        event.studies.push(study);
                    }
                }
                event.detail = note.detail.or(event.detail);
            }
            // The answer waits until its access is durable; a request whose access cannot be
            // recorded is refused.
            let recorded = match access {
                Some(access) => self.archive.audit().close_access(access, event).await,
                None => self.archive.audit().record(event).await,
            };
            if let Err(error) = recorded {
                response = span.in_scope(|| render_error(&Error::internal(error)));
            }
        }
        let headers = response.headers_mut();
        headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
        if let Some(origin) = origin {
            add_cors_headers(headers, &origin);
        }
        if head_only {
            *response.body_mut() = dicomweb::empty_body();
        }
        span.in_scope(|| {
            tracing::info!(
                status = response.status().as_u16(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "served"
            )
        });
        response
    }

    /// The request's Origin when CORS allows it (browser viewers such as OHIF need this; PS3.18
    /// is silent on CORS). On loopback the loopback origins are allowed unless configured
    /// otherwise: a viewer on `http://localhost:3000` is the usual first use, and whatever runs
    /// on this machine can reach the archive without a browser anyway.
    fn allowed_origin<B>(&self, request: &Request<B>) -> Option<HeaderValue> {
        let origin = request.headers().get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        let allowed = &self.config.cors_origins;
        let loopback = self.config.cors_loopback && is_loopback_origin(text);
        (loopback || allowed.iter().any(|o| o == "*" || o == text)).then(|| origin.clone())
    }

    /// Answers only for the configured host names (421 otherwise): the Host header is copied
    /// into RetrieveURL, BulkDataURI and Location, and a web page that rebinds its own name to
    /// 127.0.0.1 (DNS rebinding) would otherwise read an archive that trusts loopback.
    fn check_host<B>(&self, request: &Request<B>) -> Result<(), Error> {
        let allowed = &self.config.allowed_hosts;
        if allowed.iter().any(|h| h == "*") {
            return Ok(());
        }
        let authority = match request.headers().get(header::HOST) {
            Some(host) => host.to_str().ok().map(str::to_string),
            // HTTP/2 sends :authority instead; a request with neither names no other host.
            None => match request.uri().authority() {
                Some(authority) => Some(authority.as_str().to_string()),
                None => return Ok(()),
            },
        };
        let host = authority.as_deref().map(crate::config::host_of).unwrap_or_default();
        if allowed.contains(&host) {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::MisdirectedRequest,
            format!(
                "this server does not answer for the host {host:?}; reach it by one of {} or add the name with \
                 --allowed-hosts",
                allowed.join(", ")
            ),
        ))
    }

    fn route<B>(&self, request: &Request<B>) -> Result<Endpoint, Error> {
        let path = request.uri().path();
        if let Some(rest) = path.strip_prefix(router::KEYS_PATH).filter(|r| r.is_empty() || r.starts_with('/')) {
            return router::route_keys(request.method(), rest);
        }
        if let Some(rest) = path.strip_prefix(router::SHARES_PATH).filter(|r| r.is_empty() || r.starts_with('/')) {
            return router::route_shares(request.method(), rest);
        }
        if path == router::AUDIT_PATH {
            return match *request.method() {
                http::Method::GET | http::Method::HEAD => Ok(Endpoint::Audit),
                _ => Err(Error::new(ErrorKind::MethodNotAllowed, "GET, HEAD")),
            };
        }
        if path == self.config.wado_uri_path {
            return match *request.method() {
                http::Method::GET | http::Method::HEAD => Ok(Endpoint::WadoUri),
                _ => Err(Error::new(crate::error::ErrorKind::MethodNotAllowed, "GET, HEAD")),
            };
        }
        let base = &self.config.base_path;
        let relative = path
            .strip_prefix(base.as_str())
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .ok_or_else(|| Error::not_found(format!("DICOMweb services are under {base}/")))?;
        router::route(request.method(), relative)
    }

    /// `scheme://host[:port]` clients reach this server at: from `--public-url` (without the
    /// DICOMweb base path), else from the request.
    fn origin<B>(&self, request: &Request<B>) -> String {
        if let Some(url) = &self.config.public_url {
            if let Some(origin) = url.strip_suffix(self.config.base_path.as_str()) {
                return origin.to_string();
            }
            let after_scheme = url.find("://").map_or(0, |at| at + 3);
            return url[..url[after_scheme..].find('/').map_or(url.len(), |at| after_scheme + at)].to_string();
        }
        let scheme = self.access.scheme(request);
        let default_port = if scheme == "https" { 443 } else { 80 };
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)))
            .map(str::to_string)
            .or_else(|| request.uri().authority().map(|a| a.to_string()))
            .unwrap_or_else(|| self.config.listen.to_string());
        // Some clients (dicomweb-client among them) send a Host without the port.
        // Not behind the proxy: its Host names the proxy's port (or the default one).
        let local_port = request.extensions().get::<LocalAddr>().map(|a| a.0.port());
        let local_port = local_port.filter(|_| !self.access.from_trusted_proxy(request));
        let has_port = host.rsplit_once(':').is_some_and(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()));
        let host = match local_port {
            Some(port) if !has_port && port != default_port => format!("{host}:{port}"),
            _ => host,
        };
        format!("{scheme}://{host}")
    }

    /// The request's context. Under a share link (`link_token`) the base URL is the link's own
    /// root, so every URL Kura mints in the answer (RetrieveURL, BulkDataURI, Location) stays
    /// inside the share.
    fn context<B>(&self, request: &Request<B>, principal: Principal, link_token: Option<&str>) -> RequestContext {
        let base_url = match (link_token, &self.config.public_url) {
            (Some(token), _) => format!("{}{}{token}/dicomweb", self.origin(request), router::SHARE_LINK_PREFIX),
            (None, Some(url)) => url.clone(),
            (None, None) => format!("{}{}", self.origin(request), self.config.base_path),
        };
        RequestContext { base_url, principal }
    }
}

/// What the trail records of a request to `endpoint` by `principal` (the status comes later),
/// or `None` for the capabilities document (it describes the service, not its contents). Only
/// UIDs from the path (or WADO-URI's `studyUID`, once validated) are taken: a query string
/// may carry patient attributes and is never recorded.
/// The audit record of credentials that were presented and failed (never the credential).
fn auth_failure_event(address: std::net::IpAddr, reason: &str) -> AuditEvent {
    AuditEvent {
        action: "auth-failure".into(),
        address: Some(address.to_string()),
        detail: Some(reason.to_string()),
        ..Default::default()
    }
}

fn audit_event(
    endpoint: &Endpoint,
    principal: &Principal,
    address: std::net::IpAddr,
    query: Option<&str>,
) -> Option<AuditEvent> {
    use super::router::{KeyOperation, ShareOperation};
    let (action, study, series, detail): (&str, Option<&String>, Option<&String>, Option<String>) = match endpoint {
        Endpoint::Capabilities { .. } => return None,
        Endpoint::Store { study } | Endpoint::SearchSeries { study } => (endpoint.name(), study.as_ref(), None, None),
        Endpoint::SearchInstances { study, series } => (endpoint.name(), study.as_ref(), series.as_ref(), None),
        Endpoint::SearchStudies | Endpoint::WadoUri | Endpoint::Audit => (endpoint.name(), None, None, None),
        Endpoint::Retrieve { study, series, .. }
        | Endpoint::Metadata { study, series, .. }
        | Endpoint::Rendered { study, series, .. }
        | Endpoint::Delete { study, series, .. } => (endpoint.name(), Some(study), series.as_ref(), None),
        Endpoint::Frames { study, series, .. } | Endpoint::Bulkdata { study, series, .. } => {
            (endpoint.name(), Some(study), Some(series), None)
        }
        Endpoint::Keys(KeyOperation::List) => ("key-list", None, None, None),
        Endpoint::Keys(KeyOperation::Create) => ("key-create", None, None, None),
        Endpoint::Keys(KeyOperation::Revoke { id }) => ("key-revoke", None, None, Some(format!("key {id}"))),
        Endpoint::Shares(ShareOperation::List) => ("share-list", None, None, None),
        Endpoint::Shares(ShareOperation::Create) => ("share-create", None, None, None),
        Endpoint::Shares(ShareOperation::Revoke { id }) => ("share-revoke", None, None, Some(format!("share {id}"))),
        Endpoint::Workitems(operation) => {
            (endpoint.name(), None, None, operation.workitem().map(|uid| format!("workitem {uid}")))
        }
    };
    let mut studies: Vec<String> = study.cloned().into_iter().collect();
    if *endpoint == Endpoint::WadoUri {
        let uid = query.unwrap_or("").split('&').find_map(|pair| pair.strip_prefix("studyUID="));
        studies.extend(uid.filter(|uid| crate::dicom::uid::validate(uid).is_ok()).map(str::to_string));
    }
    Some(AuditEvent {
        action: action.to_string(),
        outcome: 0,
        subject: Some(principal.subject.clone()),
        key_id: principal.key_id.clone(),
        institution: Some(principal.institution.clone()),
        address: Some(address.to_string()),
        studies,
        series: series.cloned(),
        detail,
    })
}

/// Whether `origin` is `http(s)://` a loopback name with any port.
fn is_loopback_origin(origin: &str) -> bool {
    let Some(rest) = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) else {
        return false;
    };
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((address, port)) => (format!("[{address}]"), port),
            None => return false,
        },
        None => match rest.find(':') {
            Some(colon) => (rest[..colon].to_string(), &rest[colon..]),
            None => (rest.to_string(), ""),
        },
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    port_ok && crate::config::LOOPBACK_HOSTS.contains(&host.to_ascii_lowercase().as_str())
}

/// Response headers browsers may read (the ones DICOMweb clients use).
const EXPOSED_HEADERS: &str = "Content-Type, Content-Length, Content-Location, Location, Warning, ETag";

fn add_cors_headers(headers: &mut http::HeaderMap, origin: &HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSED_HEADERS));
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// The answer to a CORS preflight (an OPTIONS with Access-Control-Request-Method). Any other
/// OPTIONS is left to the Retrieve Capabilities transaction (PS3.18 §8.9).
fn preflight(origin: &HeaderValue) -> Response<ResponseBody> {
    let mut response = Response::builder()
        .status(http::StatusCode::NO_CONTENT)
        .header(header::ACCESS_CONTROL_ALLOW_METHODS, "GET, HEAD, POST, DELETE, OPTIONS")
        .header(header::ACCESS_CONTROL_ALLOW_HEADERS, "Accept, Content-Type, Authorization, If-None-Match, Range")
        .header(header::ACCESS_CONTROL_MAX_AGE, "600")
        .body(dicomweb::empty_body())
        .expect("valid response");
    add_cors_headers(response.headers_mut(), origin);
    response
}

/// Renders an error as a JSON Status Report (PS3.18 §8.6.3). Logged once, here.
pub fn render_error(error: &Error) -> Response<ResponseBody> {
    let status = error.kind.http_status();
    if status.is_server_error() {
        tracing::warn!(error = ?error, "request failed");
    } else {
        tracing::debug!(message = %error.message, "request refused");
    }
    let body = serde_json::json!({ "status": status.as_u16(), "message": error.public_message() });
    let mut builder = Response::builder().status(status).header(header::CONTENT_TYPE, "application/json");
    match error.kind {
        ErrorKind::MethodNotAllowed => builder = builder.header(header::ALLOW, error.message.as_str()),
        // RFC 6750 §3: the scheme Kura accepts (API keys as bearer tokens).
        ErrorKind::Unauthorized => builder = builder.header(header::WWW_AUTHENTICATE, "Bearer realm=\"kura\""),
        // RFC 6750 §3.1: credentials were presented and failed.
        ErrorKind::InvalidToken => {
            builder = builder.header(header::WWW_AUTHENTICATE, "Bearer realm=\"kura\", error=\"invalid_token\"")
        }
        ErrorKind::TooManyRequests => {
            builder = builder.header(header::RETRY_AFTER, crate::auth::limiter::REFILL.as_secs().to_string())
        }
        // RFC 9110 §12.5.3: a 415 for a content coding names the codings accepted.
        ErrorKind::UnsupportedContentCoding => {
            builder = builder.header(header::ACCEPT_ENCODING, crate::media::inflate::ACCEPTED_CODINGS)
        }
        _ => {}
    }
    if matches!(error.kind, ErrorKind::Unavailable | ErrorKind::Busy) {
        builder = builder.header(header::RETRY_AFTER, crate::memory::RETRY_AFTER_SECS);
    }
    builder.body(dicomweb::full_body(Bytes::from(body.to_string()))).expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::is_loopback_origin;

    #[test]
    fn loopback_origins() {
        for yes in [
            "http://localhost:3000",
            "http://127.0.0.1:8080",
            "http://[::1]:3000",
            "https://localhost",
            "http://LOCALHOST:1",
        ] {
            assert!(is_loopback_origin(yes), "{yes}");
        }
        for no in [
            "http://localhost.evil.example:3000",
            "http://127.0.0.1.evil:80",
            "null",
            "http://localhost:3000/x",
            "file://localhost",
            "http://[::1]x",
            "http://localhost:",
            "http://evil.example",
        ] {
            assert!(!is_loopback_origin(no), "{no}");
        }
    }
}
