//! Content coding of request bodies (RFC 9110 §8.4): a STOW-RS body sent with
//! `Content-Encoding: gzip`, `deflate` or `br` is inflated as it arrives, one bounded chunk at a
//! time, and handed on to the multipart reader, so every limit of an uncoded body applies to
//! the inflated bytes. Nothing here ever holds a whole body, coded or inflated.
//!
//! Two bounds keep a deflate bomb (a small body that inflates to gigabytes) harmless:
//! - an absolute one: the inflated body may not exceed the request limit
//!   (`--max-request-bytes`), and neither may the coded one;
//! - a ratio: inflated bytes over coded bytes consumed so far may not exceed
//!   `--max-inflate-ratio` once more than [`RATIO_FLOOR`] bytes came out. It bounds the work one
//!   coded byte can cause; the absolute cap alone would let 1 MB of brotli (which reaches ratios
//!   of millions) keep the server busy with 8 GiB of zeros.
//!
//! Both answer 413. A body that is not valid in its coding (corrupt, truncated, trailing bytes,
//! a gzip CRC that does not match) answers 400; its part being cut, the instance it carried is
//! not stored.

use std::pin::Pin;
use std::task::{Context, Poll};

use brotli::enc::StandardAlloc;
use brotli::{BrotliDecompressStream, BrotliResult, BrotliState};
use bytes::{Buf, Bytes, BytesMut};
use flate2::{Decompress, FlushDecompress, Status};
use futures_util::Stream;
use http::HeaderMap;
use http::header::CONTENT_ENCODING;

use super::multipart::BodyError;
use crate::memory::MemoryPermit;

/// The request codings accepted, as an `Accept-Encoding` value (RFC 9110 §12.5.3: a server
/// answering 415 for a coding names the ones it accepts there).
pub const ACCEPTED_CODINGS: &str = "gzip, deflate, br, identity";

/// The default of `--max-inflate-ratio`. Real images compress two to ten times with gzip or
/// brotli, a blank one a few hundred times on its pixel data alone, diluted by its header; a
/// body of zeros passes 200:1 within its first 8 KiB. Deflate cannot exceed about 1,032:1, so a
/// cap of 1,000 would never stop a gzip bomb before the absolute cap.
pub const DEFAULT_MAX_INFLATE_RATIO: u64 = 200;

/// Inflated bytes allowed before the ratio is checked: the first bytes of any stream carry its
/// header and tables, and small bodies are harmless whatever their ratio. Below the multipart
/// preamble limit (64 KiB), so a bomb with no multipart framing meets this check first.
pub const RATIO_FLOOR: u64 = 32 * 1024;

/// Largest chunk handed on at once.
const OUT_CHUNK: usize = 64 * 1024;

/// Coded bytes held without progress (a gzip header with long name, comment or extra fields):
/// beyond this the body is refused.
const MAX_PENDING: usize = 256 * 1024;

/// What brotli's decoder may allocate: its ring buffer (at most 16 MiB for the standard
/// window of RFC 7932; large windows are refused) and its tables. Reserved from the memory
/// budget for the request's lifetime.
pub const BROTLI_MEMORY: u64 = 17 * 1024 * 1024;

/// A request's content coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestCoding {
    Identity,
    Gzip,
    /// RFC 9110 §8.4.1.2: the zlib format; raw deflate (which some clients send) is accepted too.
    Deflate,
    Brotli,
}

impl RequestCoding {
    pub fn token(self) -> &'static str {
        match self {
            RequestCoding::Identity => "identity",
            RequestCoding::Gzip => "gzip",
            RequestCoding::Deflate => "deflate",
            RequestCoding::Brotli => "br",
        }
    }
}

/// Why a Content-Encoding cannot be accepted (415).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodingError {
    #[error("Content-Encoding {0:?} is not supported for STOW-RS; send gzip, deflate, br or no Content-Encoding")]
    Unknown(String),
    #[error(
        "Content-Encoding {0:?} applies more than one coding, which is not supported for STOW-RS; \
         send one of gzip, deflate or br"
    )]
    Stacked(String),
}

