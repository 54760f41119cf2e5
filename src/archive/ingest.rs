//! Taking instances in: stream each one's bytes into the blob store, parse and validate what it
//! says ([`prepare`]); then, for a batch of them, make their bytes durable with one blob-store
//! sync and record them, applying the duplicate policy ([`record`]). Nothing of a failed instance
//! remains stored.
//!
//! The split is what lets concurrent uploads share their syncs (group commit): a request's
//! instances wait for one payload sync together, and then for one catalog commit
//! (`Archive::make_durable`), instead of one of each per instance.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::blob::{BlobError, BlobId, BlobWrite, SharedBlobStore};
use crate::dicom::encode::Codec;
use crate::dicom::part10::{self, HEADER_LEN, ParseError, ParsedInstance};
use crate::dicom::transcode::EXPLICIT_VR_LITTLE_ENDIAN;
use crate::error::FailureReason;
use crate::model::records::{OriginalForm, RECORD_VERSION};
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
    /// The lossless syntax native pixel data is stored in (`--store-compression`).
    pub store_compression: Option<Codec>,
}

/// An instance whose bytes are written (not yet durable) and parsed, waiting to be recorded.
pub struct PreparedInstance {
    record: InstanceRecord,
    metadata: Vec<u8>,
    /// Where each frame starts, when only the stored bytes could tell (`FrameMap::to_stored`).
    frame_map: Option<Vec<u8>>,
    /// When the payload is the instance re-encoded (`--store-compression`): what gives back
    /// the bytes it was received as.
    original: Option<OriginalForm>,
}

impl PreparedInstance {
    /// Memory it holds until it is recorded.
    pub fn held_bytes(&self) -> usize {
        self.metadata.len() + self.frame_map.as_ref().map_or(0, Vec::len) + std::mem::size_of::<Self>()
    }
}

/// Streams one instance into the blob store, parses it and builds its record. [`record`] must
/// follow, and the catalog commit after it, before it is acknowledged.
pub async fn prepare<S, E>(
    store: &Arc<dyn Store>,
    blobs: &SharedBlobStore,
    principal: &Principal,
    expected_study: Option<&str>,
    limits: &IngestLimits,
    mut body: S,
) -> Result<PreparedInstance, IngestError<E>>
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
    let _ = id; // The store may name the finished blob anew (a pack entry).
    let finished = writer.finish().await.map_err(internal)?;
    debug_assert_eq!(finished.length, length);
    let sha256 = format!("{:x}", hasher.finalize());
    let payload = PayloadRef { id: finished.id, length, sha256 };
    let mut prepared = parse_into_record(blobs, principal, expected_study, limits, payload).await;
    // The deployment-wide principal stores into any study on behalf of its owner; anyone else
    // stores as its institution, and `Store::put_instance` refuses another owner's study.
    if let (Ok(prepared), crate::auth::Scope::Deployment) = (&mut prepared, &principal.scope)
        && let Ok(Some(study)) = store.study(&prepared.record.study_uid)
    {
        prepared.record.owner = study.owner;
    }
    if prepared.is_err() {
        // Not referenced by any record: remove it now (a crash here leaves it to the sweep).
        let _ = blobs.delete(vec![finished.id]).await;
    }
    let mut prepared = prepared.map_err(IngestError::Instance)?;
    if let Some(codec) = limits.store_compression {
        prepared = compressed(store, blobs, principal, expected_study, limits, prepared, codec).await;
    }
    Ok(prepared)
}

