"""STOW-RS failure handling, driven with plain `requests`.

Each failure gets the HTTP status of PS3.18 Table 10.5.3-1 (200 all stored, 202 some failed,
409 none stored) and the FailureReason of Annex I, nothing of a failed part is stored, and
the good parts of the same request are. Every check of "stored" or "not stored" is made
through QIDO-RS (and WADO-RS where the bytes matter).
"""

from __future__ import annotations

import pytest
import requests

from kura_interop import (
    ACCEPT_ANY_TS,
    CT_SMALL,
    Patient,
    failure_reasons,
    find_instances,
    make_image,
    multipart_body,
    parse_multipart,
    sample_bytes,
    stored_sop_uids,
    stow,
    to_bytes,
    uid,
    value,
    values,
    wado,
)

CANNOT_UNDERSTAND = 0xC000
DATASET_DOES_NOT_MATCH = 0xA900
STUDY_UID_MISMATCH = 0xC409
DUPLICATE_SOP_INSTANCE = 0x0111

PATIENT = Patient("Stow^Errors", "STOW-ERR")
NOT_DICOM = b"This is a plain text file, not a DICOM PS3.10 file.\n" * 8


def instance(key: str, *, study: str | None = None, number: int = 1, **kw):
    """A generated instance, unique per key: (dataset, encoded bytes)."""
    study_uid = study or uid("stow-study", key)
    patient = kw.pop("patient", PATIENT)
    ds = make_image(
        patient=patient,
        study_uid=study_uid,
        series_uid=uid("stow-series", study_uid),
        instance_number=number,
        sop_uid=uid("stow-sop", key, number),
        **kw,
    )
    return ds, to_bytes(ds)


def present(base: str, sop_uid: str) -> bool:
    found = find_instances(base, SOPInstanceUID=sop_uid)
    assert len(found) <= 1
    return len(found) == 1


def instance_count(base: str) -> int:
    return len(find_instances(base, limit=1000))


def assert_failed_item(body: dict, reason: int, sop_uid: str | None = None) -> None:
    [item] = values(body, "FailedSOPSequence")
    assert value(item, "FailureReason") == reason
    if sop_uid is not None:
        assert value(item, "ReferencedSOPInstanceUID") == sop_uid


# ------------------------------------------------------------------------------------------
# Unparsable parts: 0xC000
# ------------------------------------------------------------------------------------------

def test_non_dicom_part_alone_is_409(base_url):
    before = instance_count(base_url)
    response = stow(base_url, [NOT_DICOM])
    assert response.status_code == 409
    assert response.headers["Content-Type"].startswith("application/dicom+json")
    body = response.json()
    assert failure_reasons(body) == [CANNOT_UNDERSTAND]
    assert stored_sop_uids(body) == []
    assert instance_count(base_url) == before


def test_non_dicom_part_beside_a_good_one_is_202(base_url):
    ds, good = instance("non-dicom-good")
    before = instance_count(base_url)
    response = stow(base_url, [good, NOT_DICOM])
    assert response.status_code == 202
    body = response.json()
    assert failure_reasons(body) == [CANNOT_UNDERSTAND]
    assert stored_sop_uids(body) == [ds.SOPInstanceUID]
    assert present(base_url, ds.SOPInstanceUID)
    assert instance_count(base_url) == before + 1


def test_empty_part_is_c000(base_url):
    ds, good = instance("empty-part-good")
    response = stow(base_url, [b"", good])
    assert response.status_code == 202
    assert failure_reasons(response.json()) == [CANNOT_UNDERSTAND]
    assert present(base_url, ds.SOPInstanceUID)


def test_part_declared_as_another_media_type_is_refused(base_url):
    declared_text, text_bytes = instance("part-type-text")
    ds, good = instance("part-type-good")
    response = stow(base_url, [(text_bytes, "text/plain"), good])
    assert response.status_code == 202
    assert failure_reasons(response.json()) == [CANNOT_UNDERSTAND]
    assert stored_sop_uids(response.json()) == [ds.SOPInstanceUID]
    assert not present(base_url, declared_text.SOPInstanceUID)
    assert present(base_url, ds.SOPInstanceUID)


def test_truncated_sample_file_is_c000(base_url):
    truncated = sample_bytes(CT_SMALL)[:300]
    response = stow(base_url, [truncated])
    assert response.status_code == 409
    assert failure_reasons(response.json()) == [CANNOT_UNDERSTAND]
    assert find_instances(base_url, PatientID="1CT1") == []

    ds, good = instance("truncated-good")
    response = stow(base_url, [truncated, good])
    assert response.status_code == 202
    assert failure_reasons(response.json()) == [CANNOT_UNDERSTAND]
    assert stored_sop_uids(response.json()) == [ds.SOPInstanceUID]
    assert present(base_url, ds.SOPInstanceUID)
    assert find_instances(base_url, PatientID="1CT1") == []


