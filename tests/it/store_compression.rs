//! Storage compression (issue 19 item 4, `--store-compression`): instances with native pixel
//! data stored losslessly re-encoded, the received bytes given back byte for byte, and every
//! other answer the same as from a server that stores instances as received.

use std::path::PathBuf;

use dicom_dictionary_std::tags;
use dicom_object::{OpenFileOptions, file::ReadPreamble};
use dicom_pixeldata::PixelDecoder;
use http::StatusCode;
use kura::dicom::encode::Codec;
use sha2::{Digest, Sha256};

use crate::support::client::{get, split_multipart, stow};
use crate::support::fixtures::{Spec, as_stored, dataset, instance, part10, put};
use crate::support::server::{ChildServer, Server};
use crate::support::stored_blobs;

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const JPEG_LS: &str = "1.2.840.10008.1.2.4.80";

/// pydicom's test files folder (tests/run installs pydicom for the interop suite).
fn pydicom_file(name: &str) -> Vec<u8> {
    let output = std::process::Command::new("python3")
        .args(["-c", "import pathlib, pydicom; print(pathlib.Path(pydicom.__file__).parent / 'data' / 'test_files')"])
        .output()
        .expect("python3");
    assert!(output.status.success(), "pydicom must be installed (tests/interop/requirements.txt)");
    let folder = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    std::fs::read(folder.join(name)).expect("a pydicom test file")
}

fn uids(part10: &[u8]) -> (String, String, String) {
    let object = OpenFileOptions::new().read_preamble(ReadPreamble::Always).from_reader(part10).expect("parse");
    let text = |tag| object.element(tag).unwrap().to_str().unwrap().trim_end_matches('\0').to_string();
    (text(tags::STUDY_INSTANCE_UID), text(tags::SERIES_INSTANCE_UID), text(tags::SOP_INSTANCE_UID))
}

fn instance_url(base: &str, part10: &[u8]) -> String {
    let (study, series, sop) = uids(part10);
    format!("{base}/studies/{study}/series/{series}/instances/{sop}")
}