/// The coding of a request from its Content-Encoding headers (case-insensitive; `identity`
/// entries are no coding; `x-gzip` is gzip, RFC 9110 §8.4.1.3).
pub fn request_coding(headers: &HeaderMap) -> Result<RequestCoding, CodingError> {
    let mut all = Vec::new();
    for value in headers.get_all(CONTENT_ENCODING) {
        let text =
            value.to_str().map_err(|_| CodingError::Unknown(String::from_utf8_lossy(value.as_bytes()).into()))?;
        all.extend(text.split(',').map(|t| t.trim().to_ascii_lowercase()).filter(|t| !t.is_empty()));
    }
    let listed = all.join(", ");
    let mut codings = Vec::new();
    for token in &all {
        let coding = match token.as_str() {
            "identity" => continue,
            "gzip" | "x-gzip" => RequestCoding::Gzip,
            "deflate" => RequestCoding::Deflate,
            "br" => RequestCoding::Brotli,
            _ => return Err(CodingError::Unknown(listed)),
        };
        codings.push(coding);
    }
    match codings.as_slice() {
        [] => Ok(RequestCoding::Identity),
        [one] => Ok(*one),
        _ => Err(CodingError::Stacked(listed)),
    }
}

/// Limits of one inflated body.
#[derive(Debug, Clone, Copy)]
pub struct InflateLimits {
    /// Most bytes, coded or inflated (`--max-request-bytes`).
    pub max_bytes: u64,
    /// Most inflated bytes per coded byte consumed; 0: no ratio check.
    pub max_ratio: u64,
}

/// How one step of a decoder went.
enum Step {
    /// `consumed` coded bytes gave `produced` bytes of output; `ended`: the coded stream is
    /// complete (a gzip member, a zlib/raw deflate stream, a brotli stream).
    Progress { consumed: usize, produced: usize, ended: bool },
}

enum GzipPart {
    Header,
    Body { inflater: Box<Decompress>, crc: crc32fast::Hasher, size: u32 },
    Trailer { crc: u32, size: u32 },
}

enum Decoder {
    /// The format is decided by the first two bytes: a zlib header, or raw deflate.
    Deflate(Option<Box<Decompress>>),
    Gzip(GzipPart),
    Brotli(Box<BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>>),
}

fn corrupt(coding: &str, why: impl std::fmt::Display) -> BodyError {
    BodyError::Coding(format!("the request body is not valid {coding} data: {why}"))
}

/// The length of a complete gzip member header at the start of `data` (RFC 1952 §2.3), or
/// `None` when more bytes are needed.
fn gzip_header(data: &[u8]) -> Result<Option<usize>, BodyError> {
    if data.len() < 10 {
        return Ok(None);
    }
    if data[0] != 0x1f || data[1] != 0x8b {
        return Err(corrupt("gzip", "it does not start with the gzip magic bytes"));
    }
    if data[2] != 8 {
        return Err(corrupt("gzip", format!("compression method {} is not deflate", data[2])));
    }
    let flags = data[3];
    if flags & 0xe0 != 0 {
        return Err(corrupt("gzip", "reserved header flags are set"));
    }
    let mut at = 10;
    if flags & 0x04 != 0 {
        let Some(length) = data.get(at..at + 2) else { return Ok(None) };
        at += 2 + u16::from_le_bytes([length[0], length[1]]) as usize;
        if data.len() < at {
            return Ok(None);
        }
    }
    for flag in [0x08, 0x10] {
        if flags & flag != 0 {
            let Some(end) = data[at..].iter().position(|&b| b == 0) else { return Ok(None) };
            at += end + 1;
        }
    }
    if flags & 0x02 != 0 {
        at += 2;
        if data.len() < at {
            return Ok(None);
        }
    }
    Ok(Some(at))
}

fn deflate_step(inflater: &mut Decompress, coding: &str, input: &[u8], out: &mut [u8]) -> Result<Step, BodyError> {
    let (before_in, before_out) = (inflater.total_in(), inflater.total_out());
    let status = inflater.decompress(input, out, FlushDecompress::None).map_err(|e| corrupt(coding, e))?;
    Ok(Step::Progress {
        consumed: (inflater.total_in() - before_in) as usize,
        produced: (inflater.total_out() - before_out) as usize,
        ended: status == Status::StreamEnd,
    })
}

impl Decoder {
    fn new(coding: RequestCoding) -> Option<Decoder> {
        match coding {
            RequestCoding::Identity => None,
            RequestCoding::Gzip => Some(Decoder::Gzip(GzipPart::Header)),
            RequestCoding::Deflate => Some(Decoder::Deflate(None)),
            RequestCoding::Brotli => {
                let mut state =
                    BrotliState::new(StandardAlloc::default(), StandardAlloc::default(), StandardAlloc::default());
                // Large-window brotli (a 1 GiB window) is not RFC 7932, and not for a request.
                state.large_window = false;
                Some(Decoder::Brotli(Box::new(state)))
            }
        }
    }

