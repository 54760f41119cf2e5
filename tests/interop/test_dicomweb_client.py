"""Kura driven by the Python dicomweb-client (STOW-RS, QIDO-RS, WADO-RS).

One archive per module: the `corpus` fixture stores pydicom's sample files and a set of
generated studies through DICOMwebClient.store_instances, and remembers what it sent, so
that search expectations can be computed from the data itself and checked against Kura.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

import numpy as np
import pydicom
import pytest
import requests
from pydicom.dataset import Dataset

from kura_interop import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    assert_same_content,
    is_transcoded,
    served_syntax,
    CHARSET_SAMPLES,
    UNIQUE_SAMPLES,
    Patient,
    assert_same_dataset,
    make_image,
    read_sample,
    uid,
    uids,
    value,
    values,
)

ANY_TS = (("application/dicom", "*"),)

P_JOHN = Patient("Doe^John", "KP-001", "19600101", "M")
P_JANE = Patient("DOE^JANE", "KP-002", "19700202", "F")
P_ANNA = Patient("Smith^Anna", "KP-003", "19800303", "F")
P_JOHNNY = Patient("doe^johnny", "KP-004", "19900404", "M")
P_JOERG = Patient("Müller^Jörg", "KP-005", "20000505", "M")

S1, S2, S3, S4, S5, S6 = (uid("client-study", n) for n in range(1, 7))
S1_CT_A, S1_CT_B = uid("client-series", "1a"), uid("client-series", "1b")
S2_MR = uid("client-series", "2mr")
S3_CT, S3_MF = uid("client-series", "3ct"), uid("client-series", "3mf")
S4_BULK = uid("client-series", "4bulk")
S5_CT = uid("client-series", "5ct")
S6_CT = uid("client-series", "6ct")
BULK_COUNT = 60


def encoded(ds: Dataset) -> Dataset:
    """What dicomweb-client sends for `ds`: pydicom.dcmwrite(ds), read back."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


@dataclass
class Corpus:
    samples: dict[str, Dataset] = field(default_factory=dict)  # file name -> dataset sent
    generated: list[Dataset] = field(default_factory=list)
    results: dict[str, "StoreResult"] = field(default_factory=dict)  # store call -> result

    @property
    def all(self) -> list[Dataset]:
        return list(self.samples.values()) + self.generated

    def by_sop(self, sop_uid: str) -> Dataset:
        return next(ds for ds in self.all if ds.SOPInstanceUID == sop_uid)

    def series(self, series_uid: str) -> list[Dataset]:
        return [ds for ds in self.all if ds.SeriesInstanceUID == series_uid]

    def studies(self) -> dict[str, Dataset]:
        """Study UID -> one of its instances (study-level attributes are shared)."""
        out: dict[str, Dataset] = {}
        for ds in self.all:
            out.setdefault(ds.StudyInstanceUID, ds)
        return out

    def studies_where(self, predicate) -> set[str]:
        return {study for study, ds in self.studies().items() if predicate(ds)}


def _request(requested_procedure_id: str, scheduled_step_id: str) -> Dataset:
    item = Dataset()
    item.RequestedProcedureID = requested_procedure_id
    item.ScheduledProcedureStepID = scheduled_step_id
    return item


