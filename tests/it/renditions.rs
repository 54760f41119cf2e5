//! Renditions kept for the next reader and made at store time (issue 19, item 3): thumbnails and
//! previews are ready before the first request, identical to what rendering them on request
//! gives, dropped with their instance, and never served for another version of it.

use std::time::{Duration, Instant};

use http::StatusCode;
use kura::store::DuplicatePolicy;

use crate::support::*;

const PREVIEW: &str = "viewport=256,256&quality=60";

/// Waits (bounded) until the store-time renditions are made and at least `expected` images are
/// kept.
async fn wait_for_renditions(server: &Server, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.archive.renditions_pending() > 0 || server.archive.rendition_stats().entries < expected {
        assert!(Instant::now() < deadline, "renditions not made: {:?}", server.archive.rendition_stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnails_and_previews_are_made_at_store_time_and_match_rendering_on_request() {
    let specs: Vec<Spec> = (1..=3).map(|n| Spec::new(2101, 1, n).size(64, 48, 1)).collect();
    let parts: Vec<Vec<u8>> = specs.iter().map(instance).collect();
    let server = Server::with(&parts).await;
    // Per instance: a thumbnail and the preview of its one frame.
    wait_for_renditions(&server, 6).await;
    let before = server.archive.rendition_stats();
    assert_eq!(before.hits, 0, "nothing was asked for yet");

    let series = specs[0].series_url(&server.base);
    let thumbnails = [
        format!("{}/thumbnail", specs[0].study_url(&server.base)),
        format!("{series}/thumbnail"),
        format!("{}/thumbnail", specs[1].instance_url(&server.base)),
    ];
    let mut bodies = Vec::new();
    for url in &thumbnails {
        let reply = get(url, "image/jpeg").await;
        assert_eq!(reply.status, StatusCode::OK, "{url}: {}", reply.text());
        assert_eq!(reply.content_type(), "image/jpeg");
        assert_eq!(&reply.body[..2], &[0xFF, 0xD8], "{url}: a JPEG");
        bodies.push(reply.body.to_vec());
    }
    // The study's and the series' thumbnail are the middle instance's (instance 2 of 3).
    assert_eq!(bodies[0], bodies[2]);
    assert_eq!(bodies[1], bodies[2]);
    let preview = get(&format!("{series}/rendered?{PREVIEW}"), "multipart/related; type=\"image/jpeg\"").await;
    assert_eq!(preview.status, StatusCode::OK, "{}", preview.text());
    let frames = split_multipart(preview.content_type(), &preview.body);
    assert_eq!(frames.len(), 3, "one preview per slice, in one response");
    let after = server.archive.rendition_stats();
    assert_eq!(after.misses, before.misses, "every image came from the store-time renditions");
    assert_eq!(after.hits, 3 + 3);

    // The same images rendered on request, by a server that keeps nothing, are byte-identical.
    let plain = Server::with_config(&parts, |config| {
        config.archive.rendition_cache_bytes = 0;
        config.archive.precompute_renditions = false;
    })
    .await;
    let rendered = get(&format!("{}/thumbnail", specs[1].instance_url(&plain.base)), "image/jpeg").await;
    assert_eq!(rendered.body.to_vec(), bodies[2]);
    let rendered_preview = get(
        &format!("{}/rendered?{PREVIEW}", specs[0].series_url(&plain.base)),
        "multipart/related; type=\"image/jpeg\"",
    )
    .await;
    let plain_frames = split_multipart(rendered_preview.content_type(), &rendered_preview.body);
    assert_eq!(
        plain_frames.iter().map(|(_, body)| body.clone()).collect::<Vec<_>>(),
        frames.iter().map(|(_, body)| body.clone()).collect::<Vec<_>>()
    );
    assert_eq!(plain.archive.rendition_stats().entries, 0, "a budget of 0 keeps nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_precomputing_the_first_request_renders_and_the_second_does_not() {
    let spec = Spec::new(2102, 1, 1).size(32, 32, 2);
    let server = Server::with_config(&[instance(&spec)], |config| config.archive.precompute_renditions = false).await;
    assert_eq!(server.archive.rendition_stats().entries, 0);
    let url = format!("{}/frames/2/rendered?quality=70", spec.instance_url(&server.base));
    let first = get(&url, "image/jpeg").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(server.archive.rendition_stats().misses, 1);
    wait_for_renditions(&server, 1).await;
    let second = get(&url, "image/jpeg").await;
    assert_eq!(second.body, first.body);
    let stats = server.archive.rendition_stats();
    assert_eq!((stats.hits, stats.misses), (1, 1));
    // Other options are another image.
    let other = get(&format!("{}/frames/2/rendered?quality=71", spec.instance_url(&server.base)), "image/jpeg").await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(server.archive.rendition_stats().misses, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renditions_go_with_a_deleted_instance_and_never_outlive_a_replaced_one() {
    let spec = Spec::new(2103, 1, 1).size(32, 32, 1);
    let server =
        Server::with_config(&[instance(&spec)], |config| config.archive.duplicate_policy = DuplicatePolicy::Overwrite)
            .await;
    wait_for_renditions(&server, 2).await;
    let url = format!("{}/thumbnail", spec.instance_url(&server.base));
    let old = get(&url, "image/jpeg").await;
    assert_eq!(old.status, StatusCode::OK);

    // The same UID, other pixels: the thumbnail follows the new object.
    let mut replacement = dataset(&spec);
    put(
        &mut replacement,
        dicom_dictionary_std::tags::PIXEL_DATA,
        dicom_core::VR::OW,
        dicom_core::PrimitiveValue::U16(vec![0x7777u16; 32 * 32].into()),
    );
    let reply = stow(&server.base, None, &[part10(replacement)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let new = get(&url, "image/jpeg").await;
    assert_eq!(new.status, StatusCode::OK);
    assert_ne!(new.body, old.body, "a replaced instance's thumbnail is made from the new pixels");

    // The replacement's store-time renditions replace the old ones (same images, new version).
    wait_for_renditions(&server, 2).await;
    let deleted = send(http::Method::DELETE, &spec.study_url(&server.base), &[], bytes::Bytes::new()).await;
    assert!(deleted.status.is_success(), "{}", deleted.text());
    assert_eq!(server.archive.rendition_stats().entries, 0, "the instance's renditions left with it");
    let files: usize = std::fs::read_dir(server.data_dir().join("derived"))
        .unwrap()
        .map(|fan| std::fs::read_dir(fan.unwrap().path()).unwrap().count())
        .sum();
    assert_eq!(files, 0, "and their files");
    assert_eq!(get(&url, "image/jpeg").await.status, StatusCode::NOT_FOUND);
}
