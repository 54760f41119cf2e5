//! Delete: `DELETE` on a study, series or instance resource; gone from every resource at once,
//! counts updated, space given back, re-storing works.

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::support::*;

async fn delete(url: &str) -> Reply {
    send(Method::DELETE, url, &[], Vec::new()).await
}

fn count(row: &serde_json::Value, tag: &str) -> u64 {
    value_of(row, tag).and_then(|v| v.parse().ok()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_instance_series_and_study() {
    // Study 60: series 1 with three instances, series 2 with two; study 61 stays untouched.
    let specs: Vec<Spec> =
        [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)].iter().map(|&(se, i)| Spec::new(60, se, i)).collect();
    let other = Spec::new(61, 1, 1);
    let mut parts: Vec<Vec<u8>> = specs.iter().map(instance).collect();
    parts.push(instance(&other));
    let server = Server::with(&parts).await;
    let base = &server.base;
    assert_eq!(stored_blobs(&server.data_dir()).len(), 6);

    // One instance.
    let gone = &specs[1];
    let reply = delete(&gone.instance_url(base)).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    assert_eq!(reply.header("x-kura-deleted-instances"), Some("1"));
    assert_eq!(get(&gone.instance_url(base), "application/dicom").await.status, StatusCode::NOT_FOUND);
    let metadata = get(&format!("{}/metadata", gone.instance_url(base)), "application/dicom+json").await;
    assert_eq!(metadata.status, StatusCode::NOT_FOUND);
    let frames = get(&format!("{}/frames/1", gone.instance_url(base)), "application/octet-stream").await;
    assert_eq!(frames.status, StatusCode::NOT_FOUND);
    let rendered = get(&format!("{}/rendered", gone.instance_url(base)), "image/jpeg").await;
    assert_eq!(rendered.status, StatusCode::NOT_FOUND);
    let series_rows = qido(base, &format!("/studies/{}/series", gone.study_uid())).await;
    let first_series = series_rows.iter().find(|r| value_of(r, "0020000E").as_deref() == Some(&gone.series_uid()[..]));
    assert_eq!(count(first_series.expect("series 1 still listed"), "00201209"), 2);
    let study_rows = qido(base, &format!("/studies?StudyInstanceUID={}", gone.study_uid())).await;
    assert_eq!(count(&study_rows[0], "00201208"), 4, "NumberOfStudyRelatedInstances");
    assert!(qido(base, &format!("/instances?SOPInstanceUID={}", gone.sop_uid())).await.is_empty());
    // The other instances of the series are intact, byte for byte.
    for kept in [&specs[0], &specs[2]] {
        let reply = get(&kept.instance_url(base), "application/dicom").await;
        assert_eq!(reply.body.as_ref(), as_stored(&instance(kept)).as_slice());
    }
    assert_eq!(stored_blobs(&server.data_dir()).len(), 5, "the deleted instance's blob is gone");
    assert_eq!(delete(&gone.instance_url(base)).await.status, StatusCode::NOT_FOUND, "a second delete is 404");

    // A series.
    let reply = delete(&specs[3].series_url(base)).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(reply.header("x-kura-deleted-instances"), Some("2"));
    let study_rows = qido(base, &format!("/studies?StudyInstanceUID={}", gone.study_uid())).await;
    assert_eq!(count(&study_rows[0], "00201206"), 1, "NumberOfStudyRelatedSeries");
    assert_eq!(count(&study_rows[0], "00201208"), 2);
    let series_metadata = get(&format!("{}/metadata", specs[3].series_url(base)), "application/dicom+json").await;
    assert_eq!(series_metadata.status, StatusCode::NOT_FOUND);

    // The study.
    let reply = delete(&gone.study_url(base)).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(reply.header("x-kura-deleted-instances"), Some("2"));
    assert!(qido(base, &format!("/studies?StudyInstanceUID={}", gone.study_uid())).await.is_empty());
    assert!(qido(base, &format!("/studies/{}/instances", gone.study_uid())).await.is_empty());
    let zip = get(&gone.study_url(base), "application/zip").await;
    assert_eq!(zip.status, StatusCode::NOT_FOUND);
    assert_eq!(delete(&gone.study_url(base)).await.status, StatusCode::NOT_FOUND);
    assert_eq!(stored_blobs(&server.data_dir()).len(), 1, "only the other study's blob is left");
    let untouched = get(&other.instance_url(base), "application/dicom").await;
    assert_eq!(untouched.body.as_ref(), as_stored(&instance(&other)).as_slice());

    // Re-storing a deleted instance works, and it is found again.
    let reply = stow(base, None, std::slice::from_ref(&parts[1])).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let back = get(&gone.instance_url(base), "application/dicom").await;
    assert_eq!(back.body.as_ref(), as_stored(&parts[1]).as_slice());
    assert_eq!(qido(base, &format!("/instances?SOPInstanceUID={}", gone.sop_uid())).await.len(), 1);
    let study_rows = qido(base, &format!("/studies?StudyInstanceUID={}", gone.study_uid())).await;
    assert_eq!((count(&study_rows[0], "00201206"), count(&study_rows[0], "00201208")), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_unknown_or_mismatched_targets_is_404_and_deletes_nothing() {
    let spec = Spec::new(62, 1, 1);
    let server = Server::with(&[instance(&spec)]).await;
    let base = &server.base;
    assert_eq!(delete(&Spec::new(63, 1, 1).study_url(base)).await.status, StatusCode::NOT_FOUND);
    // The right instance UID under the wrong series is not that instance.
    let wrong =
        format!("{}/series/{}/instances/{}", spec.study_url(base), Spec::new(62, 2, 1).series_uid(), spec.sop_uid());
    assert_eq!(delete(&wrong).await.status, StatusCode::NOT_FOUND);
    let reply = delete(&format!("{base}/studies/1.2.abc")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "an invalid UID is refused before any lookup");
    let reply = send(Method::DELETE, &format!("{base}/studies"), &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    let stored = get(&spec.instance_url(base), "application/dicom").await;
    assert_eq!(stored.body.as_ref(), as_stored(&instance(&spec)).as_slice());
}

/// A replaced instance (`--duplicates overwrite`) gives its old blob back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_gives_the_old_blob_back() {
    let server =
        Server::start_with(|config| config.archive.duplicate_policy = kura::store::DuplicatePolicy::Overwrite).await;
    let spec = Spec::new(64, 1, 1);
    assert_eq!(stow(&server.base, None, &[instance(&spec)]).await.status, StatusCode::OK);
    let replacement = instance(&Spec { seed: 3, ..spec.clone() });
    assert_eq!(stow(&server.base, None, std::slice::from_ref(&replacement)).await.status, StatusCode::OK);
    let blobs = stored_blobs(&server.data_dir());
    assert_eq!(blobs.len(), 1, "{:?}", blobs.iter().map(|(id, _)| id).collect::<Vec<_>>());
    assert_eq!(blobs[0].1, as_stored(&replacement));
}

/// Small instances share pack files; deleting them gives their space back: a pack of an earlier
/// run goes as soon as nothing in it lives, and the others stay readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_small_instances_gives_their_pack_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let packs = || std::fs::read_dir(data.join("blobs/packs")).unwrap().count();
    let specs: Vec<Spec> = (1..=20).map(|i| Spec::new(65, 1 + i % 2, i)).collect();
    let server = ChildServer::start(&data);
    let parts: Vec<Vec<u8>> = specs.iter().map(instance).collect();
    assert_eq!(stow(&server.base, None, &parts).await.status, StatusCode::OK);
    server.terminate();
    assert_eq!(packs(), 1, "twenty small instances, one pack");

    let server = ChildServer::start(&data);
    let other = Spec::new(66, 1, 1);
    assert_eq!(stow(&server.base, None, &[instance(&other)]).await.status, StatusCode::OK);
    assert_eq!(packs(), 2, "a new run appends to a pack of its own");
    let reply = delete(&specs[0].study_url(&server.base)).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(reply.header("x-kura-deleted-instances"), Some("20"));
    assert_eq!(packs(), 1, "the first run's pack is gone with its last instance");
    let kept = get(&other.instance_url(&server.base), "application/dicom").await;
    assert_eq!(kept.body.as_ref(), as_stored(&instance(&other)).as_slice());
    server.terminate();
    assert_eq!(stored_blobs(&data).len(), 1);
}

/// A retrieval that has listed a series, then sees part of it deleted while the client is
/// still reading, serves every instance it sends byte for byte and leaves out those deleted
/// before their turn: a pack entry's bytes are punched out by the delete, and a read that
/// overlapped it used to hand those zeros out as the instance. The multipart body stays well
/// formed and so does the ZIP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrieval_overlapping_a_delete_sends_whole_instances_or_none() {
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(&dir.path().join("data"));
    // 2,000 instances of 32 KiB (pack entries): 64 MiB, far more than the sockets buffer.
    let specs: Vec<Spec> = (1..=2000).map(|i| Spec::new(67, 1 + (i - 1) / 1000, i).size(128, 128, 1)).collect();
    let stored: std::collections::HashMap<String, Vec<u8>> =
        specs.iter().map(|spec| (spec.sop_uid(), as_stored(&instance(spec)))).collect();
    for batch in specs.chunks(100) {
        let parts: Vec<Vec<u8>> = batch.iter().map(instance).collect();
        assert_eq!(stow(&server.base, None, &parts).await.status, StatusCode::OK);
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    for accept in ["multipart/related; type=\"application/dicom\"; transfer-syntax=*", "application/zip"] {
        let request = http::Request::builder().uri(specs[0].study_url(&server.base)).header("accept", accept);
        let response = client.request(request.body(http_body_util::Empty::new()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
        let mut body = response.into_body();
        // Read a little, then delete the second series (instances 1001..=2000) and read the rest.
        let mut received = Vec::new();
        while received.len() < 256 * 1024 {
            let frame = body.frame().await.expect("more body").unwrap();
            if let Some(chunk) = frame.data_ref() {
                received.extend_from_slice(chunk);
            }
        }
        let second_series = specs[1000].series_url(&server.base);
        assert_eq!(delete(&second_series).await.status, StatusCode::NO_CONTENT);
        received.extend_from_slice(&body.collect().await.expect("the whole body").to_bytes());

        let instances: Vec<Vec<u8>> = if accept == "application/zip" {
            zip_entries(&received)
        } else {
            split_multipart(&content_type, &received).into_iter().map(|(_, bytes)| bytes).collect()
        };
        let mut second = 0;
        for bytes in &instances {
            let sop = stored.iter().find(|(_, original)| original == &bytes).map(|(sop, _)| sop.clone());
            let zeros = bytes.iter().filter(|b| **b == 0).count();
            assert!(
                sop.is_some(),
                "{accept}: a sent instance of {} bytes ({zeros} zero) differs from every stored one",
                bytes.len()
            );
            second += usize::from(specs[1000..].iter().any(|spec| Some(spec.sop_uid()) == sop));
        }
        assert!(instances.len() >= 1000, "{accept}: {} instances", instances.len());
        assert!(second < 1000, "{accept}: none of the deleted series was left out: the race was not met");
        eprintln!(
            "{accept}: {} instances sent whole, {second} of the deleted series before its delete",
            instances.len()
        );
        // Put the series back for the next form.
        for batch in specs[1000..].chunks(100) {
            let parts: Vec<Vec<u8>> = batch.iter().map(instance).collect();
            assert_eq!(stow(&server.base, None, &parts).await.status, StatusCode::OK);
        }
    }
}

/// The entries of a ZIP (stored, no ZIP64) by its central directory, each checked against its
/// local header and CRC: what an unzip tool would extract.
fn zip_entries(zip: &[u8]) -> Vec<Vec<u8>> {
    let u16_at = |at: usize| u16::from_le_bytes([zip[at], zip[at + 1]]) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(zip[at..at + 4].try_into().unwrap()) as usize;
    let end = zip.len() - 22;
    assert_eq!(u32_at(end), 0x0605_4b50, "the end of central directory record closes the ZIP");
    let (count, mut at) = (u16_at(end + 10), u32_at(end + 16));
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        assert_eq!(u32_at(at), 0x0201_4b50, "a central directory header");
        let (crc, size, local) = (u32_at(at + 16) as u32, u32_at(at + 20), u32_at(at + 42));
        assert_eq!(u32_at(local), 0x0403_4b50, "a local header where the directory says");
        let data = local + 30 + u16_at(local + 26) + u16_at(local + 28);
        let bytes = zip[data..data + size].to_vec();
        assert_eq!(crc32(&bytes), crc, "the entry's CRC");
        entries.push(bytes);
        at += 46 + u16_at(at + 28) + u16_at(at + 30) + u16_at(at + 32);
    }
    entries
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
