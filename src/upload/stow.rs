//! The client's side of the Store transaction (PS3.18 §10.5): a batch of instances framed as
//! `multipart/related; type="application/dicom"` (§10.5.1.4, §8.6.1.2), the body coded with
//! gzip or br (`Content-Encoding`, §10.5.1.2 Table 10.5.1-2), and what the Store Instances
//! Response (Annex I, Table I.1-1) says was stored and what failed.

use std::io::Write;

use bytes::Bytes;
use serde_json::Value;

use super::prepare::Prepared;

/// A content coding for request bodies. Measured on 512×512 16-bit CT (benches/README.md,
/// "Uploading over a slow link"): see [`Coding::DEFAULT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Coding {
    /// gzip (RFC 1952), level 6.
    Gzip,
    /// Brotli (RFC 7932), quality 5, 4 MiB window.
    Br,
}

impl Coding {
    pub const DEFAULT: Coding = Coding::Br;

    /// The level used unless `--compression-level` says otherwise.
    pub fn default_level(self) -> u32 {
        match self {
            Coding::Gzip => 6,
            Coding::Br => 5,
        }
    }

    pub fn token(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Br => "br",
        }
    }
}

/// A request body ready to send (and to send again on a retry).
#[derive(Debug, Clone)]
pub struct StowBody {
    pub bytes: Bytes,
    pub content_type: String,
    pub coding: Option<Coding>,
    /// Bytes before the content coding.
    pub raw_len: u64,
}

/// Frames `instances` as one multipart/related body and codes it.
pub fn build_body(instances: &[Prepared], coding: Option<(Coding, u32)>) -> std::io::Result<StowBody> {
    // 128 random bits: a DICOM file holding the delimiter by chance is not a practical concern.
    let boundary = format!("kura-upload-{:016x}{:016x}", getrandom::u64().unwrap_or(1), getrandom::u64().unwrap_or(2));
    let content_type = format!("multipart/related; type=\"application/dicom\"; boundary={boundary}");
    let mut raw_len = 0u64;
    let mut write_parts = |out: &mut dyn Write| -> std::io::Result<()> {
        let mut out = Counting { inner: out, count: 0 };
        for instance in instances {
            write!(out, "--{boundary}\r\nContent-Type: application/dicom\r\n\r\n")?;
            out.write_all(&instance.bytes)?;
            out.write_all(b"\r\n")?;
        }
        write!(out, "--{boundary}--\r\n")?;
        raw_len = out.count;
        Ok(())
    };
    let bytes = match coding {
        None => {
            let total: usize = instances.iter().map(|i| i.bytes.len() + 128).sum();
            let mut out = Vec::with_capacity(total);
            write_parts(&mut out)?;
            out
        }
        Some((Coding::Gzip, level)) => {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level.min(9)));
            write_parts(&mut encoder)?;
            encoder.finish()?
        }
        Some((Coding::Br, level)) => {
            let mut encoder = brotli::CompressorWriter::new(Vec::new(), 64 * 1024, level.min(11), 22);
            write_parts(&mut encoder)?;
            encoder.flush()?;
            encoder.into_inner()
        }
    };
    Ok(StowBody { bytes: Bytes::from(bytes), content_type, coding: coding.map(|(coding, _)| coding), raw_len })
}

/// A writer that counts what passes through it.
struct Counting<'a> {
    inner: &'a mut dyn Write,
    count: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What a Store Instances Response reports, by SOP Instance UID.
#[derive(Debug, Default)]
pub struct StoreOutcome {
    /// Referenced SOP Sequence (0008,1199): stored (with or without a warning).
    pub stored: Vec<String>,
    /// Failed SOP Sequence (0008,1198): (SOP Instance UID, Failure Reason (0008,1197) as text).
    pub failed: Vec<(String, String)>,
    /// Other Failures Sequence (0008,119A): failures not tied to an instance.
    pub other_failures: Vec<String>,
}

