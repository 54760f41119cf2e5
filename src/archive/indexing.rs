//! From store records to index documents. The index holds one document per study, series and
//! instance; each carries the values of its level and of the levels above it.

use std::collections::BTreeSet;

use dicom_dictionary_std::tags;

use crate::dicom::attrs::Level;
use crate::dicom::part10::AttributeValue;
use crate::error::Error;
use crate::index::{DocKey, IndexDoc, IndexOp};
use crate::store::{Change, InstanceRecord, SeriesRecord, Store, StudyRecord};

/// Study-level values including the computed ones (ModalitiesInStudy, SOPClassesInStudy).
pub fn study_values(study: &StudyRecord) -> Vec<AttributeValue> {
    let mut values = study.attributes.clone();
    values.push(AttributeValue::new(tags::MODALITIES_IN_STUDY, study.modalities.clone()));
    values.push(AttributeValue::new(tags::SOP_CLASSES_IN_STUDY, study.sop_classes.clone()));
    values
}

fn count(tag: dicom_core::Tag, n: u64) -> AttributeValue {
    AttributeValue::new(tag, vec![n.to_string()])
}

/// What a search returns for a study: its attributes, ModalitiesInStudy, SOPClassesInStudy and
/// the two counts (PS3.18 Table 10.6.3-3).
pub fn study_row(study: &StudyRecord) -> Vec<AttributeValue> {
    let mut values = study_values(study);
    values.push(count(tags::NUMBER_OF_STUDY_RELATED_SERIES, study.n_series));
    values.push(count(tags::NUMBER_OF_STUDY_RELATED_INSTANCES, study.n_instances));
    values
}

/// What a search returns for a series: its attributes and NumberOfSeriesRelatedInstances.
pub fn series_row(series: &SeriesRecord) -> Vec<AttributeValue> {
    let mut values = series.attributes.clone();
    values.push(count(tags::NUMBER_OF_SERIES_RELATED_INSTANCES, series.n_instances));
    values
}

/// What a search returns for an instance: the instance-level attributes.
pub fn instance_row(instance: &InstanceRecord) -> Vec<AttributeValue> {
    instance.attributes.iter().filter(|v| v.attribute().is_some_and(|a| a.level == Level::Instance)).cloned().collect()
}

fn study_op(study_uid: &str, study: Option<StudyRecord>) -> IndexOp {
    let key = DocKey { level: Level::Study, study_uid: study_uid.to_string(), series_uid: None, sop_uid: None };
    match study {
        Some(study) => IndexOp::Upsert(IndexDoc {
            key,
            owner: study.owner.clone(),
            created: study.created_seq,
            values: study_values(&study),
            row: study_row(&study),
        }),
        None => IndexOp::Delete(key),
    }
}

fn series_op(study_uid: &str, series_uid: &str, study: Option<&StudyRecord>, series: Option<SeriesRecord>) -> IndexOp {
    let key = DocKey {
        level: Level::Series,
        study_uid: study_uid.to_string(),
        series_uid: Some(series_uid.to_string()),
        sop_uid: None,
    };
    match (study, series) {
        (Some(study), Some(series)) => {
            let mut values = study_values(study);
            let row = series_row(&series);
            values.extend(series.attributes);
            IndexOp::Upsert(IndexDoc { key, owner: study.owner.clone(), created: series.created_seq, values, row })
        }
        _ => IndexOp::Delete(key),
    }
}

/// Index operations that bring the documents touched by `changes` up to the store's state.
pub fn ops_for_changes(store: &dyn Store, changes: &[Change]) -> Result<Vec<IndexOp>, Error> {
    let mut studies = BTreeSet::new();
    let mut series = BTreeSet::new();
    let mut instances = BTreeSet::new();
    for change in changes {
        for (study_uid, series_uid, sop_uid) in &change.touched {
            studies.insert(study_uid.clone());
            series.insert((study_uid.clone(), series_uid.clone()));
            instances.insert(sop_uid.clone());
        }
    }
    let mut ops = Vec::new();
    for study_uid in &studies {
        ops.push(study_op(study_uid, store.study(study_uid)?));
    }
    for (study_uid, series_uid) in &series {
        let study = store.study(study_uid)?;
        ops.push(series_op(study_uid, series_uid, study.as_ref(), store.series(study_uid, series_uid)?));
    }
    for sop_uid in &instances {
        match store.instance(sop_uid)? {
            Some(instance) => {
                let mut values = instance.attributes.clone();
                let study = store.study(&instance.study_uid)?;
                // The study's owner decides who sees it (an instance of an older Kura may carry
                // another uploader's institution).
                let owner = study.as_ref().map_or_else(|| instance.owner.clone(), |study| study.owner.clone());
                if let Some(study) = study {
                    values.extend(study_values(&study).into_iter().filter(|v| {
                        v.sequence.is_none()
                            && (v.tag() == tags::MODALITIES_IN_STUDY || v.tag() == tags::SOP_CLASSES_IN_STUDY)
                    }));
                }
                ops.push(IndexOp::Upsert(IndexDoc {
                    key: DocKey {
                        level: Level::Instance,
                        study_uid: instance.study_uid.clone(),
                        series_uid: Some(instance.series_uid.clone()),
                        sop_uid: Some(sop_uid.clone()),
                    },
                    owner,
                    created: instance.seq,
                    values,
                    row: instance_row(&instance),
                }));
            }
            None => ops.push(IndexOp::Delete(DocKey {
                level: Level::Instance,
                study_uid: String::new(),
                series_uid: None,
                sop_uid: Some(sop_uid.clone()),
            })),
        }
    }
    Ok(ops)
}

/// Index operations for every document of one study, read from the store.
pub fn ops_for_study(store: &dyn Store, study_uid: &str) -> Result<(Vec<IndexOp>, u64), Error> {
    let mut touched = Vec::new();
    for series_uid in store.series_uids(study_uid)? {
        for sop_uid in store.instance_uids(study_uid, Some(&series_uid))? {
            touched.push((study_uid.to_string(), series_uid.clone(), sop_uid));
        }
    }
    let n_instances = touched.len() as u64;
    let ops = ops_for_changes(store, &[Change { seq: 0, touched }])?;
    Ok((ops, n_instances))
}