/// The instance stored with its native pixel data re-encoded in `codec` (`dicom::encode::stored`),
/// in a new blob, the received one deleted; or, when it cannot be (not native Explicit VR Little
/// Endian, pixels the codec does not give back exactly, not smaller, the memory budget busy, a
/// write failing), `prepared` unchanged: storage compression never refuses an instance. The
/// record, metadata and index values stay those of the received instance (its data set is
/// unchanged); only the payload, the stored transfer syntax and where Pixel Data sits change.
async fn compressed(
    store: &Arc<dyn Store>,
    blobs: &SharedBlobStore,
    principal: &Principal,
    expected_study: Option<&str>,
    limits: &IngestLimits,
    prepared: PreparedInstance,
    codec: Codec,
) -> PreparedInstance {
    let native = prepared.record.pixel_data.as_ref().is_some_and(|layout| layout.length.is_some());
    if prepared.record.transfer_syntax_uid != EXPLICIT_VR_LITTLE_ENDIAN || !native {
        return prepared;
    }
    let received = prepared.record.payload.clone();
    // The received bytes, the re-encoded ones and the decoded check of them are held at once.
    let Ok(memory) = limits.budget.reserve(received.length.saturating_mul(4)).await else {
        tracing::debug!("store compression skipped: the memory budget is busy");
        return prepared;
    };
    let Ok(mut reader) = blobs.reader(received.id) else { return prepared };
    let permit = super::parse_permit().await;
    let sha256 = received.sha256.clone();
    let job = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut bytes = Vec::with_capacity(received.length as usize);
            std::io::Read::read_to_end(&mut reader, &mut bytes).map_err(|e| e.to_string())?;
            crate::dicom::encode::stored::compress(&bytes, &sha256, codec)
        }))
    })
    .await;
    let result = match job {
        Ok(Ok(result)) => result,
        _ => Err("the encoder failed".to_string()),
    };
    let compressed = match result {
        Ok(compressed) => compressed,
        Err(why) => {
            // No identifying values: `why` speaks of the pixel format only.
            tracing::debug!(%why, "instance stored as received");
            return prepared;
        }
    };
    let Some(payload) = write_blob(store, blobs, &compressed.bytes).await else { return prepared };
    drop(compressed.bytes);
    drop(memory);
    let new_id = payload.id;
    let reparsed = parse_into_record(blobs, principal, expected_study, limits, payload).await;
    let same = reparsed.as_ref().is_ok_and(|again| {
        again.record.attributes == prepared.record.attributes
            && again.record.sop_instance_uid == prepared.record.sop_instance_uid
            && again.record.transfer_syntax_uid == codec.transfer_syntax()
    });
    let Ok(mut again) = reparsed.map_err(|_| ()) else {
        let _ = blobs.delete(vec![new_id]).await;
        return prepared;
    };
    if !same {
        tracing::warn!("a re-encoded instance parsed differently from the received one; stored as received");
        let _ = blobs.delete(vec![new_id]).await;
        return prepared;
    }
    // Never referenced by a record: removed now (a crash here leaves it to the sweep).
    let _ = blobs.delete(vec![prepared.record.payload.id]).await;
    again.record.owner = prepared.record.owner;
    again.metadata = prepared.metadata;
    again.original = Some(compressed.original);
    again
}

/// A new blob holding `bytes` (not yet durable: `record` makes it so), or `None` when it could
/// not be written (nothing of it is left).
async fn write_blob(store: &Arc<dyn Store>, blobs: &SharedBlobStore, bytes: &[u8]) -> Option<PayloadRef> {
    let id = tokio::task::block_in_place(|| store.allocate_payload()).ok()?;
    let mut writer = blobs.create(id).await.ok()?;
    for chunk in bytes.chunks(1 << 20) {
        if writer.write(chunk).await.is_err() {
            let _ = writer.abort().await;
            return None;
        }
    }
    let finished = writer.finish().await.ok()?;
    let sha256 = format!("{:x}", Sha256::digest(bytes));
    Some(PayloadRef { id: finished.id, length: bytes.len() as u64, sha256 })
}

async fn parse_into_record(
    blobs: &SharedBlobStore,
    principal: &Principal,
    expected_study: Option<&str>,
    limits: &IngestLimits,
    payload: PayloadRef,
) -> Result<PreparedInstance, InstanceFailure> {
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
    let frame_map = stored_frame_map(blobs, &record).await;
    Ok(PreparedInstance { record, metadata: parsed.metadata, frame_map, original: None })
}

