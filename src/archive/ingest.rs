//! Taking one instance in: stream its bytes into the store, parse and validate what it says,
//! apply the duplicate policy, and record it. Nothing of a failed instance remains stored.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::blob::{BlobError, BlobWrite, SharedBlobStore};
use crate::dicom::part10::{self, HEADER_LEN, ParseError, ParsedInstance};
use crate::error::FailureReason;
use crate::model::records::RECORD_VERSION;
use crate::store::{DuplicatePolicy, InstanceRecord, PayloadRef, PutOutcome, Store};

/// An instance that is now in the store (durable after the next `Store::commit`).
#[derive(Debug, Clone)]
pub struct StoredInstance {
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    /// True when the identical object was already stored (an idempotent retry).
    pub already_stored: bool,
    /// True when a different object under the same UID was replaced (Overwrite policy).
    pub replaced: bool,
}

/// An instance that was refused, with what is known of its identity.
#[derive(Debug, Clone)]
pub struct InstanceFailure {
    pub sop_class_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
    pub reason: FailureReason,
    pub message: String,
}

impl InstanceFailure {
    fn anonymous(reason: FailureReason, message: impl Into<String>) -> Self {
        InstanceFailure { sop_class_uid: None, sop_instance_uid: None, reason, message: message.into() }
    }

    fn of(parsed: &ParsedInstance, reason: FailureReason, message: impl Into<String>) -> Self {
        InstanceFailure {
            sop_class_uid: Some(parsed.sop_class_uid.clone()),
            sop_instance_uid: Some(parsed.sop_instance_uid.clone()),
            reason,
            message: message.into(),
        }
    }
}

/// How an ingest ended when it did not produce a stored instance.
#[derive(Debug)]
pub enum IngestError<E> {
    /// This instance is refused; the request may go on.
    Instance(InstanceFailure),
    /// The body stream itself failed; the request cannot go on.
    Stream(E),
}

pub struct IngestLimits {
    pub max_instance_bytes: u64,
    pub policy: DuplicatePolicy,
    /// What the store-time parse draws from (see `crate::memory`).
    pub budget: Arc<crate::memory::MemoryBudget>,
}

/// Streams one instance into the blob store and records it in the catalog. The caller must
/// drive `Store::commit` before acknowledging it.
pub async fn ingest<S, E>(
    store: &Arc<dyn Store>,
    blobs: &SharedBlobStore,
    principal: &Principal,
    expected_study: Option<&str>,
    limits: &IngestLimits,
    mut body: S,
) -> Result<StoredInstance, IngestError<E>>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    let mut header: Vec<u8> = Vec::with_capacity(HEADER_LEN);
    let mut hasher = Sha256::new();
    let mut writer: Option<(u64, Box<dyn BlobWrite>)> = None;
    let mut length: u64 = 0;
    let mut too_large = false;
    let internal = |error: BlobError| IngestError::Instance(blob_failure(error));

    while let Some(next) = body.next().await {
        let bytes = match next {
            Ok(bytes) => bytes,
            Err(error) => {
                // A cut-off upload leaves nothing behind.
                if let Some((_, writer)) = writer.take() {
                    let _ = writer.abort().await;
                }
                return Err(IngestError::Stream(error));
            }
        };
        if too_large {
            continue; // Drain the part so that the request's other parts can still be read.
        }
        length += bytes.len() as u64;
        if length > limits.max_instance_bytes {
            too_large = true;
            if let Some((_, writer)) = writer.take() {
                let _ = writer.abort().await;
            }
            continue;
        }
        let mut bytes = &bytes[..];
        if writer.is_none() {
            let wanted = (HEADER_LEN - header.len()).min(bytes.len());
            header.extend_from_slice(&bytes[..wanted]);
            bytes = &bytes[wanted..];
            if header.len() < HEADER_LEN {
                continue;
            }
            if !part10::has_dicm_prefix(&header) {
                return Err(IngestError::Instance(InstanceFailure::anonymous(
                    FailureReason::CannotUnderstand,
                    ParseError::NotPart10.to_string(),
                )));
            }
            // CVE-2019-11687: a preamble may make the file a polyglot executable. Zero it.
            header[..part10::PREAMBLE_LEN].fill(0);
            let id = tokio::task::block_in_place(|| store.allocate_payload()).map_err(|e| {
                tracing::warn!(error = %e, "payload id allocation failed");
                IngestError::Instance(InstanceFailure::anonymous(
                    FailureReason::ProcessingFailure,
                    "the archive could not store the instance",
                ))
            })?;
            let mut new = blobs.create(id).await.map_err(internal)?;
            hasher.update(&header);
            if let Err(e) = new.write(&header).await {
                let _ = new.abort().await;
                return Err(internal(e));
            }
            writer = Some((id, new));
        }
        if !bytes.is_empty() {
            let (_, open) = writer.as_mut().expect("created above");
            hasher.update(bytes);
            if let Err(e) = open.write(bytes).await {
                let (_, open) = writer.take().expect("present");
                let _ = open.abort().await;
                return Err(internal(e));
            }
        }
    }
    if too_large {
        return Err(IngestError::Instance(InstanceFailure::anonymous(
            FailureReason::OutOfResources,
            format!("the instance is larger than the limit of {} bytes", limits.max_instance_bytes),
        )));
    }
    let Some((id, writer)) = writer else {
        return Err(IngestError::Instance(InstanceFailure::anonymous(
            FailureReason::CannotUnderstand,
            ParseError::NotPart10.to_string(),
        )));
    };
    // Durable before any record can point at it (the blob store's contract).
    let written = writer.finish().await.map_err(internal)?;
    debug_assert_eq!(written, length);
    let sha256 = format!("{:x}", hasher.finalize());
    let payload = PayloadRef { id, length, sha256 };
    let outcome = finish(store, blobs, principal, expected_study, limits, payload).await;
    if outcome.is_err() || outcome.as_ref().is_ok_and(|stored| stored.already_stored) {
        // Not referenced by any record: remove it now (a crash here leaves it to the sweep).
        let _ = blobs.delete(id).await;
    }
    outcome.map_err(IngestError::Instance)
}

