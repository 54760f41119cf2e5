//! Requests to endpoints: a pure function from (method, path) to [`Endpoint`], tested against
//! the URI templates of PS3.18 Table 10.3-2 / 10.6.1-1.

use http::Method;

use crate::auth::Role;
use crate::dicom::uid;
use crate::error::{Error, ErrorKind};

/// Every resource Kura serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// STOW-RS, PS3.18 §10.5: `POST /studies[/{study}]`.
    Store { study: Option<String> },
    /// QIDO-RS, PS3.18 §10.6: `/studies`.
    SearchStudies,
    /// `/studies/{study}/series` and `/series`.
    SearchSeries { study: Option<String> },
    /// `/studies/{study}/series/{series}/instances`, `/studies/{study}/instances`, `/instances`.
    SearchInstances { study: Option<String>, series: Option<String> },
    /// WADO-RS, PS3.18 §10.4: `/studies/{study}[/series/{series}[/instances/{instance}]]`.
    Retrieve { study: String, series: Option<String>, instance: Option<String> },
    /// WADO-RS metadata, §10.4.1.1.2: `…/metadata` at study, series and instance level.
    Metadata { study: String, series: Option<String>, instance: Option<String> },
    /// WADO-RS frames, §10.4.1.1.5: `…/instances/{instance}/frames/{frames}`.
    Frames { study: String, series: String, instance: String, frames: String },
    /// WADO-RS bulk data, §10.4.1.1.4: `…/instances/{instance}/bulkdata/{tag}` (the form of the
    /// BulkDataURIs Kura mints).
    Bulkdata { study: String, series: String, instance: String, tag: String },
    /// WADO-URI, PS3.18 Chapter 9: `GET {wado path}?requestType=WADO&…`.
    WadoUri,
    /// WADO-RS rendered (§10.4.1.1.3) and thumbnail (§10.4.1.1.4) resources: `…/rendered`,
    /// `…/thumbnail` at study, series and instance level, and under `…/frames/{frames}`.
    Rendered {
        study: String,
        series: Option<String>,
        instance: Option<String>,
        frames: Option<String>,
        thumbnail: bool,
    },
    /// Retrieve Capabilities, PS3.18 §8.9: `OPTIONS {root}/` (or a resource below it).
    Capabilities { path: String },
    /// Delete (not a PS3.18 transaction; the form dcm4chee, Google's and Microsoft's archives
    /// and dicomweb-client use): `DELETE /studies/{study}[/series/{series}[/instances/{instance}]]`.
    Delete { study: String, series: Option<String>, instance: Option<String> },
    /// API key management (not DICOMweb; `server::admin`): `GET` and `POST /admin/keys`,
    /// `DELETE /admin/keys/{id}`.
    Keys(KeyOperation),
    /// The Worklist service (UPS-RS, PS3.18 Chapter 11, Table 11.1.1-1) and its notification
    /// connections (§8.10).
    Workitems(WorkitemOperation),
    /// Share management (not DICOMweb; `server::admin`): `GET` and `POST /admin/shares`,
    /// `DELETE /admin/shares/{id}`.
    Shares(ShareOperation),
    /// The audit trail's query (not DICOMweb; `server::audit_api`): `GET /admin/audit?…`.
    Audit,
}

/// What a subscription request names: one workitem, or the worklist by its well-known UIDs
/// (PS3.18 §11.10: 1.2.840.10008.5.1.4.34.5 and, filtered, …34.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionTarget {
    Workitem(String),
    Worklist,
    FilteredWorklist,
}

/// A UPS-RS transaction (PS3.18 §11.4–§11.12) or a notification connection (§8.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkitemOperation {
    /// `POST /workitems[?{workitem}]` (§11.4).
    Create,
    /// `GET /workitems?…` (§11.9).
    Search,
    /// `GET /workitems/{workitem}` (§11.5).
    Retrieve { workitem: String },
    /// `POST /workitems/{workitem}[?transaction-uid=…]` (§11.6); `PUT` is accepted too.
    Update { workitem: String },
    /// `PUT /workitems/{workitem}/state` (§11.7).
    ChangeState { workitem: String },
    /// `POST /workitems/{workitem}/cancelrequest` (§11.8).
    RequestCancellation { workitem: String },
    /// `POST /workitems/{target}/subscribers/{aetitle}` (§11.10).
    Subscribe { target: SubscriptionTarget, aetitle: String },
    /// `DELETE /workitems/{target}/subscribers/{aetitle}` (§11.11).
    Unsubscribe { target: SubscriptionTarget, aetitle: String },
    /// `POST /workitems/{global or filtered UID}/subscribers/{aetitle}/suspend` (§11.12).
    Suspend { target: SubscriptionTarget, aetitle: String },
    /// `GET /subscribers/{aetitle}` with `Upgrade: websocket`: the AE's notification
    /// connection (§8.10; the URL form is Kura's, conformance/STATEMENT.md).
    Notifications { aetitle: String },
}

