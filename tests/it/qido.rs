use http::StatusCode;

use crate::support::*;

async fn archive_with_three_studies() -> Server {
    let server = Server::start().await;
    let mut parts = Vec::new();
    for (study, name, date, modality) in [
        (21, "Smith^John", "20240105", "CT"),
        (22, "smithers^anna", "20240210", "MR"),
        (23, "Jones^Bob", "20231231", "CT"),
    ] {
        for series in 1..=2 {
            for number in 1..=3 {
                let mut spec = Spec::new(study, series, number);
                spec.patient_name = name.into();
                spec.study_date = date.into();
                spec.modality = if series == 2 && study == 21 { "SR".into() } else { modality.into() };
                parts.push(instance(&spec));
            }
        }
    }
    assert_eq!(stow(&server.base, None, &parts).await.status, StatusCode::OK);
    server
}

fn study_ids(results: &[serde_json::Value]) -> Vec<String> {
    let mut ids: Vec<String> = results.iter().filter_map(|r| value_of(r, "00200010")).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn study_search_matches_names_ids_dates_and_modalities() {
    let server = archive_with_three_studies().await;
    let base = &server.base;
    assert_eq!(study_ids(&qido(base, "/studies").await), ["S21", "S22", "S23"]);
    assert_eq!(study_ids(&qido(base, "/studies?PatientName=smith*").await), ["S21", "S22"], "PN is case-insensitive");
    assert_eq!(study_ids(&qido(base, "/studies?PatientName=SMITH%5EJOHN").await), ["S21"]);
    assert_eq!(study_ids(&qido(base, "/studies?00100010=Jo?es*").await), ["S23"], "by tag, with ?");
    assert_eq!(study_ids(&qido(base, "/studies?PatientID=PID00022").await), ["S22"]);
    assert_eq!(study_ids(&qido(base, "/studies?StudyDate=20240101-").await), ["S21", "S22"]);
    assert_eq!(study_ids(&qido(base, "/studies?StudyDate=-20240105").await), ["S21", "S23"]);
    assert_eq!(study_ids(&qido(base, "/studies?StudyDate=20240101-20240131").await), ["S21"]);
    assert_eq!(study_ids(&qido(base, "/studies?ModalitiesInStudy=SR").await), ["S21"]);
    assert_eq!(study_ids(&qido(base, "/studies?Modality=MR").await), ["S22"], "Modality on /studies");
    let uids = format!("{},{}", Spec::new(21, 1, 1).study_uid(), Spec::new(23, 1, 1).study_uid());
    assert_eq!(study_ids(&qido(base, &format!("/studies?StudyInstanceUID={uids}")).await), ["S21", "S23"]);
    let first = &qido(base, "/studies?PatientID=PID00021").await[0];
    assert_eq!(first["00080061"]["Value"], serde_json::json!(["CT", "SR"]), "ModalitiesInStudy");
    assert_eq!(value_of(first, "00201208"), Some("6".into()));
    assert_eq!(first["00100010"]["Value"][0]["Alphabetic"], "Smith^John");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_and_instance_resources() {
    let server = archive_with_three_studies().await;
    let base = &server.base;
    let study = Spec::new(21, 1, 1).study_uid();
    let series = qido(base, &format!("/studies/{study}/series")).await;
    assert_eq!(series.len(), 2);
    assert_eq!(value_of(&series[0], "00201209"), Some("3".into()), "NumberOfSeriesRelatedInstances");
    assert_eq!(qido(base, "/series?Modality=CT").await.len(), 3);
    assert_eq!(qido(base, "/series?PatientName=Jones*").await.len(), 2, "study attributes on /series");
    let instances =
        qido(base, &format!("/studies/{study}/series/{}/instances", Spec::new(21, 1, 1).series_uid())).await;
    assert_eq!(instances.len(), 3);
    assert_eq!(qido(base, &format!("/studies/{study}/instances?InstanceNumber=2")).await.len(), 2);
    assert_eq!(qido(base, "/instances?PatientID=PID00023").await.len(), 6);
    let one = qido(base, &format!("/instances?SOPInstanceUID={}", Spec::new(22, 2, 3).sop_uid())).await;
    assert_eq!(one.len(), 1);
    assert_eq!(value_of(&one[0], "00200013"), Some("3".into()));
    assert_eq!(value_of(&one[0], "0020000D"), Some(Spec::new(22, 2, 3).study_uid()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_is_stable_and_warns_about_remaining_results() {
    let server = archive_with_three_studies().await;
    let reply = get(&format!("{}/instances?limit=7&offset=0", server.base), "application/dicom+json").await;
    assert_eq!(reply.json().as_array().unwrap().len(), 7);
    assert!(reply.header("warning").unwrap().contains("There are 11 additional results that can be requested"));
    let mut seen = Vec::new();
    for offset in (0..18).step_by(5) {
        for row in qido(&server.base, &format!("/instances?limit=5&offset={offset}")).await {
            seen.push(value_of(&row, "00080018").unwrap());
        }
    }
    let total = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!((total, seen.len()), (18, 18), "pages partition the results");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_400_naming_the_parameter() {
    let server = Server::start().await;
    // An unknown parameter name is ignored (PS3.18 §8.3; tests/it/edge.rs, conformance QIDO-027).
    for (query, needle) in [
        ("/studies?StudyDate=2024", "StudyDate"),
        ("/studies?StudyDate=20240201-20240101", "StudyDate"),
        ("/studies?limit=-1", "limit"),
        ("/studies?StudyInstanceUID=1.2.x", "StudyInstanceUID"),
        ("/studies?includefield=Bogus", "includefield"),
    ] {
        let reply = get(&format!("{}{query}", server.base), "application/dicom+json").await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(reply.json()["message"].as_str().unwrap().contains(needle), "{query}");
    }
    assert_eq!(qido(&server.base, "/studies?PatientName=*").await.len(), 0, "empty archive: 200 []");
}
