"""dicomweb-client over HTTPS with an API key: Kura started with --tls-cert/--tls-key and
--require-auth, the client trusting a test CA (made here with the openssl command line) through
its requests session. Also: no key is 401 with WWW-Authenticate, a reader key cannot store,
and Retrieve URLs name https."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from kura_interop import KuraServer, Patient, make_image, uid


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A test CA and a server certificate for localhost and 127.0.0.1 signed by it."""
    ca_key, ca = tmp_path / "ca.key", tmp_path / "ca.pem"
    key, csr, cert = tmp_path / "server.key", tmp_path / "server.csr", tmp_path / "server.pem"
    ext = tmp_path / "server.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=Kura interop test CA")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return {"ca": ca, "cert": cert, "key": key}


def _create_key(binary: Path, data_dir: Path, role: str) -> str:
    result = subprocess.run(
        [str(binary), "key", "create", "--data", str(data_dir), "--institution", "interop", "--role", role],
        check=True, capture_output=True, text=True,
    )
    return result.stdout.strip()


def _session(ca: Path, key: str | None) -> requests.Session:
    session = requests.Session()
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE from the environment override
    # session.verify; the test CA must win.
    session.trust_env = False
    session.verify = str(ca)
    if key is not None:
        session.headers["Authorization"] = f"Bearer {key}"
    return session


def test_dicomweb_client_over_https_with_an_api_key(kura_bin, pki):
    server = KuraServer(
        kura_bin,
        ("--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]), "--require-auth"),
        scheme="https",
        verify=str(pki["ca"]),
    )
    writer = _create_key(kura_bin, server.data_dir, "uploader,reader")
    reader = _create_key(kura_bin, server.data_dir, "reader")
    server.ready_headers = {"Authorization": f"Bearer {reader}"}
    server.start()
    try:
        study, series = uid("https-study"), uid("https-series")
        ds = make_image(patient=Patient("Secure^Sam", "TLS-1"), study_uid=study, series_uid=series,
                        instance_number=1)
        client = DICOMwebClient(server.url, session=_session(pki["ca"], writer))
        client.store_instances([ds])
        found = client.search_for_studies(search_filters={"PatientID": "TLS-1"})
        assert [row["0020000D"]["Value"][0] for row in found] == [study]
        assert found[0]["00081190"]["Value"][0].startswith("https://127.0.0.1:")
        retrieved = client.retrieve_instance(study, series, ds.SOPInstanceUID)
        assert retrieved.SOPInstanceUID == ds.SOPInstanceUID
        assert retrieved.PatientName == "Secure^Sam"

        # The reader key reads but may not store; no key, or a revoked-looking one, is 401.
        read_only = DICOMwebClient(server.url, session=_session(pki["ca"], reader))
        assert len(read_only.search_for_series(study)) == 1
        with pytest.raises(requests.HTTPError) as refused:
            read_only.store_instances([ds])
        assert refused.value.response.status_code == 403
        anonymous = DICOMwebClient(server.url, session=_session(pki["ca"], None))
        with pytest.raises(requests.HTTPError) as refused:
            anonymous.search_for_studies()
        assert refused.value.response.status_code == 401
        assert refused.value.response.headers["WWW-Authenticate"] == 'Bearer realm="kura"'

        # A client that does not trust the test CA cannot connect at all.
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{server.url}/studies", headers={"Authorization": f"Bearer {reader}"}, timeout=5)
    finally:
        server.stop()
    log = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
    for secret in (writer, reader):
        secret_part = secret[len("kura_") + 17:]  # after kura_{16 hex}_; it may contain "_"
        assert len(secret_part) == 43 and secret_part not in log
