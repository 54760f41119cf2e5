//! multipart/related (RFC 2387, PS3.18 §8.6.1.2): reading requests with hard limits, and
//! framing streamed responses.
//!
//! multer only recognises `multipart/form-data`, so the Content-Type is parsed here and multer
//! is handed the boundary. multer buffers a part's header block until CRLFCRLF with no bound
//! of its own, so [`GuardedBody`] bounds it, and the whole request, as bytes arrive.

use std::pin::Pin;
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
    let boundary = content_type.param("boundary").ok_or(FramingError::MissingBoundary)?;
    if boundary.is_empty() || boundary.len() > 70 || boundary.ends_with(' ') {
        return Err(FramingError::BadBoundary);
    }
    Ok(Related {
        boundary: boundary.to_string(),
        root_type: content_type.param("type").unwrap_or("").to_ascii_lowercase(),
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

/// Where the guard is in the multipart structure.
#[derive(Debug, Clone, Copy)]
enum Scan {
    /// In a part's body (or the preamble): looking for the next delimiter.
    Body,
    /// Past a delimiter: counting header bytes until CRLFCRLF.
    Headers(u64),
}

/// A body stream that enforces the per-request byte limit and the part-header limit. It
/// follows the multipart structure itself (delimiter, then headers up to CRLFCRLF), so the
/// header limit holds however multer buffers.
pub struct GuardedBody<S> {
    inner: S,
    /// `--boundary`; `None` for a body without multipart framing.
    delimiter: Option<Vec<u8>>,
    max_request_bytes: u64,
    max_header_bytes: u64,
    seen: u64,
    scan: Scan,
    /// The unscanned tail of the previous chunk, so that patterns split across chunks match.
    carry: Vec<u8>,
    failed: bool,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

impl<S> GuardedBody<S> {
    pub fn new(inner: S, boundary: Option<&str>, max_request_bytes: u64, max_header_bytes: u64) -> Self {
        GuardedBody {
            inner,
            delimiter: boundary.map(|b| format!("--{b}").into_bytes()),
            max_request_bytes,
            max_header_bytes,
            seen: 0,
            scan: Scan::Body,
            carry: Vec::new(),
            failed: false,
        }
    }

    fn check_headers(&mut self, bytes: &[u8]) -> Result<(), BodyError> {
        let Some(delimiter) = self.delimiter.as_deref() else { return Ok(()) };
        let mut data = std::mem::take(&mut self.carry);
        if let Scan::Headers(counted) = &mut self.scan {
            // The carried bytes were counted already; they are counted again below.
            *counted -= data.len() as u64;
        }
        data.extend_from_slice(bytes);
        let mut position = 0;
        loop {
            match self.scan {
                Scan::Body => match find(&data[position..], delimiter) {
                    Some(found) => {
                        position += found + delimiter.len();
                        self.scan = Scan::Headers(0);
                    }
                    None => break,
                },
                Scan::Headers(counted) => match find(&data[position..], b"\r\n\r\n") {
                    Some(found) => {
                        if counted + found as u64 > self.max_header_bytes {
                            return Err(BodyError::PartHeaderTooLarge(self.max_header_bytes));
                        }
                        position += found + 4;
                        self.scan = Scan::Body;
                    }
                    None => {
                        let counted = counted + (data.len() - position) as u64;
                        if counted > self.max_header_bytes {
                            return Err(BodyError::PartHeaderTooLarge(self.max_header_bytes));
                        }
                        self.scan = Scan::Headers(counted);
                        break;
                    }
                },
            }
        }
        let keep = delimiter.len() + 4;
        let from = position.max(data.len().saturating_sub(keep));
        self.carry = data[from..].to_vec();
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
        let Some(next) = next else { return Poll::Ready(None) };
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
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("kura-{nanos:x}")
}

/// The header block that opens one part of a response.
pub fn part_header(boundary: &str, content_type: &str, content_location: Option<&str>, length: Option<u64>) -> Bytes {
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
    async fn header_limit_trips_on_endless_headers() {
        let mut chunks: Vec<Result<Bytes, std::convert::Infallible>> = vec![Ok(Bytes::from_static(b"--b\r\n"))];
        chunks.extend((0..100).map(|_| Ok(Bytes::from_static(b"X-Long: aaaaaaaaaaaaaaaaaaaa\r\n"))));
        let mut body = GuardedBody::new(futures_util::stream::iter(chunks), Some("b"), u64::MAX, 512);
        let mut failed = false;
        while let Some(item) = body.next().await {
            if matches!(item, Err(BodyError::PartHeaderTooLarge(512))) {
                failed = true;
            }
        }
        assert!(failed);
    }

    #[tokio::test]
    async fn large_bodies_with_small_headers_pass_in_any_chunking() {
        let mut body = b"--b\r\nContent-Type: application/dicom\r\n\r\n".to_vec();
        body.extend(std::iter::repeat_n(7u8, 200_000));
        body.extend_from_slice(b"\r\n--b\r\nContent-Type: application/dicom\r\n\r\n");
        body.extend(std::iter::repeat_n(8u8, 200_000));
        body.extend_from_slice(b"\r\n--b--\r\n");
        for chunk_size in [1, 7, 4096, 65536, 500_000] {
            let chunks: Vec<Result<Bytes, std::convert::Infallible>> =
                body.chunks(chunk_size).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            let mut guarded = GuardedBody::new(futures_util::stream::iter(chunks), Some("b"), u64::MAX, 64);
            while let Some(item) = guarded.next().await {
                assert!(item.is_ok(), "chunk size {chunk_size}");
            }
        }
    }

    #[tokio::test]
    async fn request_limit_trips() {
        let chunks: Vec<Result<Bytes, std::convert::Infallible>> = vec![Ok(Bytes::from(vec![0u8; 600]))];
        let mut body = GuardedBody::new(futures_util::stream::iter(chunks), Some("b"), 500, 512);
        assert!(matches!(body.next().await, Some(Err(BodyError::RequestTooLarge(500)))));
    }
}