def _generated() -> dict[str, list[Dataset]]:
    """The generated studies, grouped by the store call that sends them."""
    s1 = [
        make_image(patient=P_JOHN, study_uid=S1, series_uid=S1_CT_A, instance_number=i,
                   study_date="20200101", accession="ACC-1", study_description="Chest CT",
                   series_number=1, series_description="Axial 512", institution="Kura General",
                   rows=512, cols=512)
        for i in (1, 2, 3)
    ] + [
        make_image(patient=P_JOHN, study_uid=S1, series_uid=S1_CT_B, instance_number=i,
                   study_date="20200101", accession="ACC-1", study_description="Chest CT",
                   series_number=2, series_description="Scout", institution="Kura General")
        for i in (1, 2)
    ]
    s2 = [
        make_image(patient=P_JOHN, study_uid=S2, series_uid=S2_MR, instance_number=i,
                   modality="MR", study_date="20200315", accession="ACC-2", series_number=1)
        for i in (1, 2)
    ]
    for ds in s2:
        # Two requests for the MR series, for sequence matching (PS3.4 C.2.2.2.6).
        ds.RequestAttributesSequence = [_request("RP-21", "SPS-21"), _request("RP-22", "SPS-22")]
    s3 = [
        make_image(patient=P_JANE, study_uid=S3, series_uid=S3_CT, instance_number=1,
                   study_date="20210610", accession="ACC-3", series_number=1),
        make_image(patient=P_JANE, study_uid=S3, series_uid=S3_MF, instance_number=1,
                   modality="OT", study_date="20210610", accession="ACC-3", series_number=2,
                   frames=8, seed=99),
    ]
    s4 = [
        make_image(patient=P_ANNA, study_uid=S4, series_uid=S4_BULK, instance_number=i,
                   study_date="20191231", accession="ACC-4", rows=128, cols=128)
        for i in range(1, BULK_COUNT + 1)
    ]
    s5 = [make_image(patient=P_JOHNNY, study_uid=S5, series_uid=S5_CT, instance_number=1,
                     study_date="20200201", accession="ACC-5")]
    s6 = [make_image(patient=P_JOERG, study_uid=S6, series_uid=S6_CT, instance_number=1,
                     study_date="20220202", accession="ACC-6", charset="ISO_IR 192")]
    return {"s1+s2+s3": s1 + s2 + s3, "bulk": s4, "s5": s5, "s6": s6}


@dataclass
class StoreResult:
    response: Dataset | None  # what store_instances returned, or None when it raised
    error: str = ""  # the HTTP error it raised, with the server's Warning


def store(client, datasets: list[Dataset], study: str | None = None) -> StoreResult:
    """store_instances in one call. Should that call fail, the instances are stored one per
    call instead, so that the search and retrieve tests can still run (the store tests
    report the failure)."""
    try:
        return StoreResult(client.store_instances(datasets, study_instance_uid=study))
    except requests.HTTPError as error:
        response = error.response
        result = StoreResult(
            None,
            f"{error} | Warning: {response.headers.get('Warning')} | body: {response.text[:300]}",
        )
    for ds in datasets:
        client.store_instances([ds], study_instance_uid=study)
    return result


@pytest.fixture(scope="module")
def corpus(client) -> Corpus:
    corpus = Corpus()
    samples = {name: read_sample(name) for name in UNIQUE_SAMPLES}
    corpus.results["samples"] = store(client, list(samples.values()))
    corpus.samples = {name: encoded(ds) for name, ds in samples.items()}

    groups = _generated()
    corpus.results["s1+s2+s3"] = store(client, groups["s1+s2+s3"])
    corpus.results["bulk"] = store(client, groups["bulk"])
    corpus.results["s5"] = store(client, groups["s5"], study=S5)
    corpus.results["s6"] = store(client, groups["s6"], study=S6)
    for group in groups.values():
        corpus.generated.extend(encoded(ds) for ds in group)
    return corpus


def stored_response(corpus: Corpus, key: str) -> Dataset:
    result = corpus.results[key]
    assert result.response is not None, f"store_instances failed: {result.error}"
    assert "FailedSOPSequence" not in result.response
    return result.response


def sop_uids_of(response: Dataset) -> list[str]:
    return [item.ReferencedSOPInstanceUID for item in response.get("ReferencedSOPSequence", [])]


def study_set(rows) -> set[str]:
    return set(uids(rows, "StudyInstanceUID"))


# ------------------------------------------------------------------------------------------
# STOW-RS through store_instances
# ------------------------------------------------------------------------------------------

def test_store_sample_files_in_one_call(corpus):
    response = stored_response(corpus, "samples")
    expected = sorted(ds.SOPInstanceUID for ds in corpus.samples.values())
    assert sorted(sop_uids_of(response)) == expected
    for item in response.ReferencedSOPSequence:
        sent = corpus.by_sop(item.ReferencedSOPInstanceUID)
        assert item.ReferencedSOPClassUID == sent.SOPClassUID
        assert item.RetrieveURL.endswith(
            f"/studies/{sent.StudyInstanceUID}/series/{sent.SeriesInstanceUID}"
            f"/instances/{sent.SOPInstanceUID}"
        )


