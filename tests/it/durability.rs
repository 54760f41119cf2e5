use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::support::*;

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// An enhanced-style multi-frame object whose catalog entries are large: a per-frame functional
/// group per frame in the metadata (hundreds of KiB of DICOM JSON) and, in RLE, one fragment
/// per frame in the record.
fn enhanced_instance(study: u32, frames: u32) -> Vec<u8> {
    use dicom_core::value::DataSetSequence;
    use dicom_core::{DataElement, VR, dicom_value};
    use dicom_dictionary_std::tags;
    use dicom_object::InMemDicomObject;
    let spec = Spec::new(study, 1, 1).size(4, 4, frames);
    let mut object =
        dicom_object::from_reader(std::io::Cursor::new(&rle_instance(&spec)[128..])).expect("fixture parses");
    let items: Vec<InMemDicomObject> = (0..frames)
        .map(|frame| {
            let mut position = InMemDicomObject::new_empty();
            let z = format!("{:.3}", f64::from(frame) * 0.625);
            position.put(DataElement::new(
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                dicom_value!(Strs, ["-125.000".to_string(), "-125.000".to_string(), z]),
            ));
            let mut item = InMemDicomObject::new_empty();
            item.put(DataElement::new(tags::PLANE_POSITION_SEQUENCE, VR::SQ, DataSetSequence::from(vec![position])));
            item
        })
        .collect();
    object.put(DataElement::new(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, VR::SQ, DataSetSequence::from(items)));
    let mut bytes = Vec::new();
    object.write_all(&mut bytes).expect("writes");
    bytes
}