    /// Whether a gzip stream may end here (between members).
    fn at_boundary(&self) -> bool {
        matches!(self, Decoder::Gzip(GzipPart::Header))
    }

    /// Decodes from `input` into `out`. No progress means more contiguous input is needed.
    fn step(&mut self, input: &[u8], out: &mut [u8]) -> Result<Step, BodyError> {
        match self {
            Decoder::Deflate(inflater) => {
                let inflater = match inflater {
                    Some(inflater) => inflater,
                    None => {
                        if input.len() < 2 {
                            return Ok(Step::Progress { consumed: 0, produced: 0, ended: false });
                        }
                        // RFC 1950 §2.2: CM 8, and the header's check bits.
                        let zlib = input[0] & 0x0f == 8 && (u16::from(input[0]) << 8 | u16::from(input[1])) % 31 == 0;
                        inflater.insert(Box::new(Decompress::new(zlib)))
                    }
                };
                deflate_step(inflater, "deflate", input, out)
            }
            Decoder::Gzip(part) => match part {
                GzipPart::Header => match gzip_header(input)? {
                    None => Ok(Step::Progress { consumed: 0, produced: 0, ended: false }),
                    Some(length) => {
                        *part = GzipPart::Body {
                            inflater: Box::new(Decompress::new(false)),
                            crc: crc32fast::Hasher::new(),
                            size: 0,
                        };
                        Ok(Step::Progress { consumed: length, produced: 0, ended: false })
                    }
                },
                GzipPart::Body { inflater, crc, size } => {
                    let Step::Progress { consumed, produced, ended } = deflate_step(inflater, "gzip", input, out)?;
                    crc.update(&out[..produced]);
                    *size = size.wrapping_add(produced as u32);
                    if ended {
                        *part = GzipPart::Trailer { crc: crc.clone().finalize(), size: *size };
                    }
                    Ok(Step::Progress { consumed, produced, ended: false })
                }
                GzipPart::Trailer { crc, size } => {
                    if input.len() < 8 {
                        return Ok(Step::Progress { consumed: 0, produced: 0, ended: false });
                    }
                    let stored_crc = u32::from_le_bytes(input[0..4].try_into().expect("4 bytes"));
                    let stored_size = u32::from_le_bytes(input[4..8].try_into().expect("4 bytes"));
                    if stored_crc != *crc || stored_size != *size {
                        return Err(corrupt("gzip", "its CRC-32 or length does not match the data"));
                    }
                    // Another member may follow (RFC 1952 §2.2).
                    *part = GzipPart::Header;
                    Ok(Step::Progress { consumed: 8, produced: 0, ended: true })
                }
            },
            Decoder::Brotli(state) => {
                let (mut available_in, mut input_offset) = (input.len(), 0);
                let (mut available_out, mut output_offset, mut total_out) = (out.len(), 0, 0);
                let result = BrotliDecompressStream(
                    &mut available_in,
                    &mut input_offset,
                    input,
                    &mut available_out,
                    &mut output_offset,
                    out,
                    &mut total_out,
                    state,
                );
                match result {
                    BrotliResult::ResultFailure => Err(corrupt("brotli", "the decoder rejected it")),
                    BrotliResult::ResultSuccess => {
                        Ok(Step::Progress { consumed: input_offset, produced: output_offset, ended: true })
                    }
                    BrotliResult::NeedsMoreInput | BrotliResult::NeedsMoreOutput => {
                        Ok(Step::Progress { consumed: input_offset, produced: output_offset, ended: false })
                    }
                }
            }
        }
    }
}

/// A request body stream, inflated when it has a content coding; the identity coding passes
/// through. Errors are [`BodyError`]s, so the multipart layer can tell a 413 from a 400.
pub struct Inflate<S> {
    inner: S,
    coding: RequestCoding,
    decoder: Option<Decoder>,
    limits: InflateLimits,
    /// Coded bytes received, not yet consumed by the decoder.
    pending: BytesMut,
    /// The coded stream (or its last gzip member) is complete.
    ended: bool,
    received: u64,
    consumed: u64,
    inflated: u64,
    failed: bool,
    /// The decoder's memory, reserved from the budget while the body is read.
    _permit: Option<MemoryPermit>,
}

