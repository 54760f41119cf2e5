//! HTTP caching of retrieved content (issue 19): ETag, If-None-Match → 304 and Cache-Control on
//! instances, series and studies in every representation, frames, bulk data, rendered images,
//! thumbnails and WADO-URI.

use bytes::Bytes;
use http::{Method, StatusCode};
use kura::store::DuplicatePolicy;

use crate::support::*;

const DICOM_ANY_TS: &str = "multipart/related; type=\"application/dicom\"; transfer-syntax=*";
const IMMUTABLE: &str = "private, max-age=86400, immutable";
const REVALIDATE: &str = "private, no-cache";

async fn get_if(url: &str, accept: &str, etag: &str) -> Reply {
    send(Method::GET, url, &headers(accept, &[("if-none-match", etag)]), Bytes::new()).await
}

/// `extra`, and Accept unless `accept` is empty.
fn headers<'a>(accept: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = extra.to_vec();
    if !accept.is_empty() {
        all.push(("accept", accept));
    }
    all
}

/// GETs `url` twice: 200 with an ETag, the same both times, the given Cache-Control and
/// `Vary: Accept`; then If-None-Match with it is 304 with the same ETag and no body; HEAD has the
/// same ETag. Returns the ETag.
async fn check_cached(url: &str, accept: &str, cache_control: &str) -> String {
    let first = get(url, accept).await;
    assert_eq!(first.status, StatusCode::OK, "{url}: {}", first.text());
    let etag = first.header("etag").unwrap_or_else(|| panic!("{url}: no ETag")).to_string();
    assert_eq!(first.header("cache-control"), Some(cache_control), "{url}");
    assert!(first.headers.get_all("vary").iter().any(|v| v.to_str().unwrap().contains("Accept")), "{url}");
    let second = get(url, accept).await;
    assert_eq!(second.header("etag"), Some(etag.as_str()), "{url}: stable");
    assert!(etag.starts_with("W/\""), "{url}: a weak tag, {etag}");
    let not_modified = get_if(url, accept, &etag).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED, "{url}");
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), Some(etag.as_str()));
    assert_eq!(not_modified.header("cache-control"), Some(cache_control));
    let other = get_if(url, accept, "\"0000-1\", W/\"ffff-2\"").await;
    assert_eq!(other.status, StatusCode::OK, "{url}: another tag is not this content");
    let head = send(Method::HEAD, url, &headers(accept, &[]), Bytes::new()).await;
    assert_eq!(head.status, StatusCode::OK, "{url}: HEAD");
    assert_eq!(head.header("etag"), Some(etag.as_str()), "{url}: HEAD");
    etag
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_retrieve_resource_has_an_etag_a_304_and_cache_control() {
    let spec = Spec::new(2001, 1, 1).size(16, 16, 3);
    let server = Server::with(&[instance(&spec)]).await;
    let base = &server.base;
    let root = base.trim_end_matches("/dicomweb");
    let instance_url = spec.instance_url(base);
    let wado_uri = format!(
        "{root}/wado?requestType=WADO&studyUID={}&seriesUID={}&objectUID={}",
        spec.study_uid(),
        spec.series_uid(),
        spec.sop_uid()
    );
    let octets = "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*";
    let resources = [
        (instance_url.clone(), "application/dicom; transfer-syntax=*", IMMUTABLE),
        (instance_url.clone(), DICOM_ANY_TS, IMMUTABLE),
        (instance_url.clone(), "application/zip", IMMUTABLE),
        (spec.series_url(base), DICOM_ANY_TS, REVALIDATE),
        (spec.study_url(base), DICOM_ANY_TS, REVALIDATE),
        (format!("{instance_url}/frames/1"), octets, IMMUTABLE),
        (format!("{instance_url}/frames/2"), octets, IMMUTABLE),
        (format!("{instance_url}/bulkdata/7FE00010"), "application/octet-stream", IMMUTABLE),
        // Three frames: several images, so multipart.
        (format!("{instance_url}/rendered"), "multipart/related; type=\"image/jpeg\"", IMMUTABLE),
        (format!("{instance_url}/rendered"), "multipart/related; type=\"image/png\"", IMMUTABLE),
        (format!("{instance_url}/frames/2/rendered?window=100,200,linear"), "image/png", IMMUTABLE),
        (format!("{instance_url}/thumbnail"), "image/jpeg", IMMUTABLE),
        (format!("{}/thumbnail", spec.study_url(base)), "image/jpeg", REVALIDATE),
        (format!("{wado_uri}&contentType=application%2Fdicom"), "", IMMUTABLE),
        (format!("{wado_uri}&contentType=image%2Fjpeg"), "", IMMUTABLE),
    ];
    let mut tags = Vec::new();
    for (url, accept, cache_control) in &resources {
        tags.push(check_cached(url, accept, cache_control).await);
    }
    let mut distinct = tags.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), tags.len(), "every representation has its own tag: {tags:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_syntaxes_differ_and_a_new_instance_changes_the_series_tag() {
    let first = Spec::new(2002, 1, 1);
    let server = Server::with(&[rle_instance(&first)]).await;
    let url = first.instance_url(&server.base);
    let stored = check_cached(&url, "application/dicom; transfer-syntax=*", IMMUTABLE).await;
    let decoded = check_cached(&url, "application/dicom; transfer-syntax=1.2.840.10008.1.2.1", IMMUTABLE).await;
    assert_ne!(stored, decoded, "RLE as stored and decoded are two representations");
    let stored_again = get(&url, "application/dicom; transfer-syntax=*").await;
    assert_ne!(
        stored_again.header("content-type"),
        get(&url, "application/dicom; transfer-syntax=1.2.840.10008.1.2.1").await.header("content-type")
    );

    let series_url = first.series_url(&server.base);
    let before = check_cached(&series_url, DICOM_ANY_TS, REVALIDATE).await;
    let study_before = check_cached(&first.study_url(&server.base), DICOM_ANY_TS, REVALIDATE).await;
    let thumbnail_before = check_cached(&format!("{series_url}/thumbnail"), "image/jpeg", REVALIDATE).await;
    let second = Spec::new(2002, 1, 2);
    assert_eq!(stow(&server.base, None, &[instance(&second)]).await.status, StatusCode::OK);
    let after = get_if(&series_url, DICOM_ANY_TS, &before).await;
    assert_eq!(after.status, StatusCode::OK, "a new instance in the series: the old tag is stale");
    assert_ne!(after.header("etag"), Some(before.as_str()));
    let study_after = get_if(&first.study_url(&server.base), DICOM_ANY_TS, &study_before).await;
    assert_eq!(study_after.status, StatusCode::OK);
    let thumbnail_after = get_if(&format!("{series_url}/thumbnail"), "image/jpeg", &thumbnail_before).await;
    assert_eq!(thumbnail_after.status, StatusCode::OK);
    // The first instance itself did not change.
    assert_eq!(get_if(&url, "application/dicom; transfer-syntax=*", &stored).await.status, StatusCode::NOT_MODIFIED);
}

