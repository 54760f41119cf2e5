//! Lossless encoding on request (issue 19): WADO-RS instances and frames in JPEG-LS, JPEG XL,
//! JPEG 2000 and HTJ2K, negotiated with q-values; 406 when no acceptable syntax can be made;
//! the cache of encoded frames.

use dicom_core::{DataElement, PrimitiveValue, VR, dicom_value};
use dicom_dictionary_std::tags;
use dicom_object::{OpenFileOptions, file::ReadPreamble};
use dicom_pixeldata::PixelDecoder;

use crate::support::client::{get, split_multipart};
use crate::support::fixtures::{Spec, dataset, instance, part10, put, rle_instance};
use crate::support::server::Server;

const CODECS: [(&str, &str); 4] = [
    ("image/jls", "1.2.840.10008.1.2.4.80"),
    ("image/jxl", "1.2.840.10008.1.2.4.110"),
    ("image/jp2", "1.2.840.10008.1.2.4.90"),
    ("image/jphc", "1.2.840.10008.1.2.4.201"),
];

fn dicom_accept(ts: &str) -> String {
    format!("multipart/related; type=\"application/dicom\"; transfer-syntax={ts}")
}

/// The native frames of an instance as the fixture generated them (Explicit VR LE).
fn native_frames(part10: &[u8]) -> Vec<Vec<u8>> {
    let object = OpenFileOptions::new().read_preamble(ReadPreamble::Always).from_reader(part10).expect("parse");
    let frames = object.element(tags::NUMBER_OF_FRAMES).ok().and_then(|e| e.to_int::<u32>().ok()).unwrap_or(1);
    (0..frames)
        .map(|n| object.decode_pixel_data_frame(n).expect("decode").frame_data(0).expect("frame").to_vec())
        .collect()
}

/// Decodes every frame of a PS3.10 file with dicom-pixeldata (CharLS, jxl-oxide, openjp2).
fn decoded_frames(part10: &[u8]) -> (String, Vec<Vec<u8>>) {
    let object = OpenFileOptions::new().read_preamble(ReadPreamble::Always).from_reader(part10).expect("parse");
    let ts = object.meta().transfer_syntax().trim_end_matches('\0').to_string();
    (ts, native_frames(part10))
}

