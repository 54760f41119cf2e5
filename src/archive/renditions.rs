//! Rendered images kept for the next reader, and the ones made at store time.
//!
//! A slow link makes the first image and the study list the readers' main wait (issue #19): so
//! every rendered image (`…/rendered`, `…/thumbnail`, WADO-URI's JPEG) is kept in the derived
//! store (`blob::derived`) under the instance version, the frame and the rendering options, and
//! a second request for it decodes nothing. After an instance is stored, a background task makes
//! the two renditions a viewer asks for first, so that even the first reader finds them ready:
//! - the **thumbnail** of its middle frame with the default thumbnail options (a series'
//!   thumbnail is its middle instance's, a study's is its first series');
//! - the **preview** of every frame (up to [`PREVIEW_MAX_FRAMES`]): [`PREVIEW_SIZE`] pixels on
//!   the longer side at JPEG quality [`PREVIEW_QUALITY`], what
//!   `…/series/{uid}/rendered?viewport=256,256&quality=60` asks for, so a reader scrolls a whole
//!   series at preview quality after one request per series, long before the lossless bytes
//!   have crossed the link.
//!
//! The store path does not wait for any of this: instances are queued after they are recorded
//! (a full queue drops the work; the first request then renders and keeps the image), and the
//! task renders under the same codec permits and memory budget as requests, a few frames at a
//! time, so requests wait for at most one small job.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use bytes::Bytes;

use super::Archive;
use crate::blob::derived::DerivedKey;
use crate::dicom::render::{ImageFormat, RenderOptions, Viewport};
use crate::error::Error;
use crate::model::records::InstanceRecord;

/// The longer side of a thumbnail unless the request says otherwise (PS3.18 §10.4.1.1.4 leaves
/// it to the server).
pub const THUMBNAIL_SIZE: u32 = 128;
/// The JPEG quality of a rendered image unless the request says otherwise.
pub const DEFAULT_QUALITY: u8 = 90;
/// The JPEG quality of a thumbnail: a study list shows twenty of them at once over a slow link
/// (about 2.5 KB each at 128 pixels, against 4 KB at quality 90).
pub const THUMBNAIL_QUALITY: u8 = 75;
/// The longer side of a preview frame.
pub const PREVIEW_SIZE: u32 = 256;
/// Previews are for scrolling over a slow link: about 6 KB per CT slice at this quality.
pub const PREVIEW_QUALITY: u8 = 60;
/// Frames of one instance previewed at store time (an enhanced multi-frame object can hold
/// thousands; the rest are rendered when asked for).
pub const PREVIEW_MAX_FRAMES: u32 = 512;
/// Instances waiting for their renditions; beyond it, work is dropped, not queued.
pub(super) const QUEUE_LENGTH: usize = 4096;
/// Frames rendered per background job: small, so a request never waits long for a permit.
const FRAMES_PER_JOB: usize = 4;

/// The options of a thumbnail with no `viewport`.
pub fn thumbnail_options() -> RenderOptions {
    let viewport = Viewport { width: THUMBNAIL_SIZE, height: THUMBNAIL_SIZE, sx: 0, sy: 0, sw: None, sh: None };
    RenderOptions { format: ImageFormat::Jpeg, quality: THUMBNAIL_QUALITY, viewport: Some(viewport), window: None }
}

/// The options of a preview frame.
pub fn preview_options() -> RenderOptions {
    let viewport = Viewport { width: PREVIEW_SIZE, height: PREVIEW_SIZE, sx: 0, sy: 0, sw: None, sh: None };
    RenderOptions { format: ImageFormat::Jpeg, quality: PREVIEW_QUALITY, viewport: Some(viewport), window: None }
}

fn key(record: &InstanceRecord, frame: u32, options: &RenderOptions) -> DerivedKey {
    DerivedKey {
        sop_uid: record.sop_instance_uid.clone(),
        version: record.seq,
        // Debug output of the options is canonical: the same options always print the same.
        variant: format!("rendered/{frame}/{options:?}"),
    }
}

/// The work queue between the store path and the background task.
pub(super) struct Queue {
    pub(super) sender: tokio::sync::mpsc::Sender<String>,
    pub(super) receiver: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<String>>>,
    /// Instances queued or being rendered.
    pending: std::sync::atomic::AtomicUsize,
}

impl Queue {
    pub(super) fn new() -> Queue {
        let (sender, receiver) = tokio::sync::mpsc::channel(QUEUE_LENGTH);
        Queue { sender, receiver: std::sync::Mutex::new(Some(receiver)), pending: 0.into() }
    }
}

