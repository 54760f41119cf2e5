//! WADO-RS requirements (PS3.18 §10.4, §8.7) that tests/it/wado.rs does not already show, and
//! metadata, frames and bulk data, and the resources Kura does not serve yet: rendered, thumbnail.

use dicom_dictionary_std::uids;
use http::StatusCode;

use crate::support::*;

const DICOM_MULTIPART: &str = "multipart/related; type=\"application/dicom\"";
const EXPLICIT_LE_PART: &str = "Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n";

/// One Explicit VR Little Endian instance and one Implicit VR Little Endian instance (another
/// study), stored.
async fn archive() -> (Server, Spec, Vec<u8>, Spec, Vec<u8>) {
    let explicit_spec = Spec::new(301, 1, 1);
    let explicit = instance(&explicit_spec);
    let implicit_spec = Spec::new(302, 1, 1);
    let implicit = part10_in(dataset(&implicit_spec), uids::IMPLICIT_VR_LITTLE_ENDIAN);
    let server = Server::with(&[explicit.clone(), implicit.clone()]).await;
    (server, explicit_spec, explicit, implicit_spec, implicit)
}

fn parts_of(reply: &Reply) -> Vec<(String, Vec<u8>)> {
    assert!(reply.content_type().starts_with(DICOM_MULTIPART), "{}", reply.content_type());
    split_multipart(reply.content_type(), &reply.body)
}

/// PS3.18 §10.4.4 (2025a): single-part application/dicom only for the Instance resource, with
/// Kura's Content-Disposition: attachment; for a study or series it is ignored, and with nothing
/// else acceptable the answer is 406.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_005_single_part_only_for_the_instance_resource() {
    let (server, spec, original, _, _) = archive().await;
    let reply = get(&spec.instance_url(&server.base), "application/dicom").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type(), "application/dicom; transfer-syntax=1.2.840.10008.1.2.1");
    assert_eq!(reply.header("content-disposition"), Some("attachment"));
    assert_eq!(reply.header("content-location"), Some(spec.instance_url(&server.base).as_str()));
    assert_eq!(reply.header("content-length"), Some(original.len().to_string().as_str()));
    assert_eq!(reply.body.as_ref(), as_stored(&original).as_slice());
    for url in [spec.series_url(&server.base), spec.study_url(&server.base)] {
        assert_eq!(get(&url, "application/dicom").await.status, StatusCode::NOT_ACCEPTABLE, "{url}");
    }
}

/// PS3.18 §8.7.3.5.2: the transfer-syntax parameter, with `*` (as stored) and the stored
/// syntax's UID. Kura does not compress, so a compressed syntax it does not hold is 406
/// (§8.7.8.1 step 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_006_transfer_syntax_star_or_the_stored_one() {
    let (server, spec, original, _, _) = archive().await;
    let url = spec.study_url(&server.base);
    for accept in [DICOM_ANY_TS, "multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.1"] {
        let reply = get(&url, accept).await;
        assert_eq!(reply.status, StatusCode::OK, "{accept}");
        assert_eq!(reply.header("content-location"), Some(url.as_str()));
        let parts = parts_of(&reply);
        assert_eq!(parts.len(), 1);
        assert!(parts[0].0.contains(EXPLICIT_LE_PART));
        assert!(parts[0].0.contains(&format!("Content-Location: {}\r\n", spec.instance_url(&server.base))));
        assert_eq!(parts[0].1, as_stored(&original));
    }
    let jpeg = "multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.4.50";
    let reply = get(&url, jpeg).await;
    assert_eq!(reply.status, StatusCode::NOT_ACCEPTABLE);
    assert!(reply.json()["message"].as_str().unwrap().contains("transfer-syntax=*"));
}

/// Reads a served PS3.10 file and the original, and checks the served one is Explicit VR Little
/// Endian with the same pixel data and patient name.
fn assert_explicit_copy_of(served: &[u8], original: &[u8]) {
    use dicom_object::{OpenFileOptions, file::ReadPreamble};
    let open = |bytes: &[u8]| {
        OpenFileOptions::new().read_preamble(ReadPreamble::Always).from_reader(bytes.to_vec().as_slice()).unwrap()
    };
    let (served, original) = (open(served), open(original));
    assert_eq!(served.meta().transfer_syntax().trim_end_matches('\0'), uids::EXPLICIT_VR_LITTLE_ENDIAN);
    for tag in [dicom_dictionary_std::tags::PIXEL_DATA, dicom_dictionary_std::tags::PATIENT_NAME] {
        assert_eq!(
            served.element(tag).unwrap().value().to_bytes().unwrap(),
            original.element(tag).unwrap().value().to_bytes().unwrap(),
            "{tag}"
        );
    }
}