/// With --duplicates overwrite an instance can be replaced: its resources are revalidated
/// (no-cache), and a replacement with other bytes changes the tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_instance_gets_a_new_tag() {
    let server = Server::start_with(|c| c.archive.duplicate_policy = DuplicatePolicy::Overwrite).await;
    let spec = Spec::new(2003, 1, 1);
    assert_eq!(stow(&server.base, None, &[instance(&spec)]).await.status, StatusCode::OK);
    let url = spec.instance_url(&server.base);
    let accept = "application/dicom; transfer-syntax=*";
    let before = check_cached(&url, accept, REVALIDATE).await;
    let rendered_before = check_cached(&format!("{url}/rendered"), "image/png", REVALIDATE).await;
    // An identical re-send changes nothing.
    assert_eq!(stow(&server.base, None, &[instance(&spec)]).await.status, StatusCode::OK);
    assert_eq!(get_if(&url, accept, &before).await.status, StatusCode::NOT_MODIFIED);
    // Other pixels under the same SOP Instance UID.
    let mut changed = spec.clone();
    changed.seed = spec.seed.wrapping_add(1);
    let replacement = instance(&changed);
    assert_eq!(stow(&server.base, None, std::slice::from_ref(&replacement)).await.status, StatusCode::OK);
    let after = get_if(&url, accept, &before).await;
    assert_eq!(after.status, StatusCode::OK, "replaced: the old tag is stale");
    assert_eq!(after.body.as_ref(), as_stored(&replacement).as_slice());
    assert_ne!(after.header("etag"), Some(before.as_str()));
    assert_eq!(get_if(&format!("{url}/rendered"), "image/png", &rendered_before).await.status, StatusCode::OK);
}

/// A browser viewer on another origin can read the ETag (Access-Control-Expose-Headers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_exposes_the_etag() {
    let spec = Spec::new(2004, 1, 1);
    let server = Server::with(&[instance(&spec)]).await;
    let reply = send(
        Method::GET,
        &format!("{}/rendered", spec.instance_url(&server.base)),
        &[("origin", "http://localhost:3000"), ("accept", "image/jpeg")],
        Bytes::new(),
    )
    .await;
    assert!(reply.header("etag").is_some());
    let exposed = reply.header("access-control-expose-headers").unwrap_or_default();
    assert!(exposed.split(',').any(|h| h.trim().eq_ignore_ascii_case("etag")), "{exposed}");
}