def test_file_truncated_before_pixel_data_is_c000(base_url):
    ds, data = instance("truncated-before-pixels")
    cut = data.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data
    assert cut > 0
    response = stow(base_url, [data[: cut - 20]])
    assert response.status_code == 409
    assert failure_reasons(response.json()) == [CANNOT_UNDERSTAND]
    assert not present(base_url, ds.SOPInstanceUID)


def test_file_truncated_inside_pixel_data_is_c000(base_url):
    # The Pixel Data element says 8192 bytes; only 7192 follow. pydicom cannot decode it, so
    # an archive that accepts it serves a corrupt object.
    ds, data = instance("truncated-inside-pixels")
    response = stow(base_url, [data[:-1000]])
    assert response.status_code == 409, response.text
    assert failure_reasons(response.json()) == [CANNOT_UNDERSTAND]
    assert not present(base_url, ds.SOPInstanceUID)


# ------------------------------------------------------------------------------------------
# Missing or invalid identifying UIDs: 0xA900
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "keyword", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"]
)
def test_missing_required_uid_is_a900(base_url, keyword):
    ds, _ = instance(f"missing-{keyword}")
    delattr(ds, keyword)  # the file meta still names the SOP instance and class
    broken = to_bytes(ds)
    good_ds, good = instance(f"missing-{keyword}-good", study=uid("missing-uid-good", keyword))

    response = stow(base_url, [broken])
    assert response.status_code == 409
    assert failure_reasons(response.json()) == [DATASET_DOES_NOT_MATCH]

    response = stow(base_url, [good, broken])
    assert response.status_code == 202
    assert failure_reasons(response.json()) == [DATASET_DOES_NOT_MATCH]
    assert stored_sop_uids(response.json()) == [good_ds.SOPInstanceUID]
    assert present(base_url, good_ds.SOPInstanceUID)
    # Nothing of the broken instance: not by its SOP Instance UID, nor in its study.
    assert not present(base_url, ds.file_meta.MediaStorageSOPInstanceUID)
    if keyword != "StudyInstanceUID":
        assert find_instances(base_url, StudyInstanceUID=ds.StudyInstanceUID) == []


@pytest.mark.parametrize(
    "bad_uid", ["1.2.840.01", "1.2..3", "1.2.3.", "1.2." + "3" * 70],
    ids=["leading-zero", "empty-component", "trailing-dot", "too-long"],
)
def test_invalid_sop_instance_uid_is_a900(base_url, bad_uid):
    ds, _ = instance(f"invalid-sop-uid-{bad_uid}")
    ds.SOPInstanceUID = bad_uid
    response = stow(base_url, [to_bytes(ds)])
    assert response.status_code == 409
    assert failure_reasons(response.json()) == [DATASET_DOES_NOT_MATCH]
    assert find_instances(base_url, StudyInstanceUID=ds.StudyInstanceUID) == []


# ------------------------------------------------------------------------------------------
# Study Instance UID different from the URL's: 0xC409
# ------------------------------------------------------------------------------------------

def test_study_uid_differs_from_url_alone_is_409(base_url):
    ds, data = instance("mismatch-alone")
    other = uid("mismatch-alone", "url-study")
    response = stow(base_url, [data], study=other)
    assert response.status_code == 409
    assert_failed_item(response.json(), STUDY_UID_MISMATCH, ds.SOPInstanceUID)
    assert not present(base_url, ds.SOPInstanceUID)
    assert find_instances(base_url, StudyInstanceUID=other) == []


def test_study_uid_differs_from_url_beside_a_matching_one_is_202(base_url):
    url_study = uid("mismatch-mixed", "url-study")
    wrong, wrong_bytes = instance("mismatch-mixed-wrong")
    right, right_bytes = instance("mismatch-mixed-right", study=url_study)
    response = stow(base_url, [wrong_bytes, right_bytes], study=url_study)
    assert response.status_code == 202
    body = response.json()
    assert_failed_item(body, STUDY_UID_MISMATCH, wrong.SOPInstanceUID)
    assert stored_sop_uids(body) == [right.SOPInstanceUID]
    assert value(body, "RetrieveURL").endswith(f"/studies/{url_study}")
    assert present(base_url, right.SOPInstanceUID)
    assert not present(base_url, wrong.SOPInstanceUID)
    assert find_instances(base_url, StudyInstanceUID=wrong.StudyInstanceUID) == []