impl<S> Inflate<S> {
    pub fn new(inner: S, coding: RequestCoding, limits: InflateLimits, permit: Option<MemoryPermit>) -> Self {
        Inflate {
            inner,
            coding,
            decoder: Decoder::new(coding),
            limits,
            pending: BytesMut::new(),
            ended: false,
            received: 0,
            consumed: 0,
            inflated: 0,
            failed: false,
            _permit: permit,
        }
    }

    fn check(&self) -> Result<(), BodyError> {
        if self.inflated > self.limits.max_bytes {
            return Err(BodyError::InflatedTooLarge(self.limits.max_bytes));
        }
        let ratio = self.limits.max_ratio;
        if ratio > 0
            && self.inflated > RATIO_FLOOR
            && u128::from(self.inflated) > u128::from(ratio) * u128::from(self.consumed.max(1))
        {
            return Err(BodyError::InflateRatio { ratio, coding: self.coding.token() });
        }
        Ok(())
    }

    /// Runs the decoder over what is pending: `Some(chunk)` when it produced bytes, `None` when
    /// it needs more input.
    fn decode(&mut self) -> Result<Option<Bytes>, BodyError> {
        let Some(decoder) = self.decoder.as_mut() else { return Ok(None) };
        loop {
            if self.ended {
                if self.pending.is_empty() {
                    return Ok(None);
                }
                if !decoder.at_boundary() {
                    return Err(corrupt(self.coding.token(), "bytes follow the end of the compressed stream"));
                }
                self.ended = false;
            }
            let mut out = vec![0u8; OUT_CHUNK];
            let Step::Progress { consumed, produced, ended } = decoder.step(&self.pending, &mut out)?;
            self.pending.advance(consumed);
            self.consumed += consumed as u64;
            self.ended = ended;
            if produced > 0 {
                self.inflated += produced as u64;
                self.check()?;
                out.truncate(produced);
                return Ok(Some(Bytes::from(out)));
            }
            if consumed == 0 && !ended {
                if self.pending.len() > MAX_PENDING {
                    return Err(corrupt(self.coding.token(), "its header is too long"));
                }
                return Ok(None);
            }
        }
    }
}