/// What a request to `/admin/shares` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareOperation {
    List,
    Create,
    Revoke { id: String },
}

/// What a request to `/admin/keys` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOperation {
    List,
    Create,
    Revoke { id: String },
}

/// Path of the key management API (outside the DICOMweb root).
pub const KEYS_PATH: &str = "/admin/keys";
/// Path of the share management API.
pub const SHARES_PATH: &str = "/admin/shares";
/// Prefix of share link roots: `/share/{token}/dicomweb` (see [`split_share_link`]).
pub const SHARE_LINK_PREFIX: &str = "/share/";
/// Path of the audit query API.
pub const AUDIT_PATH: &str = "/admin/audit";

impl WorkitemOperation {
    /// The one workitem the operation names, if it names one.
    pub fn workitem(&self) -> Option<&str> {
        match self {
            WorkitemOperation::Retrieve { workitem }
            | WorkitemOperation::Update { workitem }
            | WorkitemOperation::ChangeState { workitem }
            | WorkitemOperation::RequestCancellation { workitem } => Some(workitem),
            WorkitemOperation::Subscribe { target: SubscriptionTarget::Workitem(workitem), .. }
            | WorkitemOperation::Unsubscribe { target: SubscriptionTarget::Workitem(workitem), .. } => Some(workitem),
            _ => None,
        }
    }
}

impl Endpoint {
    /// A short name for logs and spans.
    pub fn name(&self) -> &'static str {
        match self {
            Endpoint::Store { .. } => "stow",
            Endpoint::SearchStudies | Endpoint::SearchSeries { .. } | Endpoint::SearchInstances { .. } => "qido",
            Endpoint::Retrieve { .. } => "wado",
            Endpoint::Metadata { .. } => "wado-metadata",
            Endpoint::Frames { .. } => "wado-frames",
            Endpoint::Bulkdata { .. } => "wado-bulkdata",
            Endpoint::WadoUri => "wado-uri",
            Endpoint::Capabilities { .. } => "capabilities",
            Endpoint::Delete { .. } => "delete",
            Endpoint::Rendered { thumbnail: false, .. } => "wado-rendered",
            Endpoint::Rendered { thumbnail: true, .. } => "wado-thumbnail",
            Endpoint::Keys(_) => "keys",
            Endpoint::Workitems(WorkitemOperation::Notifications { .. }) => "ups-notifications",
            Endpoint::Workitems(_) => "ups",
            Endpoint::Shares(_) => "shares",
            Endpoint::Audit => "audit-query",
        }
    }

    /// The role a principal needs for this endpoint: the one place where roles meet routes.
    /// `None`: any authenticated caller (the capabilities document describes the service, not
    /// its contents).
    pub fn required_role(&self) -> Option<Role> {
        match self {
            Endpoint::Store { .. } => Some(Role::Uploader),
            Endpoint::SearchStudies
            | Endpoint::SearchSeries { .. }
            | Endpoint::SearchInstances { .. }
            | Endpoint::Retrieve { .. }
            | Endpoint::Metadata { .. }
            | Endpoint::Frames { .. }
            | Endpoint::Bulkdata { .. }
            | Endpoint::Rendered { .. }
            | Endpoint::WadoUri => Some(Role::Reader),
            Endpoint::Delete { .. } | Endpoint::Keys(_) | Endpoint::Shares(_) | Endpoint::Audit => {
                Some(Role::Administrator)
            }
            Endpoint::Capabilities { .. } => None,
            // Scheduling and cancelling work is the requesting side's (an uploader, or an
            // administrator: `alternative_role`); performing and watching it the reader's.
            Endpoint::Workitems(WorkitemOperation::Create | WorkitemOperation::RequestCancellation { .. }) => {
                Some(Role::Uploader)
            }
            Endpoint::Workitems(_) => Some(Role::Reader),
        }
    }

    /// A second role that also grants the endpoint (checked where `required_role` is).
    pub fn alternative_role(&self) -> Option<Role> {
        match self {
            Endpoint::Workitems(WorkitemOperation::Create | WorkitemOperation::RequestCancellation { .. }) => {
                Some(Role::Administrator)
            }
            _ => None,
        }
    }
}