def test_store_many_instances_in_one_call(corpus, client):
    response = stored_response(corpus, "bulk")
    bulk = corpus.series(S4_BULK)
    assert len(bulk) == BULK_COUNT >= 50
    assert sorted(sop_uids_of(response)) == sorted(ds.SOPInstanceUID for ds in bulk)
    assert response.RetrieveURL.endswith(f"/studies/{S4}")
    [series] = client.search_for_series(S4)
    assert value(series, "SeriesInstanceUID") == S4_BULK
    assert int(value(series, "NumberOfSeriesRelatedInstances")) == BULK_COUNT


def test_store_mixed_studies_and_512_slices_in_one_call(corpus):
    response = stored_response(corpus, "s1+s2+s3")
    assert len(sop_uids_of(response)) == 5 + 2 + 2
    # Several studies in one response: no single study RetrieveURL (PS3.18 Table I.2-1 allows
    # an empty one), but every instance has its own.
    assert all(item.RetrieveURL for item in response.ReferencedSOPSequence)


def test_store_into_study_url(corpus):
    for key, study in (("s5", S5), ("s6", S6)):
        response = stored_response(corpus, key)
        assert len(sop_uids_of(response)) == 1
        assert response.RetrieveURL.endswith(f"/studies/{study}")


# ------------------------------------------------------------------------------------------
# QIDO-RS through search_for_*
# ------------------------------------------------------------------------------------------

def test_search_all_studies_matches_what_was_stored(corpus, client):
    rows = client.search_for_studies()
    assert study_set(rows) == set(corpus.studies())
    assert len(rows) == len(corpus.studies())
    row = next(r for r in rows if value(r, "StudyInstanceUID") == S1)
    assert int(value(row, "NumberOfStudyRelatedSeries")) == 2
    assert int(value(row, "NumberOfStudyRelatedInstances")) == 5
    assert value(row, "AccessionNumber") == "ACC-1"
    assert value(row, "StudyDate") == "20200101"
    assert value(row, "PatientName") == {"Alphabetic": "Doe^John"}


@pytest.mark.parametrize(
    "patient_id, expected",
    [("KP-001", {S1, S2}), ("KP-003", {S4}), ("KP-00", set()), ("kp-001", set()),
     ("KP-001x", set())],
)
def test_search_studies_by_patient_id_exact(corpus, client, patient_id, expected):
    rows = client.search_for_studies(search_filters={"PatientID": patient_id})
    assert study_set(rows) == expected
    assert all(value(r, "PatientID") == patient_id for r in rows)


def _pn_regex(pattern: str) -> re.Pattern:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.IGNORECASE | re.DOTALL)


def _pn_matches(pattern: str, ds: Dataset) -> bool:
    name = ds.get("PatientName")
    if name is None:
        return False
    text = str(name)
    regex = _pn_regex(pattern)
    return any(regex.fullmatch(candidate) for candidate in [text, *text.split("=")])


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("doe*", {S1, S2, S3, S5}),
        ("DOE*", {S1, S2, S3, S5}),
        ("Doe*", {S1, S2, S3, S5}),
        ("doe^j*", {S1, S2, S3, S5}),
        ("DOE^JOHN*", {S1, S2, S5}),
        ("d?e^john", {S1, S2}),
        ("doe^john", {S1, S2}),
        ("*^jane", {S3}),
        ("sMiTh^AnNa", {S4}),
        ("müller*", {S6}),
        ("MÜLLER^JÖRG", {S6}),
        ("nobody*", set()),
    ],
)
def test_search_studies_by_patient_name(corpus, client, pattern, expected):
    rows = client.search_for_studies(search_filters={"PatientName": pattern})
    assert study_set(rows) == expected
    # Cross-check the expectation against the data that was actually sent.
    assert corpus.studies_where(lambda ds: _pn_matches(pattern, ds)) == expected


def test_search_returns_unicode_person_name(corpus, client):
    [row] = client.search_for_studies(search_filters={"PatientID": "KP-005"})
    assert value(row, "PatientName") == {"Alphabetic": "Müller^Jörg"}