def test_store_into_matching_study_url_is_200(base_url):
    ds, data = instance("study-url-ok")
    response = stow(base_url, [data], study=ds.StudyInstanceUID)
    assert response.status_code == 200
    body = response.json()
    assert stored_sop_uids(body) == [ds.SOPInstanceUID]
    assert value(body, "RetrieveURL").endswith(f"/studies/{ds.StudyInstanceUID}")
    assert present(base_url, ds.SOPInstanceUID)


# ------------------------------------------------------------------------------------------
# Same SOP Instance UID: identical bytes succeed, a different object is 0x0111
# ------------------------------------------------------------------------------------------

def test_identical_resend_is_200_and_stores_one_instance(base_url):
    ds, data = instance("identical")
    for _ in range(2):
        response = stow(base_url, [data])
        assert response.status_code == 200
        assert stored_sop_uids(response.json()) == [ds.SOPInstanceUID]
        assert failure_reasons(response.json()) == []
    response = stow(base_url, [data, data])
    assert response.status_code == 200
    assert failure_reasons(response.json()) == []
    assert len(find_instances(base_url, SOPInstanceUID=ds.SOPInstanceUID)) == 1
    [series] = requests.get(f"{base_url}/studies/{ds.StudyInstanceUID}/series", timeout=30).json()
    assert int(value(series, "NumberOfSeriesRelatedInstances")) == 1


def test_different_object_under_stored_sop_uid(base_url):
    original, original_bytes = instance("duplicate")
    assert stow(base_url, [original_bytes]).status_code == 200

    changed, changed_bytes = instance("duplicate", patient=Patient("Other^Person", "STOW-DUP"))
    assert changed.SOPInstanceUID == original.SOPInstanceUID
    assert changed_bytes != original_bytes

    response = stow(base_url, [changed_bytes])
    assert response.status_code == 409
    assert_failed_item(response.json(), DUPLICATE_SOP_INSTANCE, original.SOPInstanceUID)

    fresh, fresh_bytes = instance("duplicate-fresh")
    response = stow(base_url, [changed_bytes, fresh_bytes])
    assert response.status_code == 202
    assert_failed_item(response.json(), DUPLICATE_SOP_INSTANCE, original.SOPInstanceUID)
    assert stored_sop_uids(response.json()) == [fresh.SOPInstanceUID]
    assert present(base_url, fresh.SOPInstanceUID)

    # The stored object is still the first one, in the index and byte for byte.
    [row] = find_instances(base_url, SOPInstanceUID=original.SOPInstanceUID)
    assert value(row, "PatientID") == PATIENT.id
    assert find_instances(base_url, PatientID="STOW-DUP") == []
    retrieved = wado(base_url, original.StudyInstanceUID, original.SeriesInstanceUID,
                     original.SOPInstanceUID)
    assert retrieved.status_code == 200
    [part] = parse_multipart(retrieved)
    assert part.content == original_bytes


# ------------------------------------------------------------------------------------------
# Several failures in one request
# ------------------------------------------------------------------------------------------

def test_mixed_request_reports_each_failure_in_order(base_url):
    url_study = uid("mixed", "url-study")
    good1, good1_bytes = instance("mixed-good-1", study=url_study)
    good2, good2_bytes = instance("mixed-good-2", study=url_study, number=2)
    missing, _ = instance("mixed-missing", study=url_study, number=3)
    del missing.SOPInstanceUID
    wrong, wrong_bytes = instance("mixed-wrong")
    parts = [NOT_DICOM, good1_bytes, to_bytes(missing), wrong_bytes,
             sample_bytes(CT_SMALL)[:300], good2_bytes]
    response = stow(base_url, parts, study=url_study)
    assert response.status_code == 202
    body = response.json()
    assert failure_reasons(body) == [
        CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH, STUDY_UID_MISMATCH, CANNOT_UNDERSTAND
    ]
    assert sorted(stored_sop_uids(body)) == sorted([good1.SOPInstanceUID, good2.SOPInstanceUID])
    rows = find_instances(base_url, StudyInstanceUID=url_study)
    assert sorted(value(r, "SOPInstanceUID") for r in rows) == sorted(
        [good1.SOPInstanceUID, good2.SOPInstanceUID]
    )
    assert not present(base_url, wrong.SOPInstanceUID)
    # A Warning header names each failure for a human with curl.
    assert response.headers.get("Warning", "").count("299 ") >= 4


