//! The key management API (administrators only; not DICOMweb):
//! - `POST /admin/keys` with `{"institution": "…", "roles": ["uploader"], "name": "…"}` (or
//!   `"role": "uploader"`) → 201 with the key's description and its `secret`, shown this once;
//! - `GET /admin/keys` → the keys (never a secret);
//! - `DELETE /admin/keys/{id}` → 204; the key stops working at once.
//!
//! The same operations as `kura key create|list|revoke`, for a running server (the command
//! needs the server stopped: sled allows one process per data directory).

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::BodyExt;

use super::router::KeyOperation;
use crate::auth::keys::KeyStore;
use crate::auth::{Role, Roles};
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

pub async fn keys<B>(
    keys: &KeyStore,
    operation: KeyOperation,
    request: Request<B>,
) -> Result<Response<ResponseBody>, Error>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    match operation {
        KeyOperation::List => Ok(json(StatusCode::OK, &keys.list()?)),
        KeyOperation::Revoke { id } => {
            keys.revoke(&id).await?;
            tracing::info!(key = %id, "API key revoked");
            Ok(Response::builder().status(StatusCode::NO_CONTENT).body(dicomweb::empty_body()).expect("valid"))
        }
        KeyOperation::Create => {
            let body = read_body(request.into_body()).await?;
            let create: CreateRequest = serde_json::from_slice(&body)
                .map_err(|e| Error::bad_request(format!("expected {{\"institution\", \"roles\", \"name\"}}: {e}")))?;
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