/// PS3.18 §8.7.3.4: Explicit VR Little Endian is the default transfer syntax, and the origin
/// server converts to it: an instance stored in Implicit VR Little Endian is re-encoded, pixel
/// data unchanged (compressed pixel data: wado_019).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_007_converts_to_explicit_vr_little_endian() {
    let (server, _, _, spec, implicit) = archive().await;
    let reply = get(&spec.instance_url(&server.base), DICOM_MULTIPART).await;
    assert_eq!(reply.status, StatusCode::OK);
    let parts = parts_of(&reply);
    assert!(parts[0].0.contains("transfer-syntax=1.2.840.10008.1.2.1\r\n"), "{}", parts[0].0);
    assert_explicit_copy_of(&parts[0].1, &implicit);
    let single = get(&spec.instance_url(&server.base), "application/dicom").await;
    assert_eq!(single.content_type(), "application/dicom; transfer-syntax=1.2.840.10008.1.2.1");
    assert_explicit_copy_of(&single.body, &implicit);
}

/// PS3.18 §8.7.3: Implicit VR Little Endian and Explicit VR Big Endian are not used in web
/// services: `transfer-syntax=*` and `*/*` get Explicit VR Little Endian, and a request for
/// Implicit VR Little Endian itself is 406.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_008_implicit_vr_little_endian_is_never_sent() {
    let (server, _, _, spec, implicit) = archive().await;
    for accept in [DICOM_ANY_TS, "*/*"] {
        let reply = get(&spec.instance_url(&server.base), accept).await;
        assert_eq!(reply.status, StatusCode::OK);
        let parts = parts_of(&reply);
        assert!(parts[0].0.contains("transfer-syntax=1.2.840.10008.1.2.1\r\n"), "{accept}: {}", parts[0].0);
        assert_explicit_copy_of(&parts[0].1, &implicit);
    }
    let implicit_asked = "multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2";
    assert_eq!(get(&spec.instance_url(&server.base), implicit_asked).await.status, StatusCode::NOT_ACCEPTABLE);
}

/// PS3.18 §8.7.3.4, §8.7.3.5.2: compressed pixel data is decoded when Explicit VR Little Endian
/// is asked for (or implied by a media type without transfer-syntax); `*` keeps it as stored.
/// The decoded instance says what it now is: native Pixel Data, Explicit VR Little Endian.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_019_compressed_pixel_data_is_decoded_to_explicit_vr_little_endian() {
    use dicom_object::{OpenFileOptions, file::ReadPreamble};
    let spec = Spec::new(319, 1, 1).size(16, 24, 2);
    let rle = rle_instance(&spec);
    let server = Server::with(std::slice::from_ref(&rle)).await;
    let url = spec.instance_url(&server.base);
    for accept in
        [DICOM_MULTIPART, "multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.1"]
    {
        let reply = get(&url, accept).await;
        assert_eq!(reply.status, StatusCode::OK, "{accept}: {}", reply.text());
        let parts = parts_of(&reply);
        assert!(parts[0].0.contains(EXPLICIT_LE_PART), "{}", parts[0].0);
        let served =
            OpenFileOptions::new().read_preamble(ReadPreamble::Always).from_reader(parts[0].1.as_slice()).unwrap();
        assert_eq!(served.meta().transfer_syntax().trim_end_matches('\0'), uids::EXPLICIT_VR_LITTLE_ENDIAN);
        let pixel_data = served.element(dicom_dictionary_std::tags::PIXEL_DATA).unwrap();
        assert_eq!(pixel_data.value().to_bytes().unwrap().as_ref(), rle_pixels(&spec).as_slice(), "{accept}");
        let sop = served.element(dicom_dictionary_std::tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap();
        assert_eq!(sop.trim_end_matches('\0'), spec.sop_uid());
    }
    let stored = get(&url, DICOM_ANY_TS).await;
    let parts = parts_of(&stored);
    assert!(parts[0].0.contains("transfer-syntax=1.2.840.10008.1.2.5\r\n"), "{}", parts[0].0);
    assert_eq!(parts[0].1, as_stored(&rle));
}