# ------------------------------------------------------------------------------------------
# Request-level errors: nothing is stored
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        'multipart/related; type="application/dicom+json"; boundary={b}',
        'multipart/related; type="application/dicom+xml"; boundary={b}',
        "multipart/form-data; boundary={b}",
        "text/plain",
        None,
    ],
)
def test_unsupported_content_type_is_415(base_url, content_type):
    ds, data = instance(f"content-type-{content_type}")
    body, proper = multipart_body([data])
    boundary = proper.rsplit("boundary=", 1)[1]
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type.format(b=boundary)
    response = requests.post(f"{base_url}/studies", data=body, headers=headers, timeout=30)
    assert response.status_code == 415, response.text
    assert not present(base_url, ds.SOPInstanceUID)


def test_multipart_without_boundary_is_400(base_url):
    ds, data = instance("no-boundary")
    body, _ = multipart_body([data])
    response = requests.post(
        f"{base_url}/studies", data=body,
        headers={"Content-Type": 'multipart/related; type="application/dicom"'}, timeout=30,
    )
    assert response.status_code == 400
    assert not present(base_url, ds.SOPInstanceUID)


def test_multipart_with_no_parts_is_400(base_url):
    before = instance_count(base_url)
    body, content_type = multipart_body([])
    response = requests.post(f"{base_url}/studies", data=body,
                             headers={"Content-Type": content_type}, timeout=30)
    assert response.status_code == 400
    assert instance_count(base_url) == before


def test_multipart_with_wrong_boundary_stores_nothing(base_url):
    ds, data = instance("wrong-boundary")
    body, _ = multipart_body([data], boundary="the-real-boundary")
    response = requests.post(
        f"{base_url}/studies", data=body,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=other'},
        timeout=30,
    )
    assert response.status_code in (400, 409), response.text
    assert not present(base_url, ds.SOPInstanceUID)


# ------------------------------------------------------------------------------------------
# What is stored is what was sent, except the preamble
# ------------------------------------------------------------------------------------------

MZ_PREAMBLE = (b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00"
               + b"This program cannot be run in DOS mode.\r\r\n$" + bytes(range(128)))[:128]


def test_preamble_is_zeroed_and_every_other_byte_kept(base_url):
    ds, data = instance("preamble", rows=128, cols=128)
    polyglot = MZ_PREAMBLE + data[128:]
    assert len(polyglot) == len(data) and polyglot[:2] == b"MZ"
    response = stow(base_url, [polyglot])
    assert response.status_code == 200
    assert stored_sop_uids(response.json()) == [ds.SOPInstanceUID]

    expected = b"\0" * 128 + data[128:]
    # Multipart, at each resource level.
    for args in [(ds.SeriesInstanceUID, ds.SOPInstanceUID), (ds.SeriesInstanceUID,), ()]:
        retrieved = wado(base_url, ds.StudyInstanceUID, *args)
        assert retrieved.status_code == 200
        [part] = parse_multipart(retrieved)
        assert part.content[:128] == b"\0" * 128
        assert part.content == expected
    # Single part application/dicom for the instance resource.
    retrieved = requests.get(
        f"{base_url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}",
        headers={"Accept": "application/dicom; transfer-syntax=*"}, timeout=30,
    )
    assert retrieved.status_code == 200
    if retrieved.headers["Content-Type"].startswith("multipart/related"):
        [part] = parse_multipart(retrieved)
        assert part.content == expected
    else:
        assert retrieved.headers["Content-Type"].startswith("application/dicom")
        assert retrieved.content == expected


def test_retrieve_url_of_the_response_serves_the_instance(base_url):
    ds, data = instance("retrieve-url")
    response = stow(base_url, [data])
    assert response.status_code == 200
    [item] = values(response.json(), "ReferencedSOPSequence")
    url = value(item, "RetrieveURL")
    assert url.startswith(base_url)
    retrieved = requests.get(url, headers={"Accept": ACCEPT_ANY_TS}, timeout=30)
    assert retrieved.status_code == 200
    [part] = parse_multipart(retrieved)
    assert part.content == data
    assert part.transfer_syntax == ds.file_meta.TransferSyntaxUID


# ------------------------------------------------------------------------------------------
# Large parts
# ------------------------------------------------------------------------------------------

def test_several_large_instances_in_one_request(base_url):
    # Three 512x512 16-bit slices (~525 KB each): an ordinary CT series upload.
    study = uid("large-parts")
    sent = [instance(f"large-{i}", study=study, number=i, rows=512, cols=512)
            for i in (1, 2, 3)]
    response = stow(base_url, [data for _, data in sent])
    assert response.status_code == 200, (
        f"{response.status_code} Warning: {response.headers.get('Warning')}"
    )
    assert sorted(stored_sop_uids(response.json())) == sorted(ds.SOPInstanceUID for ds, _ in sent)
    rows = find_instances(base_url, StudyInstanceUID=study)
    assert len(rows) == 3
