//! Taking one instance in: stream its bytes into the store, parse and validate what it says,
//! apply the duplicate policy, and record it. Nothing of a failed instance remains stored.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::dicom::part10::{self, HEADER_LEN, ParseError, ParsedInstance};
use crate::error::FailureReason;
use crate::store::payload::PayloadReader;
use crate::store::record::RECORD_VERSION;
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
}

/// Streams one instance into the store. The caller must drive `Store::commit` before
/// acknowledging it.
pub async fn ingest<S, E>(
    store: &Arc<dyn Store>,
    principal: &Principal,
    expected_study: Option<&str>,
    limits: &IngestLimits,
    mut body: S,
) -> Result<StoredInstance, IngestError<E>>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    let chunk_size = store.chunk_size() as usize;
    let mut pending: Vec<u8> = Vec::with_capacity(chunk_size);
    let mut hasher = Sha256::new();
    let mut payload: Option<u64> = None;
    let mut n_chunks: u32 = 0;
    let mut length: u64 = 0;
    let mut too_large = false;
    let internal = |error: crate::store::StoreError| {
        tracing::warn!(error = %error, "payload write failed");
        InstanceFailure::anonymous(FailureReason::ProcessingFailure, "the archive could not store the instance")
    };

    while let Some(next) = body.next().await {
        let bytes = next.map_err(IngestError::Stream)?;
        if too_large {
            continue; // Drain the part so that the request's other parts can still be read.
        }
        length += bytes.len() as u64;
        if length > limits.max_instance_bytes {
            too_large = true;
            if let Some(id) = payload.take() {
                let _ = tokio::task::block_in_place(|| store.discard_payload(id));
            }
            continue;
        }
        pending.extend_from_slice(&bytes);
        if payload.is_none() {
            if pending.len() < HEADER_LEN {
                continue;
            }
            if !part10::has_dicm_prefix(&pending) {
                return Err(IngestError::Instance(InstanceFailure::anonymous(
                    FailureReason::CannotUnderstand,
                    ParseError::NotPart10.to_string(),
                )));
            }
            // CVE-2019-11687: a preamble may make the file a polyglot executable. Zero it.
            pending[..part10::PREAMBLE_LEN].fill(0);
            let id = tokio::task::block_in_place(|| store.allocate_payload())
                .map_err(|e| IngestError::Instance(internal(e)))?;
            payload = Some(id);
        }
        let id = payload.expect("allocated above");
        while pending.len() >= chunk_size {
            let rest = pending.split_off(chunk_size);
            hasher.update(&pending);
            let chunk = std::mem::replace(&mut pending, rest);
            tokio::task::block_in_place(|| store.write_chunk(id, n_chunks, &chunk))
                .map_err(|e| IngestError::Instance(internal(e)))?;
            n_chunks += 1;
        }
    }
    if too_large {
        return Err(IngestError::Instance(InstanceFailure::anonymous(
            FailureReason::OutOfResources,
            format!("the instance is larger than the limit of {} bytes", limits.max_instance_bytes),
        )));
    }
    let Some(id) = payload else {
        return Err(IngestError::Instance(InstanceFailure::anonymous(
            FailureReason::CannotUnderstand,
            ParseError::NotPart10.to_string(),
        )));
    };
    let outcome = finish(store, principal, expected_study, limits, id, &mut hasher, pending, n_chunks, length).await;
    if outcome.is_err() || outcome.as_ref().is_ok_and(|stored| stored.already_stored) {
        let _ = tokio::task::block_in_place(|| store.discard_payload(id));
    }
    outcome.map_err(IngestError::Instance)
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    store: &Arc<dyn Store>,
    principal: &Principal,
    expected_study: Option<&str>,
    limits: &IngestLimits,
    id: u64,
    hasher: &mut Sha256,
    last: Vec<u8>,
    n_chunks: u32,
    length: u64,
) -> Result<StoredInstance, InstanceFailure> {
    if !last.is_empty() {
        hasher.update(&last);
        tokio::task::block_in_place(|| store.write_chunk(id, n_chunks, &last)).map_err(|e| {
            tracing::warn!(error = %e, "payload write failed");
            InstanceFailure::anonymous(FailureReason::ProcessingFailure, "the archive could not store the instance")
        })?;
    }
    let sha256 = format!("{:x}", hasher.clone().finalize());

    // dicom-rs has panicked on crafted input before (dicom-rs#543, #828): contain it.
    let payload = PayloadRef { id, length, chunk_size: store.chunk_size(), sha256 };
    let reader = PayloadReader::new(store.clone(), payload.clone());
    let permit = super::parse_permit().await;
    let parsed = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        std::panic::catch_unwind(AssertUnwindSafe(|| part10::parse(reader, length)))
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
        PutOutcome::Stored { replaced } => (false, replaced),
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

fn parse_failure(error: ParseError) -> InstanceFailure {
    let reason = match &error {
        ParseError::NotPart10 | ParseError::Malformed(_) => FailureReason::CannotUnderstand,
        ParseError::UnsupportedTransferSyntax(_) => FailureReason::TransferSyntaxNotSupported,
        ParseError::MissingAttribute { .. } | ParseError::InvalidUid { .. } => {
            FailureReason::DataSetDoesNotMatchSopClass
        }
    };
    InstanceFailure::anonymous(reason, error.to_string())
}