/// Works out where the frames of an encapsulated multi-frame instance start, once, when the
/// fragments alone do not say (offset tables, fragment markers): frame requests then read the map
/// from the catalog instead of the instance's bytes. An instance whose frames cannot be found
/// is still stored; its frame requests answer why.
async fn stored_frame_map(blobs: &SharedBlobStore, record: &InstanceRecord) -> Option<Vec<u8>> {
    let layout = record.pixel_data.as_ref().filter(|layout| layout.length.is_none())?;
    let description = crate::dicom::pixels::describe(|tag| record.number(tag), layout).ok()?;
    if description.frames <= 1 || u64::from(description.frames) == (layout.fragments.len() as u64).saturating_sub(1) {
        return None;
    }
    let (blobs, record) = (blobs.clone(), record.clone());
    let map = tokio::task::spawn_blocking(move || super::map_frames(blobs.as_ref(), &record, &description)).await;
    map.ok()?.ok()?.ok()?.to_stored()
}

/// Makes the payloads of prepared instances durable with one blob-store sync, then records
/// them in the catalog (durable after the next catalog commit). One result per instance, in
/// order.
pub async fn record(
    store: &Arc<dyn Store>,
    blobs: &SharedBlobStore,
    limits: &IngestLimits,
    batch: Vec<PreparedInstance>,
) -> Vec<Result<StoredInstance, InstanceFailure>> {
    if batch.is_empty() {
        return Vec::new();
    }
    let ids: Vec<BlobId> = batch.iter().map(|prepared| prepared.record.payload.id).collect();
    // Durable before any record can point at it (the blob store's contract).
    if let Err(error) = blobs.make_durable(&ids).await {
        let failure = blob_failure(error);
        let _ = blobs.delete(ids).await;
        return batch
            .iter()
            .map(|prepared| {
                let held = stored(&prepared.record);
                Err(InstanceFailure {
                    sop_class_uid: Some(held.sop_class_uid),
                    sop_instance_uid: Some(held.sop_instance_uid),
                    ..failure.clone()
                })
            })
            .collect();
    }
    let mut unused = Vec::new();
    let results = tokio::task::block_in_place(|| {
        batch
            .into_iter()
            .map(|prepared| {
                let payload = prepared.record.payload.id;
                let held = stored(&prepared.record);
                let failure = |reason, message: &str| InstanceFailure {
                    sop_class_uid: Some(held.sop_class_uid.clone()),
                    sop_instance_uid: Some(held.sop_instance_uid.clone()),
                    reason,
                    message: message.to_string(),
                };
                let result = match store.put_instance(
                    prepared.record,
                    &prepared.metadata,
                    prepared.frame_map.as_deref(),
                    prepared.original.as_ref(),
                    limits.policy,
                ) {
                    Ok(PutOutcome::Stored { replaced, .. }) => Ok(StoredInstance { replaced, ..held.clone() }),
                    Ok(PutOutcome::AlreadyStored) => Ok(StoredInstance { already_stored: true, ..held.clone() }),
                    Ok(PutOutcome::Conflict) => Err(failure(
                        FailureReason::DuplicateSopInstance,
                        "a different object is already stored under this SOPInstanceUID",
                    )),
                    Ok(PutOutcome::NotOwner) => Err(failure(
                        FailureReason::NotAuthorized,
                        "the study belongs to another institution, or this SOPInstanceUID is stored in one",
                    )),
                    Err(e) => {
                        tracing::warn!(error = %e, "catalog update failed");
                        Err(failure(FailureReason::ProcessingFailure, "the archive could not store the instance"))
                    }
                };
                if !matches!(result, Ok(StoredInstance { already_stored: false, .. })) {
                    unused.push(payload);
                }
                result
            })
            .collect()
    });
    if !unused.is_empty() {
        // Not referenced by any record: remove them now (a crash here leaves them to the sweep).
        let _ = blobs.delete(unused).await;
    }
    results
}

/// The identity of a newly stored instance.
fn stored(record: &InstanceRecord) -> StoredInstance {
    StoredInstance {
        study_uid: record.study_uid.clone(),
        series_uid: record.series_uid.clone(),
        sop_instance_uid: record.sop_instance_uid.clone(),
        sop_class_uid: record.sop_class_uid.clone(),
        already_stored: false,
        replaced: false,
    }
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