/// PS3.18 §10.4.1.1.5, §8.7.3.3: frames of a compressed instance come as stored in their own
/// media type (image/dicom-rle here) or, asked as application/octet-stream without
/// `transfer-syntax=*`, decoded to native little-endian pixels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_020_compressed_frames_as_stored_or_decoded() {
    let spec = Spec::new(320, 1, 1).size(16, 24, 3);
    let server = Server::with(&[rle_instance(&spec)]).await;
    let pixels = rle_pixels(&spec);
    let frame = 16 * 24;
    let url = format!("{}/frames/3,2", spec.instance_url(&server.base));
    let decoded = get(&url, "multipart/related; type=\"application/octet-stream\"").await;
    assert_eq!(decoded.status, StatusCode::OK, "{}", decoded.text());
    let parts = split_multipart(decoded.content_type(), &decoded.body);
    assert_eq!(parts.len(), 2);
    assert!(parts[0].0.contains("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"), "{}", parts[0].0);
    assert_eq!(parts[0].1, pixels[2 * frame..3 * frame].to_vec(), "frame 3");
    assert_eq!(parts[1].1, pixels[frame..2 * frame].to_vec(), "frame 2");
    for accept in [
        "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*",
        "multipart/related; type=\"image/dicom-rle\"",
    ] {
        let stored = get(&url, accept).await;
        assert_eq!(stored.status, StatusCode::OK, "{accept}");
        assert!(stored.content_type().starts_with("multipart/related; type=\"image/dicom-rle\""), "{accept}");
        let parts = split_multipart(stored.content_type(), &stored.body);
        assert!(parts[0].0.contains("image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5"), "{}", parts[0].0);
        assert_eq!(u32::from_le_bytes(parts[0].1[..4].try_into().unwrap()), 1, "an RLE header with one segment");
    }
    let whole = get(
        &format!("{}/bulkdata/7FE00010", spec.instance_url(&server.base)),
        "multipart/related; type=\"application/octet-stream\"",
    )
    .await;
    assert_eq!(split_multipart(whole.content_type(), &whole.body)[0].1, pixels, "all frames, decoded");
}

/// PS3.18 §8.7.5, §8.7.7, §8.7.8.1: Accept lists, wildcard ranges, q-values ranking the
/// acceptable types, q=0 excluding a range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_009_accept_lists_wildcards_and_q_values() {
    let (server, spec, _, _, _) = archive().await;
    let url = spec.instance_url(&server.base);
    for accept in ["application/dicom+json, multipart/related; type=\"application/dicom\"", "multipart/*", "*/*"] {
        let reply = get(&url, accept).await;
        assert_eq!(reply.status, StatusCode::OK, "{accept}");
        assert!(parts_of(&reply)[0].0.contains(EXPLICIT_LE_PART));
    }
    let excluded = get(&url, "multipart/related; type=\"application/dicom\"; q=0, application/dicom+json").await;
    assert_eq!(excluded.status, StatusCode::NOT_ACCEPTABLE);
    let nothing = get(&url, "multipart/related; type=\"application/dicom\"; q=0").await;
    assert_eq!(nothing.status, StatusCode::NOT_ACCEPTABLE);
    let ranked = get(&url, "application/dicom; q=0.1, multipart/related; type=\"application/dicom\"; q=1").await;
    assert_eq!(ranked.status, StatusCode::OK);
    assert!(ranked.content_type().starts_with("multipart/related"), "{}", ranked.content_type());
}

/// Kura's choice where the standard is open (§8.7.5, §8.7.7): a request without Accept is
/// treated as `Accept: */*` and gets the instances as stored, multipart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_010_missing_accept_means_any() {
    let (server, spec, original, _, _) = archive().await;
    for url in [spec.instance_url(&server.base), spec.study_url(&server.base)] {
        let reply = get(&url, "").await;
        assert_eq!(reply.status, StatusCode::OK, "{url}");
        assert_eq!(parts_of(&reply)[0].1, as_stored(&original));
    }
}