/// Routes a path below [`KEYS_PATH`] (`rest` is what follows it).
pub fn route_keys(method: &Method, rest: &str) -> Result<Endpoint, Error> {
    let operation = match (rest.trim_end_matches('/'), method) {
        ("", &Method::GET | &Method::HEAD) => KeyOperation::List,
        ("", &Method::POST) => KeyOperation::Create,
        ("", _) => return Err(method_not_allowed("GET, HEAD, POST")),
        (id, &Method::DELETE) if id.len() > 1 && id.len() <= 65 && id[1..].bytes().all(|b| b.is_ascii_hexdigit()) => {
            KeyOperation::Revoke { id: id[1..].to_string() }
        }
        (id, _) if id.len() > 1 && id[1..].bytes().all(|b| b.is_ascii_hexdigit()) => {
            return Err(method_not_allowed("DELETE"));
        }
        _ => return Err(Error::not_found("no such key resource")),
    };
    Ok(Endpoint::Keys(operation))
}

/// Routes a path below [`SHARES_PATH`] (`rest` is what follows it).
pub fn route_shares(method: &Method, rest: &str) -> Result<Endpoint, Error> {
    match route_keys(method, rest)? {
        Endpoint::Keys(KeyOperation::List) => Ok(Endpoint::Shares(ShareOperation::List)),
        Endpoint::Keys(KeyOperation::Create) => Ok(Endpoint::Shares(ShareOperation::Create)),
        Endpoint::Keys(KeyOperation::Revoke { id }) => Ok(Endpoint::Shares(ShareOperation::Revoke { id })),
        other => Ok(other),
    }
}

/// A share link's path, `/share/{token}/dicomweb{rest}`, split into the token and the path
/// relative to the link's DICOMweb root. `None` when the path is not below a link root (any
/// other `/share/…` path is then an unknown resource, 404).
pub fn split_share_link(path: &str) -> Option<(&str, &str)> {
    let (token, rest) = path.strip_prefix(SHARE_LINK_PREFIX)?.split_once('/')?;
    let relative = rest.strip_prefix("dicomweb")?;
    (relative.is_empty() || relative.starts_with('/')).then_some((token, relative))
}

fn checked_uid(segment: &str, what: &str) -> Result<String, Error> {
    uid::validate(segment).map_err(|e| Error::bad_request(format!("{what} in the path is not a valid UID: {e}")))?;
    Ok(segment.to_string())
}

fn method_not_allowed(allowed: &'static str) -> Error {
    Error::new(ErrorKind::MethodNotAllowed, allowed)
}

/// An AE title from a path segment (percent-decoded; PS3.5 AE: at most 16 characters).
fn checked_aetitle(segment: &str) -> Result<String, Error> {
    let decoded = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| Error::bad_request("the AE title in the path is not UTF-8"))?
        .into_owned();
    crate::archive::worklist::validate_ae(&decoded).map_err(|e| Error::bad_request(e.to_string()))?;
    Ok(decoded)
}

fn subscription_target(segment: &str) -> Result<SubscriptionTarget, Error> {
    use crate::archive::worklist::{FILTERED_SUBSCRIPTION_UID, GLOBAL_SUBSCRIPTION_UID};
    Ok(match segment {
        GLOBAL_SUBSCRIPTION_UID => SubscriptionTarget::Worklist,
        FILTERED_SUBSCRIPTION_UID => SubscriptionTarget::FilteredWorklist,
        uid => SubscriptionTarget::Workitem(checked_uid(uid, "the Workitem UID")?),
    })
}