/// sled 0.34.7 never fsyncs blob files, so the store must never create one (see
/// store/sled_store.rs): ingest more than 100 MB, and enhanced objects with large catalog
/// entries, and look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_never_writes_blob_files() {
    let server = Server::start().await;
    let enhanced: Vec<Vec<u8>> = (0..6).map(|n| enhanced_instance(90 + n, 3000)).collect();
    let reply = stow(&server.base, None, &enhanced).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let metadata =
        get(&format!("{}/metadata", Spec::new(90, 1, 1).instance_url(&server.base)), "application/dicom+json").await;
    assert!(metadata.body.len() > 256 * 1024, "the metadata is large: {} bytes", metadata.body.len());
    let mut clients = Vec::new();
    for client in 0..4u32 {
        let base = server.base.clone();
        clients.push(tokio::spawn(async move {
            for batch in 0..5u32 {
                let parts: Vec<Vec<u8>> = (0..10).map(|i| ct_slice(40 + client, 1, batch * 10 + i + 1)).collect();
                let reply = stow(&base, None, &parts).await;
                assert_eq!(reply.status, StatusCode::OK);
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(server.archive.count_instances().unwrap(), 206, "200 × 512 KiB ≈ 105 MB stored, and 6 enhanced");
    let blobs = server.data_dir().join("store").join("blobs");
    let n_blobs = std::fs::read_dir(&blobs).map(|entries| entries.count()).unwrap_or(0);
    assert_eq!(n_blobs, 0, "sled wrote {n_blobs} blob file(s) that it would never fsync");
    let spec = Spec::new(41, 1, 17).size(512, 512, 1);
    let reply = get(&spec.instance_url(&server.base), "application/dicom").await;
    assert_eq!(reply.body.as_ref(), as_stored(&instance(&spec)).as_slice());
}

#[derive(Default, Clone)]
struct Ledger {
    /// Everything ever sent: SOP Instance UID → SHA-256 of the bytes as stored.
    attempted: HashMap<String, String>,
    /// Instances a 200 response acknowledged.
    acknowledged: HashSet<String>,
    /// Instances whose DELETE was acknowledged (204).
    deleted: HashSet<String>,
    /// Instances whose DELETE was sent but not answered (the kill came first): either state.
    delete_uncertain: HashSet<String>,
    specs: HashMap<String, Spec>,
}

async fn verify(base: &str, data_dir: &std::path::Path, ledger: &Ledger) {
    let mut visible = Vec::new();
    let mut offset = 0;
    loop {
        let page = qido(base, &format!("/instances?limit=1000&offset={offset}")).await;
        if page.is_empty() {
            break;
        }
        offset += page.len();
        visible.extend(page);
    }
    let visible_sops: HashSet<String> = visible.iter().filter_map(|r| value_of(r, "00080018")).collect();
    for sop in
        ledger.acknowledged.iter().filter(|s| !ledger.deleted.contains(*s) && !ledger.delete_uncertain.contains(*s))
    {
        assert!(visible_sops.contains(sop), "acknowledged instance {sop} is not found by QIDO after the crash");
    }
    for sop in &ledger.deleted {
        assert!(!visible_sops.contains(sop), "instance {sop}, deleted with a 204, is back after the crash");
        let reply = get(&ledger.specs[sop].instance_url(base), "application/dicom").await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "deleted instance {sop} is retrievable after the crash");
    }
    // Space: one blob per instance, none left of unacknowledged or deleted ones.
    assert_eq!(stored_blobs(data_dir).len(), visible_sops.len(), "blob files match the stored instances");
    for sop in &visible_sops {
        let expected = ledger.attempted.get(sop).unwrap_or_else(|| panic!("QIDO shows {sop}, which nobody sent"));
        let spec = &ledger.specs[sop];
        let reply = get(&spec.instance_url(base), "application/dicom").await;
        assert_eq!(reply.status, StatusCode::OK, "{sop} is searchable but not retrievable");
        assert_eq!(&sha256(&reply.body), expected, "{sop} is not byte-exact after the crash");
    }
    let studies = qido(base, "/studies?limit=1000").await;
    let counted: u64 = studies.iter().map(|s| value_of(s, "00201208").unwrap().parse::<u64>().unwrap()).sum();
    assert_eq!(counted, visible_sops.len() as u64, "study counts agree with the instances");
}

/// Four concurrent STOW clients and one that deletes acknowledged instances; SIGKILL at a random
/// moment; restart; every acknowledged instance that was not deleted is retrievable byte-exact
/// and searchable, every acknowledged delete stays deleted, whatever else is visible is whole,
/// and the blob files are exactly those of the stored instances.
/// KURA_CRASH_CYCLES raises the number of cycles (default 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_concurrent_stow_loses_nothing_acknowledged() {
    let cycles: u32 = std::env::var("KURA_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let data = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261125);
    for cycle in 0..cycles {
        let server = ChildServer::start(data.path());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut clients = Vec::new();
        for client in 0..4u32 {
            let (base, ledger, stop) = (server.base.clone(), ledger.clone(), stop.clone());
            let seed: u64 = rng.random();
            clients.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mut number = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let n_parts = rng.random_range(1..=3);
                    let mut parts = Vec::new();
                    for _ in 0..n_parts {
                        number += 1;
                        let side = [64u16, 128, 256, 512][rng.random_range(0..4)];
                        let spec = Spec::new(1000 + cycle * 10 + client, 1 + number % 2, number).size(side, side, 1);
                        let bytes = instance(&spec);
                        let mut ledger = ledger.lock().unwrap();
                        ledger.attempted.insert(spec.sop_uid(), sha256(&as_stored(&bytes)));
                        ledger.specs.insert(spec.sop_uid(), spec);
                        parts.push(bytes);
                    }
                    match try_stow(&base, None, &parts).await {
                        Ok(reply) if reply.status == StatusCode::OK => {
                            let mut ledger = ledger.lock().unwrap();
                            ledger.acknowledged.extend(referenced_sops(&reply.json()));
                        }
                        _ => break, // The server is gone.
                    }
                }
            }));
        }
        {
            let (base, ledger, stop) = (server.base.clone(), ledger.clone(), stop.clone());
            let seed: u64 = rng.random();
            clients.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let target = {
                        let ledger = ledger.lock().unwrap();
                        let mut candidates: Vec<&String> = ledger
                            .acknowledged
                            .iter()
                            .filter(|s| !ledger.deleted.contains(*s) && !ledger.delete_uncertain.contains(*s))
                            .collect();
                        candidates.sort();
                        (candidates.len() > 4).then(|| candidates[rng.random_range(0..candidates.len())].clone())
                    };
                    let Some(sop) = target else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let url = ledger.lock().unwrap().specs[&sop].instance_url(&base);
                    ledger.lock().unwrap().delete_uncertain.insert(sop.clone());
                    match try_send(http::Method::DELETE, &url, &[], Vec::new()).await {
                        Ok(reply) if reply.status == StatusCode::NO_CONTENT => {
                            let mut ledger = ledger.lock().unwrap();
                            ledger.delete_uncertain.remove(&sop);
                            ledger.deleted.insert(sop);
                        }
                        _ => break, // The server is gone: this delete's outcome is unknown.
                    }
                    tokio::time::sleep(Duration::from_millis(rng.random_range(5..60))).await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..1200))).await;
        server.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for client in clients {
            client.await.unwrap();
        }
        let restarted = ChildServer::start(data.path());
        let snapshot = ledger.lock().unwrap().clone();
        verify(&restarted.base, data.path(), &snapshot).await;
        // A delete the kill interrupted went one way or the other: what the restart shows is
        // now the known state.
        for sop in &snapshot.delete_uncertain {
            let reply = get(&snapshot.specs[sop].instance_url(&restarted.base), "application/dicom").await;
            let mut ledger = ledger.lock().unwrap();
            ledger.delete_uncertain.remove(sop);
            if reply.status == StatusCode::NOT_FOUND {
                ledger.deleted.insert(sop.clone());
            }
        }
        restarted.kill();
    }
    let ledger = ledger.lock().unwrap();
    assert!(ledger.acknowledged.len() >= cycles as usize, "the clients got instances acknowledged");
    assert!(!ledger.deleted.is_empty(), "the deleter got deletes acknowledged");
    eprintln!(
        "crash test: {cycles} kills, {} acknowledged, {} attempted, {} deleted",
        ledger.acknowledged.len(),
        ledger.attempted.len(),
        ledger.deleted.len()
    );
}