/// A series of a three-frame native instance and a single-frame one; the first also carries a
/// 4 KiB Encapsulated Document and a 16-byte private OB value.
async fn series_with_frames() -> (Server, Spec, Spec, Vec<u8>) {
    let multi = Spec::new(313, 1, 1).size(8, 8, 3);
    let mut object = dataset(&multi);
    put(&mut object, dicom_dictionary_std::tags::ENCAPSULATED_DOCUMENT, dicom_core::VR::OB, vec![7u8; 4096]);
    put(&mut object, dicom_core::Tag(0x0009, 0x0010), dicom_core::VR::LO, "KURA");
    put(&mut object, dicom_core::Tag(0x0009, 0x1002), dicom_core::VR::OB, vec![1u8; 16]);
    let multi_bytes = part10(object);
    let single = Spec::new(313, 1, 2);
    let server = Server::with(&[multi_bytes.clone(), instance(&single)]).await;
    (server, multi, single, multi_bytes)
}

/// The native pixel data of a generated instance: its last rows × columns × frames × 2 bytes.
fn pixels_of(file: &[u8], spec: &Spec) -> Vec<u8> {
    let length = spec.rows as usize * spec.columns as usize * spec.frames as usize * 2;
    file[file.len() - length..].to_vec()
}

/// PS3.18 §10.4.1.1.2, Annex F: metadata of a study, series or instance is one DICOM JSON array
/// with an object per instance, members in tag order; an ETag, and 304 for If-None-Match. Asked
/// for, the Native DICOM Model XML (PS3.19 Annex A), one multipart/related part per instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_013_metadata_at_every_level() {
    let (server, multi, single, _) = series_with_frames().await;
    for (url, count) in [
        (format!("{}/metadata", multi.study_url(&server.base)), 2),
        (format!("{}/metadata", multi.series_url(&server.base)), 2),
        (format!("{}/metadata", single.instance_url(&server.base)), 1),
    ] {
        let reply = get(&url, "application/dicom+json").await;
        assert_eq!(reply.status, StatusCode::OK, "{url}");
        assert_eq!(reply.content_type(), "application/dicom+json");
        let items = reply.json().as_array().cloned().unwrap();
        assert_eq!(items.len(), count, "{url}");
        let keys: Vec<&String> = items[0].as_object().unwrap().keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "ascending tag order (F.2.2)");
        let etag = reply.header("etag").expect("ETag").to_string();
        let again = send(http::Method::GET, &url, &[("if-none-match", etag.as_str())], bytes::Bytes::new()).await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{url}");
    }
    let one = get(&format!("{}/metadata", single.instance_url(&server.base)), "").await.json();
    assert_eq!(value_of(&one[0], "00080018"), Some(single.sop_uid()));
    assert_eq!(one[0]["00100010"]["Value"][0]["Alphabetic"], single.patient_name.as_str());
    assert_eq!(one[0]["00280010"]["Value"][0], 16, "US as a JSON number");
    let missing = get(&format!("{}/metadata", Spec::new(399, 1, 1).study_url(&server.base)), "").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let xml_type = "multipart/related; type=\"application/dicom+xml\"";
    let xml = get(&format!("{}/metadata", multi.series_url(&server.base)), xml_type).await;
    assert_eq!(xml.status, StatusCode::OK);
    assert!(xml.content_type().starts_with(xml_type), "{}", xml.content_type());
    let parts = split_multipart(xml.content_type(), &xml.body);
    assert_eq!(parts.len(), 2, "one document per instance");
    let document = String::from_utf8(parts[0].1.clone()).unwrap();
    assert!(parts[0].0.contains("Content-Type: application/dicom+xml"), "{}", parts[0].0);
    assert!(document.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<NativeDicomModel"), "{document}");
    assert!(document.contains(&format!(
        "<DicomAttribute tag=\"00100010\" vr=\"PN\" keyword=\"PatientName\"><PersonName number=\"1\"><Alphabetic>\
         <FamilyName>Doe</FamilyName><GivenName>Patient{}</GivenName></Alphabetic></PersonName></DicomAttribute>",
        multi.study
    )));
    assert!(document.contains("<DicomAttribute tag=\"7FE00010\" vr=\"OW\" keyword=\"PixelData\"><BulkData uri=\"http"));
    let json_etag =
        get(&format!("{}/metadata", multi.series_url(&server.base)), "").await.header("etag").map(str::to_string);
    assert_ne!(xml.header("etag").map(str::to_string), json_etag, "each form has its own validator");
    let neither = get(&format!("{}/metadata", multi.series_url(&server.base)), "image/jpeg").await;
    assert_eq!(neither.status, StatusCode::NOT_ACCEPTABLE);
}