def _date_in(ds: Dataset, low: str, high: str) -> bool:
    # Kura tolerates the ACR-NEMA form YYYY.MM.DD (ExplVR_BigEnd.dcm has one).
    date = str(ds.get("StudyDate", "") or "").replace(".", "")
    if not re.fullmatch(r"\d{8}", date):
        return False
    return (not low or date >= low) and (not high or date <= high)


@pytest.mark.parametrize(
    "query",
    ["20200101-20200331", "20200102-20200314", "20210101-", "-20191231", "20200315",
     "19000101-20050101", "20300101-"],
)
def test_search_studies_by_study_date(corpus, client, query):
    low, _, high = query.partition("-") if "-" in query else (query, "", query)
    expected = corpus.studies_where(lambda ds: _date_in(ds, low, high))
    rows = client.search_for_studies(search_filters={"StudyDate": query})
    assert study_set(rows) == expected
    if query == "20200101-20200331":
        assert expected == {S1, S2, S5}
    if query == "20200102-20200314":
        assert expected == {S5}
    if query == "-20191231":
        assert S4 in expected and len(expected) > 1  # the 2004 sample studies too


def test_search_studies_by_date_and_name_combined(client):
    rows = client.search_for_studies(
        search_filters={"PatientName": "doe*", "StudyDate": "20200201-"}
    )
    assert study_set(rows) == {S2, S3, S5}


def test_search_studies_by_modality(corpus, client):
    rows = client.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})
    expected = {ds.StudyInstanceUID for ds in corpus.all if ds.get("Modality") == "MR"}
    assert S2 in expected
    assert study_set(rows) == expected
    row = next(r for r in rows if value(r, "StudyInstanceUID") == S2)
    assert values(row, "ModalitiesInStudy") == ["MR"]
    # S3 has a CT and an OT series.
    [row] = client.search_for_studies(search_filters={"StudyInstanceUID": S3})
    assert sorted(values(row, "ModalitiesInStudy")) == ["CT", "OT"]


def test_search_studies_by_uid_list_and_accession(client):
    rows = client.search_for_studies(search_filters={"StudyInstanceUID": f"{S1},{S4},{S6}"})
    assert study_set(rows) == {S1, S4, S6}
    rows = client.search_for_studies(search_filters={"AccessionNumber": "ACC-2"})
    assert study_set(rows) == {S2}


def test_search_with_empty_value_matching(corpus, client):
    # PS3.18 8.3.4.5: with emptyvaluematching=true a key also matches studies without a value.
    expected = corpus.studies_where(lambda ds: str(ds.get("AccessionNumber", "") or "") in ("", "ACC-2"))
    assert S2 in expected and len(expected) > 1  # the sample files carry no accession number
    rows = client.search_for_studies(
        search_filters={"AccessionNumber": "ACC-2"}, additional_params={"emptyvaluematching": "true"}
    )
    assert study_set(rows) == expected


def test_search_with_combined_date_and_time(client):
    # PS3.4 C.2.2.2.5.1: StudyDate and StudyTime together are one date-time range.
    rows = client.search_for_studies(search_filters={"StudyDate": "20200101-20200315", "StudyTime": "000000-"})
    assert {S1, S2} <= study_set(rows)


def test_search_series_of_a_study(client):
    rows = client.search_for_series(S1)
    assert {value(r, "SeriesInstanceUID") for r in rows} == {S1_CT_A, S1_CT_B}
    by_uid = {value(r, "SeriesInstanceUID"): r for r in rows}
    assert int(value(by_uid[S1_CT_A], "SeriesNumber")) == 1
    assert int(value(by_uid[S1_CT_B], "SeriesNumber")) == 2
    assert int(value(by_uid[S1_CT_A], "NumberOfSeriesRelatedInstances")) == 3
    assert int(value(by_uid[S1_CT_B], "NumberOfSeriesRelatedInstances")) == 2
    assert all(value(r, "Modality") == "CT" for r in rows)