/// Parses a Store Instances Response in DICOM JSON (PS3.18 Annex F).
pub fn parse_response(body: &[u8]) -> Result<StoreOutcome, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("the response is not DICOM JSON: {e}"))?;
    let items = |tag: &str| -> Vec<Value> {
        value.get(tag).and_then(|e| e.get("Value")).and_then(Value::as_array).cloned().unwrap_or_default()
    };
    let string = |item: &Value, tag: &str| -> Option<String> {
        item.get(tag)?.get("Value")?.get(0)?.as_str().map(str::to_string)
    };
    let reason = |item: &Value| -> String {
        match item.get("00081197").and_then(|e| e.get("Value")).and_then(|v| v.get(0)).and_then(Value::as_u64) {
            Some(code) => failure_reason_text(code),
            None => "failed, no Failure Reason given".into(),
        }
    };
    let mut outcome = StoreOutcome::default();
    for item in items("00081199") {
        if let Some(uid) = string(&item, "00081155") {
            outcome.stored.push(uid);
        }
    }
    for item in items("00081198") {
        if let Some(uid) = string(&item, "00081155") {
            outcome.failed.push((uid, reason(&item)));
        }
    }
    for item in items("0008119A") {
        outcome.other_failures.push(reason(&item));
    }
    Ok(outcome)
}

/// A Failure Reason code (PS3.18 Table I.2-2; PS3.4 Annex B for the C-STORE codes) as text.
pub fn failure_reason_text(code: u64) -> String {
    let meaning = match code {
        0x0110 => "processing failure",
        0x0111 => "duplicate SOP Instance (different bytes under a stored UID)",
        0x0122 => "SOP Class not supported",
        0x0124 => "not authorized",
        0xC122 => "transfer syntax not supported",
        0xA700..=0xA7FF => "refused: out of resources",
        0xA900..=0xA9FF => "data set does not match SOP Class",
        0xC000..=0xCFFF => "cannot understand",
        _ => "failure",
    };
    format!("{code:04X} {meaning}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_sequences_are_read() {
        let body = br#"{"00081199":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.2.3"]}}]},
            "00081198":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.2.4"]},"00081197":{"vr":"US","Value":[273]}}]}}"#;
        let outcome = parse_response(body).unwrap();
        assert_eq!(outcome.stored, ["1.2.3"]);
        assert_eq!(
            outcome.failed,
            [("1.2.4".to_string(), "0111 duplicate SOP Instance (different bytes under a stored UID)".to_string())]
        );
    }

    #[test]
    fn bodies_inflate_back_to_the_multipart_framing() {
        use std::io::Read;
        let instance =
            Prepared { sop_uid: "1".into(), study_uid: "2".into(), bytes: vec![7u8; 5000], original_size: 5000 };
        let plain = build_body(std::slice::from_ref(&instance), None).unwrap();
        let gzip = build_body(std::slice::from_ref(&instance), Some((Coding::Gzip, 6))).unwrap();
        let mut inflated = Vec::new();
        flate2::read::GzDecoder::new(&gzip.bytes[..]).read_to_end(&mut inflated).unwrap();
        let boundary = gzip.content_type.rsplit("boundary=").next().unwrap();
        assert!(inflated.starts_with(format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes()));
        assert!(inflated.ends_with(format!("\r\n--{boundary}--\r\n").as_bytes()));
        assert_eq!(inflated.len(), plain.bytes.len());
        assert_eq!(gzip.raw_len, plain.bytes.len() as u64);
        assert!(gzip.bytes.len() < 200, "5000 equal bytes deflate");
        let br = build_body(std::slice::from_ref(&instance), Some((Coding::Br, 5))).unwrap();
        let mut inflated = Vec::new();
        brotli::Decompressor::new(&br.bytes[..], 4096).read_to_end(&mut inflated).unwrap();
        assert_eq!(inflated.len(), plain.bytes.len());
    }
}