/// Every frame, decoded with dicom-pixeldata (CharLS for JPEG-LS).
fn decoded(part10: &[u8]) -> (String, Vec<Vec<u8>>) {
    let object = OpenFileOptions::new().read_preamble(ReadPreamble::Always).from_reader(part10).expect("parse");
    let ts = object.meta().transfer_syntax().trim_end_matches('\0').to_string();
    let frames = object.element(tags::NUMBER_OF_FRAMES).ok().and_then(|e| e.to_int::<u32>().ok()).unwrap_or(1);
    let frames = (0..frames)
        .map(|n| object.decode_pixel_data_frame(n).expect("decode").frame_data(0).expect("frame").to_vec())
        .collect();
    (ts, frames)
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn stored_bytes(server: &Server) -> u64 {
    stored_blobs(&server.data_dir()).iter().map(|(_, bytes)| bytes.len() as u64).sum()
}

/// Real and generated images: 12 bits in 16 with three frames, a 16-bit signed CT, an MR, RGB
/// and palette colour of 8 bits, and an RGB image of an odd number of bytes (Pixel Data padded).
fn corpus() -> Vec<(&'static str, Vec<u8>, bool)> {
    vec![
        ("multi-frame 12-bit", instance(&Spec::new(1940, 1, 1).size(64, 48, 3)), true),
        ("512x512 12-bit", instance(&Spec::new(1940, 1, 2).size(512, 512, 1)), true),
        ("CT_small (signed)", pydicom_file("CT_small.dcm"), true),
        ("MR_small", pydicom_file("MR_small.dcm"), true),
        ("examples_rgb_color", pydicom_file("examples_rgb_color.dcm"), true),
        ("examples_palette", pydicom_file("examples_palette.dcm"), true),
        // 27 bytes of pixels: a JPEG-LS codestream is larger, so it stays as received.
        ("SC_rgb_small_odd", pydicom_file("SC_rgb_small_odd.dcm"), false),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_stored_smaller_and_given_back_byte_for_byte() {
    let corpus = corpus();
    let parts: Vec<Vec<u8>> = corpus.iter().map(|(_, bytes, _)| bytes.clone()).collect();
    let plain = Server::with(&parts).await;
    let packed = Server::with_config(&parts, |config| config.archive.store_compression = Some(Codec::JpegLs)).await;
    let (plain_bytes, packed_bytes) = (stored_bytes(&plain), stored_bytes(&packed));
    assert!(packed_bytes * 10 < plain_bytes * 8, "stored {packed_bytes} bytes re-encoded, {plain_bytes} as received");

    for (name, original, compressible) in &corpus {
        let url = instance_url(&packed.base, original);
        let expected = as_stored(original);
        // The received bytes: by default, and with the original transfer syntax named.
        for accept in ["application/dicom", &format!("application/dicom; transfer-syntax={EXPLICIT_LE}")] {
            let reply = get(&url, accept).await;
            assert_eq!(reply.status, StatusCode::OK, "{name}: {}", reply.text());
            assert_eq!(reply.content_type(), format!("application/dicom; transfer-syntax={EXPLICIT_LE}"), "{name}");
            assert_eq!(sha256(&reply.body), sha256(&expected), "{name}: {accept} is not the received file");
        }
        let from_plain = get(&instance_url(&plain.base, original), "application/dicom").await;
        assert_eq!(from_plain.body, get(&url, "application/dicom").await.body, "{name}: as a plain server");

        // The stored form, labelled with its real syntax, decodes to the received pixels.
        let stored = get(&url, "application/dicom; transfer-syntax=*").await;
        assert_eq!(stored.status, StatusCode::OK);
        let label = if *compressible { JPEG_LS } else { EXPLICIT_LE };
        assert_eq!(stored.content_type(), format!("application/dicom; transfer-syntax={label}"), "{name}");
        if *compressible {
            assert!(stored.body.len() < original.len(), "{name}: {} bytes stored", stored.body.len());
            let (ts, frames) = decoded(&stored.body);
            let (_, received) = decoded(original);
            assert_eq!(ts, JPEG_LS);
            assert!(frames == received, "{name}: the stored form is not pixel-exact");
        } else {
            assert_eq!(stored.body.as_ref(), expected.as_slice(), "{name}");
        }

        // Frames: native by default, as a plain server gives them; JPEG-LS as stored.
        let frames_plain = get(
            &format!("{}/frames/1", instance_url(&plain.base, original)),
            "multipart/related; type=\"application/octet-stream\"",
        )
        .await;
        let frames_packed =
            get(&format!("{url}/frames/1"), "multipart/related; type=\"application/octet-stream\"").await;
        assert_eq!(frames_packed.status, StatusCode::OK, "{name}: {}", frames_packed.text());
        let plain_parts = split_multipart(frames_plain.content_type(), &frames_plain.body);
        let packed_parts = split_multipart(frames_packed.content_type(), &frames_packed.body);
        assert_eq!(packed_parts[0].1, plain_parts[0].1, "{name}: frame 1 differs from the received one");
        // A wildcard that does not ask for the stored form gets them native too (dicomweb-client's
        // default is `type="*/*"`).
        for accept in ["*/*", "multipart/related; type=\"*/*\""] {
            let reply = get(&format!("{url}/frames/1"), accept).await;
            assert_eq!(reply.status, StatusCode::OK, "{name} {accept}: {}", reply.text());
            let parts = split_multipart(reply.content_type(), &reply.body);
            assert_eq!(parts[0].1, plain_parts[0].1, "{name} {accept}: native frame 1");
        }
        if *compressible {
            let misses = packed.archive.encode_cache_stats().misses;
            let jls = get(&format!("{url}/frames/1"), "multipart/related; type=\"image/jls\"").await;
            assert_eq!(jls.status, StatusCode::OK, "{name}: {}", jls.text());
            let parts = split_multipart(jls.content_type(), &jls.body);
            assert!(parts[0].0.contains(&format!("transfer-syntax={JPEG_LS}")), "{}", parts[0].0);
            assert!(parts[0].1.starts_with(&[0xFF, 0xD8]), "{name}: a JPEG-LS codestream");
            assert_eq!(packed.archive.encode_cache_stats().misses, misses, "{name}: served as stored, not encoded");
        }

        // Metadata, bulk data and rendered images: as from a plain server.
        let metadata = |server: &Server| {
            let base = server.base.clone();
            let url = format!("{}/metadata", instance_url(&server.base, original));
            async move { get(&url, "application/dicom+json").await.text().replace(&base, "BASE") }
        };
        assert_eq!(metadata(&packed).await, metadata(&plain).await, "{name}: metadata");
        let pixel_bulk = |server: &Server| {
            let url = format!("{}/bulkdata/7FE00010", instance_url(&server.base, original));
            async move { get(&url, "application/octet-stream").await }
        };
        let (bulk_packed, bulk_plain) = (pixel_bulk(&packed).await, pixel_bulk(&plain).await);
        assert_eq!(bulk_packed.status, StatusCode::OK, "{name}: {}", bulk_packed.text());
        assert_eq!(bulk_packed.body, bulk_plain.body, "{name}: Pixel Data bulk data");
        let rendered = |server: &Server| {
            let url = format!("{}/frames/1/rendered", instance_url(&server.base, original));
            async move { get(&url, "image/png").await }
        };
        let (rendered_packed, rendered_plain) = (rendered(&packed).await, rendered(&plain).await);
        // Kura does not render palette colour (406 from either server).
        let renders = *name != "examples_palette";
        assert_eq!(rendered_plain.status == StatusCode::OK, renders, "{name}: {}", rendered_plain.text());
        assert_eq!(rendered_packed.status, rendered_plain.status, "{name}: {}", rendered_packed.text());
        assert_eq!(rendered_packed.body, rendered_plain.body, "{name}: rendered");
    }
    let qido = |server: &Server| {
        let (base, url) = (server.base.clone(), format!("{}/instances?includefield=all", server.base));
        async move { get(&url, "application/dicom+json").await.text().replace(&base, "BASE") }
    };
    assert_eq!(qido(&packed).await, qido(&plain).await, "QIDO-RS");
}

/// Bits above Bits Stored are not part of a sample's value (PS3.5 §8.1.1) and no codec keeps
/// them: an instance that has some set is stored as received, and given back exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bits_above_bits_stored_keep_an_instance_as_received() {
    let spec = Spec::new(1941, 1, 1).size(64, 64, 1);
    let mut object = dataset(&spec);
    let mut pixels: Vec<u16> = object.element(tags::PIXEL_DATA).unwrap().to_multi_int::<u16>().unwrap();
    pixels[100] |= 0xA000;
    put(&mut object, tags::PIXEL_DATA, dicom_core::VR::OW, dicom_core::PrimitiveValue::U16(pixels.into()));
    let original = part10(object);
    let server = Server::with_config(std::slice::from_ref(&original), |config| {
        config.archive.store_compression = Some(Codec::JpegLs)
    })
    .await;
    let blobs = stored_blobs(&server.data_dir());
    assert_eq!(blobs.len(), 1);
    assert_eq!(blobs[0].1, as_stored(&original), "stored as received");
    let reply = get(&spec.instance_url(&server.base), "application/dicom; transfer-syntax=*").await;
    assert_eq!(reply.content_type(), format!("application/dicom; transfer-syntax={EXPLICIT_LE}"));
    assert_eq!(reply.body.as_ref(), as_stored(&original).as_slice());
}

/// Duplicate detection compares the received bytes: the same instance sent again is already
/// stored (whether the first copy was re-encoded or not); another object under its UID is a
/// conflict; the re-encoded instance survives a restart, still given back byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_sent_instance_is_recognised_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let spec = Spec::new(1942, 1, 1).size(256, 256, 2);
    let original = instance(&spec);
    let server = ChildServer::start_with(&data, &["--store-compression", "jpeg-ls"]);
    assert_eq!(stow(&server.base, None, std::slice::from_ref(&original)).await.status, StatusCode::OK);
    let blobs = stored_blobs(&data);
    assert_eq!(blobs.len(), 1);
    assert!(blobs[0].1.len() < original.len(), "stored re-encoded");
    let again = stow(&server.base, None, std::slice::from_ref(&original)).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    assert_eq!(stored_blobs(&data), blobs, "nothing stored anew");
    let mut other = dataset(&spec);
    put(&mut other, tags::STUDY_DESCRIPTION, dicom_core::VR::LO, "another object");
    let conflict = stow(&server.base, None, &[part10(other)]).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT, "{}", conflict.text());
    server.kill();

    // After a power-cut-like stop, and with the switch off: the same bytes, recognised again.
    let server = ChildServer::start(&data);
    let reply = get(&spec.instance_url(&server.base), "application/dicom").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.as_ref(), as_stored(&original).as_slice());
    let again = stow(&server.base, None, std::slice::from_ref(&original)).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    assert_eq!(stored_blobs(&data), blobs, "recognised by its received bytes with the switch off");
    server.terminate();
}