def test_search_all_series_by_modality(corpus, client):
    rows = client.search_for_series(search_filters={"Modality": "OT"})
    expected = {ds.SeriesInstanceUID for ds in corpus.all if ds.get("Modality") == "OT"}
    assert S3_MF in expected
    assert {value(r, "SeriesInstanceUID") for r in rows} == expected
    rows = client.search_for_series(S3, search_filters={"Modality": "OT"})
    assert [value(r, "SeriesInstanceUID") for r in rows] == [S3_MF]


def test_search_series_by_request_attributes_sequence(corpus, client):
    # PS3.18 8.3.1 dotted paths, PS3.4 C.2.2.2.6: the series matches when one item matches every
    # key on the sequence, and only the matching items are returned.
    rows = client.search_for_series(search_filters={"RequestAttributesSequence.RequestedProcedureID": "RP-2*"})
    assert [value(r, "SeriesInstanceUID") for r in rows] == [S2_MR]
    assert len(values(rows[0], "RequestAttributesSequence")) == 2
    rows = client.search_for_series(
        S2, search_filters={"00400275.00401001": "RP-22", "RequestAttributesSequence.ScheduledProcedureStepID": "SPS-22"}
    )
    [item] = values(rows[0], "RequestAttributesSequence")
    assert (value(item, "RequestedProcedureID"), value(item, "ScheduledProcedureStepID")) == ("RP-22", "SPS-22")
    rows = client.search_for_series(
        search_filters={"00400275.00401001": "RP-22", "RequestAttributesSequence.ScheduledProcedureStepID": "SPS-21"}
    )
    assert rows == []


def test_search_series_with_study_level_key(client):
    rows = client.search_for_series(search_filters={"PatientID": "KP-001"})
    assert {value(r, "SeriesInstanceUID") for r in rows} == {S1_CT_A, S1_CT_B, S2_MR}


def test_search_instances(corpus, client):
    rows = client.search_for_instances(S1, S1_CT_A)
    expected = sorted(ds.SOPInstanceUID for ds in corpus.series(S1_CT_A))
    assert sorted(uids(rows, "SOPInstanceUID")) == expected
    assert len(expected) == 3

    [row] = client.search_for_instances(S1, S1_CT_A, search_filters={"InstanceNumber": 2})
    assert value(row, "SOPInstanceUID") == uid("sop", S1_CT_A, 2)
    assert int(value(row, "InstanceNumber")) == 2
    assert value(row, "SOPClassUID") == pydicom.uid.CTImageStorage

    rows = client.search_for_instances(S1)  # study-scoped: both series
    assert len(rows) == 5

    mf = corpus.series(S3_MF)[0]
    rows = client.search_for_instances(search_filters={"SOPInstanceUID": mf.SOPInstanceUID})
    assert uids(rows, "SOPInstanceUID") == [mf.SOPInstanceUID]
    assert value(rows[0], "StudyInstanceUID") == S3
    assert value(rows[0], "SeriesInstanceUID") == S3_MF


