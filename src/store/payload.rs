//! Reading a payload back: as a blocking `Read` (for parsing) or as an async stream of
//! chunks (for HTTP bodies), never as one buffer.

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;

use super::{PayloadRef, Store, StoreError};

/// A blocking reader over a payload's chunks.
pub struct PayloadReader {
    store: Arc<dyn Store>,
    payload: u64,
    next_chunk: u32,
    current: Bytes,
}

impl PayloadReader {
    pub fn new(store: Arc<dyn Store>, payload: u64) -> Self {
        PayloadReader {
            store,
            payload,
            next_chunk: 0,
            current: Bytes::new(),
        }
    }
}

impl Read for PayloadReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.current.is_empty() {
            match self
                .store
                .read_chunk(self.payload, self.next_chunk)
                .map_err(std::io::Error::other)?
            {
                Some(chunk) => {
                    self.current = chunk;
                    self.next_chunk += 1;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Chunks read per blocking call when streaming.
const CHUNKS_PER_READ: u32 = 16;

/// Streams a payload's bytes, a few chunks per blocking read. A missing chunk is an error:
/// the record promised `payload.length` bytes.
pub fn stream(
    store: Arc<dyn Store>,
    payload: PayloadRef,
) -> impl Stream<Item = Result<Bytes, StoreError>> + Send {
    let n_chunks = payload.n_chunks();
    futures_util::stream::try_unfold(0u32, move |next| {
        let store = store.clone();
        async move {
            if next >= n_chunks {
                return Ok(None);
            }
            let end = (next + CHUNKS_PER_READ).min(n_chunks);
            let id = payload.id;
            let bytes = tokio::task::spawn_blocking(move || -> Result<Bytes, StoreError> {
                let mut out = Vec::new();
                for index in next..end {
                    let chunk = store.read_chunk(id, index)?.ok_or_else(|| {
                        StoreError::Corrupt(format!("payload {id} lacks chunk {index}"))
                    })?;
                    out.extend_from_slice(&chunk);
                }
                Ok(Bytes::from(out))
            })
            .await
            .map_err(|e| StoreError::Backend(Box::new(e)))??;
            Ok(Some((bytes, end)))
        }
    })
}
