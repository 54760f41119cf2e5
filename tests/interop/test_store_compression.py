"""Storage compression (issue 19 item 4, `kura serve --store-compression jpeg-ls`).

Instances are stored with their pixel data re-encoded in JPEG-LS by Kura (CharLS). Here the
stored form (`transfer-syntax=*`) is decoded by pydicom with pylibjpeg (libjpeg, not CharLS) and
must equal pydicom's reading of the original, sample for sample; the default retrieve and the
one naming Explicit VR Little Endian must be the file that was sent, byte for byte (preamble
zeroed, as Kura stores every instance); dicomweb-client's metadata and frames must be those of
the original.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from kura_interop import parse_multipart, sample_bytes, stow

JPEG_LS = "1.2.840.10008.1.2.4.80"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

SAMPLES = ["CT_small.dcm", "MR_small.dcm", "examples_rgb_color.dcm", "examples_palette.dcm"]


def as_stored(data: bytes) -> bytes:
    return bytes(128) + data[128:]


@pytest.mark.parametrize("name", SAMPLES)
def test_stored_jpeg_ls_decodes_in_pydicom_and_the_original_comes_back(kura_factory, name):
    server = kura_factory("--store-compression", "jpeg-ls")
    original = sample_bytes(name)
    response = stow(server.url, [original])
    assert response.status_code == 200, response.text
    ds = pydicom.dcmread(io.BytesIO(original))
    url = (
        f"{server.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )

    stored = requests.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"}, timeout=60)
    assert stored.status_code == 200, stored.text
    assert stored.headers["Content-Type"] == f"application/dicom; transfer-syntax={JPEG_LS}"
    assert len(stored.content) < len(original)
    compressed = pydicom.dcmread(io.BytesIO(stored.content))
    assert compressed.file_meta.TransferSyntaxUID == JPEG_LS
    # pylibjpeg's libjpeg decodes JPEG-LS here; Kura encoded with CharLS.
    np.testing.assert_array_equal(compressed.pixel_array, ds.pixel_array)

    for accept in ("application/dicom", f"application/dicom; transfer-syntax={EXPLICIT_LE}"):
        received = requests.get(url, headers={"Accept": accept}, timeout=60)
        assert received.status_code == 200, received.text
        assert hashlib.sha256(received.content).hexdigest() == hashlib.sha256(as_stored(original)).hexdigest()

    client = DICOMwebClient(url=server.url)
    metadata = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert metadata["00083002"]["Value"] == [EXPLICIT_LE], "the metadata describes the received instance"
    frames = client.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frame_numbers=[1]
    )
    assert bytes(frames[0]) == bytes(ds.PixelData)[: len(frames[0])]
    assert len(frames[0]) == ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8

    jls = requests.get(f"{url}/frames/1", headers={"Accept": 'multipart/related; type="image/jls"'}, timeout=60)
    assert jls.status_code == 200, jls.text
    parts = parse_multipart(jls)
    assert len(parts) == 1
    # Served straight from the stored fragment, not encoded again.
    stored_fragment = next(pydicom.encaps.generate_frames(compressed.PixelData, number_of_frames=1))
    assert parts[0].transfer_syntax == JPEG_LS
    assert parts[0].content == bytes(stored_fragment)
