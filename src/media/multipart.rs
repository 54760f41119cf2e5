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

/// Bytes accepted before the first delimiter (the preamble, RFC 2046 §5.1.1) and after the
/// closing one (the epilogue). Both are ignored; clients send none or a line of text. multer
/// keeps everything before the first delimiter in memory and rescans it on every read, so a
/// body without any delimiter would otherwise grow the server by its whole size.
pub const MAX_PREAMBLE_BYTES: u64 = 64 * 1024;

/// Why a request body stream stopped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyError {
    #[error("request body is larger than the limit of {0} bytes")]
    RequestTooLarge(u64),
    #[error("a part's header block is larger than the limit of {0} bytes")]
    PartHeaderTooLarge(u64),
    #[error(
        "malformed multipart/related body: more than {0} bytes before the first multipart delimiter \
         (is the boundary parameter of the Content-Type the one the body uses?)"
    )]
    PreambleTooLarge(u64),
    #[error("malformed multipart/related body: more than {0} bytes after the closing multipart delimiter")]
    EpilogueTooLarge(u64),
    #[error("reading the request body failed: {0}")]
    Transport(String),
    /// The body is not valid in its Content-Encoding (`media::inflate`).
    #[error("{0}")]
    Coding(String),
    #[error(
        "the decompressed request body is larger than the limit of {0} bytes (--max-request-bytes); \
         send fewer instances per request"
    )]
    InflatedTooLarge(u64),
    #[error(
        "the {coding} request body decompresses to more than {ratio} times the size of its compressed \
         bytes (a deflate bomb guard, --max-inflate-ratio); send this data uncompressed, or ask the \
         administrator to raise the limit"
    )]
    InflateRatio { ratio: u64, coding: &'static str },
}

impl From<std::convert::Infallible> for BodyError {
    fn from(never: std::convert::Infallible) -> BodyError {
        match never {}
    }
}

impl From<String> for BodyError {
    fn from(error: String) -> BodyError {
        BodyError::Transport(error)
    }
}

impl From<std::io::Error> for BodyError {
    fn from(error: std::io::Error) -> BodyError {
        BodyError::Transport(error.to_string())
    }
}

/// Where the guard is in the multipart structure.
#[derive(Debug, Clone, Copy)]
enum Scan {
    /// Before the first delimiter: counting preamble bytes.
    Preamble(u64),
    /// In a part's body: looking for the next delimiter.
    Body,
    /// Past a delimiter: counting header bytes until CRLFCRLF.
    Headers(u64),
}

/// A body stream that enforces the per-request byte limit, the part-header limit and the
/// preamble limit. It follows the multipart structure itself (delimiter, then headers up to
/// CRLFCRLF), so the limits hold however multer buffers.
///
/// It also withholds the closing delimiter until the request body has ended: multer stops
/// reading there, and STOW-RS would acknowledge (and keep) the last part of a request whose
/// Content-Length had not arrived yet, or never would. The last bytes of the stream (as many
/// as the closing delimiter has, less one) are held back until more arrive, so multer never
/// sees a whole closing delimiter before the end of the body; once one is seen, the rest of
/// the body (the epilogue) is read, and the delimiter goes out only when the body is complete.
/// A body that fails or stops early fails the part being read, and nothing of it is stored.
pub struct GuardedBody<S> {
    inner: S,
    /// `--boundary`; `None` for a body without multipart framing.
    delimiter: Option<Vec<u8>>,
    /// `CRLF--boundary--`: the closing delimiter as it follows a part.
    closing: Vec<u8>,
    max_request_bytes: u64,
    max_header_bytes: u64,
    seen: u64,
    scan: Scan,
    /// The unscanned tail of the previous chunk, so that patterns split across chunks match.
    carry: Vec<u8>,
    /// Received, not yet passed on.
    held: Vec<u8>,
    /// Bytes received after the closing delimiter (once it was seen).
    epilogue: Option<u64>,
    failed: bool,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

impl<S> GuardedBody<S> {
    pub fn new(inner: S, boundary: Option<&str>, max_request_bytes: u64, max_header_bytes: u64) -> Self {
        GuardedBody {
            inner,
            delimiter: boundary.map(|b| format!("--{b}").into_bytes()),
            closing: boundary.map(|b| format!("\r\n--{b}--").into_bytes()).unwrap_or_default(),
            max_request_bytes,
            max_header_bytes,
            seen: 0,
            scan: Scan::Preamble(0),
            carry: Vec::new(),
            held: Vec::new(),
            epilogue: None,
            failed: false,
        }
    }