/// PS3.18 §10.4.1.1.2 (Kura's choice, RFC 9110 §8.4): metadata is sent with brotli or gzip when
/// Accept-Encoding allows it, with a validator per coding; any coding's ETag answers 304.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_021_metadata_compressed_when_the_client_accepts_it() {
    use std::io::Read;
    let (server, multi, _, _) = series_with_frames().await;
    let url = format!("{}/metadata", multi.series_url(&server.base));
    let plain = get(&url, "application/dicom+json").await;
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"));
    for (accept_encoding, coding) in [("gzip, deflate, br", "br"), ("gzip", "gzip"), ("br;q=0.1, gzip", "gzip")] {
        let reply = send(http::Method::GET, &url, &[("accept-encoding", accept_encoding)], bytes::Bytes::new()).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("content-encoding"), Some(coding), "{accept_encoding}");
        let mut decoded = Vec::new();
        match coding {
            "br" => brotli::Decompressor::new(reply.body.as_ref(), 4096).read_to_end(&mut decoded).unwrap(),
            _ => flate2::read::GzDecoder::new(reply.body.as_ref()).read_to_end(&mut decoded).unwrap(),
        };
        assert_eq!(decoded, plain.body.to_vec(), "{accept_encoding}");
        assert!(reply.body.len() * 3 < plain.body.len(), "{} of {} bytes", reply.body.len(), plain.body.len());
        let etag = reply.header("etag").unwrap().to_string();
        assert_ne!(Some(etag.as_str()), plain.header("etag"));
        let again = send(http::Method::GET, &url, &[("if-none-match", etag.as_str())], bytes::Bytes::new()).await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    }
}

/// PS3.18 §10.4.1.1.2, F.2.6, F.2.7: Pixel Data and binary values over 1 KiB appear as
/// BulkDataURI (resolvable), smaller ones as InlineBinary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_014_large_binary_values_by_bulkdata_uri() {
    let (server, multi, _, _) = series_with_frames().await;
    let metadata = get(&format!("{}/metadata", multi.instance_url(&server.base)), "").await.json();
    let instance = &metadata[0];
    let pixel_uri = instance["7FE00010"]["BulkDataURI"].as_str().expect("Pixel Data by BulkDataURI");
    assert_eq!(pixel_uri, format!("{}/bulkdata/7FE00010", multi.instance_url(&server.base)));
    assert!(instance["7FE00010"].get("InlineBinary").is_none());
    let document_uri = instance["00420011"]["BulkDataURI"].as_str().expect("4 KiB OB by BulkDataURI");
    let document = get(document_uri, "multipart/related; type=\"application/octet-stream\"").await;
    assert_eq!(document.status, StatusCode::OK);
    assert_eq!(split_multipart(document.content_type(), &document.body)[0].1, vec![7u8; 4096]);
    assert_eq!(instance["00091002"]["InlineBinary"], "AQEBAQEBAQEBAQEBAQEBAQ==", "16 bytes inline");
}

/// PS3.18 §10.4.1.1.5, §8.7.3.3.1: frames by number, one part each, native frames as
/// application/octet-stream; frame 0 or a malformed list is 400, a frame beyond NumberOfFrames 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_015_frames_by_number() {
    let (server, multi, single, multi_bytes) = series_with_frames().await;
    let pixels = pixels_of(&multi_bytes, &multi);
    let frame_size = pixels.len() / 3;
    let url = format!("{}/frames/3,1", multi.instance_url(&server.base));
    let reply = get(&url, "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.content_type().starts_with("multipart/related; type=\"application/octet-stream\""));
    let parts = split_multipart(reply.content_type(), &reply.body);
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].1, pixels[2 * frame_size..].to_vec(), "frame 3 first, as asked");
    assert_eq!(parts[1].1, pixels[..frame_size].to_vec());
    assert!(parts[0].0.contains("transfer-syntax=1.2.840.10008.1.2.1"));
    assert!(parts[0].0.contains(&format!("Content-Location: {}/frames/3", multi.instance_url(&server.base))));
    let accept = "multipart/related; type=\"application/octet-stream\"";
    for (frames, status) in
        [("0", StatusCode::BAD_REQUEST), ("x", StatusCode::BAD_REQUEST), ("4", StatusCode::NOT_FOUND)]
    {
        let url = format!("{}/frames/{frames}", multi.instance_url(&server.base));
        assert_eq!(get(&url, accept).await.status, status, "frames/{frames}");
    }
    let one = get(&format!("{}/frames/1", single.instance_url(&server.base)), accept).await;
    assert_eq!(one.status, StatusCode::OK, "native frames need no transfer-syntax parameter");
    let wrong = get(&format!("{}/frames/1", single.instance_url(&server.base)), "image/jpeg").await;
    assert_eq!(wrong.status, StatusCode::NOT_ACCEPTABLE, "no transcoding to JPEG");
}

