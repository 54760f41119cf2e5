"""dicomweb-client over HTTPS with an OpenID Connect bearer token: the token minted here with
PyJWT (RS256 and ES256 keys from the cryptography package), its public keys given to Kura as
a JWKS file; Kura started with --tls-cert/--tls-key, --require-auth and --oidc-*. A reader token
searches and retrieves but cannot store; an uploader token stores; an expired token and one
for another audience are 401 with error="invalid_token"; the audit trail names the token's
subject and never the token."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from dicomweb_client.api import DICOMwebClient

from kura_interop import KuraServer, Patient, make_image, uid
from test_https import _session, pki  # noqa: F401  (pki is a fixture)

ISSUER = "https://login.example/realms/interop"
AUDIENCE = "kura-interop"


def _jwk(public_key, kid: str, alg: str) -> dict:
    algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
    jwk = json.loads(algorithm.to_jwk(public_key))
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return jwk


def _token(key, kid: str, alg: str, roles: list[str], **overrides) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": f"user-{kid}-{'-'.join(roles)}", "iat": now,
              "exp": now + 300, "realm_access": {"roles": roles}, "org": "interop-hospital"}
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def test_dicomweb_client_over_https_with_an_oidc_token(kura_bin, pki, tmp_path: Path):  # noqa: F811
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [_jwk(rsa_key.public_key(), "rsa-1", "RS256"),
                                         _jwk(ec_key.public_key(), "ec-1", "ES256")]}))
    server = KuraServer(
        kura_bin,
        ("--tls-cert", str(pki["cert"]), "--tls-key", str(pki["key"]), "--require-auth",
         "--oidc-issuer", ISSUER, "--oidc-audience", AUDIENCE, "--oidc-jwks-file", str(jwks),
         "--oidc-roles-claim", "realm_access.roles", "--oidc-institution-claim", "org"),
        scheme="https",
        verify=str(pki["ca"]),
    )
    uploader = _token(ec_key, "ec-1", "ES256", ["uploader"])
    reader = _token(rsa_key, "rsa-1", "RS256", ["reader"])
    admin = _token(rsa_key, "rsa-1", "RS256", ["administrator"])
    server.ready_headers = {"Authorization": f"Bearer {reader}"}
    server.start()
    try:
        study, series = uid("oidc-study"), uid("oidc-series")
        ds = make_image(patient=Patient("Token^Tina", "OIDC-1"), study_uid=study, series_uid=series,
                        instance_number=1)
        DICOMwebClient(server.url, session=_session(pki["ca"], uploader)).store_instances([ds])
        client = DICOMwebClient(server.url, session=_session(pki["ca"], reader))
        found = client.search_for_studies(search_filters={"PatientID": "OIDC-1"})
        assert [row["0020000D"]["Value"][0] for row in found] == [study]
        retrieved = client.retrieve_instance(study, series, ds.SOPInstanceUID)
        assert retrieved.SOPInstanceUID == ds.SOPInstanceUID
        with pytest.raises(requests.HTTPError) as refused:
            client.store_instances([ds])
        assert refused.value.response.status_code == 403

        for bad in (_token(rsa_key, "rsa-1", "RS256", ["reader"], exp=int(time.time()) - 3600),
                    _token(rsa_key, "rsa-1", "RS256", ["reader"], aud="someone-else")):
            rejected = DICOMwebClient(server.url, session=_session(pki["ca"], bad))
            with pytest.raises(requests.HTTPError) as refused:
                rejected.search_for_studies()
            assert refused.value.response.status_code == 401
            assert refused.value.response.headers["WWW-Authenticate"] == \
                'Bearer realm="kura", error="invalid_token"'

        trail = _session(pki["ca"], admin).get(f"{server.root}/admin/audit",
                                                params={"study": study}, timeout=10)
        assert trail.status_code == 200, trail.text
        records = trail.json()["records"]
        assert {r["action"] for r in records} >= {"stow", "wado"}
        assert all(r["institution"] == "interop-hospital" for r in records)
        assert any(r["subject"].startswith("oidc:user-rsa-1-reader") for r in records)
        for token in (uploader, reader, admin):
            assert token not in trail.text
        assert "Token^Tina" not in trail.text
    finally:
        server.stop()
    log = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
    for token in (uploader, reader, admin):
        assert token.split(".")[2] not in log, "a token's signature in the log"
