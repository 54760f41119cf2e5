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
    /// The audit trail's query (not DICOMweb; `server::audit_api`): `GET /admin/audit?…`.
    Audit,
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
/// Path of the audit query API.
pub const AUDIT_PATH: &str = "/admin/audit";

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
            Endpoint::Delete { .. } | Endpoint::Keys(_) | Endpoint::Audit => Some(Role::Administrator),
            Endpoint::Capabilities { .. } => None,
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

fn checked_uid(segment: &str, what: &str) -> Result<String, Error> {
    uid::validate(segment).map_err(|e| Error::bad_request(format!("{what} in the path is not a valid UID: {e}")))?;
    Ok(segment.to_string())
}

fn method_not_allowed(allowed: &'static str) -> Error {
    Error::new(ErrorKind::MethodNotAllowed, allowed)
}

/// Routes a request path relative to the DICOMweb base path.
pub fn route(method: &Method, relative_path: &str) -> Result<Endpoint, Error> {
    if method == Method::OPTIONS {
        return Ok(Endpoint::Capabilities { path: relative_path.to_string() });
    }
    let segments: Vec<&str> = relative_path.trim_start_matches('/').split('/').collect();
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