async fn finish(
    store: &Arc<dyn Store>,
    blobs: &SharedBlobStore,
    principal: &Principal,
    expected_study: Option<&str>,
    limits: &IngestLimits,
    payload: PayloadRef,
) -> Result<StoredInstance, InstanceFailure> {
    let length = payload.length;
    let reader = blobs.reader(payload.id).map_err(|e| {
        tracing::warn!(error = %e, "payload read failed");
        InstanceFailure::anonymous(FailureReason::ProcessingFailure, "the archive could not store the instance")
    })?;
    // dicom-rs has panicked on crafted input before (dicom-rs#543, #828): contain it.
    let permit = super::parse_permit().await;
    let budget = limits.budget.clone();
    let parsed = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        std::panic::catch_unwind(AssertUnwindSafe(|| part10::parse_within(reader, length, Some(&budget))))
    })
    .await;
    let parsed = match parsed {
        Ok(Ok(Ok(parsed))) => parsed,
        Ok(Ok(Err(error))) => return Err(parse_failure(error)),
        Ok(Err(_)) | Err(_) => {
            return Err(InstanceFailure::anonymous(FailureReason::CannotUnderstand, "the data set cannot be parsed"));
        }
    };
    if let Some(expected) = expected_study
        && parsed.study_uid != expected
    {
        return Err(InstanceFailure::of(
            &parsed,
            FailureReason::StudyInstanceUidMismatch,
            "the instance's StudyInstanceUID differs from the one in the request URL",
        ));
    }
    let record = InstanceRecord {
        version: RECORD_VERSION,
        owner: principal.institution.clone(),
        study_uid: parsed.study_uid.clone(),
        series_uid: parsed.series_uid.clone(),
        sop_instance_uid: parsed.sop_instance_uid.clone(),
        sop_class_uid: parsed.sop_class_uid.clone(),
        transfer_syntax_uid: parsed.transfer_syntax_uid.clone(),
        payload,
        attributes: parsed.attributes.clone(),
        seq: 0,
        pixel_data: parsed.pixel_data.clone(),
        large_values: parsed.large_values.clone(),
    };
    let outcome =
        tokio::task::block_in_place(|| store.put_instance(record, &parsed.metadata, limits.policy)).map_err(|e| {
            tracing::warn!(error = %e, "catalog update failed");
            InstanceFailure::of(&parsed, FailureReason::ProcessingFailure, "the archive could not store the instance")
        })?;
    let (already_stored, replaced) = match outcome {
        PutOutcome::Stored { replaced, .. } => (false, replaced),
        PutOutcome::AlreadyStored => (true, false),
        PutOutcome::Conflict => {
            return Err(InstanceFailure::of(
                &parsed,
                FailureReason::DuplicateSopInstance,
                "a different object is already stored under this SOPInstanceUID",
            ));
        }
    };
    Ok(StoredInstance {
        study_uid: parsed.study_uid,
        series_uid: parsed.series_uid,
        sop_instance_uid: parsed.sop_instance_uid,
        sop_class_uid: parsed.sop_class_uid,
        already_stored,
        replaced,
    })
}

/// A payload write that failed: out of space is Out of Resources (A700, PS3.18 Table I.2-2: the
/// client may retry later); anything else is a processing failure.
fn blob_failure(error: BlobError) -> InstanceFailure {
    if error.is_out_of_space() {
        tracing::warn!(error = %error, "payload refused: storage full");
        return InstanceFailure::anonymous(
            FailureReason::OutOfResources,
            format!("the archive cannot store the instance now: {error}; retry when space has been freed"),
        );
    }
    tracing::warn!(error = %error, "payload write failed");
    InstanceFailure::anonymous(FailureReason::ProcessingFailure, "the archive could not store the instance")
}

fn parse_failure(error: ParseError) -> InstanceFailure {
    let reason = match &error {
        ParseError::NotPart10 | ParseError::Malformed(_) => FailureReason::CannotUnderstand,
        ParseError::UnsupportedTransferSyntax(_) => FailureReason::TransferSyntaxNotSupported,
        ParseError::OutOfMemory(_) => FailureReason::OutOfResources,
        ParseError::MissingAttribute { .. } | ParseError::InvalidUid { .. } => {
            FailureReason::DataSetDoesNotMatchSopClass
        }
    };
    InstanceFailure::anonymous(reason, error.to_string())
}