def test_search_instances_by_sop_class(corpus, client):
    rows = client.search_for_instances(
        search_filters={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7.3"}
    )
    expected = {ds.SOPInstanceUID for ds in corpus.all
                if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7.3"}
    assert set(uids(rows, "SOPInstanceUID")) == expected
    assert corpus.series(S3_MF)[0].SOPInstanceUID in expected


def test_search_fields_include_on_request_attributes(client):
    plain = {value(r, "SeriesInstanceUID"): r for r in client.search_for_series(S1)}
    assert tag_absent(plain[S1_CT_A], "InstitutionName")
    rows = client.search_for_series(S1, fields=["InstitutionName"])
    by_uid = {value(r, "SeriesInstanceUID"): r for r in rows}
    assert value(by_uid[S1_CT_A], "InstitutionName") == "Kura General"
    # A tag number works as well as a keyword.
    rows = client.search_for_series(S1, fields=["00080080"])
    assert {value(r, "InstitutionName") for r in rows} == {"Kura General"}


def tag_absent(row: dict, keyword: str) -> bool:
    return value(row, keyword) is None


def test_search_empty_result_is_empty_list(client):
    assert client.search_for_studies(search_filters={"PatientID": "NO-SUCH-PATIENT"}) == []
    assert client.search_for_instances(uid("no-such-study")) == []


# ------------------------------------------------------------------------------------------
# Paging
# ------------------------------------------------------------------------------------------

def test_paging_instances_partitions_the_results(corpus, client):
    everything = client.search_for_instances(S4, S4_BULK)
    all_uids = uids(everything, "SOPInstanceUID")
    assert sorted(all_uids) == sorted(ds.SOPInstanceUID for ds in corpus.series(S4_BULK))
    assert len(set(all_uids)) == BULK_COUNT

    page_size = 7
    pages = []
    for offset in range(0, BULK_COUNT, page_size):
        page = client.search_for_instances(S4, S4_BULK, limit=page_size, offset=offset)
        pages.append(uids(page, "SOPInstanceUID"))
    assert [len(p) for p in pages] == [7] * 8 + [4]
    flat = [u for page in pages for u in page]
    assert len(flat) == len(set(flat)) == BULK_COUNT, "pages overlap"
    assert set(flat) == set(all_uids)
    # Paging is over a stable order: the pages concatenate to the unpaged result.
    assert flat == all_uids

    assert client.search_for_instances(S4, S4_BULK, limit=5, offset=BULK_COUNT) == []
    assert len(client.search_for_instances(S4, S4_BULK, offset=BULK_COUNT - 3)) == 3


def test_paging_studies_partitions_the_results(corpus, client):
    total = len(corpus.studies())
    everything = uids(client.search_for_studies(), "StudyInstanceUID")
    assert len(everything) == total
    seen: list[str] = []
    offset = 0
    while offset < total + 3:
        page = uids(client.search_for_studies(limit=4, offset=offset), "StudyInstanceUID")
        assert len(page) == min(4, max(0, total - offset))
        seen.extend(page)
        offset += 4
    assert len(seen) == len(set(seen)) == total
    assert seen == everything


def test_paging_warning_header_counts_remaining(base_url):
    url = f"{base_url}/studies/{S4}/series/{S4_BULK}/instances"
    for offset, limit, remaining in [(0, 10, 50), (40, 10, 10), (55, 10, 0), (0, 60, 0)]:
        response = requests.get(url, params={"limit": limit, "offset": offset}, timeout=30)
        assert response.status_code == 200
        assert len(response.json()) == min(limit, BULK_COUNT - offset)
        warning = response.headers.get("Warning", "")
        match = re.search(r"There are (\d+) additional results", warning)
        if remaining:
            assert warning.startswith("299 "), warning
            assert match and int(match.group(1)) == remaining, warning
        else:
            assert not match, warning


def test_get_remaining_collects_everything(corpus, client):
    rows = client.search_for_instances(S4, S4_BULK, limit=25, get_remaining=True)
    assert sorted(uids(rows, "SOPInstanceUID")) == sorted(
        ds.SOPInstanceUID for ds in corpus.series(S4_BULK)
    )


# ------------------------------------------------------------------------------------------
# WADO-RS through retrieve_*
# ------------------------------------------------------------------------------------------

def assert_same_pixels(sent: Dataset, got: Dataset) -> None:
    assert got.SOPInstanceUID == sent.SOPInstanceUID
    assert ("PixelData" in got) == ("PixelData" in sent)
    if "PixelData" in sent:
        assert got.PixelData == sent.PixelData


@pytest.mark.parametrize("name", UNIQUE_SAMPLES)
def test_retrieve_sample_instance(corpus, client, name):
    sent = corpus.samples[name]
    got = client.retrieve_instance(
        sent.StudyInstanceUID, sent.SeriesInstanceUID, sent.SOPInstanceUID, media_types=ANY_TS
    )
    assert got.file_meta.TransferSyntaxUID == served_syntax(sent.file_meta.TransferSyntaxUID)
    if is_transcoded(sent):
        assert_same_content(sent, got)
        return
    assert_same_pixels(sent, got)
    assert_same_dataset(sent, got)


def test_retrieve_generated_512_slice(corpus, client):
    sent = corpus.series(S1_CT_A)[1]
    got = client.retrieve_instance(S1, S1_CT_A, sent.SOPInstanceUID, media_types=ANY_TS)
    assert_same_pixels(sent, got)
    assert got.pixel_array.shape == (512, 512)
    assert np.array_equal(got.pixel_array, sent.pixel_array)
    assert_same_dataset(sent, got)


def test_retrieve_multiframe(corpus, client):
    [sent] = corpus.series(S3_MF)
    got = client.retrieve_instance(S3, S3_MF, sent.SOPInstanceUID, media_types=ANY_TS)
    assert_same_pixels(sent, got)
    assert int(got.NumberOfFrames) == 8
    assert got.pixel_array.shape == (8, 64, 64)
    assert np.array_equal(got.pixel_array, sent.pixel_array)


def test_retrieve_series_with_many_instances(corpus, client):
    got = client.retrieve_series(S4, S4_BULK, media_types=ANY_TS)
    sent = {ds.SOPInstanceUID: ds for ds in corpus.series(S4_BULK)}
    assert len(got) == BULK_COUNT
    assert {ds.SOPInstanceUID for ds in got} == set(sent)
    for ds in got:
        assert_same_pixels(sent[ds.SOPInstanceUID], ds)


def test_retrieve_study(corpus, client):
    got = client.retrieve_study(S1, media_types=ANY_TS)
    sent = {ds.SOPInstanceUID: ds for ds in corpus.all if ds.StudyInstanceUID == S1}
    assert len(sent) == 5
    assert sorted(ds.SOPInstanceUID for ds in got) == sorted(sent)
    assert {ds.SeriesInstanceUID for ds in got} == {S1_CT_A, S1_CT_B}
    for ds in got:
        assert_same_pixels(sent[ds.SOPInstanceUID], ds)


def test_retrieve_sample_study_with_several_series_and_syntaxes(corpus, client):
    sent = corpus.samples["JPEG2000.dcm"]
    study = sent.StudyInstanceUID
    expected = {ds.SOPInstanceUID: ds for ds in corpus.all if ds.StudyInstanceUID == study}
    got = client.retrieve_study(study, media_types=ANY_TS)
    assert sorted(ds.SOPInstanceUID for ds in got) == sorted(expected)
    for ds in got:
        assert_same_pixels(expected[ds.SOPInstanceUID], ds)
        assert ds.file_meta.TransferSyntaxUID == \
            expected[ds.SOPInstanceUID].file_meta.TransferSyntaxUID


def test_retrieve_explicit_little_endian_without_transfer_syntax(corpus, client):
    # Default media types of retrieve_series: application/dicom with no transfer-syntax
    # parameter, i.e. Explicit VR Little Endian, which these instances are stored in.
    got = client.retrieve_series(S1, S1_CT_B)
    sent = {ds.SOPInstanceUID: ds for ds in corpus.series(S1_CT_B)}
    assert sorted(ds.SOPInstanceUID for ds in got) == sorted(sent)
    for ds in got:
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert_same_pixels(sent[ds.SOPInstanceUID], ds)


@pytest.mark.parametrize("what", ["instance", "series", "study", "instance-in-wrong-series"])
def test_retrieve_unknown_is_404(client, what):
    missing = uid("missing", what)
    with pytest.raises(requests.HTTPError) as raised:
        if what == "instance":
            client.retrieve_instance(S1, S1_CT_A, missing, media_types=ANY_TS)
        elif what == "series":
            client.retrieve_series(S1, missing, media_types=ANY_TS)
        elif what == "study":
            client.retrieve_study(missing, media_types=ANY_TS)
        else:
            # A real instance addressed under the wrong series of the right study.
            client.retrieve_instance(S1, S1_CT_B, uid("sop", S1_CT_A, 1), media_types=ANY_TS)
    assert raised.value.response.status_code == 404


# ------------------------------------------------------------------------------------------
# Character sets
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CHARSET_SAMPLES)
def test_charset_person_names_in_search_results(corpus, client, name):
    sent = corpus.samples[name]
    rows = client.search_for_instances(search_filters={"SOPInstanceUID": sent.SOPInstanceUID})
    assert len(rows) == 1
    got = Dataset.from_json(rows[0])
    want = sent.PatientName
    assert got.PatientName.alphabetic == want.alphabetic
    assert got.PatientName.ideographic == want.ideographic
    assert got.PatientName.phonetic == want.phonetic
    assert got.PatientID == sent.PatientID
