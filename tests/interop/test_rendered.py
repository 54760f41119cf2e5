"""Rendered and thumbnail resources (PS3.18 §10.4.1.1.3-4) and WADO-URI rendered retrieval (§9.5)
through dicomweb-client, with Pillow reading the images: the rendered pixels follow the
instance's own window (PS3.3 C.11.2.1.2) applied to pydicom's pixel data."""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from kura_interop import CT_SMALL, MR_SMALL, from_bytes, sample_bytes, stow

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def stored(kura):
    files = {name: sample_bytes(name) for name in (CT_SMALL, MR_SMALL, "SC_rgb_jpeg_dcmtk.dcm")}
    assert stow(kura.url, list(files.values())).status_code == 200
    return {name: from_bytes(data) for name, data in files.items()}


def _windowed(ds) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 linear window of the modality values, to 0..255."""
    values = ds.pixel_array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1)) + float(
        getattr(ds, "RescaleIntercept", 0))
    center = float(np.atleast_1d(ds.WindowCenter)[0])
    width = float(np.atleast_1d(ds.WindowWidth)[0])
    low = center - 0.5 - (width - 1) / 2
    out = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    out[values <= low] = 0
    out[values > center - 0.5 + (width - 1) / 2] = 255
    return out


def test_instance_rendered_follows_the_window(kura, stored):
    client = DICOMwebClient(url=kura.url)
    ds = stored[MR_SMALL]
    png = client.retrieve_instance_rendered(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                            media_types=("image/png",))
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert image.shape == ds.pixel_array.shape
    difference = np.abs(image.astype(np.float64) - _windowed(ds))
    assert difference.max() <= 2, difference.max()

    jpeg = client.retrieve_instance_rendered(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                             media_types=("image/jpeg",), params={"quality": 95})
    decoded = Image.open(io.BytesIO(jpeg))
    assert decoded.format == "JPEG" and decoded.size == (ds.Columns, ds.Rows)
    assert np.abs(np.asarray(decoded, dtype=np.float64) - _windowed(ds)).mean() < 4


def test_frames_rendered_with_viewport_and_window(kura, stored):
    client = DICOMwebClient(url=kura.url)
    ds = stored[CT_SMALL]
    png = client.retrieve_instance_frames_rendered(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frame_numbers=[1],
        media_types=("image/png",), params={"viewport": "64,64", "window": "40,400,linear"})
    image = Image.open(io.BytesIO(png))
    assert image.size == (64, 64) and image.mode == "L"


def test_colour_and_thumbnail(kura, stored):
    ds = stored["SC_rgb_jpeg_dcmtk.dcm"]
    url = f"{kura.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    rendered = requests.get(f"{url}/rendered", headers={"Accept": "image/png"}, timeout=30)
    image = np.asarray(Image.open(io.BytesIO(rendered.content)))
    expected = ds.pixel_array  # pydicom 3 gives RGB for YBR JPEG (as_rgb)
    assert image.shape == expected.shape
    assert np.abs(image.astype(int) - expected.astype(int)).mean() < 3
    thumbnail = requests.get(f"{kura.url}/studies/{ds.StudyInstanceUID}/thumbnail", headers={"Accept": "image/jpeg"},
                             timeout=30)
    assert thumbnail.status_code == 200
    assert max(Image.open(io.BytesIO(thumbnail.content)).size) == 128


def test_wado_uri_rendered(kura, stored):
    ds = stored[MR_SMALL]
    response = requests.get(f"{kura.url.rsplit('/', 1)[0]}/wado", params={
        "requestType": "WADO", "studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID,
        "objectUID": ds.SOPInstanceUID, "rows": "32"}, timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).size == (32, 32)