/// JPEG XL (jxl-oxide decodes what zune-jpegxl wrote): stored smaller, labelled .110, and the
/// received file given back byte for byte, native frames included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jpeg_xl_stores_smaller_and_gives_back_the_received_bytes() {
    const JPEG_XL: &str = "1.2.840.10008.1.2.4.110";
    let corpus = [
        instance(&Spec::new(1943, 1, 1).size(64, 48, 3)),
        pydicom_file("CT_small.dcm"),
        pydicom_file("examples_rgb_color.dcm"),
    ];
    let packed = Server::with_config(&corpus, |config| config.archive.store_compression = Some(Codec::JpegXl)).await;
    for original in &corpus {
        let url = instance_url(&packed.base, original);
        let received = get(&url, "application/dicom").await;
        assert_eq!(received.body.as_ref(), as_stored(original).as_slice());
        let stored = get(&url, "application/dicom; transfer-syntax=*").await;
        assert_eq!(stored.content_type(), format!("application/dicom; transfer-syntax={JPEG_XL}"));
        assert!(stored.body.len() < original.len());
        let (_, frames) = decoded(&stored.body);
        let (_, expected) = decoded(original);
        assert!(frames == expected, "the JPEG XL form is not pixel-exact");
        let frame = get(&format!("{url}/frames/1"), "multipart/related; type=\"application/octet-stream\"").await;
        let parts = split_multipart(frame.content_type(), &frame.body);
        assert_eq!(parts[0].1, expected[0], "native frame 1 as received");
    }
}
