//! STOW-RS bodies with a content coding (issue 19): gzip, deflate and brotli bodies are stored
//! byte-exact; deflate bombs are answered 413 with nothing stored and the server's memory
//! unmoved; corrupt or truncated coded bodies are 400 with the cut part not stored; unknown and
//! stacked codings are 415 with the accepted codings in Accept-Encoding.

use std::io::Write;

use dicom_core::{PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use http::{Method, StatusCode};

use crate::support::*;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let params = brotli::enc::BrotliEncoderParams { quality: 5, lgwin: 22, ..Default::default() };
    brotli::BrotliCompress(&mut &data[..], &mut out, &params).unwrap();
    out
}

async fn stow_coded(base: &str, coding: &str, body: Vec<u8>) -> Reply {
    let content_type = stow_content_type();
    send(
        Method::POST,
        &format!("{base}/studies"),
        &[("content-type", &content_type), ("content-encoding", coding), ("accept", "application/dicom+json")],
        body,
    )
    .await
}

/// Peak resident memory of a process, in KiB (`VmHWM` in /proc/PID/status).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the server process is alive");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_deflate_and_brotli_bodies_are_stored_byte_exact() {
    let server = Server::start().await;
    for (n, coding) in ["gzip", "deflate", "br", "x-gzip"].into_iter().enumerate() {
        let specs: Vec<Spec> = (1..=3).map(|i| Spec::new(1900 + n as u32, 1, i).size(64, 64, 2)).collect();
        let originals: Vec<Vec<u8>> = specs.iter().map(instance).collect();
        let plain = multipart(&originals);
        let coded = match coding {
            "deflate" => zlib(&plain),
            "br" => brotli(&plain),
            _ => gzip(&plain),
        };
        assert!(coded.len() < plain.len(), "{coding} makes the body smaller");
        let reply = stow_coded(&server.base, coding, coded).await;
        assert_eq!(reply.status, StatusCode::OK, "{coding}: {}", reply.text());
        assert_eq!(referenced_sops(&reply.json()).len(), 3, "{coding}");
        assert_eq!(reply.header("accept-encoding"), Some("gzip, deflate, br, identity"));
        for (spec, original) in specs.iter().zip(&originals) {
            let single = get(&spec.instance_url(&server.base), "application/dicom; transfer-syntax=*").await;
            assert_eq!(single.status, StatusCode::OK);
            assert_eq!(single.body.as_ref(), as_stored(original).as_slice(), "{coding}: stored byte-exact");
        }
    }
    // A single instance sent as application/dicom, gzip-coded.
    let spec = Spec::new(1910, 1, 1);
    let original = instance(&spec);
    let reply = send(
        Method::POST,
        &format!("{}/studies", server.base),
        &[("content-type", "application/dicom"), ("content-encoding", "gzip")],
        gzip(&original),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let single = get(&spec.instance_url(&server.base), "application/dicom; transfer-syntax=*").await;
    assert_eq!(single.body.as_ref(), as_stored(&original).as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_stacked_codings_are_415_naming_the_accepted_ones() {
    let server = Server::start().await;
    let spec = Spec::new(1920, 1, 1);
    let body = multipart(&[instance(&spec)]);
    for coding in ["zstd", "compress", "gzip, br", "br, gzip"] {
        let coded = if coding.starts_with("gzip") { brotli(&gzip(&body)) } else { body.clone() };
        let reply = stow_coded(&server.base, coding, coded).await;
        assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{coding}");
        assert_eq!(reply.header("accept-encoding"), Some("gzip, deflate, br, identity"), "{coding}");
        let message = reply.json()["message"].as_str().unwrap().to_string();
        assert!(message.contains("gzip") && message.contains("br"), "{coding}: {message}");
    }
    assert!(qido(&server.base, &format!("/studies?StudyInstanceUID={}", spec.study_uid())).await.is_empty());
}

/// A coded body cut short or corrupted: 400; instances whose parts ended before the damage are
/// stored (and listed in the response, PS3.18 §10.5.3), the part being read is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_corrupt_coded_bodies_are_400_and_the_cut_part_is_not_stored() {
    let server = Server::start().await;
    for (n, damage) in ["truncated", "flipped"].into_iter().enumerate() {
        let first = Spec::new(1930 + n as u32, 1, 1);
        let second = Spec::new(1930 + n as u32, 1, 2).size(256, 256, 4);
        let originals = [instance(&first), instance(&second)];
        let plain = multipart(&originals);
        // The first part, the next delimiter and the second part's header block go in one
        // sync-flushed piece, so that the damage after it falls in the second instance.
        let second_start = plain.windows(4).rposition(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        encoder.write_all(&plain[..second_start]).unwrap();
        encoder.flush().unwrap();
        let flushed = encoder.get_ref().len();
        encoder.write_all(&plain[second_start..]).unwrap();
        let mut coded = encoder.finish().unwrap();
        let middle = flushed + (coded.len() - flushed) / 2;
        match damage {
            "truncated" => coded.truncate(middle),
            _ => coded[middle..middle + 8].iter_mut().for_each(|b| *b ^= 0xA5),
        }
        let reply = stow_coded(&server.base, "gzip", coded).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{damage}: {}", reply.text());
        assert!(reply.warnings().contains("gzip"), "{damage}: {}", reply.warnings());
        assert_eq!(referenced_sops(&reply.json()), vec![first.sop_uid()], "{damage}");
        let stored = get(&first.instance_url(&server.base), "application/dicom; transfer-syntax=*").await;
        assert_eq!(stored.body.as_ref(), as_stored(&originals[0]).as_slice(), "{damage}");
        assert_eq!(get(&second.instance_url(&server.base), "application/dicom").await.status, StatusCode::NOT_FOUND);
        let instances = qido(&server.base, &format!("/studies/{}/instances", first.study_uid())).await;
        assert_eq!(instances.len(), 1, "{damage}: only the first instance");
    }
}

/// A gzip body of 1 GiB of zeros (about 1 MB on the wire), with and without multipart framing
/// before the zeros, and a brotli one: 413 with a message naming the guard, nothing stored,
/// the server's peak RSS not grown by the inflated size, and it serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deflate_bombs_are_413_store_nothing_and_cost_no_memory() {
    let data = tempfile::tempdir().unwrap();
    let server = ChildServer::start(data.path());
    let good = Spec::new(1940, 1, 1);
    assert_eq!(stow(&server.base, None, &[instance(&good)]).await.status, StatusCode::OK);
    let before = peak_rss_kib(server.child.id());

    let victim = Spec::new(1941, 1, 1);
    let zeros = vec![0u8; 1 << 20];
    let bomb = |prefix: &[u8], gib_fraction: usize| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(prefix).unwrap();
        for _ in 0..gib_fraction {
            encoder.write_all(&zeros).unwrap();
        }
        encoder.finish().unwrap()
    };
    // Framing and a real instance's bytes first, then the zeros inside the same part.
    let mut framed = format!("--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").into_bytes();
    framed.extend_from_slice(&instance(&victim));
    let bombs = [
        ("framed gzip", "gzip", bomb(&framed, 1024)),
        ("bare gzip", "gzip", bomb(b"", 1024)),
        ("brotli", "br", {
            let mut plain = framed.clone();
            plain.resize(plain.len() + (64 << 20), 0);
            brotli(&plain)
        }),
    ];
    for (name, coding, body) in bombs {
        eprintln!("{name}: {} bytes on the wire", body.len());
        assert!(body.len() < 2 << 20, "{name} is small on the wire");
        let reply = stow_coded(&server.base, coding, body).await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{name}: {}", reply.text());
        let message = reply.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains("--max-inflate-ratio") && message.contains("200 times"), "{name}: {message}");
    }
    assert!(qido(&server.base, &format!("/studies?StudyInstanceUID={}", victim.study_uid())).await.is_empty());
    assert_eq!(get(&victim.instance_url(&server.base), "application/dicom").await.status, StatusCode::NOT_FOUND);
    let studies = qido(&server.base, &format!("/studies?StudyInstanceUID={}", good.study_uid())).await;
    assert_eq!(studies.len(), 1, "the server serves on");
    let after = peak_rss_kib(server.child.id());
    eprintln!("peak RSS of the server: {before} KiB before the bombs, {after} KiB after");
    assert!(after < before + 64 * 1024, "peak RSS grew from {before} KiB to {after} KiB");
}

