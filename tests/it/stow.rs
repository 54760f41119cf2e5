use http::{Method, StatusCode};
use kura::dicom::part10::AttributeValue;
use kura::store::{DuplicatePolicy, InstanceRecord, PayloadRef, PutOutcome, SledStore, SledStoreOptions, Store};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_a_single_ct_slice_and_returns_the_store_response() {
    let server = Server::start().await;
    let slice = ct_slice(1, 1, 1);
    let reply = stow(&server.base, None, std::slice::from_ref(&slice)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some("application/dicom+json"));
    let body = reply.json();
    let spec = Spec::new(1, 1, 1);
    assert_eq!(referenced_sops(&body), vec![spec.sop_uid()]);
    assert_eq!(value_of(&body, "00081190"), Some(format!("{}/studies/{}", server.base, spec.study_uid())));
    let instance_url = body["00081199"]["Value"][0]["00081190"]["Value"][0].as_str().unwrap();
    assert!(instance_url.ends_with(&format!("/series/{}/instances/{}", spec.series_uid(), spec.sop_uid())));
    assert!(body.get("00081198").is_none(), "no FailedSOPSequence when all stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_sixty_parts_including_multiframe_in_one_request() {
    let server = Server::start().await;
    let mut parts: Vec<Vec<u8>> = (1..=58).map(|i| instance(&Spec::new(2, 1 + i % 3, i).size(64, 64, 1))).collect();
    parts.push(instance(&Spec::new(2, 9, 1).size(256, 256, 12)));
    parts.push(instance(&Spec::new(2, 9, 2).size(128, 128, 30)));
    let reply = stow(&server.base, Some(&Spec::new(2, 1, 1).study_uid()), &parts).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(referenced_sops(&reply.json()).len(), 60);
    let studies = qido(&server.base, &format!("/studies?StudyInstanceUID={}", Spec::new(2, 1, 1).study_uid())).await;
    assert_eq!(studies.len(), 1);
    assert_eq!(value_of(&studies[0], "00201206"), Some("4".into()), "NumberOfStudyRelatedSeries");
    assert_eq!(value_of(&studies[0], "00201208"), Some("60".into()), "NumberOfStudyRelatedInstances");
    assert_eq!(server.archive.count_instances().unwrap(), 60);
}

/// Each refused part gets the expected FailureReason, the good parts of the same request are
/// stored, and nothing of a refused part is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failing_part_gets_its_failure_reason_and_stores_nothing() {
    let data = tempfile::tempdir().unwrap();
    let server = ChildServer::start(data.path());
    let good = instance(&Spec::new(3, 1, 1));
    let truncated = instance(&Spec::new(3, 1, 2))[..300].to_vec();
    let mut no_sop_uid = dataset(&Spec::new(3, 1, 3));
    no_sop_uid.remove_element(dicom_dictionary_std::tags::SOP_INSTANCE_UID);
    let no_sop_uid = part10(no_sop_uid);
    let mut bad_series_uid = dataset(&Spec::new(3, 1, 4));
    bad_series_uid.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::SERIES_INSTANCE_UID,
        dicom_core::VR::UI,
        dicom_core::PrimitiveValue::from("1.2.abc"),
    ));
    let bad_series_uid = part10(bad_series_uid);
    let other_study = instance(&Spec::new(4, 1, 1));
    let not_dicom = b"this is not a DICOM file, but it is long enough to have a preamble and more bytes than that: \
        0123456789012345678901234567890123456789012345678901234567890123456789"
        .to_vec();
    let parts = vec![good.clone(), truncated, no_sop_uid, bad_series_uid, other_study, not_dicom];
    let reply = stow(&server.base, Some(&Spec::new(3, 1, 1).study_uid()), &parts).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "some stored, some failed");
    let body = reply.json();
    assert_eq!(referenced_sops(&body), vec![Spec::new(3, 1, 1).sop_uid()]);
    let reasons: Vec<u16> = failed_sops(&body).iter().map(|(_, reason)| *reason).collect();
    assert_eq!(reasons, vec![0xC000, 0xA900, 0xA900, 0xC409, 0xC000]);
    assert_eq!(failed_sops(&body)[3].0, Spec::new(4, 1, 1).sop_uid(), "mismatch names the instance");
    assert!(reply.headers.get_all("warning").iter().count() >= 5, "a Warning per failure");
    assert_eq!(qido(&server.base, "/instances").await.len(), 1);
    assert!(
        qido(&server.base, &format!("/studies?StudyInstanceUID={}", Spec::new(4, 1, 1).study_uid())).await.is_empty()
    );
    // Nothing of the refused parts' bytes stays in the blob store.
    server.terminate();
    let blobs = stored_blobs(data.path());
    assert_eq!(blobs.len(), 1, "only the stored instance's blob remains");
    assert_eq!(blobs[0].1, as_stored(&good));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_parts_failing_is_409() {
    let server = Server::start().await;
    let reply = stow(&server.base, Some(&Spec::new(5, 1, 1).study_uid()), &[instance(&Spec::new(6, 1, 1))]).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(failed_sops(&reply.json()), vec![(Spec::new(6, 1, 1).sop_uid(), 0xC409)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_resend_succeeds_and_different_object_is_refused() {
    let server = Server::start().await;
    let spec = Spec::new(7, 1, 1);
    let first = instance(&spec);
    assert_eq!(stow(&server.base, None, std::slice::from_ref(&first)).await.status, StatusCode::OK);
    let again = stow(&server.base, None, std::slice::from_ref(&first)).await;
    assert_eq!(again.status, StatusCode::OK, "a retry of the same bytes is a success");
    assert_eq!(referenced_sops(&again.json()), vec![spec.sop_uid()]);
    let different = instance(&Spec { seed: 9, ..spec.clone() });
    let refused = stow(&server.base, None, &[different]).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(failed_sops(&refused.json()), vec![(spec.sop_uid(), 0x0111)]);
    let retrieved = get(&spec.instance_url(&server.base), "application/dicom; transfer-syntax=*").await;
    assert_eq!(retrieved.body.as_ref(), as_stored(&first).as_slice(), "the first object stays");
    assert_eq!(server.archive.count_instances().unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_policy_replaces_the_stored_object() {
    let server = Server::start_with(|c| c.archive.duplicate_policy = DuplicatePolicy::Overwrite).await;
    let spec = Spec::new(8, 1, 1);
    stow(&server.base, None, &[instance(&spec)]).await;
    let moved = Spec { series: 2, seed: 3, ..spec.clone() };
    let mut replacement = dataset(&moved);
    replacement.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::SOP_INSTANCE_UID,
        dicom_core::VR::UI,
        dicom_core::PrimitiveValue::from(spec.sop_uid()),
    ));
    let replacement = part10(replacement);
    let reply = stow(&server.base, None, std::slice::from_ref(&replacement)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let url = format!(
        "{}/studies/{}/series/{}/instances/{}",
        server.base,
        spec.study_uid(),
        moved.series_uid(),
        spec.sop_uid()
    );
    assert_eq!(
        get(&url, "application/dicom; transfer-syntax=*").await.body.as_ref(),
        as_stored(&replacement).as_slice()
    );
    let series = qido(&server.base, &format!("/studies/{}/series", spec.study_uid())).await;
    assert_eq!(series.len(), 1, "the emptied series is gone");
    assert_eq!(value_of(&series[0], "0020000E"), Some(moved.series_uid()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preamble_is_zeroed_and_every_other_byte_kept() {
    let server = Server::start().await;
    let spec = Spec::new(9, 1, 1);
    let mut original = instance(&spec);
    original[..2].copy_from_slice(b"MZ");
    original[2..128].fill(0x90);
    stow(&server.base, None, std::slice::from_ref(&original)).await;
    let reply = get(&spec.instance_url(&server.base), "application/dicom; transfer-syntax=*").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body[..128].iter().all(|b| *b == 0), "CVE-2019-11687: preamble zeroed");
    assert_eq!(&reply.body[128..], &original[128..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_media_types_are_415_and_malformed_requests_400() {
    let server = Server::start().await;
    let url = format!("{}/studies", server.base);
    let part = instance(&Spec::new(10, 1, 1));
    let cases: Vec<(String, StatusCode)> = vec![
        ("application/json".into(), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (
            format!("multipart/related; type=\"application/dicom+json\"; boundary={BOUNDARY}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        ("multipart/related; type=\"application/dicom\"".into(), StatusCode::BAD_REQUEST),
        (format!("multipart/related; type=\"application/dicom\"; boundary=wrong-{BOUNDARY}"), StatusCode::BAD_REQUEST),
    ];
    for (content_type, expected) in cases {
        let reply = send(
            Method::POST,
            &url,
            &[("content-type", content_type.as_str())],
            multipart(std::slice::from_ref(&part)),
        )
        .await;
        assert_eq!(reply.status, expected, "{content_type}");
        assert!(reply.json()["message"].as_str().is_some_and(|m| !m.is_empty()), "a message a human can act on");
    }
    assert_eq!(server.archive.count_instances().unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_part_application_dicom_is_accepted() {
    let server = Server::start().await;
    let part = instance(&Spec::new(11, 1, 1));
    let url = format!("{}/studies", server.base);
    let reply = send(Method::POST, &url, &[("content-type", "application/dicom")], part).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(referenced_sops(&reply.json()), vec![Spec::new(11, 1, 1).sop_uid()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_oversized_parts_headers_and_requests() {
    let server = Server::start_with(|c| {
        c.archive.max_instance_bytes = 100_000;
        c.max_parts = 3;
        c.max_part_header_bytes = 1024;
        c.max_request_bytes = 2_000_000;
    })
    .await;
    let small = instance(&Spec::new(12, 1, 1));
    let big = ct_slice(12, 1, 2);
    // A part over the instance limit fails alone (A700); the rest of the request is stored.
    let reply = stow(&server.base, None, &[big.clone(), small.clone()]).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(failed_sops(&reply.json()), vec![(String::new(), 0xA700)]);
    assert_eq!(referenced_sops(&reply.json()), vec![Spec::new(12, 1, 1).sop_uid()]);

    let too_many: Vec<Vec<u8>> = (10..15).map(|i| instance(&Spec::new(12, 2, i))).collect();
    let reply = stow(&server.base, None, &too_many).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "more parts than allowed");

    let mut long_header = format!("--{BOUNDARY}\r\nContent-Type: application/dicom\r\n").into_bytes();
    long_header.extend(
        std::iter::repeat_n(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".to_vec(), 100).flatten(),
    );
    long_header.extend_from_slice(b"\r\n");
    long_header.extend_from_slice(&small);
    long_header.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let content_type = stow_content_type();
    let url = format!("{}/studies", server.base);
    let reply = send(Method::POST, &url, &[("content-type", content_type.as_str())], long_header).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "part header block over the limit");

    let huge_declared = try_send(
        Method::POST,
        &url,
        &[("content-type", content_type.as_str()), ("content-length", "4294967296")],
        bytes::Bytes::new(),
    )
    .await;
    // hyper's client refuses a mismatched Content-Length, so a refusal either way is fine:
    // what matters is that the server never accepted or allocated it.
    if let Ok(reply) = huge_declared {
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    }
    // The server is still up and stored exactly what it acknowledged.
    assert_eq!(qido(&server.base, "/instances").await.len(), 1 + 3);
}

/// An identical re-send of an object that an older Kura stored with fewer recorded values (the
/// items of RequestAttributesSequence were not recorded before schema 5) refreshes its records,
/// so that a re-send is how such instances become searchable by the new keys; a re-send that
/// would record nothing new stays a no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_resend_refreshes_records_of_an_older_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path(), SledStoreOptions::default()).expect("open");
    let old_values = vec![AttributeValue::new(dicom_dictionary_std::tags::MODALITY, vec!["CT".into()])];
    let record = |attributes: Vec<AttributeValue>| InstanceRecord {
        version: kura::model::records::RECORD_VERSION,
        owner: "test".into(),
        study_uid: "1.2.3".into(),
        series_uid: "1.2.3.4".into(),
        sop_instance_uid: "1.2.3.4.5".into(),
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
        transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
        payload: PayloadRef { id: 1, length: 10, sha256: "ab".into() },
        attributes,
        seq: 0,
        pixel_data: None,
        large_values: Vec::new(),
    };
    let put =
        |attributes| store.put_instance(record(attributes), b"{}", None, None, DuplicatePolicy::Reject).expect("put");
    assert!(matches!(put(old_values.clone()), PutOutcome::Stored { replaced: false, garbage: None }));
    assert!(matches!(put(old_values.clone()), PutOutcome::AlreadyStored));
    let mut new_values = old_values;
    new_values.push(AttributeValue {
        sequence: Some(0x0040_0275),
        ..AttributeValue::new(dicom_dictionary_std::tags::REQUESTED_PROCEDURE_ID, vec!["RP1".into()])
    });
    assert!(matches!(put(new_values.clone()), PutOutcome::Stored { replaced: true, garbage: None }));
    let series = store.series("1.2.3", "1.2.3.4").expect("series").expect("a series record");
    assert!(series.attributes.iter().any(|v| v.sequence.is_some()), "{:?}", series.attributes);
    assert!(matches!(put(new_values), PutOutcome::AlreadyStored));
}
