//! The key and share management APIs (administrators only; not DICOMweb):
//! - `POST /admin/keys` with `{"institution": "…", "roles": ["uploader"], "name": "…"}` (or
//!   `"role": "uploader"`) → 201 with the key's description and its `secret`, shown this once;
//! - `GET /admin/keys` → the keys (never a secret);
//! - `DELETE /admin/keys/{id}` → 204; the key stops working at once;
//! - `POST /admin/shares` with `{"study": "…", "series": "…"?, one of "institution": "…",
//!   "user": "…" or "link": true, "expires_in_secs": n?}` → 201 with the share's description
//!   (and, for a link, its `token` and `url`, shown this once);
//! - `GET /admin/shares` → the shares (never a token);
//! - `DELETE /admin/shares/{id}` → 204; the share stops working at once.
//!
//! An administrator manages the keys and shares of its own institution only: another
//! institution's key or share is 404, like one that does not exist, and a key for another
//! institution is refused (403). Only the deployment-wide principal (the local caller of an
//! archive without authentication) and the `kura key` / `kura share` commands, which need the
//! data directory, manage all of them.
//!
//! The same operations as `kura key|share create|list|revoke`, for a running server (the
//! commands need the server stopped: sled allows one process per data directory).

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::BodyExt;

use super::router::{KeyOperation, ShareOperation};
use crate::archive::{Archive, Grantee, NewShare, shares};
use crate::auth::keys::KeyError;
use crate::auth::{Principal, Role, Roles};
use crate::dicomweb::{self, ResponseBody};
use crate::error::{Error, ErrorKind};

/// Largest create request.
const MAX_BODY_BYTES: usize = 4096;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    institution: String,
    #[serde(default)]
    roles: Vec<Role>,
    role: Option<Role>,
    name: Option<String>,
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(dicomweb::full_body(Bytes::from(serde_json::to_vec(value).expect("serialise"))))
        .expect("valid response")
}

async fn read_body<B>(mut body: B) -> Result<Vec<u8>, Error>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::bad_request(format!("reading the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_BODY_BYTES {
                return Err(Error::new(ErrorKind::PayloadTooLarge, format!("at most {MAX_BODY_BYTES} bytes")));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

fn no_content() -> Response<ResponseBody> {
    Response::builder().status(StatusCode::NO_CONTENT).body(dicomweb::empty_body()).expect("valid")
}

pub async fn keys<B>(
    archive: &Archive,
    principal: &Principal,
    operation: KeyOperation,
    request: Request<B>,
) -> Result<Response<ResponseBody>, Error>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let keys = archive.keys();
    let confined_to = archive.managed_owner(principal);
    match operation {
        KeyOperation::List => {
            let mut list = keys.list()?;
            list.retain(|key| confined_to.is_none_or(|owner| key.institution == owner));
            Ok(json(StatusCode::OK, &list))
        }
        KeyOperation::Revoke { id } => {
            let institution = keys.info(&id)?.map(|key| key.institution);
            if institution.is_none() || confined_to.is_some_and(|owner| institution.as_deref() != Some(owner)) {
                return Err(KeyError::Unknown(id).into());
            }
            keys.revoke(&id).await?;
            tracing::info!(key = %id, "API key revoked");
            Ok(no_content())
        }
        KeyOperation::Create => {
            let body = read_body(request.into_body()).await?;
            let create: CreateRequest = serde_json::from_slice(&body)
                .map_err(|e| Error::bad_request(format!("expected {{\"institution\", \"roles\", \"name\"}}: {e}")))?;
            if confined_to.is_some_and(|owner| owner != create.institution) {
                return Err(Error::new(
                    ErrorKind::Forbidden,
                    "an administrator creates keys for its own institution only",
                ));
            }
            let roles: Roles = create.roles.into_iter().chain(create.role).collect();
            let name = create.name.unwrap_or_else(|| create.institution.clone());
            let created = keys.create(&name, &create.institution, roles).await?;
            tracing::info!(key = %created.info.id, "API key created");
            let mut value = serde_json::to_value(&created.info).expect("serialise");
            value["secret"] = created.secret.into();
            let mut response = json(StatusCode::CREATED, &value);
            // The audit trail names the new key by its id (never its secret).
            response.extensions_mut().insert(crate::audit::AuditNote {
                studies: Vec::new(),
                detail: Some(format!("key {} for {}", created.info.id, created.info.institution)),
            });
            Ok(response)
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateShareRequest {
    study: String,
    series: Option<String>,
    institution: Option<String>,
    user: Option<String>,
    #[serde(default)]
    link: bool,
    expires_in_secs: Option<u64>,
}

impl CreateShareRequest {
    fn into_share(self) -> Result<NewShare, Error> {
        crate::dicom::uid::validate(&self.study).map_err(|e| Error::bad_request(format!("study: {e}")))?;
        if let Some(series) = &self.series {
            crate::dicom::uid::validate(series).map_err(|e| Error::bad_request(format!("series: {e}")))?;
        }
        let grantee = match (self.institution, self.user, self.link) {
            (Some(institution), None, false) => Grantee::Institution(institution),
            (None, Some(user), false) => Grantee::User(user),
            (None, None, true) => Grantee::Link,
            _ => return Err(Error::bad_request("name exactly one of \"institution\", \"user\" or \"link\": true")),
        };
        Ok(NewShare {
            study_uid: self.study,
            series_uid: self.series,
            grantee,
            expires_in_secs: self.expires_in_secs.unwrap_or(shares::DEFAULT_EXPIRY_SECS),
        })
    }
}

/// `origin` is `scheme://host[:port]` of this request, for the URL of a new link.
pub async fn shares<B>(
    archive: &Archive,
    principal: &Principal,
    origin: &str,
    operation: ShareOperation,
    request: Request<B>,
) -> Result<Response<ResponseBody>, Error>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    match operation {
        ShareOperation::List => Ok(json(StatusCode::OK, &archive.list_shares(principal)?)),
        ShareOperation::Revoke { id } => {
            archive.revoke_share(principal, &id).await?;
            tracing::info!(share = %id, "share revoked");
            Ok(no_content())
        }
        ShareOperation::Create => {
            let body = read_body(request.into_body()).await?;
            let create: CreateShareRequest = serde_json::from_slice(&body).map_err(|e| {
                Error::bad_request(format!(
                    "expected {{\"study\", \"series\"?, \"institution\" | \"user\" | \"link\": true, \
                     \"expires_in_secs\"?}}: {e}"
                ))
            })?;
            let created = archive.create_share(principal, create.into_share()?).await?;
            tracing::info!(share = %created.info.id, grantee = %created.info.grantee_text(), "share created");
            let mut value = serde_json::to_value(&created.info).expect("serialise");
            if let Some(token) = created.token {
                value["url"] = format!("{origin}{}{token}/dicomweb", super::router::SHARE_LINK_PREFIX).into();
                value["token"] = token.into();
            }
            let mut response = json(StatusCode::CREATED, &value);
            // The trail names what was shared, with whom, by the share's id (as a key creation
            // names the key): without this note a share-create record said neither, so the
            // trail could not tell which study an administrator had opened to whom.
            response.extensions_mut().insert(crate::audit::AuditNote {
                studies: vec![created.info.study.clone()],
                detail: Some(created.info.audit_text()),
            });
            Ok(response)
        }
    }
}