impl Archive {
    /// The given frames (0-based) of an instance rendered as consumer images, holding their
    /// share of the memory budget; kept ones come from the derived store, the others are
    /// rendered in one codec job and kept.
    pub async fn rendered_frames(
        &self,
        record: &InstanceRecord,
        frames: Vec<u32>,
        options: RenderOptions,
    ) -> Result<Vec<Bytes>, Error> {
        let mut images: Vec<Option<Bytes>> =
            frames.iter().map(|frame| self.derived.get(&key(record, *frame, &options))).collect();
        let missing: Vec<u32> =
            frames.iter().zip(&images).filter(|(_, image)| image.is_none()).map(|(frame, _)| *frame).collect();
        if missing.is_empty() {
            return Ok(images.into_iter().flatten().collect());
        }
        let rendered = self.render(record, missing.clone(), options.clone()).await?;
        let derived = self.derived.clone();
        let (kept_record, kept_options, kept) = (record.clone(), options, rendered.clone());
        // Writing them is file work: off the async workers, and not on the answer's path.
        tokio::task::spawn_blocking(move || {
            for (frame, image) in missing.iter().zip(&kept) {
                derived.put(&key(&kept_record, *frame, &kept_options), image);
            }
        });
        let mut rendered = rendered.into_iter();
        for image in images.iter_mut().filter(|image| image.is_none()) {
            *image = rendered.next();
        }
        Ok(images.into_iter().flatten().collect())
    }

    /// Renders frames without looking at the derived store.
    async fn render(
        &self,
        record: &InstanceRecord,
        frames: Vec<u32>,
        options: RenderOptions,
    ) -> Result<Vec<Bytes>, Error> {
        let reader = self.blobs.reader(record.payload.id)?;
        let estimate = super::costs::render(record, frames.len(), &options);
        let (images, permit) =
            self.run_codec(estimate, move || crate::dicom::render::render_frames(reader, &frames, &options)).await?;
        Ok(crate::memory::attach_all(permit, images))
    }

    /// What the derived store holds and how often it spared a reader the rendering.
    pub fn rendition_stats(&self) -> crate::blob::derived::DerivedStats {
        self.derived.stats()
    }

    /// Queues a stored instance for its store-time renditions (dropped when the queue is full).
    pub(super) fn queue_renditions(&self, sop_uid: &str) {
        if !self.precompute_renditions {
            return;
        }
        self.renditions.pending.fetch_add(1, Ordering::SeqCst);
        if self.renditions.sender.try_send(sop_uid.to_string()).is_err() {
            self.renditions.pending.fetch_sub(1, Ordering::SeqCst);
            tracing::debug!("the rendition queue is full; the first request will render instead");
        }
    }

    /// Stored instances whose store-time renditions are not made yet.
    pub fn renditions_pending(&self) -> usize {
        self.renditions.pending.load(Ordering::SeqCst)
    }

    /// Starts the task that makes store-time renditions. Call once, after the archive is shared.
    pub fn start_background_work(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let Some(mut receiver) = self.renditions.receiver.lock().expect("queue").take() else { return };
        let archive: Weak<Archive> = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(sop_uid) = receiver.recv().await {
                let Some(archive) = archive.upgrade() else { break };
                if let Err(error) = archive.make_renditions(&sop_uid).await {
                    tracing::debug!(%error, "store-time renditions skipped");
                }
                archive.renditions.pending.fetch_sub(1, Ordering::SeqCst);
            }
        });
    }

    async fn make_renditions(&self, sop_uid: &str) -> Result<(), Error> {
        let Some(record) = self.store.instance(sop_uid)? else { return Ok(()) };
        let Some(layout) = &record.pixel_data else { return Ok(()) };
        // The same check as every pixel resource's: Image Pixel attributes that contradict Pixel
        // Data are refused there (406), so nothing is rendered for them here either.
        let Ok(description) = crate::dicom::pixels::describe(|tag| record.number(tag), layout) else {
            return Ok(());
        };
        let frames = description.frames;
        self.rendered_frames(&record, vec![frames / 2], thumbnail_options()).await?;
        let previewed: Vec<u32> = (0..frames.min(PREVIEW_MAX_FRAMES)).collect();
        for batch in previewed.chunks(FRAMES_PER_JOB) {
            self.rendered_frames(&record, batch.to_vec(), preview_options()).await?;
        }
        Ok(())
    }
}
