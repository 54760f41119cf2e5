//! Reading a payload back: as a blocking `Read` (for parsing) or as an async stream of
//! chunks (for HTTP bodies), never as one buffer.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;

use super::{PayloadRef, Store, StoreError};

/// A blocking, seekable reader over a payload's chunks.
pub struct PayloadReader {
    store: Arc<dyn Store>,
    payload: PayloadRef,
    position: u64,
    /// The chunk last read, and its index.
    current: Option<(u32, Bytes)>,
}

impl PayloadReader {
    pub fn new(store: Arc<dyn Store>, payload: PayloadRef) -> Self {
        PayloadReader { store, payload, position: 0, current: None }
    }
}

impl Read for PayloadReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.position >= self.payload.length || buf.is_empty() {
            return Ok(0);
        }
        let chunk_size = u64::from(self.payload.chunk_size);
        let index = (self.position / chunk_size) as u32;
        if self.current.as_ref().is_none_or(|(current, _)| *current != index) {
            let chunk = self
                .store
                .read_chunk(self.payload.id, index)
                .map_err(std::io::Error::other)?
                .ok_or_else(|| std::io::Error::other(format!("payload {} lacks chunk {index}", self.payload.id)))?;
            self.current = Some((index, chunk));
        }
        let (_, chunk) = self.current.as_ref().expect("loaded above");
        let offset = (self.position % chunk_size) as usize;
        let available = chunk.len().saturating_sub(offset);
        if available == 0 {
            return Err(std::io::Error::other(format!("payload {} has a short chunk {index}", self.payload.id)));
        }
        let n = buf.len().min(available);
        buf[..n].copy_from_slice(&chunk[offset..offset + n]);
        self.position += n as u64;
        Ok(n)
    }
}

impl Seek for PayloadReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.payload.length.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        self.position = target.ok_or_else(|| std::io::Error::other("seek before the start of the payload"))?;
        Ok(self.position)
    }
}

/// Chunks read per blocking call when streaming.
const CHUNKS_PER_READ: u32 = 16;

/// Streams a payload's bytes, a few chunks per blocking read. A missing chunk is an error:
/// the record promised `payload.length` bytes.
pub fn stream(store: Arc<dyn Store>, payload: PayloadRef) -> impl Stream<Item = Result<Bytes, StoreError>> + Send {
    let length = payload.length;
    stream_range(store, payload, 0, length)
}

/// Streams `length` bytes of a payload from `offset` (clamped to the payload's end).
pub fn stream_range(
    store: Arc<dyn Store>,
    payload: PayloadRef,
    offset: u64,
    length: u64,
) -> impl Stream<Item = Result<Bytes, StoreError>> + Send {
    let end = offset.saturating_add(length).min(payload.length);
    let chunk_size = u64::from(payload.chunk_size);
    futures_util::stream::try_unfold(offset, move |position| {
        let store = store.clone();
        async move {
            if position >= end {
                return Ok(None);
            }
            let first = (position / chunk_size) as u32;
            let last = ((end - 1) / chunk_size) as u32;
            let until = last.min(first + CHUNKS_PER_READ - 1);
            let id = payload.id;
            let bytes = tokio::task::spawn_blocking(move || -> Result<Bytes, StoreError> {
                let mut out = Vec::new();
                for index in first..=until {
                    let chunk = store
                        .read_chunk(id, index)?
                        .ok_or_else(|| StoreError::Corrupt(format!("payload {id} lacks chunk {index}")))?;
                    let chunk_start = u64::from(index) * chunk_size;
                    let from = position.saturating_sub(chunk_start).min(chunk.len() as u64) as usize;
                    let to = (end - chunk_start).min(chunk.len() as u64) as usize;
                    out.extend_from_slice(&chunk[from..to]);
                }
                Ok(Bytes::from(out))
            })
            .await
            .map_err(|e| StoreError::Backend(Box::new(e)))??;
            if bytes.is_empty() {
                return Err(StoreError::Corrupt(format!("payload {id} is shorter than its record")));
            }
            let next = position + bytes.len() as u64;
            Ok(Some((bytes, next)))
        }
    })
}
