"""ZIP packaging (PS3.18 §10.4.4, 2025a): a study downloaded with `Accept: application/zip`
opens with Python's zipfile and with Info-ZIP's unzip, every entry's CRC checks, and every entry
is the instance WADO-RS serves (the stored bytes, or the Explicit VR Little Endian conversion
where the stored syntax may not go on the web)."""

from __future__ import annotations

import io
import shutil
import subprocess
import zipfile

import pytest
import requests

from kura_interop import (
    CT_SMALL,
    from_bytes,
    parse_multipart,
    sample_bytes,
    stow,
    wado,
)

# An Implicit VR Little Endian instance (converted in the archive, as in any default retrieval)
# and an Explicit VR Little Endian one (stored bytes).
NAMES = ("MR_small_implicit.dcm", CT_SMALL)


def test_study_as_zip_opens_and_matches_wado(kura, tmp_path):
    files = [sample_bytes(name) for name in NAMES]
    assert stow(kura.url, files).status_code == 200
    studies = {from_bytes(f).StudyInstanceUID for f in files}
    for study in studies:
        response = requests.get(f"{kura.url}/studies/{study}", headers={"Accept": "application/zip"},
                                timeout=60)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/zip"
        archive = zipfile.ZipFile(io.BytesIO(response.content))
        assert archive.testzip() is None, "every CRC checks"
        served = {p.headers["content-location"].rsplit("/", 1)[1]: p.content
                  for p in parse_multipart(wado(kura.url, study))}
        names = archive.namelist()
        assert len(names) == len(served)
        for name in names:
            study_uid, series_uid, file_name = name.split("/")
            assert study_uid == study and file_name.endswith(".dcm")
            sop = file_name[:-4]
            data = archive.read(name)
            assert data == served[sop], name
            assert from_bytes(data).SeriesInstanceUID == series_uid
            info = archive.getinfo(name)
            assert info.compress_type == zipfile.ZIP_STORED and info.file_size == len(data)

        if shutil.which("unzip") is None:
            pytest.skip("unzip is not installed")
        path = tmp_path / f"{study}.zip"
        path.write_bytes(response.content)
        result = subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "No errors detected" in result.stdout
