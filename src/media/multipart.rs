//! multipart/related (RFC 2387, PS3.18 §8.6.1.2): reading requests with hard limits, and
//! framing streamed responses.
//!
//! multer only recognises `multipart/form-data`, so the Content-Type is parsed here and multer
//! is handed the boundary. multer buffers a part's header block until CRLFCRLF with no bound
//! of its own, so [`GuardedBody`] bounds it, and the whole request, as bytes arrive.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use super::mime::{MULTIPART_RELATED, MediaType};

/// A multipart/related request's framing parameters.
#[derive(Debug, Clone)]
pub struct Related {
    pub boundary: String,
    /// The `type` parameter: the root part's media type.
    pub root_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("Content-Type is not multipart/related")]
    NotMultipartRelated,
    #[error("multipart/related Content-Type has no boundary parameter")]
    MissingBoundary,
    #[error("multipart boundary must be 1 to 70 characters without trailing space (RFC 2046)")]
    BadBoundary,
}

/// Reads the boundary and root type of a multipart/related Content-Type.
pub fn related(content_type: &MediaType) -> Result<Related, FramingError> {
    if !content_type.is(MULTIPART_RELATED) {
        return Err(FramingError::NotMultipartRelated);
    }
    let boundary = content_type
        .param("boundary")
        .ok_or(FramingError::MissingBoundary)?;
    if boundary.is_empty() || boundary.len() > 70 || boundary.ends_with(' ') {
        return Err(FramingError::BadBoundary);
    }
    Ok(Related {
        boundary: boundary.to_string(),
        root_type: content_type
            .param("type")
            .unwrap_or("")
            .to_ascii_lowercase(),
    })
}

/// Why a request body stream stopped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyError {
    #[error("request body is larger than the limit of {0} bytes")]
    RequestTooLarge(u64),
    #[error("a part's header block is larger than the limit of {0} bytes")]
    PartHeaderTooLarge(u64),
    #[error("reading the request body failed: {0}")]
    Transport(String),
}

/// Shared switch the reader flips while multer looks for the next part's headers.
#[derive(Clone, Default)]
pub struct HeaderPhase(Arc<AtomicBool>);

impl HeaderPhase {
    pub fn set(&self, reading_headers: bool) {
        self.0.store(reading_headers, Ordering::Release);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A body stream that enforces the per-request byte limit and, while [`HeaderPhase`] is set,
/// the part-header limit: bytes yielded before the next CRLFCRLF may not exceed it.
pub struct GuardedBody<S> {
    inner: S,
    max_request_bytes: u64,
    max_header_bytes: u64,
    seen: u64,
    phase: HeaderPhase,
    header_bytes: u64,
    header_done: bool,
    tail: [u8; 3],
    failed: bool,
}

impl<S> GuardedBody<S> {
    pub fn new(
        inner: S,
        max_request_bytes: u64,
        max_header_bytes: u64,
        phase: HeaderPhase,
    ) -> Self {
        GuardedBody {
            inner,
            max_request_bytes,
            max_header_bytes,
            seen: 0,
            phase,
            header_bytes: 0,
            header_done: false,
            tail: [0; 3],
            failed: false,
        }
    }

    fn check_headers(&mut self, bytes: &[u8]) -> Result<(), BodyError> {
        if !self.phase.get() {
            self.header_bytes = 0;
            self.header_done = false;
            self.tail = [0; 3];
            return Ok(());
        }
        if self.header_done {
            return Ok(());
        }
        let mut window: Vec<u8> = self.tail.to_vec();
        window.extend_from_slice(bytes);
        if let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") {
            self.header_bytes += end.saturating_sub(3) as u64;
            self.header_done = true;
        } else {
            self.header_bytes += bytes.len() as u64;
            let n = window.len();
            self.tail.copy_from_slice(&window[n - 3..]);
        }
        if self.header_bytes > self.max_header_bytes {
            return Err(BodyError::PartHeaderTooLarge(self.max_header_bytes));
        }
        Ok(())
    }
}

impl<S, E> Stream for GuardedBody<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let next = match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(next) => next,
            Poll::Pending => return Poll::Pending,
        };
        let Some(next) = next else {
            return Poll::Ready(None);
        };
        let bytes = match next {
            Ok(bytes) => bytes,
            Err(error) => {
                self.failed = true;
                return Poll::Ready(Some(Err(BodyError::Transport(error.to_string()))));
            }
        };
        self.seen += bytes.len() as u64;
        let verdict = if self.seen > self.max_request_bytes {
            Err(BodyError::RequestTooLarge(self.max_request_bytes))
        } else {
            self.check_headers(&bytes)
        };
        if let Err(error) = verdict {
            self.failed = true;
            return Poll::Ready(Some(Err(error)));
        }
        Poll::Ready(Some(Ok(bytes)))
    }
}

/// Generates a boundary for a response.
pub fn new_boundary() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("kura-{nanos:x}")
}

/// The header block that opens one part of a response.
pub fn part_header(
    boundary: &str,
    content_type: &str,
    content_location: Option<&str>,
    length: Option<u64>,
) -> Bytes {
    let mut head = format!("--{boundary}\r\nContent-Type: {content_type}\r\n");
    if let Some(location) = content_location {
        head.push_str(&format!("Content-Location: {location}\r\n"));
    }
    if let Some(length) = length {
        head.push_str(&format!("Content-Length: {length}\r\n"));
    }
    head.push_str("\r\n");
    Bytes::from(head)
}

/// The delimiter that closes a multipart body.
pub fn closing(boundary: &str) -> Bytes {
    Bytes::from(format!("\r\n--{boundary}--\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn header_phase_limit_trips_on_endless_headers() {
        let chunks: Vec<Result<Bytes, std::convert::Infallible>> = (0..100)
            .map(|_| Ok(Bytes::from_static(b"X-Long: aaaaaaaaaaaaaaaaaaaa\r\n")))
            .collect();
        let phase = HeaderPhase::default();
        phase.set(true);
        let mut body = GuardedBody::new(futures_util::stream::iter(chunks), u64::MAX, 512, phase);
        let mut failed = false;
        while let Some(item) = body.next().await {
            if matches!(item, Err(BodyError::PartHeaderTooLarge(512))) {
                failed = true;
            }
        }
        assert!(failed);
    }

    #[tokio::test]
    async fn request_limit_trips() {
        let chunks: Vec<Result<Bytes, std::convert::Infallible>> =
            vec![Ok(Bytes::from(vec![0u8; 600]))];
        let mut body = GuardedBody::new(
            futures_util::stream::iter(chunks),
            500,
            512,
            HeaderPhase::default(),
        );
        assert!(matches!(
            body.next().await,
            Some(Err(BodyError::RequestTooLarge(500)))
        ));
    }
}
