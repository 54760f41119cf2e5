"""dicomweb-client pointed at a share link root over HTTPS: Kura started with TLS and
--require-auth; an institution stores two studies and its administrator shares one as a link
(POST /admin/shares). The client, with no credentials at all, sees exactly the shared study
through /share/{token}/dicomweb: search, metadata, instances, frames; every URL Kura mints
inside the link stays under it; the other study answers 404 as an unknown one; a revoked link
answers 404."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from kura_interop import KuraServer, Patient, make_image, uid
from test_https import _session, pki  # noqa: F401  (the fixture)


def _create_key(binary: Path, data_dir: Path, institution: str, role: str) -> str:
    result = subprocess.run(
        [str(binary), "key", "create", "--data", str(data_dir), "--institution", institution, "--role", role],
        check=True, capture_output=True, text=True,
    )
    return result.stdout.strip()


def test_dicomweb_client_through_a_share_link(kura_bin, pki):  # noqa: F811
    server = KuraServer(
        kura_bin,
        ("--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]), "--require-auth"),
        scheme="https",
        verify=str(pki["ca"]),
    )
    uploader = _create_key(kura_bin, server.data_dir, "hosp-a", "uploader,reader")
    admin = _create_key(kura_bin, server.data_dir, "hosp-a", "administrator")
    server.ready_headers = {"Authorization": f"Bearer {uploader}"}
    server.start()
    try:
        shared, hidden = uid("link-study"), uid("link-hidden-study")
        series = uid("link-series")
        shared_ds = make_image(patient=Patient("Shared^Sue", "LINK-1"), study_uid=shared, series_uid=series,
                               instance_number=1)
        hidden_ds = make_image(patient=Patient("Hidden^Hal", "LINK-2"), study_uid=hidden,
                               series_uid=uid("link-hidden-series"), instance_number=1)
        DICOMwebClient(server.url, session=_session(pki["ca"], uploader)).store_instances([shared_ds, hidden_ds])

        origin = server.url.rsplit("/dicomweb", 1)[0]
        admin_session = _session(pki["ca"], admin)
        created = admin_session.post(f"{origin}/admin/shares", json={"study": shared, "link": True,
                                                                      "expires_in_secs": 3600}, timeout=10)
        assert created.status_code == 201, created.text
        link_root = created.json()["url"]
        assert link_root.startswith(f"{origin}/share/kshare_") and link_root.endswith("/dicomweb")

        client = DICOMwebClient(link_root, session=_session(pki["ca"], None))
        studies = client.search_for_studies()
        assert [row["0020000D"]["Value"][0] for row in studies] == [shared]
        assert studies[0]["00081190"]["Value"][0].startswith(link_root + "/studies/")
        assert "Hidden^Hal" not in str(studies) and hidden not in str(studies)
        assert client.search_for_studies(search_filters={"PatientName": "Hidden*"}) == []

        metadata = client.retrieve_study_metadata(shared)
        assert len(metadata) == 1 and metadata[0]["00100010"]["Value"][0]["Alphabetic"] == "Shared^Sue"
        bulk = [element["BulkDataURI"] for element in metadata[0].values() if "BulkDataURI" in element]
        assert bulk and all(uri.startswith(link_root + "/") for uri in bulk), bulk

        instance = client.retrieve_instance(shared, series, shared_ds.SOPInstanceUID)
        assert instance.PatientName == "Shared^Sue"
        frames = client.retrieve_instance_frames(shared, series, shared_ds.SOPInstanceUID, frame_numbers=[1])
        assert len(frames) == 1 and len(frames[0]) == len(shared_ds.PixelData)

        with pytest.raises(requests.HTTPError) as hidden_answer:
            client.retrieve_study_metadata(hidden)
        with pytest.raises(requests.HTTPError) as unknown_answer:
            client.retrieve_study_metadata(uid("never-stored"))
        assert hidden_answer.value.response.status_code == 404
        assert hidden_answer.value.response.content == unknown_answer.value.response.content

        # The link is read-only.
        with pytest.raises(requests.HTTPError) as refused:
            client.store_instances([hidden_ds])
        assert refused.value.response.status_code == 403

        # Revoked: 404 at once.
        revoked = admin_session.delete(f"{origin}/admin/shares/{created.json()['id']}", timeout=10)
        assert revoked.status_code == 204
        with pytest.raises(requests.HTTPError) as gone:
            client.search_for_studies()
        assert gone.value.response.status_code == 404
    finally:
        server.stop()
    log = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
    token = created.json()["token"]
    assert token[len("kshare_"):] not in log
