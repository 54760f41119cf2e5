//! WADO-RS requirements (PS3.18 §10.4, §8.7) that tests/it/wado.rs does not already show, and
//! the resources Kura does not serve yet: metadata, frames, bulk data, rendered, thumbnail.

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
/// syntax's UID. Kura does not transcode, so any other value is 406 (§8.7.8.1 step 5).
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

/// PS3.18 §8.7.3.4: Explicit VR Little Endian is the default transfer syntax, and the origin
/// server must be able to convert what it returns into it. FIXME: Kura does not transcode; an
/// instance stored in another syntax is 406 unless the client accepts that syntax.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_007_no_conversion_to_explicit_vr_little_endian() {
    let (server, _, _, spec, _) = archive().await;
    let reply = get(&spec.instance_url(&server.base), DICOM_MULTIPART).await;
    assert_eq!(reply.status, StatusCode::NOT_ACCEPTABLE, "FIXME: should be transcoded");
    let reply = get(&spec.instance_url(&server.base), "application/dicom").await;
    assert_eq!(reply.status, StatusCode::NOT_ACCEPTABLE, "FIXME: should be transcoded");
}

/// PS3.18 §8.7.3: Implicit VR Little Endian must not be used in web services. FIXME: an
/// instance stored in it is served in it to a client that accepts any syntax.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_008_implicit_vr_little_endian_is_served_as_stored() {
    let (server, _, _, spec, implicit) = archive().await;
    for accept in [DICOM_ANY_TS, "*/*"] {
        let reply = get(&spec.instance_url(&server.base), accept).await;
        assert_eq!(reply.status, StatusCode::OK);
        let parts = parts_of(&reply);
        assert!(parts[0].0.contains("transfer-syntax=1.2.840.10008.1.2\r\n"), "FIXME: {}", parts[0].0);
        assert_eq!(parts[0].1, as_stored(&implicit));
    }
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

/// PS3.18 §10.4.1.1.2: Study, Series and Instance Metadata. Not implemented yet: 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_013_metadata_is_not_available() {
    let server = Server::start().await;
    let spec = Spec::new(314, 1, 1);
    let reply = get(&format!("{}/metadata", spec.study_url(&server.base)), "application/dicom+json").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    for url in
        [format!("{}/metadata", spec.series_url(&server.base)), format!("{}/metadata", spec.instance_url(&server.base))]
    {
        let reply = get(&url, "application/dicom+json").await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{url}");
    }
}

/// PS3.18 §10.4.1.1.5 (Frames), Table 10.3-2 (M). Not implemented yet: 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_015_frames_are_not_available() {
    let server = Server::start().await;
    let url = format!("{}/frames/1", Spec::new(315, 1, 1).instance_url(&server.base));
    let reply = get(&url, "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

/// PS3.18 §10.4.1.1.4 (Bulkdata), F.2.6: Kura mints no BulkDataURI and serves no bulk data;
/// `type="application/octet-stream"` on an instance is 406, and `.../bulkdata` is refused
/// (404 today).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_016_bulk_data_is_not_available() {
    let (server, spec, _, _, _) = archive().await;
    let octets = "multipart/related; type=\"application/octet-stream\"";
    assert_eq!(get(&spec.instance_url(&server.base), octets).await.status, StatusCode::NOT_ACCEPTABLE);
    let url = format!("{}/bulkdata", spec.instance_url(&server.base));
    assert_eq!(get(&url, octets).await.status, StatusCode::NOT_FOUND);
}

/// PS3.18 §8.3.3.1, Table 10.4.1-5: the `accept` query parameter (OS: M). FIXME: ignored;
/// `?accept=application/dicom` with `Accept: */*` should give the single-part instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wado_017_accept_query_parameter_is_ignored() {
    let (server, spec, _, _, _) = archive().await;
    let url = format!("{}?accept=application%2Fdicom", spec.instance_url(&server.base));
    let reply = get(&url, "*/*").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.content_type().starts_with(DICOM_MULTIPART), "FIXME: {}", reply.content_type());
}

/// PS3.18 §10.4.1.1.3, §8.3.5: Rendered Study, Series, Instance and Frames. Not implemented:
/// 404 at every level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rend_001_rendered_resources_are_not_available() {
    let server = Server::start().await;
    let spec = Spec::new(321, 1, 1);
    let study = get(&format!("{}/rendered", spec.study_url(&server.base)), "image/jpeg").await;
    assert_eq!(study.status, StatusCode::NOT_FOUND);
    for url in [
        format!("{}/rendered", spec.series_url(&server.base)),
        format!("{}/rendered", spec.instance_url(&server.base)),
        format!("{}/frames/1/rendered", spec.instance_url(&server.base)),
    ] {
        assert_eq!(get(&url, "image/jpeg").await.status, StatusCode::NOT_FOUND, "{url}");
    }
}

/// PS3.18 §10.4.1.1.4 (Thumbnail, optional: all four resources or none). None; as rendered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rend_002_thumbnails_are_not_available() {
    let server = Server::start().await;
    let spec = Spec::new(322, 1, 1);
    let study = get(&format!("{}/thumbnail", spec.study_url(&server.base)), "image/jpeg").await;
    assert_eq!(study.status, StatusCode::NOT_FOUND);
    let instance = get(&format!("{}/thumbnail", spec.instance_url(&server.base)), "image/jpeg").await;
    assert_eq!(instance.status, StatusCode::NOT_FOUND);
}