/// Routes the Worklist service's resources (PS3.18 Table 11.1.1-1), or `None` for a path
/// outside it.
fn route_workitems(method: &Method, segments: &[&str]) -> Option<Result<Endpoint, Error>> {
    use WorkitemOperation::*;
    let get = method == Method::GET || method == Method::HEAD;
    let (post, put, delete) = (method == Method::POST, method == Method::PUT, method == Method::DELETE);
    let workitem = |uid: &str| checked_uid(uid, "the Workitem UID");
    let operation = (|| -> Result<WorkitemOperation, Error> {
        Ok(match segments {
            ["workitems"] if post => Create,
            ["workitems"] if get => Search,
            ["workitems"] => return Err(method_not_allowed("GET, HEAD, POST")),
            ["workitems", uid] if get => Retrieve { workitem: workitem(uid)? },
            ["workitems", uid] if post || put => Update { workitem: workitem(uid)? },
            ["workitems", _] => return Err(method_not_allowed("GET, HEAD, POST, PUT")),
            ["workitems", uid, "state"] if put => ChangeState { workitem: workitem(uid)? },
            ["workitems", _, "state"] => return Err(method_not_allowed("PUT")),
            ["workitems", uid, "cancelrequest"] if post => RequestCancellation { workitem: workitem(uid)? },
            ["workitems", _, "cancelrequest"] => return Err(method_not_allowed("POST")),
            ["workitems", target, "subscribers", ae] if post => {
                Subscribe { target: subscription_target(target)?, aetitle: checked_aetitle(ae)? }
            }
            ["workitems", target, "subscribers", ae] if delete => {
                Unsubscribe { target: subscription_target(target)?, aetitle: checked_aetitle(ae)? }
            }
            ["workitems", _, "subscribers", _] => return Err(method_not_allowed("POST, DELETE")),
            ["workitems", target, "subscribers", ae, "suspend"] if post => {
                let target = subscription_target(target)?;
                if let SubscriptionTarget::Workitem(_) = target {
                    return Err(Error::bad_request(
                        "only a worklist subscription (1.2.840.10008.5.1.4.34.5 or …34.5.1) is suspended (PS3.18 §11.12)",
                    ));
                }
                Suspend { target, aetitle: checked_aetitle(ae)? }
            }
            ["workitems", _, "subscribers", _, "suspend"] => return Err(method_not_allowed("POST")),
            ["subscribers", ae] if get => Notifications { aetitle: checked_aetitle(ae)? },
            ["subscribers", _] => return Err(method_not_allowed("GET")),
            _ => return Err(Error::not_found("no such worklist resource")),
        })
    })();
    match segments.first() {
        Some(&"workitems") | Some(&"subscribers") => Some(operation.map(Endpoint::Workitems)),
        _ => None,
    }
}

