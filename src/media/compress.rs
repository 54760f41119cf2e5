//! Content coding of responses, buffered or streamed (RFC 9110 §8.4, §12.5.3): brotli or gzip when the client
//! accepts it. DICOM JSON compresses about tenfold, which matters most on the slow links remote
//! readers sit behind.

use std::io::Write;

use http::HeaderMap;
use http::header::ACCEPT_ENCODING;

/// Bodies smaller than this go as they are: the coding would not pay for its header.
const MIN_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Brotli,
    Gzip,
}

impl Coding {
    pub fn token(self) -> &'static str {
        match self {
            Coding::Brotli => "br",
            Coding::Gzip => "gzip",
        }
    }
}

/// The coding to use for a body of `length` bytes: brotli, then gzip, among those the request's
/// Accept-Encoding gives a non-zero q (`*` included); `None` for identity.
pub fn negotiate(headers: &HeaderMap, length: usize) -> Option<Coding> {
    if length < MIN_BYTES {
        return None;
    }
    let mut weights: Vec<(String, f32)> = Vec::new();
    for value in headers.get_all(ACCEPT_ENCODING) {
        let Ok(text) = value.to_str() else { continue };
        for item in text.split(',') {
            let mut pieces = item.split(';');
            let token = pieces.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = pieces
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if !token.is_empty() {
                weights.push((token, q));
            }
        }
    }
    let weight = |token: &str| {
        weights
            .iter()
            .find(|(t, _)| t == token)
            .or_else(|| weights.iter().find(|(t, _)| t == "*"))
            .map_or(0.0, |(_, q)| *q)
    };
    // Highest q wins; on a tie brotli, listed first, stays.
    let mut best = (None, 0.0);
    for coding in [Coding::Brotli, Coding::Gzip] {
        let q = weight(coding.token());
        if q > best.1 {
            best = (Some(coding), q);
        }
    }
    best.0
}

/// `body` in `coding`. Brotli quality 5 and gzip level 6 are the usual web defaults: about
/// 100 MB/s here, so a 1,000-instance series' metadata (~4 MB) costs a few tens of ms.
pub fn encode(coding: Coding, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() / 8 + 64);
    match coding {
        Coding::Brotli => {
            let params = brotli::enc::BrotliEncoderParams { quality: 5, lgwin: 22, ..Default::default() };
            brotli::BrotliCompress(&mut &body[..], &mut out, &params).expect("writing to memory");
        }
        Coding::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::new(6));
            encoder.write_all(body).expect("writing to memory");
            out = encoder.finish().expect("writing to memory");
        }
    }
    out
}

/// A body in `coding`, encoded piece by piece as it is streamed: each piece gives back what the
/// encoder has produced so far (possibly nothing), [`StreamEncoder::finish`] the rest.
pub enum StreamEncoder {
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
}

/// Brotli's window when streaming: 1 MiB, which spans several instances' metadata (most of what
/// brotli finds to share) at a quarter of the buffered coder's memory.
const STREAM_LGWIN: u32 = 20;

impl StreamEncoder {
    pub fn new(coding: Coding) -> StreamEncoder {
        match coding {
            Coding::Brotli => {
                StreamEncoder::Brotli(Box::new(brotli::CompressorWriter::new(Vec::new(), 64 * 1024, 5, STREAM_LGWIN)))
            }
            Coding::Gzip => StreamEncoder::Gzip(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6))),
        }
    }

    /// What an encoder of `coding` holds at most: brotli's window, hash tables and buffers at
    /// quality 5 (measured below 6 MiB), or deflate's 32 KiB window and tables.
    pub fn memory(coding: Coding) -> u64 {
        match coding {
            Coding::Brotli => 8 * 1024 * 1024,
            Coding::Gzip => 1024 * 1024,
        }
    }

    pub fn push(&mut self, piece: &[u8]) -> Vec<u8> {
        match self {
            StreamEncoder::Brotli(writer) => {
                writer.write_all(piece).expect("writing to memory");
                std::mem::take(writer.get_mut())
            }
            StreamEncoder::Gzip(writer) => {
                writer.write_all(piece).expect("writing to memory");
                std::mem::take(writer.get_mut())
            }
        }
    }

    pub fn finish(self) -> Vec<u8> {
        match self {
            StreamEncoder::Brotli(writer) => writer.into_inner(),
            StreamEncoder::Gzip(writer) => writer.finish().expect("writing to memory"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(accept_encoding: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT_ENCODING, accept_encoding.parse().unwrap());
        headers
    }

    #[test]
    fn prefers_brotli_then_gzip_by_q() {
        assert_eq!(negotiate(&with("gzip, deflate, br"), 4096), Some(Coding::Brotli));
        assert_eq!(negotiate(&with("gzip;q=1.0, br;q=0.5"), 4096), Some(Coding::Gzip));
        assert_eq!(negotiate(&with("gzip"), 4096), Some(Coding::Gzip));
        assert_eq!(negotiate(&with("br;q=0, gzip;q=0"), 4096), None);
        assert_eq!(negotiate(&with("*"), 4096), Some(Coding::Brotli));
        assert_eq!(negotiate(&with("identity"), 4096), None);
        assert_eq!(negotiate(&with("gzip"), 100), None, "small bodies go as they are");
        assert_eq!(negotiate(&HeaderMap::new(), 4096), None);
    }

    #[test]
    fn codings_round_trip() {
        use std::io::Read;
        let body = br#"{"00100010":{"vr":"PN","Value":[{"Alphabetic":"Doe^Jane"}]}}"#.repeat(100);
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(encode(Coding::Gzip, &body).as_slice()).read_to_end(&mut plain).unwrap();
        assert_eq!(plain, body);
        let mut plain = Vec::new();
        brotli::Decompressor::new(encode(Coding::Brotli, &body).as_slice(), 4096).read_to_end(&mut plain).unwrap();
        assert_eq!(plain, body);
        for coding in [Coding::Brotli, Coding::Gzip] {
            let mut encoder = StreamEncoder::new(coding);
            let mut encoded: Vec<u8> = body.chunks(1000).flat_map(|piece| encoder.push(piece)).collect();
            encoded.extend(encoder.finish());
            let mut plain = Vec::new();
            match coding {
                Coding::Brotli => brotli::Decompressor::new(encoded.as_slice(), 4096).read_to_end(&mut plain),
                Coding::Gzip => flate2::read::GzDecoder::new(encoded.as_slice()).read_to_end(&mut plain),
            }
            .unwrap();
            assert_eq!(plain, body, "{coding:?}");
        }
    }
}