/// `kura reindex` rebuilds the derived index from the store with the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_gives_the_same_answers() {
    let data = tempfile::tempdir().unwrap();
    let server = ChildServer::start(data.path());
    let parts: Vec<Vec<u8>> = (1..=30u32)
        .map(|i| {
            let mut spec = Spec::new(50 + i % 4, 1 + i % 3, i);
            spec.modality = ["CT", "MR", "US"][(i % 3) as usize].into();
            instance(&spec)
        })
        .collect();
    assert_eq!(stow(&server.base, None, &parts).await.status, StatusCode::OK);
    let queries = [
        "/studies",
        "/studies?PatientName=doe*",
        "/studies?ModalitiesInStudy=MR",
        "/series?Modality=US",
        "/instances?limit=7&offset=3",
        "/studies?StudyDate=20240101-20241231&includefield=all",
    ];
    // RetrieveURLs name the server's port, which changes across restarts.
    let answers =
        |base: &str, rows: Vec<serde_json::Value>| serde_json::to_string(&rows).unwrap().replace(base, "BASE");
    let mut before = Vec::new();
    for query in queries {
        before.push(answers(&server.base, qido(&server.base, query).await));
    }
    server.terminate();
    let output =
        std::process::Command::new(kura_binary()).args(["reindex", "--data"]).arg(data.path()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "reindexed 30 instances");
    let server = ChildServer::start(data.path());
    for (query, expected) in queries.iter().zip(before) {
        let after = answers(&server.base, qido(&server.base, query).await);
        assert!(expected.len() > 2, "{query} matched something");
        assert_eq!(after, expected, "{query} after reindex");
    }
    server.terminate();
}

/// Unmounts a test file system when the test ends, however it ends.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk: STOW answers Out of Resources (A700) for what does not fit, with nothing of it
/// stored; searches and retrievals keep working; a delete gives the space back and stores
/// resume. Kura keeps `--min-free-mib` free so that the catalog and the index never meet a full
/// disk (sled and tantivy stop for good when they do). Needs root for a small tmpfs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_refuses_with_a700_and_resumes_after_a_delete() {
    let holder = tempfile::tempdir().unwrap();
    let mountpoint = holder.path().join("small");
    std::fs::create_dir(&mountpoint).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&mountpoint)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED disk_full test: mounting a tmpfs needs root");
        return;
    }
    let _mount = Mount(mountpoint.clone());
    let data = mountpoint.join("data");
    let server = ChildServer::start_with(&data, &["--min-free-mib", "12"]);
    let mut stored = Vec::new();
    let mut refused = None;
    for n in 1..=120u32 {
        let spec = Spec::new(300 + n / 10, 1, n).size(512, 512, 1);
        let reply = stow(&server.base, None, &[instance(&spec)]).await;
        if reply.status == StatusCode::OK {
            stored.push(spec);
            continue;
        }
        refused = Some((spec, reply));
        break;
    }
    let (spec, reply) = refused.expect("a 48 MiB file system fills up with 60 MiB of instances");
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());
    assert_eq!(failure_reasons(&reply.json()), vec![0xA700], "Out of Resources");
    assert!(reply.warnings().contains("retry when space has been freed"), "{}", reply.warnings());
    assert!(stored.len() >= 40, "{} stored before the disk filled", stored.len());
    assert_eq!(stored_blobs(&data).len(), stored.len(), "nothing of the refused instance is left");
    // Reads keep working.
    assert_eq!(qido(&server.base, "/instances?limit=1000").await.len(), stored.len());
    let first = get(&stored[0].instance_url(&server.base), "application/dicom").await;
    assert_eq!(first.body.as_ref(), as_stored(&instance(&stored[0])).as_slice());
    // A delete gives space back, and stores resume.
    let deleted = send(http::Method::DELETE, &stored[0].study_url(&server.base), &[], Vec::new()).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text());
    let again = stow(&server.base, None, &[instance(&spec)]).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    server.terminate();
}