    fn check_headers(&mut self, bytes: &[u8]) -> Result<(), BodyError> {
        let Some(delimiter) = self.delimiter.as_deref() else { return Ok(()) };
        let mut data = std::mem::take(&mut self.carry);
        match &mut self.scan {
            // The carried bytes were counted already; they are counted again below.
            Scan::Headers(counted) | Scan::Preamble(counted) => *counted -= data.len() as u64,
            Scan::Body => {}
        }
        data.extend_from_slice(bytes);
        let mut position = 0;
        loop {
            match self.scan {
                Scan::Preamble(counted) => match find(&data[position..], delimiter) {
                    Some(found) => {
                        if counted + found as u64 > MAX_PREAMBLE_BYTES {
                            return Err(BodyError::PreambleTooLarge(MAX_PREAMBLE_BYTES));
                        }
                        position += found + delimiter.len();
                        self.scan = Scan::Headers(0);
                    }
                    None => {
                        let counted = counted + (data.len() - position) as u64;
                        if counted > MAX_PREAMBLE_BYTES {
                            return Err(BodyError::PreambleTooLarge(MAX_PREAMBLE_BYTES));
                        }
                        self.scan = Scan::Preamble(counted);
                        break;
                    }
                },
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

    /// Takes in a received chunk; returns what may be passed on now.
    fn hold(&mut self, bytes: &[u8]) -> Result<Option<Bytes>, BodyError> {
        if self.delimiter.is_none() {
            return Ok(Some(Bytes::copy_from_slice(bytes)));
        }
        if let Some(epilogue) = &mut self.epilogue {
            *epilogue += bytes.len() as u64;
            if *epilogue > MAX_PREAMBLE_BYTES {
                return Err(BodyError::EpilogueTooLarge(MAX_PREAMBLE_BYTES));
            }
            return Ok(None);
        }
        // Only the held bytes and this chunk can hold a closing delimiter not seen before.
        self.held.extend_from_slice(bytes);
        let release = match find(&self.held, &self.closing) {
            Some(at) => {
                let epilogue = (self.held.len() - at - self.closing.len()) as u64;
                if epilogue > MAX_PREAMBLE_BYTES {
                    return Err(BodyError::EpilogueTooLarge(MAX_PREAMBLE_BYTES));
                }
                self.epilogue = Some(epilogue);
                // Keep the delimiter and the CRLF after it, if it came; drop the epilogue.
                let end = (at + self.closing.len() + 2).min(self.held.len());
                self.held.truncate(end);
                at
            }
            None => self.held.len().saturating_sub(self.closing.len() - 1),
        };
        if release == 0 {
            return Ok(None);
        }
        let rest = self.held.split_off(release);
        Ok(Some(Bytes::from(std::mem::replace(&mut self.held, rest))))
    }
}

impl<S, E> Stream for GuardedBody<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<BodyError>,
{
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.failed {
                return Poll::Ready(None);
            }
            let next = match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(next) => next,
                Poll::Pending => return Poll::Pending,
            };
            let Some(next) = next else {
                // The body is complete: what was held back may go.
                if self.held.is_empty() {
                    return Poll::Ready(None);
                }
                let held = std::mem::take(&mut self.held);
                return Poll::Ready(Some(Ok(Bytes::from(held))));
            };
            let bytes = match next {
                Ok(bytes) => bytes,
                Err(error) => {
                    self.failed = true;
                    return Poll::Ready(Some(Err(error.into())));
                }
            };
            self.seen += bytes.len() as u64;
            let verdict = if self.seen > self.max_request_bytes {
                Err(BodyError::RequestTooLarge(self.max_request_bytes))
            } else if self.epilogue.is_some() {
                Ok(())
            } else {
                self.check_headers(&bytes)
            };
            match verdict.and_then(|()| self.hold(&bytes)) {
                Err(error) => {
                    self.failed = true;
                    return Poll::Ready(Some(Err(error)));
                }
                Ok(Some(release)) => return Poll::Ready(Some(Ok(release))),
                Ok(None) => continue,
            }
        }
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

    async fn collect(chunks: Vec<&'static [u8]>, boundary: &str) -> (Vec<u8>, Option<BodyError>) {
        let chunks: Vec<Result<Bytes, String>> = chunks.into_iter().map(|c| Ok(Bytes::from_static(c))).collect();
        let mut body = GuardedBody::new(futures_util::stream::iter(chunks), Some(boundary), u64::MAX, 512);
        let mut out = Vec::new();
        while let Some(item) = body.next().await {
            match item {
                Ok(bytes) => out.extend_from_slice(&bytes),
                Err(error) => return (out, Some(error)),
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn the_closing_delimiter_waits_for_the_end_of_the_body() {
        let whole: &[u8] = b"--b\r\n\r\npart\r\n--b--\r\nepilogue";
        for split in 1..whole.len() {
            let (head, tail) = whole.split_at(split);
            let head: &'static [u8] = Box::leak(head.to_vec().into_boxed_slice());
            let tail: &'static [u8] = Box::leak(tail.to_vec().into_boxed_slice());
            let (out, error) = collect(vec![head, tail], "b").await;
            assert!(error.is_none());
            let closed: &[u8] = b"--b\r\n\r\npart\r\n--b--";
            assert!(out.starts_with(closed) && out.len() <= closed.len() + 2, "split at {split}: {out:?}");
        }
        // A stream that fails after the closing delimiter never passes the delimiter on.
        let chunks: Vec<Result<Bytes, String>> =
            vec![Ok(Bytes::from_static(b"--b\r\n\r\npart\r\n--b--\r\n")), Err("cut off".into())];
        let mut body = GuardedBody::new(futures_util::stream::iter(chunks), Some("b"), u64::MAX, 512);
        let mut out = Vec::new();
        while let Some(Ok(bytes)) = body.next().await {
            out.extend_from_slice(&bytes);
        }
        assert_eq!(out, b"--b\r\n\r\npart");
    }

    #[tokio::test]
    async fn preamble_and_epilogue_are_capped() {
        let big: &'static [u8] = Box::leak(vec![b'x'; MAX_PREAMBLE_BYTES as usize + 1].into_boxed_slice());
        let (out, error) = collect(vec![b"pre", big, b"--b\r\n\r\n"], "b").await;
        assert!(matches!(error, Some(BodyError::PreambleTooLarge(_))), "{error:?}");
        assert!(out.len() as u64 <= MAX_PREAMBLE_BYTES + 3);
        let (_, error) = collect(vec![b"--b\r\n\r\nx\r\n--b--\r\n", big], "b").await;
        assert!(matches!(error, Some(BodyError::EpilogueTooLarge(_))), "{error:?}");
        let (_, error) = collect(vec![b"a short preamble\r\n--b\r\n\r\nx\r\n--b--"], "b").await;
        assert!(error.is_none());
    }

    #[tokio::test]
    async fn request_limit_trips() {
        let chunks: Vec<Result<Bytes, std::convert::Infallible>> = vec![Ok(Bytes::from(vec![0u8; 600]))];
        let mut body = GuardedBody::new(futures_util::stream::iter(chunks), Some("b"), 500, 512);
        assert!(matches!(body.next().await, Some(Err(BodyError::RequestTooLarge(500)))));
    }
}
