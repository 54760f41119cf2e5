//! Deleting a study, a series or an instance.
//!
//! PS3.18 defines no delete transaction for these resources; Kura takes the form that
//! dcm4chee-arc, Google's and Microsoft's DICOMweb services and dicomweb-client's
//! `delete_study`/`delete_series`/`delete_instance` use: `DELETE` on the WADO-RS resource.
//! The answer is 204 No Content once the deletion is durable and no search or retrieval sees
//! the deleted instances any more; 404 (as for WADO-RS) when the target does not exist. The
//! `X-Kura-Deleted-Instances` header says how many instances went (conformance/STATEMENT.md).

use std::sync::Arc;

use http::{Response, StatusCode};

use super::{RequestContext, ResponseBody, empty_body};
use crate::archive::Archive;
use crate::error::Error;

pub async fn delete(
    archive: &Arc<Archive>,
    context: &RequestContext,
    study: &str,
    series: Option<&str>,
    instance: Option<&str>,
) -> Result<Response<ResponseBody>, Error> {
    let removed = archive.delete(&context.principal, study, series, instance).await?;
    tracing::info!(instances = removed, "deleted");
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header("X-Kura-Deleted-Instances", removed.to_string())
        .body(empty_body())
        .expect("valid response"))
}
