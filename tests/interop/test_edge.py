"""Defects found by trying Kura with real clients as a new user would (issue 17), each checked
with the client that showed it: dicomweb-client's default bulk data request, browser-style
cache-busting parameters and Origin, DIMSE-style UID lists, requests' default Accept-Encoding,
and a Host header that names another site (DNS rebinding).
"""

from __future__ import annotations

import requests
from dicomweb_client.api import DICOMwebClient

from kura_interop import Patient, make_image, read_sample, stow, to_bytes, uid


def test_retrieve_bulkdata_with_the_default_media_types(kura_factory):
    """dicomweb-client's retrieve_bulkdata without media_types sends
    `Accept: multipart/related; type="*/*"`, which was 406 for the Pixel Data of a native CT."""
    server = kura_factory()
    client = DICOMwebClient(url=server.url)
    ds = read_sample("CT_small.dcm")
    client.store_instances([ds])
    metadata = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    bulk = client.retrieve_bulkdata(metadata["7FE00010"]["BulkDataURI"])
    assert bytes(bulk[0]) == bytes(ds.PixelData)


def _three_studies(server) -> list[str]:
    patient = Patient("Edge^Test", "EDGE-1")
    studies = [uid("edge-study", n) for n in range(3)]
    images = [
        make_image(patient=patient, study_uid=study, series_uid=uid("edge-series", n), instance_number=1)
        for n, study in enumerate(studies)
    ]
    assert stow(server.url, [to_bytes(image) for image in images]).status_code == 200
    return studies


def test_cache_busting_parameter_is_ignored_with_a_warning(kura_factory):
    """jQuery and other browser libraries add `_=<timestamp>` to GET requests; PS3.18 §8.3 says
    the server ignores parameters it does not support."""
    server = kura_factory()
    _three_studies(server)
    response = requests.get(f"{server.url}/studies", params={"_": "1700000000"}, timeout=30)
    assert response.status_code == 200, response.text
    assert len(response.json()) == 3
    assert "not supported and were ignored: _" in response.headers["Warning"]


def test_uid_list_separated_by_backslash(kura_factory):
    """PS3.4 C.2.2.2.2 writes UID lists with backslashes; clients built on DIMSE send them so."""
    server = kura_factory()
    studies = _three_studies(server)
    client = DICOMwebClient(url=server.url)
    found = client.search_for_studies(search_filters={"StudyInstanceUID": f"{studies[0]}\\{studies[2]}"})
    assert sorted(row["0020000D"]["Value"][0] for row in found) == sorted([studies[0], studies[2]])


def test_search_results_are_compressed_for_requests_default_accept_encoding(kura_factory):
    """requests (under dicomweb-client) sends `Accept-Encoding: gzip, deflate` by default."""
    server = kura_factory()
    _three_studies(server)
    response = requests.get(f"{server.url}/instances", params={"includefield": "all"}, timeout=30)
    assert response.status_code == 200
    assert response.headers.get("Content-Encoding") in ("gzip", "br"), response.headers
    assert len(response.json()) == 3  # requests decodes it
    plain = requests.get(
        f"{server.url}/instances", params={"includefield": "all"}, headers={"Accept-Encoding": "identity"}, timeout=30
    )
    assert "Content-Encoding" not in plain.headers
    assert int(response.headers["Content-Length"]) * 2 < int(plain.headers["Content-Length"])
    assert plain.json() == response.json()
    assert len(DICOMwebClient(url=server.url).search_for_instances()) == 3


def test_loopback_origins_and_host_names(kura_factory):
    """A viewer served from http://localhost:3000 may call Kura on loopback without
    --cors-origins; a page whose own host name resolves to 127.0.0.1 (DNS rebinding) may not."""
    server = kura_factory()
    _three_studies(server)
    allowed = requests.get(f"{server.url}/studies", headers={"Origin": "http://localhost:3000"}, timeout=30)
    assert allowed.headers.get("Access-Control-Allow-Origin") == "http://localhost:3000"
    other = requests.get(f"{server.url}/studies", headers={"Origin": "http://evil.example"}, timeout=30)
    assert "Access-Control-Allow-Origin" not in other.headers
    rebound = requests.get(f"{server.url}/studies", headers={"Host": f"evil.example:{server.port}"}, timeout=30)
    assert rebound.status_code == 421
    assert "--allowed-hosts" in rebound.json()["message"]
    named = kura_factory("--allowed-hosts", "archive.example")
    response = requests.get(f"{named.url}/studies", headers={"Host": f"archive.example:{named.port}"}, timeout=30)
    assert response.status_code == 200
