//! STOW-RS request framing: the Content-Type parameters (`media::mime`, `media::multipart::related`),
//! the body guard (`GuardedBody`: request, preamble, header and epilogue limits) and multer reading
//! the parts, put together as `dicomweb::stow` does.
//!
//! Input: the Content-Type header value up to the first `\n`, then one byte choosing the chunk
//! size the body arrives in, then the body.
#![no_main]

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt, stream};
use kura::media::mime::MediaType;
use kura::media::multipart::{self, GuardedBody};
use libfuzzer_sys::fuzz_target;

/// Small limits, so that the fuzzer reaches them.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
const MAX_PART_HEADER_BYTES: u64 = 1024;
const MAX_PARTS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some(newline) = data.iter().position(|b| *b == b'\n') else { return };
    let Ok(header) = std::str::from_utf8(&data[..newline]) else { return };
    let Some(content_type) = MediaType::parse(header) else { return };
    let Ok(related) = multipart::related(&content_type) else { return };
    let rest = &data[newline + 1..];
    let Some((chunk, body)) = rest.split_first() else { return };
    let chunk = usize::from(*chunk % 64) + 1;
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        body.chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let guarded = GuardedBody::new(
        stream::iter(chunks),
        Some(related.boundary.as_str()),
        MAX_REQUEST_BYTES,
        MAX_PART_HEADER_BYTES,
    );
    let constraints = multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(MAX_REQUEST_BYTES));
    let mut parts = multer::Multipart::with_constraints(guarded, related.boundary.clone(), constraints);
    // Every stream here is always ready, so each future completes on its first poll.
    let read = async {
        let mut total = 0usize;
        for _ in 0..MAX_PARTS {
            let mut field = match parts.next_field().await {
                Ok(Some(field)) => field,
                Ok(None) | Err(_) => break,
            };
            let _ = field.content_type();
            let _ = field.headers().get("content-location");
            while let Some(chunk) = field.next().await {
                match chunk {
                    Ok(bytes) => total += bytes.len(),
                    Err(_) => return total,
                }
            }
        }
        total
    };
    if let Some(total) = read.now_or_never() {
        assert!(total as u64 <= MAX_REQUEST_BYTES);
    }
});
