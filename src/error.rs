//! Errors as types, and the one table that maps them to HTTP status codes and DICOM failure
//! reasons (PS3.18 §8.5 Table 8.5-1, Annex I Table I.2-2).

use http::StatusCode;

/// The closed set of error kinds the HTTP edge renders. Adding a kind is a deliberate choice:
/// each one needs a row in [`ErrorKind::http_status`] and in conformance/STATEMENT.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed request or invalid parameter value (PS3.18 §8.3: 400).
    BadRequest,
    NotFound,
    MethodNotAllowed,
    /// No acceptable representation (§8.7.5).
    NotAcceptable,
    /// Request Content-Type not supported (§10.5.3: 415).
    UnsupportedMediaType,
    /// Request Content-Encoding not supported (415 with the accepted codings in
    /// `Accept-Encoding`, RFC 9110 §15.5.16, §12.5.3).
    UnsupportedContentCoding,
    /// Request larger than the configured limits (413).
    PayloadTooLarge,
    /// A Range outside the value (416).
    RangeNotSatisfiable,
    /// Server-side failure; the body reveals nothing internal.
    Internal,
    /// The archive cannot serve now for a server-side reason (503, with Retry-After). The
    /// client sees a fixed message; the cause is logged.
    Unavailable,
    /// Overloaded: the memory budget stayed in use for the whole wait, or a configured bound
    /// is reached (503, with Retry-After; see `memory`). Its message is shown: every
    /// constructor writes one that names the bound and nothing internal.
    Busy,
    /// The Host is not one this server answers for (421, RFC 9110 §15.5.20).
    MisdirectedRequest,
    /// No valid credentials (401 with `WWW-Authenticate: Bearer`, RFC 6750 §3).
    Unauthorized,
    /// Presented credentials that are not valid: an unknown, revoked or malformed API key, or
    /// a JWT that failed verification (401 with `WWW-Authenticate: Bearer
    /// error="invalid_token"`, RFC 6750 §3.1).
    InvalidToken,
    /// A known principal without the role the endpoint needs (403).
    Forbidden,
    /// Too many failed authentications from this address (429 with Retry-After, RFC 6585 §4).
    TooManyRequests,
    /// The request conflicts with the target's state (409, PS3.18 §8.5): a UPS workitem that
    /// exists already (§11.4.3), a cancellation of a COMPLETED one (§11.8.3).
    Conflict,
}

impl ErrorKind {
    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            ErrorKind::UnsupportedMediaType | ErrorKind::UnsupportedContentCoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Unavailable | ErrorKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            ErrorKind::Unauthorized | ErrorKind::InvalidToken => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Conflict => StatusCode::CONFLICT,
        }
    }
}

/// An error on its way to the client: a kind, a message a human can act on, and the cause
/// (logged, never sent).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    /// The text of a `Warning: 299` header the standard fixes for this failure (UPS-RS,
    /// PS3.18 §11.6.3.2, §11.7.3.2); rendered with the service's base URL.
    pub warning: Option<&'static str>,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into(), warning: None, source: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, message)
    }

    pub fn internal(source: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error {
            kind: ErrorKind::Internal,
            message: "internal error".into(),
            warning: None,
            source: Some(Box::new(source)),
        }
    }

    /// The message the client sees: for server-side kinds, nothing internal.
    pub fn public_message(&self) -> &str {
        match self.kind {
            ErrorKind::Internal => "internal server error; the failure was logged",
            ErrorKind::Unavailable => "the archive is unavailable; retry later",
            _ => &self.message,
        }
    }
}