/// PS3.18 §10.4.1.1.5, PS3.5 §A.4: frames split over several fragments are found by the
/// Extended Offset Table when the Basic Offset Table is empty (here no fragment starts with a
/// marker, so nothing else could tell).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_022_frames_by_the_extended_offset_table() {
    let spec = Spec::new(322, 1, 1).size(8, 8, 3);
    let (file, frames) = extended_offset_table_instance(&spec, 3);
    let server = Server::with(&[file]).await;
    let url = format!("{}/frames/2,3", spec.instance_url(&server.base));
    let reply = get(&url, "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let parts = split_multipart(reply.content_type(), &reply.body);
    assert!(parts[0].0.contains("image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90"), "{}", parts[0].0);
    assert_eq!(parts[0].1, frames[1], "frame 2: its three fragments, joined");
    assert_eq!(parts[1].1, frames[2]);
}

/// PS3.18 §10.4.1.1.4: bulk data as multipart/related application/octet-stream, and as a single
/// part with HTTP Range (206 and Content-Range).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_016_bulk_data_with_range() {
    let (server, multi, _, multi_bytes) = series_with_frames().await;
    let pixels = pixels_of(&multi_bytes, &multi);
    let url = format!("{}/bulkdata/7FE00010", multi.instance_url(&server.base));
    let whole = get(&url, "multipart/related; type=\"application/octet-stream\"").await;
    assert_eq!(split_multipart(whole.content_type(), &whole.body)[0].1, pixels);
    let ranged = send(
        http::Method::GET,
        &url,
        &[("accept", "application/octet-stream"), ("range", "bytes=10-19")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.header("content-range"), Some(format!("bytes 10-19/{}", pixels.len()).as_str()));
    assert_eq!(ranged.body.as_ref(), &pixels[10..20]);
    let beyond = send(
        http::Method::GET,
        &url,
        &[("accept", "application/octet-stream"), ("range", "bytes=999999-")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(beyond.status, StatusCode::RANGE_NOT_SATISFIABLE);
    let unknown = get(&format!("{}/bulkdata/00280010", multi.instance_url(&server.base)), "").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "only values the metadata referred to");
}

/// PS3.18 §8.3.3.1, Table 10.4.1-5: the `accept` query parameter (OS: M) is tried before the
/// Accept header (§8.7.8.1 steps 2-3): `?accept=application/dicom` with `Accept: */*` gives the
/// single-part instance; a type the parameter names but Kura cannot give falls back to the
/// header; wildcards in the parameter are 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_017_accept_query_parameter() {
    let (server, spec, original, _, _) = archive().await;
    let url = spec.instance_url(&server.base);
    let single = get(&format!("{url}?accept=application%2Fdicom"), "*/*").await;
    assert_eq!(single.status, StatusCode::OK);
    assert_eq!(single.content_type(), "application/dicom; transfer-syntax=1.2.840.10008.1.2.1");
    assert_eq!(single.body.as_ref(), as_stored(&original).as_slice());
    let fallback = get(&format!("{url}?accept=image%2Fjp2"), DICOM_MULTIPART).await;
    assert_eq!(fallback.status, StatusCode::OK);
    assert!(fallback.content_type().starts_with(DICOM_MULTIPART), "{}", fallback.content_type());
    let metadata = get(&format!("{url}/metadata?accept=application/dicom%2Bjson"), "").await;
    assert_eq!(metadata.status, StatusCode::OK);
    assert_eq!(metadata.content_type(), "application/dicom+json");
    let wildcard = get(&format!("{url}?accept=*%2F*"), "*/*").await;
    assert_eq!(wildcard.status, StatusCode::BAD_REQUEST);
    assert!(wildcard.json()["message"].as_str().unwrap().contains("wildcards"));
}

