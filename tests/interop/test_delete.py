"""Delete through dicomweb-client's delete_instance, delete_series and delete_study.

Each call must remove exactly its target: gone from QIDO and WADO at once, the rest of the
study intact, counts updated; deleting again raises (404); a deleted instance can be stored
again.
"""

from __future__ import annotations

import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from kura_interop import Patient, make_image, uid, value

PATIENT = Patient("Delete^Test", "KP-DEL", "19500101", "O")
STUDY = uid("delete-study", 1)
OTHER_STUDY = uid("delete-study", 2)
SERIES_A, SERIES_B = uid("delete-series", "a"), uid("delete-series", "b")


@pytest.fixture(scope="module")
def stored(kura):
    client = DICOMwebClient(url=kura.url)
    datasets = [
        make_image(patient=PATIENT, study_uid=STUDY, series_uid=series, instance_number=n, seed=n)
        for series in (SERIES_A, SERIES_B)
        for n in (1, 2, 3)
    ]
    datasets.append(make_image(patient=PATIENT, study_uid=OTHER_STUDY, series_uid=uid("delete-series", "o"), instance_number=1))
    client.store_instances(datasets)
    return client, datasets


def sops_of(client: DICOMwebClient, study: str) -> set[str]:
    return {value(row, "SOPInstanceUID") for row in client.search_for_instances(study_instance_uid=study)}


def test_delete_instance_series_and_study(stored):
    client, datasets = stored
    first = datasets[0]
    client.delete_instance(STUDY, SERIES_A, first.SOPInstanceUID)
    assert first.SOPInstanceUID not in sops_of(client, STUDY)
    with pytest.raises(requests.exceptions.HTTPError) as raised:
        client.retrieve_instance(STUDY, SERIES_A, first.SOPInstanceUID)
    assert raised.value.response.status_code == 404
    # The other instances of the series are intact.
    kept = client.retrieve_instance(STUDY, SERIES_A, datasets[1].SOPInstanceUID)
    assert kept.SOPInstanceUID == datasets[1].SOPInstanceUID
    assert kept.PixelData == datasets[1].PixelData
    series = {value(r, "SeriesInstanceUID"): int(value(r, "NumberOfSeriesRelatedInstances")) for r in client.search_for_series(STUDY)}
    assert series == {SERIES_A: 2, SERIES_B: 3}
    with pytest.raises(requests.exceptions.HTTPError) as raised:
        client.delete_instance(STUDY, SERIES_A, first.SOPInstanceUID)
    assert raised.value.response.status_code == 404

    client.delete_series(STUDY, SERIES_B)
    assert {value(r, "SeriesInstanceUID") for r in client.search_for_series(STUDY)} == {SERIES_A}
    study = client.search_for_studies(search_filters={"StudyInstanceUID": STUDY})[0]
    assert (int(value(study, "NumberOfStudyRelatedSeries")), int(value(study, "NumberOfStudyRelatedInstances"))) == (1, 2)

    client.delete_study(STUDY)
    assert client.search_for_studies(search_filters={"StudyInstanceUID": STUDY}) == []
    assert len(sops_of(client, OTHER_STUDY)) == 1, "another study is untouched"

    # Re-storing a deleted instance works.
    client.store_instances([first])
    assert sops_of(client, STUDY) == {first.SOPInstanceUID}
    again = client.retrieve_instance(STUDY, SERIES_A, first.SOPInstanceUID)
    assert again.PixelData == first.PixelData
