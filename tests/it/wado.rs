use http::StatusCode;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn study_series_and_instance_retrieval_return_the_stored_bytes() {
    let server = Server::start().await;
    let specs: Vec<Spec> = (1..=4).map(|i| Spec::new(31, 1 + i % 2, i).size(128, 128, 1)).collect();
    let originals: Vec<Vec<u8>> = specs.iter().map(instance).collect();
    stow(&server.base, None, &originals).await;

    let study = get(
        &format!("{}/studies/{}", server.base, specs[0].study_uid()),
        "multipart/related; type=\"application/dicom\"",
    )
    .await;
    assert_eq!(study.status, StatusCode::OK);
    let parts = split_multipart(study.content_type(), &study.body);
    assert_eq!(parts.len(), 4);
    for (headers, body) in &parts {
        assert!(headers.contains("Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1"));
        let position = originals.iter().position(|o| as_stored(o) == *body).expect("a stored instance, byte-exact");
        assert!(headers.contains(&format!("Content-Location: {}", specs[position].instance_url(&server.base))));
    }
    let series_url = format!("{}/studies/{}/series/{}", server.base, specs[0].study_uid(), specs[1].series_uid());
    let series = get(&series_url, "multipart/related; type=\"application/dicom\"; transfer-syntax=*").await;
    assert_eq!(split_multipart(series.content_type(), &series.body).len(), 2);
    let single = get(&specs[2].instance_url(&server.base), "application/dicom").await;
    assert_eq!(single.body.as_ref(), as_stored(&originals[2]).as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_uids_are_404_and_malformed_400() {
    let server = Server::start().await;
    let spec = Spec::new(32, 1, 1);
    stow(&server.base, None, &[instance(&spec)]).await;
    let accept = "multipart/related; type=\"application/dicom\"";
    assert_eq!(get(&format!("{}/studies/1.2.3", server.base), accept).await.status, StatusCode::NOT_FOUND);
    let wrong_series =
        format!("{}/studies/{}/series/1.2.3/instances/{}", server.base, spec.study_uid(), spec.sop_uid());
    assert_eq!(get(&wrong_series, accept).await.status, StatusCode::NOT_FOUND, "instance under another series");
    assert_eq!(get(&format!("{}/studies/1.2.x", server.base), accept).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(get(&format!("{}/studies/..%2f..%2fetc", server.base), accept).await.status, StatusCode::BAD_REQUEST);
}

/// Where the frames of an encapsulated instance start is worked out once, when it is stored
/// (here from its Extended Offset Table), and kept in the catalog: frame requests read that map
/// instead of the instance's offset tables (issue 17: no per-request fragment mapping).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frame_map_is_worked_out_at_store_time() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let spec = Spec::new(323, 1, 1).size(8, 8, 3);
    let (file, frames) = extended_offset_table_instance(&spec, 3);
    let server = ChildServer::start(&data);
    assert_eq!(stow(&server.base, None, &[file]).await.status, StatusCode::OK);
    server.terminate();
    {
        use kura::store::keys;
        let db = sled::Config::new().path(data.join("store")).segment_size(8 << 20).open().unwrap();
        let catalog = db.open_tree("catalog").unwrap();
        let stored = catalog.get(keys::piece(&keys::frame_map(&spec.sop_uid()), 0)).unwrap().expect("a frame map");
        let starts: Vec<u32> = stored.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(starts, [0, 3, 6, 9], "three frames of three fragments each");
    }
    let server = ChildServer::start(&data);
    let url = format!("{}/frames/3", spec.instance_url(&server.base));
    let reply = get(&url, "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(split_multipart(reply.content_type(), &reply.body)[0].1, frames[2]);
    server.terminate();
}
