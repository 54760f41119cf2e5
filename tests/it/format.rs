//! Data-directory format versions: a directory written in format 1 (payload chunks in sled,
//! every catalog value under one key) opens, migrated in place; an unknown format is refused.

use http::StatusCode;
use kura::store::keys;

use crate::support::*;

/// Rewrites a format-2 data directory into format 1, the layout Kura wrote before payloads left
/// sled: chunks of 64 KiB in the `payloads` tree, records as one JSON value with `chunk_size`,
/// version 1, and no blob files.
fn downgrade_to_format_1(data_dir: &std::path::Path) {
    let db = sled::Config::new().path(data_dir.join("store")).segment_size(8 << 20).open().unwrap();
    let catalog = db.open_tree("catalog").unwrap();
    let payloads = db.open_tree("payloads").unwrap();
    let first_pieces: Vec<Vec<u8>> = catalog
        .scan_prefix([keys::INSTANCE])
        .map(|item| item.unwrap().0.to_vec())
        .filter(|key| keys::is_first_piece(key))
        .collect();
    let stored = stored_blobs(data_dir);
    for first in first_pieces {
        let base = keys::piece_base(&first).to_vec();
        let join = |base: &[u8]| -> Vec<u8> {
            let mut out = Vec::new();
            for item in catalog.scan_prefix(keys::pieces_prefix(base)) {
                let (key, value) = item.unwrap();
                catalog.remove(&key).unwrap();
                out.extend_from_slice(&value);
            }
            out
        };
        // Format 2 writes records in postcard behind a marker byte; format 1 wrote JSON.
        let bytes = join(&base);
        let decoded: kura::store::InstanceRecord = postcard::from_bytes(&bytes[1..]).unwrap();
        let mut record = serde_json::to_value(&decoded).unwrap();
        let sop = String::from_utf8(base[1..].to_vec()).unwrap();
        let metadata = join(&keys::metadata(&sop));
        let id = record["payload"]["id"].as_u64().unwrap();
        let blob = stored.iter().find(|(stored, _)| *stored == id).map(|(_, bytes)| bytes).unwrap();
        for (n, chunk) in blob.chunks(64 * 1024).enumerate() {
            payloads.insert(keys::chunk(id, n as u32), chunk).unwrap();
        }
        record["version"] = 1.into();
        record["payload"]["chunk_size"] = (64 * 1024).into();
        catalog.insert(&base, serde_json::to_vec(&record).unwrap()).unwrap();
        catalog.insert(keys::metadata(&sop), metadata).unwrap();
        catalog.remove(keys::payload_ref(id)).unwrap();
    }
    // Format 1 kept every payload in sled.
    std::fs::remove_dir_all(data_dir.join("blobs")).unwrap();
    // Series and study records were JSON too.
    for item in catalog.iter() {
        let (key, value) = item.unwrap();
        let json = match key[0] {
            keys::SERIES => {
                serde_json::to_vec(&postcard::from_bytes::<kura::store::SeriesRecord>(&value[1..]).unwrap())
            }
            keys::STUDY => serde_json::to_vec(&postcard::from_bytes::<kura::store::StudyRecord>(&value[1..]).unwrap()),
            _ => continue,
        };
        catalog.insert(key, json.unwrap()).unwrap();
    }
    catalog.insert(keys::meta("format"), keys::FORMAT_VERSION_1).unwrap();
    db.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_directory_is_migrated_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let specs = [Spec::new(70, 1, 1).size(512, 512, 1), Spec::new(70, 1, 2), Spec::new(71, 1, 1).size(64, 64, 3)];
    let parts: Vec<Vec<u8>> = specs.iter().map(instance).collect();
    let server = ChildServer::start(&data);
    assert_eq!(stow(&server.base, None, &parts).await.status, StatusCode::OK);
    server.terminate();
    downgrade_to_format_1(&data);
    assert!(!data.join("blobs").exists());

    let server = ChildServer::start(&data);
    for (spec, part) in specs.iter().zip(&parts) {
        let reply = get(&spec.instance_url(&server.base), "application/dicom").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body.as_ref(), as_stored(part).as_slice(), "{} after migration", spec.sop_uid());
        let metadata = get(&format!("{}/metadata", spec.instance_url(&server.base)), "application/dicom+json").await;
        assert_eq!(metadata.status, StatusCode::OK);
    }
    assert_eq!(qido(&server.base, "/instances").await.len(), 3);
    assert_eq!(stored_blobs(&data).len(), 3, "every payload is a blob now");
    server.terminate();
    let db = sled::Config::new().path(data.join("store")).segment_size(8 << 20).open().unwrap();
    assert!(db.open_tree("payloads").unwrap().is_empty(), "no chunk is left in sled");
    let format = db.open_tree("catalog").unwrap().get(keys::meta("format")).unwrap().unwrap();
    assert_eq!(format.as_ref(), keys::FORMAT_VERSION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_format_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let db = sled::Config::new().path(data.join("store")).segment_size(8 << 20).open().unwrap();
        db.open_tree("catalog").unwrap().insert(keys::meta("format"), &b"kura-catalog-99"[..]).unwrap();
        db.flush().unwrap();
    }
    let output = std::process::Command::new(kura_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("format"), "the refusal names the problem: {stderr}");
}

