"""STOW-RS with compressed request bodies (issue 19): `Content-Encoding: gzip`, `deflate` and
`br`, sent with plain `requests` and with the curl command line, the stored instances compared
byte for byte through WADO-RS and read back with dicomweb-client; a deflate bomb is 413 with
nothing stored; a corrupt body is 400; an unknown coding is 415 with Accept-Encoding.
"""

from __future__ import annotations

import gzip
import subprocess
import zlib

import brotli
import pydicom
import pytest
import requests

from kura_interop import (
    CT_SMALL,
    find_instances,
    multipart_body,
    parse_multipart,
    sample_bytes,
    stored_sop_uids,
    wado,
)

SAMPLES = [CT_SMALL, "MR_small.dcm", "JPEG2000.dcm"]
ACCEPTED = "gzip, deflate, br, identity"


def uids_of(data: bytes) -> tuple[str, str, str]:
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def as_stored(data: bytes) -> bytes:
    """What Kura keeps: the file with its preamble zeroed (CVE-2019-11687)."""
    return b"\0" * 128 + data[128:]


def post(base: str, body: bytes, content_type: str, coding: str) -> requests.Response:
    return requests.post(
        f"{base}/studies",
        data=body,
        headers={"Content-Type": content_type, "Content-Encoding": coding, "Accept": "application/dicom+json"},
        timeout=120,
    )


def assert_stored_byte_exact(base: str, client, originals: list[bytes]) -> None:
    for original in originals:
        study, series, sop = uids_of(original)
        response = wado(base, study, series, sop)
        assert response.status_code == 200
        (part,) = parse_multipart(response)
        assert part.content == as_stored(original), f"{sop} stored byte-exact"
        # And a client someone else wrote reads the same data set back.
        ds = client.retrieve_instance(study, series, sop)
        assert ds.SOPInstanceUID == sop
        assert ds.PixelData == pydicom.dcmread(pydicom.filebase.DicomBytesIO(original)).PixelData


@pytest.mark.parametrize(
    "coding,encode",
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("br", brotli.compress),
    ],
)
def test_compressed_stow_with_requests_is_stored_byte_exact(kura_factory, coding, encode):
    server = kura_factory()
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=server.url)
    originals = [sample_bytes(name) for name in SAMPLES]
    body, content_type = multipart_body(originals)
    coded = encode(body)
    assert len(coded) < len(body)
    response = post(server.url, coded, content_type, coding)
    assert response.status_code == 200, response.text
    assert response.headers["Accept-Encoding"] == ACCEPTED
    assert sorted(stored_sop_uids(response.json())) == sorted(uids_of(o)[2] for o in originals)
    assert_stored_byte_exact(server.url, client, originals)


def test_compressed_stow_with_curl(kura_factory, tmp_path):
    server = kura_factory()
    from dicomweb_client.api import DICOMwebClient

    originals = [sample_bytes(name) for name in SAMPLES]
    body, content_type = multipart_body(originals)
    (tmp_path / "body.bin").write_bytes(body)
    subprocess.run(["gzip", "-k", str(tmp_path / "body.bin")], check=True)
    result = subprocess.run(
        [
            "curl", "-sS", "-o", str(tmp_path / "response.json"), "-w", "%{http_code}",
            "-X", "POST", f"{server.url}/studies",
            "-H", f"Content-Type: {content_type}",
            "-H", "Content-Encoding: gzip",
            "-H", "Accept: application/dicom+json",
            "--data-binary", f"@{tmp_path / 'body.bin.gz'}",
        ],
        check=True, capture_output=True, text=True,
    )
    assert result.stdout == "200", (tmp_path / "response.json").read_text()
    assert_stored_byte_exact(server.url, DICOMwebClient(url=server.url), originals)


def test_deflate_bomb_is_413_and_stores_nothing(kura_factory):
    server = kura_factory()
    original = sample_bytes(CT_SMALL)
    study, _, sop = uids_of(original)
    body, content_type = multipart_body([original + b"\0" * (256 << 20)])
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip
    coded = compressor.compress(body) + compressor.flush()
    del body
    assert len(coded) < 1 << 20
    response = post(server.url, coded, content_type, "gzip")
    assert response.status_code == 413, response.text
    assert "--max-inflate-ratio" in response.json()["message"]
    assert find_instances(server.url, SOPInstanceUID=sop) == []
    assert find_instances(server.url, StudyInstanceUID=study) == []


def test_corrupt_gzip_is_400_and_stores_nothing(kura_factory):
    server = kura_factory()
    original = sample_bytes(CT_SMALL)
    body, content_type = multipart_body([original])
    coded = bytearray(gzip.compress(body))
    coded[-8:-4] = bytes(b ^ 0xFF for b in coded[-8:-4])  # the CRC-32
    response = post(server.url, bytes(coded), content_type, "gzip")
    assert response.status_code == 400, response.text
    assert "gzip" in response.json()["message"]
    assert find_instances(server.url, SOPInstanceUID=uids_of(original)[2]) == []


@pytest.mark.parametrize("coding", ["zstd", "compress", "gzip, br"])
def test_unknown_coding_is_415_with_accept_encoding(kura, coding):
    original = sample_bytes(CT_SMALL)
    body, content_type = multipart_body([original])
    response = post(kura.url, body, content_type, coding)
    assert response.status_code == 415
    assert response.headers["Accept-Encoding"] == ACCEPTED
    assert "gzip" in response.json()["message"]