/// With the ratio check off, the inflated body is still held to --max-request-bytes (413), and
/// a body under both bounds, if highly compressible, is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inflated_body_is_held_to_the_request_limit_and_the_ratio_is_a_flag() {
    let data = tempfile::tempdir().unwrap();
    let server = ChildServer::start_with(data.path(), &["--max-inflate-ratio", "0", "--max-request-bytes", "4194304"]);
    let spec = Spec::new(1950, 1, 1);
    let mut framed = format!("--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").into_bytes();
    framed.extend_from_slice(&instance(&spec));
    framed.resize(framed.len() + (16 << 20), 0);
    let reply = stow_coded(&server.base, "gzip", gzip(&framed)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", reply.text());
    let message = reply.json()["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("decompressed") && message.contains("--max-request-bytes"), "{message}");
    assert!(qido(&server.base, &format!("/studies?StudyInstanceUID={}", spec.study_uid())).await.is_empty());

    // A blank 2 MiB image inflates far beyond 200:1; with the ratio check off it is stored.
    let blank = Spec::new(1951, 1, 1).size(1024, 1024, 1);
    let mut object = dataset(&blank);
    put(&mut object, tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(vec![0u16; 1024 * 1024].into()));
    let original = part10(object);
    let coded = gzip(&multipart(std::slice::from_ref(&original)));
    let reply = stow_coded(&server.base, "gzip", coded).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let stored = get(&blank.instance_url(&server.base), "application/dicom; transfer-syntax=*").await;
    assert_eq!(stored.body.as_ref(), as_stored(&original).as_slice());
}