/// Format 2 (every payload a file of its own, what the previous release wrote) opens as format 3
/// without any change to what is stored; the new small instances go to a pack beside the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_2_directory_opens_as_format_3() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let big = Spec::new(72, 1, 1).size(512, 512, 1);
    let server = ChildServer::start(&data);
    assert_eq!(stow(&server.base, None, &[instance(&big)]).await.status, StatusCode::OK);
    server.terminate();
    {
        let db = sled::Config::new().path(data.join("store")).segment_size(8 << 20).open().unwrap();
        db.open_tree("catalog").unwrap().insert(keys::meta("format"), keys::FORMAT_VERSION_2).unwrap();
        db.flush().unwrap();
    }
    let server = ChildServer::start(&data);
    let small = Spec::new(72, 1, 2);
    assert_eq!(stow(&server.base, None, &[instance(&small)]).await.status, StatusCode::OK);
    for (spec, part) in [(&big, instance(&big)), (&small, instance(&small))] {
        let reply = get(&spec.instance_url(&server.base), "application/dicom").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body.as_ref(), as_stored(&part).as_slice());
    }
    server.terminate();
    let blobs = stored_blobs(&data);
    assert_eq!(blobs.len(), 2);
    assert!(
        blobs.iter().any(|(id, _)| id >> 63 == 0) && blobs.iter().any(|(id, _)| id >> 63 == 1),
        "a file and a pack entry"
    );
    let db = sled::Config::new().path(data.join("store")).segment_size(8 << 20).open().unwrap();
    let format = db.open_tree("catalog").unwrap().get(keys::meta("format")).unwrap().unwrap();
    assert_eq!(format.as_ref(), keys::FORMAT_VERSION);
}

/// Format 3 (what main wrote before storage compression) opens as format 4 without any change:
/// its instances have no original-form keys and are served as stored; new instances may then be
/// stored re-encoded beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_3_directory_opens_as_format_4() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let old = Spec::new(73, 1, 1).size(256, 256, 1);
    let server = ChildServer::start(&data);
    assert_eq!(stow(&server.base, None, &[instance(&old)]).await.status, StatusCode::OK);
    server.terminate();
    {
        let db = sled::Config::new().path(data.join("store")).segment_size(8 << 20).open().unwrap();
        db.open_tree("catalog").unwrap().insert(keys::meta("format"), keys::FORMAT_VERSION_3).unwrap();
        db.flush().unwrap();
    }
    let server = ChildServer::start_with(&data, &["--store-compression", "jpeg-ls"]);
    let new = Spec::new(73, 1, 2).size(256, 256, 1);
    assert_eq!(stow(&server.base, None, &[instance(&new)]).await.status, StatusCode::OK);
    for spec in [&old, &new] {
        let reply = get(&spec.instance_url(&server.base), "application/dicom").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body.as_ref(), as_stored(&instance(spec)).as_slice());
    }
    let stored = get(&new.instance_url(&server.base), "application/dicom; transfer-syntax=*").await;
    assert_eq!(stored.content_type(), "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.80");
    server.terminate();
    let db = sled::Config::new().path(data.join("store")).segment_size(8 << 20).open().unwrap();
    let format = db.open_tree("catalog").unwrap().get(keys::meta("format")).unwrap().unwrap();
    assert_eq!(format.as_ref(), keys::FORMAT_VERSION);
}