/// Masks samples to the fixture's 12 stored bits, as every decoder returns them.
fn twelve_bits(frame: &[u8]) -> Vec<u16> {
    frame.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) & 0x0FFF).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_encoded_losslessly_in_every_offered_syntax() {
    let spec = Spec::new(1901, 1, 1).size(64, 48, 3);
    let original = instance(&spec);
    let server = Server::with(std::slice::from_ref(&original)).await;
    let expected: Vec<Vec<u16>> = native_frames(&original).iter().map(|f| twelve_bits(f)).collect();
    for (_, ts) in CODECS {
        let reply = get(&spec.instance_url(&server.base), &dicom_accept(ts)).await;
        assert_eq!(reply.status, 200, "{ts}: {}", reply.text());
        let parts = split_multipart(reply.content_type(), &reply.body);
        assert_eq!(parts.len(), 1);
        assert!(parts[0].0.contains(&format!("transfer-syntax={ts}")), "{ts}: {}", parts[0].0);
        let (file_ts, frames) = decoded_frames(&parts[0].1);
        assert_eq!(file_ts, ts, "the File Meta names the syntax");
        assert!(parts[0].1.len() < original.len(), "{ts}: {} bytes, native {}", parts[0].1.len(), original.len());
        let decoded: Vec<Vec<u16>> = frames.iter().map(|f| twelve_bits(f)).collect();
        assert!(decoded == expected, "{ts} is not pixel-exact");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_are_encoded_in_their_media_types() {
    let spec = Spec::new(1902, 1, 1).size(64, 64, 4);
    let original = instance(&spec);
    let server = Server::with(std::slice::from_ref(&original)).await;
    let url = format!("{}/frames/2,4", spec.instance_url(&server.base));
    for (media_type, ts) in CODECS {
        // The media type alone names its default syntax (Table 8.7.3-5).
        let reply = get(&url, &format!("multipart/related; type=\"{media_type}\"")).await;
        assert_eq!(reply.status, 200, "{media_type}: {}", reply.text());
        assert!(reply.content_type().contains(&format!("type=\"{media_type}\"")), "{}", reply.content_type());
        let parts = split_multipart(reply.content_type(), &reply.body);
        assert_eq!(parts.len(), 2);
        for (headers, body) in &parts {
            assert!(headers.contains(&format!("{media_type}; transfer-syntax={ts}")), "{headers}");
            assert!(!body.is_empty() && body.len() < 64 * 64 * 2, "{media_type}: {} bytes", body.len());
        }
        // The frames are the fragments of the instance encoded whole in the same syntax.
        let whole = get(&spec.instance_url(&server.base), &dicom_accept(ts)).await;
        let file = &split_multipart(whole.content_type(), &whole.body)[0].1;
        let object = OpenFileOptions::new().read_preamble(ReadPreamble::Always).from_reader(file.as_slice()).unwrap();
        let pixel_data = object.element(tags::PIXEL_DATA).unwrap();
        let fragments = pixel_data.fragments().expect("encapsulated").to_vec();
        assert_eq!(fragments.len(), 4);
        for (n, (_, body)) in [1usize, 3].iter().zip(&parts) {
            let mut fragment = fragments[*n].clone();
            if fragment.len() == body.len() + 1 {
                fragment.pop(); // the even-length padding
            }
            assert_eq!(&fragment, body, "{media_type}: frame {}", n + 1);
        }
    }
    // J2K and HTJ2K codestreams are resolution-progressive: COD says RPCL (2).
    for media_type in ["image/jp2", "image/jphc"] {
        let reply = get(&url, &format!("multipart/related; type=\"{media_type}\"")).await;
        let body = &split_multipart(reply.content_type(), &reply.body)[0].1;
        let at = body.windows(2).position(|w| w == [0xFF, 0x52]).expect("COD");
        assert_eq!(body[at + 5], 2, "{media_type}: progression order");
        assert!(body[at + 9] >= 1, "{media_type}: decomposition levels");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q_values_pick_the_syntax_and_ties_go_to_the_smallest() {
    let spec = Spec::new(1903, 1, 1).size(32, 32, 1);
    let server = Server::with(&[instance(&spec)]).await;
    let url = spec.instance_url(&server.base);
    let served = |reply: &crate::support::client::Reply| {
        let parts = split_multipart(reply.content_type(), &reply.body);
        let headers = &parts[0].0;
        headers.split("transfer-syntax=").nth(1).unwrap().split(['\r', ';']).next().unwrap().trim().to_string()
    };
    // The highest q wins, whatever its size.
    let accept = format!(
        "{}; q=0.5, {}; q=0.9, {}; q=0.7",
        dicom_accept("1.2.840.10008.1.2.4.80"),
        dicom_accept("1.2.840.10008.1.2.4.201"),
        dicom_accept("1.2.840.10008.1.2.1")
    );
    assert_eq!(served(&get(&url, &accept).await), "1.2.840.10008.1.2.4.201");
    // Equal q: the smallest lossless syntax (JPEG 2000, JPEG-LS, HTJ2K, JPEG XL), then native.
    let accept = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80"]
        .map(dicom_accept)
        .join(", ");
    assert_eq!(served(&get(&url, &accept).await), "1.2.840.10008.1.2.4.90");
    let accept = format!("{}, {}", dicom_accept("1.2.840.10008.1.2.4.110"), dicom_accept("1.2.840.10008.1.2.4.80"));
    assert_eq!(served(&get(&url, &accept).await), "1.2.840.10008.1.2.4.80");
    // Frames: the same rule over part types.
    let frames = format!("{url}/frames/1");
    let reply = get(&frames, "multipart/related; type=\"image/jphc\", multipart/related; type=\"image/jls\"").await;
    assert!(reply.content_type().contains("image/jls"), "{}", reply.content_type());
    // transfer-syntax=* still serves as stored.
    let reply = get(&url, &dicom_accept("*")).await;
    assert_eq!(served(&reply), "1.2.840.10008.1.2.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decodable_stored_syntax_is_re_encoded() {
    let spec = Spec::new(1904, 1, 1).size(32, 40, 2);
    let stored = rle_instance(&spec);
    let server = Server::with(std::slice::from_ref(&stored)).await;
    let expected: Vec<Vec<u16>> = native_frames(&stored).iter().map(|f| twelve_bits(f)).collect();
    let reply = get(&spec.instance_url(&server.base), &dicom_accept("1.2.840.10008.1.2.4.80")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let (ts, frames) = decoded_frames(&split_multipart(reply.content_type(), &reply.body)[0].1);
    assert_eq!(ts, "1.2.840.10008.1.2.4.80");
    assert!(frames.iter().map(|f| twelve_bits(f)).collect::<Vec<_>>() == expected, "RLE → JPEG-LS is pixel-exact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_producible_syntax_is_406_never_400() {
    // 16-bit samples holding 8 bits: JPEG-LS cannot carry them as stored, JPEG 2000 can.
    let spec = Spec::new(1905, 1, 1).size(16, 16, 1);
    let mut object = dataset(&spec);
    put(&mut object, tags::BITS_STORED, VR::US, dicom_value!(U16, [8]));
    put(&mut object, tags::HIGH_BIT, VR::US, dicom_value!(U16, [7]));
    // A structured report-like object without pixel data goes as Explicit VR LE in a study
    // asked for in a lossless syntax (each part may have its own syntax).
    let spec_no_pixels = Spec::new(1905, 1, 2);
    let mut no_pixels = dataset(&spec_no_pixels);
    no_pixels.remove_element(tags::PIXEL_DATA);
    let server = Server::with(&[part10(object), part10(no_pixels)]).await;
    let url = spec.instance_url(&server.base);
    let reply = get(&format!("{url}/frames/1"), "multipart/related; type=\"image/jls\"").await;
    assert_eq!(reply.status, 406, "{}", reply.text());
    assert!(reply.text().contains("BitsStored 8 in 16-bit samples"), "{}", reply.text());
    let reply = get(&url, &dicom_accept("1.2.840.10008.1.2.4.80")).await;
    assert_eq!(reply.status, 406, "{}", reply.text());
    let reply = get(&format!("{url}/frames/1"), "multipart/related; type=\"image/jp2\"").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // The study: the image in JPEG 2000, the other instance in Explicit VR Little Endian.
    let reply = get(&spec.study_url(&server.base), &dicom_accept("1.2.840.10008.1.2.4.90")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let mut syntaxes: Vec<String> =
        split_multipart(reply.content_type(), &reply.body).iter().map(|(_, body)| decoded_ts(body)).collect();
    syntaxes.sort();
    assert_eq!(syntaxes, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90"]);
    // A 406 falls through to the next acceptable range.
    let accept = format!("{}, {}; q=0.5", dicom_accept("1.2.840.10008.1.2.4.80"), dicom_accept("1.2.840.10008.1.2.1"));
    let reply = get(&url, &accept).await;
    assert_eq!(reply.status, 200);
}

fn decoded_ts(part10: &[u8]) -> String {
    let object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .read_until(tags::PIXEL_DATA)
        .from_reader(part10)
        .expect("parse");
    object.meta().transfer_syntax().trim_end_matches('\0').to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_stored_pixels_are_never_served_as_lossless() {
    use dicom_pixeldata::Transcode;
    let spec = Spec::new(1906, 1, 1).size(16, 16, 1);
    let mut object = dataset(&spec);
    put(&mut object, tags::BITS_ALLOCATED, VR::US, dicom_value!(U16, [8]));
    put(&mut object, tags::BITS_STORED, VR::US, dicom_value!(U16, [8]));
    put(&mut object, tags::HIGH_BIT, VR::US, dicom_value!(U16, [7]));
    object.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(vec![7u8; 256])));
    let bytes = part10(object);
    let mut file =
        OpenFileOptions::new().read_preamble(ReadPreamble::Always).from_reader(bytes.as_slice()).expect("parse");
    file.transcode(&dicom_transfer_syntax_registry::entries::JPEG_BASELINE.erased()).expect("JPEG baseline");
    let mut lossy = Vec::new();
    file.write_all(&mut lossy).expect("write");
    let server = Server::with(&[lossy]).await;
    let url = spec.instance_url(&server.base);
    for (media_type, ts) in CODECS {
        let reply = get(&url, &dicom_accept(ts)).await;
        assert_eq!(reply.status, 406, "{ts}: {}", reply.text());
        assert!(reply.text().contains("stored lossy"), "{}", reply.text());
        let reply = get(&format!("{url}/frames/1"), &format!("multipart/related; type=\"{media_type}\"")).await;
        assert_eq!(reply.status, 406, "{media_type}: {}", reply.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_reader_pays_no_encoding() {
    let spec = Spec::new(1907, 1, 1).size(64, 64, 3);
    let server = Server::with(&[instance(&spec)]).await;
    let url = format!("{}/frames/1,2,3", spec.instance_url(&server.base));
    let accept = "multipart/related; type=\"image/jls\"";
    let first = get(&url, accept).await;
    assert_eq!(first.status, 200);
    let after_first = server.archive.encode_cache_stats();
    assert_eq!((after_first.misses, after_first.hits, after_first.entries), (3, 0, 3));
    let second = get(&url, accept).await;
    let after_second = server.archive.encode_cache_stats();
    assert_eq!((after_second.misses, after_second.hits), (3, 3), "the second reader was served from the cache");
    let bodies = |reply: &crate::support::client::Reply| {
        split_multipart(reply.content_type(), &reply.body).into_iter().map(|(_, b)| b).collect::<Vec<_>>()
    };
    assert_eq!(bodies(&first), bodies(&second));
    // The whole instance reuses the cached frames.
    let whole = get(&spec.instance_url(&server.base), &dicom_accept("1.2.840.10008.1.2.4.80")).await;
    assert_eq!(whole.status, 200);
    assert_eq!(server.archive.encode_cache_stats().misses, 3, "no frame encoded again");
    // Deleting the instance drops its entries.
    let deleted =
        crate::support::client::send(http::Method::DELETE, &spec.instance_url(&server.base), &[], bytes::Bytes::new())
            .await;
    assert!(deleted.status.is_success(), "{}", deleted.status);
    assert_eq!(server.archive.encode_cache_stats().entries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_stays_within_its_budget_and_can_be_disabled() {
    let spec = Spec::new(1908, 1, 1).size(128, 128, 8);
    let server = Server::with_config(&[instance(&spec)], |config| config.archive.encode_cache_bytes = 40_000).await;
    let reply = get(
        &format!("{}/frames/1,2,3,4,5,6,7,8", spec.instance_url(&server.base)),
        "multipart/related; type=\"image/jp2\"",
    )
    .await;
    assert_eq!(reply.status, 200);
    let stats = server.archive.encode_cache_stats();
    assert!(stats.bytes <= 40_000, "{stats:?}");
    assert!(stats.evictions > 0 && stats.entries < 8, "{stats:?}");

    let off = Server::with_config(&[instance(&spec)], |config| config.archive.encode_cache_bytes = 0).await;
    let url = format!("{}/frames/1", spec.instance_url(&off.base));
    for _ in 0..2 {
        assert_eq!(get(&url, "multipart/related; type=\"image/jls\"").await.status, 200);
    }
    assert_eq!(off.archive.encode_cache_stats().entries, 0);
    assert_eq!(off.archive.encode_cache_stats().hits, 0);
}