/// A reservation of the memory budget that failed: the work needs more than the whole budget
/// (406, as for any representation the server cannot produce: PS3.18 §8.7.5; the stored form
/// is still available), or the budget stayed busy (503 with Retry-After).
impl From<crate::memory::BudgetError> for Error {
    fn from(error: crate::memory::BudgetError) -> Error {
        match error {
            crate::memory::BudgetError::NeverFits { .. } => Error::new(
                ErrorKind::NotAcceptable,
                format!("{error} (--memory-budget-mib); the instance is available as stored (transfer-syntax=*)"),
            ),
            crate::memory::BudgetError::Busy => Error::new(ErrorKind::Busy, error.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for Error {
    fn from(error: crate::store::StoreError) -> Error {
        Error::internal(error)
    }
}

/// A key management request that named a bad value or an unknown key.
impl From<crate::auth::keys::KeyError> for Error {
    fn from(error: crate::auth::keys::KeyError) -> Error {
        match error {
            crate::auth::keys::KeyError::Invalid(message) => Error::bad_request(message),
            crate::auth::keys::KeyError::Unknown(_) => Error::not_found(error.to_string()),
            crate::auth::keys::KeyError::Store(store) => Error::from(store),
        }
    }
}

/// Warning texts of UPS-RS failures (PS3.18 §11.6.3.2, §11.7.3.2).
pub const UPS_TRANSACTION_UID_MISSING: &str = "The Transaction UID is missing.";
pub const UPS_TRANSACTION_UID_INCORRECT: &str = "The Transaction UID is incorrect.";
pub const UPS_STATE_INCONSISTENT: &str = "The submitted request is inconsistent with the state of the UPS Instance.";
pub const UPS_NOT_CLAIMED: &str = "The target URI did not reference a claimed Workitem.";
pub const UPS_UPDATE_INCONSISTENT: &str =
    "The submitted request is inconsistent with the current state of the Workitem.";

/// A refused UPS-RS request: the HTTP status and Warning of PS3.18 Chapter 11 for each DIMSE
/// status of PS3.4 Annex CC (conformance/STATEMENT.md, "UPS-RS status codes").
impl From<crate::archive::worklist::UpsError> for Error {
    fn from(error: crate::archive::worklist::UpsError) -> Error {
        use crate::archive::worklist::UpsError;
        let (kind, warning) = match &error {
            UpsError::NotFound(_) => (ErrorKind::NotFound, None),
            UpsError::AlreadyExists => (ErrorKind::Conflict, None),
            UpsError::Invalid(_) => (ErrorKind::BadRequest, None),
            UpsError::TransactionUidMissing => (ErrorKind::BadRequest, Some(UPS_TRANSACTION_UID_MISSING)),
            UpsError::TransactionUidIncorrect => (ErrorKind::BadRequest, Some(UPS_TRANSACTION_UID_INCORRECT)),
            UpsError::StateInconsistent(_) | UpsError::FinalStateIncomplete(_) => {
                (ErrorKind::BadRequest, Some(UPS_STATE_INCONSISTENT))
            }
            UpsError::NotClaimed(_) => (ErrorKind::BadRequest, Some(UPS_NOT_CLAIMED)),
            UpsError::UpdateFinal(_) => (ErrorKind::BadRequest, Some(UPS_UPDATE_INCONSISTENT)),
            UpsError::AlreadyCompleted => (ErrorKind::Conflict, Some(UPS_UPDATE_INCONSISTENT)),
            UpsError::Full(_) => (ErrorKind::Busy, None),
            UpsError::Store(_) => return Error::internal(error),
        };
        Error { kind, message: error.to_string(), warning, source: None }
    }
}

/// A share request that named a bad value, or a share the caller cannot see.
impl From<crate::archive::shares::ShareError> for Error {
    fn from(error: crate::archive::shares::ShareError) -> Error {
        use crate::archive::shares::ShareError;
        match error {
            ShareError::Invalid(message) => Error::bad_request(message),
            ShareError::Unknown => Error::not_found(error.to_string()),
            ShareError::Store(store) => Error::from(store),
        }
    }
}

impl From<crate::blob::BlobError> for Error {
    fn from(error: crate::blob::BlobError) -> Error {
        match error {
            // The record was read, then the instance was deleted before its bytes were: what a
            // request that came a moment later would have been told.
            crate::blob::BlobError::Missing(_) => Error::not_found("the instance was deleted while it was retrieved"),
            other => Error::internal(other),
        }
    }
}

/// A stored instance whose Image Pixel attributes contradict its Pixel Data: its frames, rendered
/// and thumbnail representations cannot be produced, while the stored bytes can (PS3.18 Table
/// 10.4.3-1: 406, no acceptable representation; the message says what is available).
impl From<crate::dicom::pixels::DescriptionError> for Error {
    fn from(error: crate::dicom::pixels::DescriptionError) -> Error {
        Error::new(
            ErrorKind::NotAcceptable,
            format!("{error}; the instance is available as stored (application/dicom; transfer-syntax=*)"),
        )
    }
}

impl From<crate::index::IndexError> for Error {
    fn from(error: crate::index::IndexError) -> Error {
        match error {
            crate::index::IndexError::InvalidQuery(message) => Error::bad_request(message),
            other => Error::internal(other),
        }
    }
}

/// Why one instance of a STOW-RS request was not stored: the Failure Reason (0008,1197) of
/// PS3.18 Annex I Table I.2-2 (and PS3.7 for 0111), with the implementation-specific codes
/// documented in conformance/STATEMENT.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// A700: refused, out of resources (instance larger than the configured limit).
    OutOfResources,
    /// A900: the data set does not match the SOP class (a required UID missing or invalid).
    DataSetDoesNotMatchSopClass,
    /// C000: cannot understand (not PS3.10, truncated, unparsable).
    CannotUnderstand,
    /// C122: the transfer syntax is not supported.
    TransferSyntaxNotSupported,
    /// C409 (implementation-specific, as dcm4chee): Study Instance UID differs from the URL's.
    StudyInstanceUidMismatch,
    /// 0111 (PS3.7 "Duplicate SOP Instance"): another object is stored under this UID.
    DuplicateSopInstance,
    /// 0110: processing failure (a server-side error while storing).
    ProcessingFailure,
    /// 0124 (PS3.7 Annex C "Refused: Not authorized"; Table I.2-2 allows other codes): the
    /// study belongs to another institution, or the SOP Instance UID is stored in one.
    NotAuthorized,
}

impl FailureReason {
    pub fn code(self) -> u16 {
        match self {
            FailureReason::OutOfResources => 0xA700,
            FailureReason::DataSetDoesNotMatchSopClass => 0xA900,
            FailureReason::CannotUnderstand => 0xC000,
            FailureReason::TransferSyntaxNotSupported => 0xC122,
            FailureReason::StudyInstanceUidMismatch => 0xC409,
            FailureReason::DuplicateSopInstance => 0x0111,
            FailureReason::ProcessingFailure => 0x0110,
            FailureReason::NotAuthorized => 0x0124,
        }
    }
}