impl<S, E> Stream for Inflate<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.failed {
                return Poll::Ready(None);
            }
            match this.decode() {
                Ok(Some(chunk)) => return Poll::Ready(Some(Ok(chunk))),
                Ok(None) => {}
                Err(error) => {
                    this.failed = true;
                    return Poll::Ready(Some(Err(error)));
                }
            }
            let next = match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(next) => next,
            };
            match next {
                None => {
                    this.failed = true; // nothing more comes either way
                    let complete = match &this.decoder {
                        None => true,
                        Some(decoder) => {
                            this.pending.is_empty() && (this.ended || decoder.at_boundary()) && this.consumed > 0
                        }
                    };
                    if complete {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(corrupt(
                        this.coding.token(),
                        "the body ends before the compressed stream does",
                    ))));
                }
                Some(Err(error)) => {
                    this.failed = true;
                    return Poll::Ready(Some(Err(BodyError::Transport(error.to_string()))));
                }
                Some(Ok(bytes)) => {
                    this.received += bytes.len() as u64;
                    if this.received > this.limits.max_bytes {
                        this.failed = true;
                        return Poll::Ready(Some(Err(BodyError::RequestTooLarge(this.limits.max_bytes))));
                    }
                    if this.decoder.is_none() {
                        return Poll::Ready(Some(Ok(bytes)));
                    }
                    this.pending.extend_from_slice(&bytes);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use futures_util::StreamExt;

    use super::*;

    fn limits() -> InflateLimits {
        InflateLimits { max_bytes: 1 << 30, max_ratio: DEFAULT_MAX_INFLATE_RATIO }
    }

    async fn inflate(
        coding: RequestCoding,
        coded: &[u8],
        chunk: usize,
        limits: InflateLimits,
    ) -> Result<Vec<u8>, BodyError> {
        let chunks: Vec<Result<Bytes, std::convert::Infallible>> =
            coded.chunks(chunk.max(1)).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let mut stream = Inflate::new(futures_util::stream::iter(chunks), coding, limits, None);
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            out.extend_from_slice(&item?);
        }
        Ok(out)
    }

    fn sample() -> Vec<u8> {
        (0..300_000u32).map(|i| (i % 251) as u8 ^ (i / 1000) as u8).collect()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder =
            flate2::GzBuilder::new().filename("body.bin").comment("c").write(Vec::new(), flate2::Compression::new(6));
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[tokio::test]
    async fn every_coding_round_trips_in_any_chunking() {
        let data = sample();
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(&data).unwrap();
        let zlib = zlib.finish().unwrap();
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&data).unwrap();
        let raw = raw.finish().unwrap();
        let br = super::super::compress::encode(super::super::compress::Coding::Brotli, &data);
        for chunk in [1, 7, 4096, 1 << 20] {
            assert_eq!(inflate(RequestCoding::Gzip, &gzip(&data), chunk, limits()).await.unwrap(), data);
            assert_eq!(inflate(RequestCoding::Deflate, &zlib, chunk, limits()).await.unwrap(), data);
            assert_eq!(inflate(RequestCoding::Deflate, &raw, chunk, limits()).await.unwrap(), data);
            assert_eq!(inflate(RequestCoding::Brotli, &br, chunk, limits()).await.unwrap(), data);
        }
        // Two gzip members are one body (RFC 1952 §2.2).
        let mut two = gzip(&data[..1000]);
        two.extend(gzip(&data[1000..]));
        assert_eq!(inflate(RequestCoding::Gzip, &two, 333, limits()).await.unwrap(), data);
    }

    #[tokio::test]
    async fn corrupt_truncated_and_trailing_bodies_fail() {
        let data = sample();
        let coded = gzip(&data);
        let truncated = inflate(RequestCoding::Gzip, &coded[..coded.len() - 4], 4096, limits()).await;
        assert!(matches!(truncated, Err(BodyError::Coding(_))), "{truncated:?}");
        let mut flipped = coded.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x55;
        assert!(matches!(inflate(RequestCoding::Gzip, &flipped, 4096, limits()).await, Err(BodyError::Coding(_))));
        let mut trailing = super::super::compress::encode(super::super::compress::Coding::Brotli, &data);
        trailing.extend_from_slice(b"junk");
        assert!(matches!(inflate(RequestCoding::Brotli, &trailing, 4096, limits()).await, Err(BodyError::Coding(_))));
        assert!(matches!(
            inflate(RequestCoding::Gzip, b"not gzip at all", 4, limits()).await,
            Err(BodyError::Coding(_))
        ));
        assert!(matches!(inflate(RequestCoding::Gzip, b"", 4, limits()).await, Err(BodyError::Coding(_))));
    }

    #[tokio::test]
    async fn bombs_stop_at_the_ratio_or_the_size() {
        let zeros = vec![0u8; 8 << 20];
        let coded = gzip(&zeros);
        let ratio = inflate(RequestCoding::Gzip, &coded, 65536, limits()).await;
        assert!(matches!(ratio, Err(BodyError::InflateRatio { ratio: 200, .. })), "{ratio:?}");
        let size =
            inflate(RequestCoding::Gzip, &coded, 65536, InflateLimits { max_bytes: 1 << 20, max_ratio: 0 }).await;
        assert!(matches!(size, Err(BodyError::InflatedTooLarge(_))), "{size:?}");
        let fine =
            inflate(RequestCoding::Gzip, &coded, 65536, InflateLimits { max_bytes: 1 << 30, max_ratio: 0 }).await;
        assert_eq!(fine.unwrap().len(), zeros.len());
    }

    #[test]
    fn content_encoding_headers_parse() {
        let parse = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(CONTENT_ENCODING, value.parse().unwrap());
            }
            request_coding(&headers)
        };
        assert_eq!(parse(&[]), Ok(RequestCoding::Identity));
        assert_eq!(parse(&["identity"]), Ok(RequestCoding::Identity));
        assert_eq!(parse(&["GZIP"]), Ok(RequestCoding::Gzip));
        assert_eq!(parse(&["x-gzip"]), Ok(RequestCoding::Gzip));
        assert_eq!(parse(&["br"]), Ok(RequestCoding::Brotli));
        assert_eq!(parse(&["deflate"]), Ok(RequestCoding::Deflate));
        assert!(matches!(parse(&["zstd"]), Err(CodingError::Unknown(_))));
        assert!(matches!(parse(&["gzip, br"]), Err(CodingError::Stacked(_))));
        assert!(matches!(parse(&["gzip", "gzip"]), Err(CodingError::Stacked(_))));
    }
}