/// PS3.18 §10.4.4 (2025a, ZIP packaging): `Accept: application/zip` on a study or series gives
/// one ZIP archive of its instances, `{study}/{series}/{instance}.dcm` each, with the bytes a
/// multipart retrieval gives; tests/interop/test_zip.py opens it with Python's zipfile and unzip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_018_zip_of_a_study_or_series() {
    let (server, multi, single, multi_bytes) = series_with_frames().await;
    let reply = get(&multi.series_url(&server.base), "application/zip").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type(), "application/zip");
    assert_eq!(
        reply.header("content-disposition"),
        Some(format!("attachment; filename=\"{}.zip\"", multi.series_uid()).as_str())
    );
    let body = reply.body.as_ref();
    assert_eq!(&body[..4], b"PK\x03\x04", "a local file header first");
    let end = body.len() - 22;
    assert_eq!(&body[end..end + 4], b"PK\x05\x06", "the end of central directory last");
    assert_eq!(u16::from_le_bytes([body[end + 10], body[end + 11]]), 2, "both instances");
    let name = format!("{}/{}/{}.dcm", multi.study_uid(), multi.series_uid(), multi.sop_uid());
    assert!(body.windows(name.len()).any(|w| w == name.as_bytes()), "entry {name}");
    let stored = as_stored(&multi_bytes);
    assert!(body.windows(stored.len()).any(|w| w == stored.as_slice()), "the instance's bytes, stored");
    let study = get(&single.study_url(&server.base), "application/zip").await;
    assert_eq!(study.status, StatusCode::OK);
    let tail = &study.body[study.body.len() - 22..];
    assert_eq!(u16::from_le_bytes([tail[10], tail[11]]), 2, "the study's two instances");
    let jpeg_only =
        get(&single.study_url(&server.base), "application/zip; transfer-syntax=1.2.840.10008.1.2.4.50").await;
    assert_eq!(jpeg_only.status, StatusCode::NOT_ACCEPTABLE);
}