/// Routes a request path relative to the DICOMweb base path.
pub fn route(method: &Method, relative_path: &str) -> Result<Endpoint, Error> {
    if method == Method::OPTIONS {
        return Ok(Endpoint::Capabilities { path: relative_path.to_string() });
    }
    let segments: Vec<&str> = relative_path.trim_start_matches('/').split('/').collect();
    if let Some(endpoint) = route_workitems(method, &segments) {
        return endpoint;
    }
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    let delete = method == Method::DELETE;
    let endpoint = match segments.as_slice() {
        ["studies", study] if delete => {
            Endpoint::Delete { study: checked_uid(study, "StudyInstanceUID")?, series: None, instance: None }
        }
        ["studies", study, "series", series] if delete => Endpoint::Delete {
            study: checked_uid(study, "StudyInstanceUID")?,
            series: Some(checked_uid(series, "SeriesInstanceUID")?),
            instance: None,
        },
        ["studies", study, "series", series, "instances", instance] if delete => Endpoint::Delete {
            study: checked_uid(study, "StudyInstanceUID")?,
            series: Some(checked_uid(series, "SeriesInstanceUID")?),
            instance: Some(checked_uid(instance, "SOPInstanceUID")?),
        },
        ["studies"] if post => Endpoint::Store { study: None },
        ["studies"] if get => Endpoint::SearchStudies,
        ["studies"] => return Err(method_not_allowed("GET, HEAD, POST")),
        ["studies", study] if post => Endpoint::Store { study: Some(checked_uid(study, "StudyInstanceUID")?) },
        ["studies", study] if get => {
            Endpoint::Retrieve { study: checked_uid(study, "StudyInstanceUID")?, series: None, instance: None }
        }
        ["studies", _] => return Err(method_not_allowed("GET, HEAD, POST, DELETE")),
        ["series"] if get => Endpoint::SearchSeries { study: None },
        ["instances"] if get => Endpoint::SearchInstances { study: None, series: None },
        ["studies", study, "series"] if get => {
            Endpoint::SearchSeries { study: Some(checked_uid(study, "StudyInstanceUID")?) }
        }
        ["studies", study, "instances"] if get => {
            Endpoint::SearchInstances { study: Some(checked_uid(study, "StudyInstanceUID")?), series: None }
        }
        ["studies", study, "series", series] if get => Endpoint::Retrieve {
            study: checked_uid(study, "StudyInstanceUID")?,
            series: Some(checked_uid(series, "SeriesInstanceUID")?),
            instance: None,
        },
        ["studies", study, "series", series, "instances"] if get => Endpoint::SearchInstances {
            study: Some(checked_uid(study, "StudyInstanceUID")?),
            series: Some(checked_uid(series, "SeriesInstanceUID")?),
        },
        ["studies", study, "series", series, "instances", instance] if get => Endpoint::Retrieve {
            study: checked_uid(study, "StudyInstanceUID")?,
            series: Some(checked_uid(series, "SeriesInstanceUID")?),
            instance: Some(checked_uid(instance, "SOPInstanceUID")?),
        },
        ["studies", study, "metadata"] if get => {
            Endpoint::Metadata { study: checked_uid(study, "StudyInstanceUID")?, series: None, instance: None }
        }
        ["studies", study, "series", series, "metadata"] if get => Endpoint::Metadata {
            study: checked_uid(study, "StudyInstanceUID")?,
            series: Some(checked_uid(series, "SeriesInstanceUID")?),
            instance: None,
        },
        ["studies", study, "series", series, "instances", instance, "metadata"] if get => Endpoint::Metadata {
            study: checked_uid(study, "StudyInstanceUID")?,
            series: Some(checked_uid(series, "SeriesInstanceUID")?),
            instance: Some(checked_uid(instance, "SOPInstanceUID")?),
        },
        ["studies", study, "series", series, "instances", instance, "frames", frames] if get => Endpoint::Frames {
            study: checked_uid(study, "StudyInstanceUID")?,
            series: checked_uid(series, "SeriesInstanceUID")?,
            instance: checked_uid(instance, "SOPInstanceUID")?,
            frames: frames.to_string(),
        },
        ["studies", study, "series", series, "instances", instance, "bulkdata", tag] if get => Endpoint::Bulkdata {
            study: checked_uid(study, "StudyInstanceUID")?,
            series: checked_uid(series, "SeriesInstanceUID")?,
            instance: checked_uid(instance, "SOPInstanceUID")?,
            tag: tag.to_string(),
        },
        // A value inside a sequence: `{sequence}/{item}/…/{tag}` (dicom::json::nested_bulk_path).
        ["studies", study, "series", series, "instances", instance, "bulkdata", path @ ..]
            if get
                && path.len() % 2 == 1
                && path.len() <= 2 * crate::dicom::layout::MAX_SEQUENCE_DEPTH as usize + 1 =>
        {
            Endpoint::Bulkdata {
                study: checked_uid(study, "StudyInstanceUID")?,
                series: checked_uid(series, "SeriesInstanceUID")?,
                instance: checked_uid(instance, "SOPInstanceUID")?,
                tag: path.join("/"),
            }
        }
        ["studies", study, kind @ ("rendered" | "thumbnail")] if get => Endpoint::Rendered {
            study: checked_uid(study, "StudyInstanceUID")?,
            series: None,
            instance: None,
            frames: None,
            thumbnail: *kind == "thumbnail",
        },
        ["studies", study, "series", series, kind @ ("rendered" | "thumbnail")] if get => Endpoint::Rendered {
            study: checked_uid(study, "StudyInstanceUID")?,
            series: Some(checked_uid(series, "SeriesInstanceUID")?),
            instance: None,
            frames: None,
            thumbnail: *kind == "thumbnail",
        },
        ["studies", study, "series", series, "instances", instance, kind @ ("rendered" | "thumbnail")] if get => {
            Endpoint::Rendered {
                study: checked_uid(study, "StudyInstanceUID")?,
                series: Some(checked_uid(series, "SeriesInstanceUID")?),
                instance: Some(checked_uid(instance, "SOPInstanceUID")?),
                frames: None,
                thumbnail: *kind == "thumbnail",
            }
        }
        [
            "studies",
            study,
            "series",
            series,
            "instances",
            instance,
            "frames",
            frames,
            kind @ ("rendered" | "thumbnail"),
        ] if get => Endpoint::Rendered {
            study: checked_uid(study, "StudyInstanceUID")?,
            series: Some(checked_uid(series, "SeriesInstanceUID")?),
            instance: Some(checked_uid(instance, "SOPInstanceUID")?),
            frames: Some(frames.to_string()),
            thumbnail: *kind == "thumbnail",
        },
        ["studies", _, "series", _] | ["studies", _, "series", _, "instances", _] => {
            return Err(method_not_allowed("GET, HEAD, DELETE"));
        }
        ["series" | "instances"]
        | ["studies", _, "series" | "instances"]
        | ["studies", _, "series", _, "instances"] => {
            return Err(method_not_allowed("GET, HEAD"));
        }
        _ => return Err(Error::not_found("no such DICOMweb resource")),
    };
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Result<Endpoint, Error> {
        route(&Method::GET, path)
    }

    #[test]
    fn ps3_18_resource_templates() {
        assert_eq!(get("/studies").unwrap(), Endpoint::SearchStudies);
        assert_eq!(get("/series").unwrap(), Endpoint::SearchSeries { study: None });
        assert_eq!(get("/instances").unwrap(), Endpoint::SearchInstances { study: None, series: None });
        assert_eq!(get("/studies/1.2/series").unwrap(), Endpoint::SearchSeries { study: Some("1.2".into()) });
        assert_eq!(
            get("/studies/1.2/series/1.3/instances").unwrap(),
            Endpoint::SearchInstances { study: Some("1.2".into()), series: Some("1.3".into()) }
        );
        assert_eq!(
            get("/studies/1.2/series/1.3/instances/1.4").unwrap(),
            Endpoint::Retrieve { study: "1.2".into(), series: Some("1.3".into()), instance: Some("1.4".into()) }
        );
        assert_eq!(route(&Method::POST, "/studies/1.2").unwrap(), Endpoint::Store { study: Some("1.2".into()) });
    }

    #[test]
    fn roles_per_route_class() {
        assert_eq!(route(&Method::POST, "/studies").unwrap().required_role(), Some(Role::Uploader));
        for path in ["/studies", "/studies/1.2", "/studies/1.2/thumbnail", "/studies/1.2/metadata"] {
            assert_eq!(get(path).unwrap().required_role(), Some(Role::Reader), "{path}");
        }
        assert_eq!(route(&Method::DELETE, "/studies/1.2").unwrap().required_role(), Some(Role::Administrator));
        assert_eq!(route(&Method::OPTIONS, "/").unwrap().required_role(), None);
        assert_eq!(route_keys(&Method::GET, "").unwrap(), Endpoint::Keys(KeyOperation::List));
        assert_eq!(
            route_keys(&Method::DELETE, "/00ff").unwrap(),
            Endpoint::Keys(KeyOperation::Revoke { id: "00ff".into() })
        );
        assert_eq!(route_keys(&Method::GET, "/00ff").unwrap_err().kind, ErrorKind::MethodNotAllowed);
        assert_eq!(route_keys(&Method::DELETE, "/../x").unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!(route_keys(&Method::GET, "").unwrap().required_role(), Some(Role::Administrator));
        assert_eq!(route_shares(&Method::POST, "").unwrap(), Endpoint::Shares(ShareOperation::Create));
        assert_eq!(
            route_shares(&Method::DELETE, "/0123abcd").unwrap(),
            Endpoint::Shares(ShareOperation::Revoke { id: "0123abcd".into() })
        );
        assert_eq!(route_shares(&Method::GET, "").unwrap().required_role(), Some(Role::Administrator));
        assert_eq!(route_shares(&Method::PUT, "").unwrap_err().kind, ErrorKind::MethodNotAllowed);
    }

    #[test]
    fn share_link_roots() {
        assert_eq!(split_share_link("/share/kshare_abc/dicomweb/studies"), Some(("kshare_abc", "/studies")));
        assert_eq!(split_share_link("/share/kshare_abc/dicomweb"), Some(("kshare_abc", "")));
        assert_eq!(split_share_link("/share/kshare_abc/dicomwebx/studies"), None);
        assert_eq!(split_share_link("/share/kshare_abc"), None);
        assert_eq!(split_share_link("/dicomweb/studies"), None);
    }

    /// The resources of PS3.18 Table 11.1.1-1 and the roles each needs.
    #[test]
    fn ups_rs_resource_templates() {
        use WorkitemOperation::*;
        let ups = |method: Method, path: &str| match route(&method, path).unwrap() {
            Endpoint::Workitems(operation) => operation,
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(ups(Method::POST, "/workitems"), Create);
        assert_eq!(ups(Method::GET, "/workitems"), Search);
        assert_eq!(ups(Method::GET, "/workitems/1.2"), Retrieve { workitem: "1.2".into() });
        assert_eq!(ups(Method::POST, "/workitems/1.2"), Update { workitem: "1.2".into() });
        assert_eq!(ups(Method::PUT, "/workitems/1.2/state"), ChangeState { workitem: "1.2".into() });
        assert_eq!(ups(Method::POST, "/workitems/1.2/cancelrequest"), RequestCancellation { workitem: "1.2".into() });
        assert_eq!(
            ups(Method::POST, "/workitems/1.2.840.10008.5.1.4.34.5/subscribers/READER%201"),
            Subscribe { target: SubscriptionTarget::Worklist, aetitle: "READER 1".into() }
        );
        assert_eq!(
            ups(Method::DELETE, "/workitems/1.2.840.10008.5.1.4.34.5.1/subscribers/AE"),
            Unsubscribe { target: SubscriptionTarget::FilteredWorklist, aetitle: "AE".into() }
        );
        assert_eq!(
            ups(Method::POST, "/workitems/1.2/subscribers/AE"),
            Subscribe { target: SubscriptionTarget::Workitem("1.2".into()), aetitle: "AE".into() }
        );
        assert_eq!(
            ups(Method::POST, "/workitems/1.2.840.10008.5.1.4.34.5/subscribers/AE/suspend"),
            Suspend { target: SubscriptionTarget::Worklist, aetitle: "AE".into() }
        );
        assert_eq!(ups(Method::GET, "/subscribers/AE"), Notifications { aetitle: "AE".into() });
        assert_eq!(
            route(&Method::POST, "/workitems/1.2/subscribers/AE/suspend").unwrap_err().kind,
            ErrorKind::BadRequest
        );
        assert_eq!(
            route(&Method::POST, "/workitems/1.2/subscribers/ABCDEFGHIJKLMNOPQ").unwrap_err().kind,
            ErrorKind::BadRequest
        );
        assert_eq!(route(&Method::DELETE, "/workitems/1.2").unwrap_err().kind, ErrorKind::MethodNotAllowed);
        assert_eq!(route(&Method::GET, "/workitems/1.2/state").unwrap_err().kind, ErrorKind::MethodNotAllowed);
        assert_eq!(route(&Method::GET, "/workitems/x.y").unwrap_err().kind, ErrorKind::BadRequest);
        let create = route(&Method::POST, "/workitems").unwrap();
        assert_eq!(
            (create.required_role(), create.alternative_role()),
            (Some(Role::Uploader), Some(Role::Administrator))
        );
        assert_eq!(route(&Method::PUT, "/workitems/1.2/state").unwrap().required_role(), Some(Role::Reader));
        assert_eq!(get("/subscribers/AE").unwrap().required_role(), Some(Role::Reader));
    }

    #[test]
    fn malformed_uids_are_400_and_unknown_paths_404() {
        assert_eq!(get("/studies/..%2F..").unwrap_err().kind, ErrorKind::BadRequest);
        assert_eq!(get("/studies/1.2.abc").unwrap_err().kind, ErrorKind::BadRequest);
        assert_eq!(get("/nothing").unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!(route(&Method::DELETE, "/studies").unwrap_err().kind, ErrorKind::MethodNotAllowed);
        assert_eq!(get("/studies/1.2/series/1.3/pixeldata").unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!(
            get("/studies/1.2/series/1.3/instances/1.4/frames/2/thumbnail").unwrap(),
            Endpoint::Rendered {
                study: "1.2".into(),
                series: Some("1.3".into()),
                instance: Some("1.4".into()),
                frames: Some("2".into()),
                thumbnail: true
            }
        );
        assert_eq!(
            get("/studies/1.2/series/1.3/instances/1.4/frames/1,3").unwrap(),
            Endpoint::Frames {
                study: "1.2".into(),
                series: "1.3".into(),
                instance: "1.4".into(),
                frames: "1,3".into()
            }
        );
        assert_eq!(
            get("/studies/1.2/series/1.3/metadata").unwrap(),
            Endpoint::Metadata { study: "1.2".into(), series: Some("1.3".into()), instance: None }
        );
    }
}