/// PS3.18 §10.4.1.1.3, §8.3.5, §8.7.4: Rendered Instance and Frames as a single image/jpeg or
/// image/png (pixels: the instance has no window, so min-max over the frame), several images
/// (a multi-frame instance, a series) as multipart/related of the image type and 406 for a
/// single-part type alone (§10.4.4 2025a), `viewport`, `window`, `quality`, `annotation`
/// (accepted, not burnt in: Warning), and 400 for malformed values or a mixed Accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rend_001_rendered_resources() {
    let multi = Spec::new(321, 1, 1).size(16, 24, 3);
    let single = Spec::new(321, 1, 2).size(16, 24, 1);
    let server = Server::with(&[rle_instance(&multi), rle_instance(&single)]).await;
    let frame = 16 * 24;
    let single_url = format!("{}/rendered", single.instance_url(&server.base));
    let png = get(&single_url, "image/png").await;
    assert_eq!(png.status, StatusCode::OK, "{}", png.text());
    assert_eq!(png.content_type(), "image/png");
    assert_eq!(png_pixels(&png.body), ((24, 16), normalised(&rle_pixels(&single))));
    let jpeg = get(&single_url, "image/jpeg").await;
    let mut decoder = jpeg_decoder::Decoder::new(jpeg.body.as_ref());
    let pixels = decoder.decode().unwrap();
    let expected = normalised(&rle_pixels(&single));
    let error: f64 = pixels.iter().zip(&expected).map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs()).sum::<f64>()
        / expected.len() as f64;
    assert!(error < 12.0, "JPEG close to the PNG: mean error {error}");
    assert_eq!(get(&single_url, "*/*").await.content_type(), "image/jpeg", "the default rendered type");

    let frames_url = format!("{}/frames/3/rendered", multi.instance_url(&server.base));
    assert_eq!(png_pixels(&get(&frames_url, "image/png").await.body).1, normalised(&rle_pixels(&multi)[2 * frame..]));
    let all_url = format!("{}/rendered", multi.instance_url(&server.base));
    assert_eq!(get(&all_url, "image/png").await.status, StatusCode::NOT_ACCEPTABLE, "three images, one part asked");
    let all = get(&all_url, "multipart/related; type=\"image/png\"").await;
    assert!(all.content_type().starts_with("multipart/related; type=\"image/png\""));
    let parts = split_multipart(all.content_type(), &all.body);
    assert_eq!(parts.len(), 3);
    assert!(parts[1].0.contains(&format!("Content-Location: {}/frames/2/rendered", multi.instance_url(&server.base))));
    assert_eq!(png_pixels(&parts[1].1).1, normalised(&rle_pixels(&multi)[frame..2 * frame]));
    let series =
        get(&format!("{}/rendered", multi.series_url(&server.base)), "multipart/related; type=\"image/jpeg\"").await;
    assert_eq!(split_multipart(series.content_type(), &series.body).len(), 4, "3 + 1 frames");

    let viewport = get(&format!("{single_url}?viewport=12,12"), "image/png").await;
    assert_eq!(png_pixels(&viewport.body).0, (12, 8), "fit inside, aspect kept");
    let flipped = get(&format!("{single_url}?viewport=24,16,24,0,-24,16"), "image/png").await;
    let (_, flipped) = png_pixels(&flipped.body);
    assert_eq!(flipped[0], expected[23], "a negative width flips horizontally");
    let windowed = get(&format!("{single_url}?window=100,50,linear"), "image/png").await;
    let (_, windowed) = png_pixels(&windowed.body);
    for (value, shown) in rle_pixels(&single).iter().zip(&windowed) {
        if *value < 70 {
            assert_eq!(*shown, 0, "{value} is below the window");
        } else if *value > 130 {
            assert_eq!(*shown, 255, "{value} is above the window");
        }
    }
    let annotated = get(&format!("{single_url}?annotation=patient,technique"), "image/jpeg").await;
    assert_eq!(annotated.status, StatusCode::OK);
    assert!(annotated.warnings().contains("annotation"), "{}", annotated.warnings());
    for query in ["quality=0", "quality=x", "window=40,400", "window=40,400,cubic", "viewport=0,10", "annotation=name"]
    {
        assert_eq!(
            get(&format!("{single_url}?{query}"), "image/jpeg").await.status,
            StatusCode::BAD_REQUEST,
            "{query}"
        );
    }
    assert_eq!(get(&single_url, "application/dicom, image/jpeg").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        get(&format!("{}/frames/4/rendered", multi.instance_url(&server.base)), "image/png").await.status,
        StatusCode::NOT_FOUND
    );
}

/// PS3.18 §10.4.1.1.4: all four Thumbnail resources (study, series, instance, frame), each one
/// image of a representative frame, at most 128 pixels on its longer side unless `viewport`
/// (vw,vh only: more is 400) says otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rend_002_thumbnails() {
    let spec = Spec::new(322, 1, 1).size(200, 100, 3);
    let server = Server::with(&[rle_instance(&spec)]).await;
    for url in [
        format!("{}/thumbnail", spec.study_url(&server.base)),
        format!("{}/thumbnail", spec.series_url(&server.base)),
        format!("{}/thumbnail", spec.instance_url(&server.base)),
        format!("{}/frames/2/thumbnail", spec.instance_url(&server.base)),
    ] {
        let reply = get(&url, "image/png").await;
        assert_eq!(reply.status, StatusCode::OK, "{url}");
        assert_eq!(png_pixels(&reply.body).0, (64, 128), "{url}");
    }
    let sized = get(&format!("{}/thumbnail?viewport=32,32", spec.series_url(&server.base)), "image/jpeg").await;
    assert_eq!(sized.content_type(), "image/jpeg");
    let mut decoder = jpeg_decoder::Decoder::new(sized.body.as_ref());
    decoder.decode().unwrap();
    assert_eq!(decoder.info().map(|i| (i.width, i.height)), Some((16, 32)));
    let cropped =
        get(&format!("{}/thumbnail?viewport=32,32,0,0,10,10", spec.study_url(&server.base)), "image/jpeg").await;
    assert_eq!(cropped.status, StatusCode::BAD_REQUEST);
}
