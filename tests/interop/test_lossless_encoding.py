"""Lossless encoding on request (issue 19), decoded by libraries Kura does not use.

Kura encodes JPEG-LS with CharLS, JPEG XL with zune-jpegxl, JPEG 2000 with OpenJPEG and HTJ2K
with OpenJPH. Here every frame it serves is decoded by imagecodecs (its own builds of CharLS,
libjxl, OpenJPEG) and, for whole instances, by pydicom with pylibjpeg (libjpeg for JPEG-LS,
openjpeg for JPEG 2000 and HTJ2K), and by DCMTK's dcmdjpls where it is installed; every decoded
frame must equal pydicom's reading of the original, sample for sample.

Images: pydicom's real CT and MR (16-bit signed), a 12-bit image with overlays in the high bits,
palette colour, RGB (native and RLE, one and two frames, 8- and 16-bit), instances stored
JPEG-LS / JPEG 2000 / RLE (re-encoded from their decoded pixels), and generated MONOCHROME1 and
multi-frame images.
"""

from __future__ import annotations

import io
import shutil
import subprocess

import imagecodecs
import numpy as np
import pydicom
import pytest
import requests
from pydicom.encaps import generate_frames

from kura_interop import (
    Patient,
    make_image,
    parse_multipart,
    read_sample,
    stow,
    to_bytes,
    uid,
)

CODECS = {
    # transfer syntax: (media type, imagecodecs decoder)
    "1.2.840.10008.1.2.4.80": ("image/jls", imagecodecs.jpegls_decode),
    "1.2.840.10008.1.2.4.110": ("image/jxl", imagecodecs.jpegxl_decode),
    "1.2.840.10008.1.2.4.90": ("image/jp2", imagecodecs.jpeg2k_decode),
    "1.2.840.10008.1.2.4.201": ("image/jphc", imagecodecs.jpeg2k_decode),
}

SAMPLES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "examples_overlay.dcm",
    "examples_palette.dcm",
    "examples_rgb_color.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_rle_16bit.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
]


def generated() -> dict[str, pydicom.FileDataset]:
    patient = Patient("Codec^Test", "CODEC1")
    study = uid("codec-study")
    mono1 = make_image(patient=patient, study_uid=study, series_uid=uid("codec-series", 1), instance_number=1,
                       rows=96, cols=80, seed=5)
    mono1.PhotometricInterpretation = "MONOCHROME1"
    multi = make_image(patient=patient, study_uid=study, series_uid=uid("codec-series", 2), instance_number=1,
                       rows=64, cols=72, frames=5, seed=9)
    return {"MONOCHROME1": mono1, "multi-frame": multi}


def stored_bits(array: np.ndarray, bits_stored: int) -> np.ndarray:
    """Samples as their Bits Stored bits: signed and unsigned decoders then compare exactly."""
    return array.astype(np.int64) & ((1 << bits_stored) - 1)


def original_frames(ds: pydicom.Dataset) -> list[np.ndarray]:
    pixels = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return [pixels] if frames == 1 else [pixels[i] for i in range(frames)]


def frame_url(base: str, ds: pydicom.Dataset, frames: str) -> str:
    return (f"{base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/frames/{frames}")


def instance_url(base: str, ds: pydicom.Dataset) -> str:
    return f"{base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def cases():
    for name in SAMPLES:
        yield pytest.param(name, id=name)
    for name in generated():
        yield pytest.param(name, id=name)


def load(name: str) -> pydicom.FileDataset:
    return generated()[name] if name in generated() else read_sample(name)


@pytest.mark.parametrize("name", list(cases()))
def test_every_frame_decodes_pixel_exact_in_an_independent_decoder(kura_factory, name):
    ds = load(name)
    server = kura_factory()
    response = stow(server.url, [to_bytes(ds)])
    assert response.status_code == 200, response.text
    expected = original_frames(ds)
    bits = int(ds.BitsStored)
    count = len(expected)
    frames = ",".join(str(n) for n in range(1, count + 1))
    for ts, (media_type, decode) in CODECS.items():
        if ts == ds.file_meta.TransferSyntaxUID:
            continue  # served as stored, not encoded
        reply = requests.get(frame_url(server.url, ds, frames),
                             headers={"Accept": f'multipart/related; type="{media_type}"'}, timeout=60)
        assert reply.status_code == 200, (name, media_type, reply.status_code, reply.text)
        parts = parse_multipart(reply)
        assert len(parts) == count
        for n, (part, original) in enumerate(zip(parts, expected), start=1):
            assert part.content_type.startswith(media_type), part.content_type
            assert part.transfer_syntax == ts, part.content_type
            decoded = decode(part.content)
            assert decoded.shape == original.shape, (name, media_type, n, decoded.shape, original.shape)
            assert np.array_equal(stored_bits(decoded, bits), stored_bits(original, bits)), (
                f"{name}: {media_type} frame {n} is not pixel-exact")


PYDICOM_DECODES = ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201"]


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "examples_rgb_color.dcm",
                                  "SC_rgb_rle_2frame.dcm", "examples_overlay.dcm", "MONOCHROME1", "multi-frame"])
def test_whole_instances_decode_in_pydicom(kura_factory, name):
    ds = load(name)
    server = kura_factory()
    assert stow(server.url, [to_bytes(ds)]).status_code == 200
    bits = int(ds.BitsStored)
    expected = ds.pixel_array
    for ts in [*PYDICOM_DECODES, "1.2.840.10008.1.2.4.110"]:
        accept = f'multipart/related; type="application/dicom"; transfer-syntax={ts}'
        reply = requests.get(instance_url(server.url, ds), headers={"Accept": accept}, timeout=60)
        assert reply.status_code == 200, (name, ts, reply.text)
        (part,) = parse_multipart(reply)
        assert part.transfer_syntax == ts
        served = pydicom.dcmread(io.BytesIO(part.content))
        assert served.file_meta.TransferSyntaxUID == ts
        assert served.PhotometricInterpretation == ds.PhotometricInterpretation
        assert served.get("LossyImageCompression", "00") == "00"
        assert served.SOPInstanceUID == ds.SOPInstanceUID
        if ts in PYDICOM_DECODES:
            assert np.array_equal(stored_bits(served.pixel_array, bits), stored_bits(expected, bits)), (name, ts)
        else:
            # pydicom 3.0 has no JPEG XL decoder: the fragments go to imagecodecs (libjxl).
            count = int(ds.get("NumberOfFrames", 1) or 1)
            fragments = list(generate_frames(served.PixelData, number_of_frames=count))
            for fragment, original in zip(fragments, original_frames(ds)):
                decoded = imagecodecs.jpegxl_decode(fragment)
                assert np.array_equal(stored_bits(decoded, bits), stored_bits(original, bits)), name


@pytest.mark.skipif(shutil.which("dcmdjpls") is None, reason="DCMTK's dcmdjpls is not installed")
@pytest.mark.parametrize("name", ["CT_small.dcm", "examples_rgb_color.dcm", "multi-frame"])
def test_dcmtk_decodes_jpeg_ls(kura_factory, tmp_path, name):
    ds = load(name)
    server = kura_factory()
    assert stow(server.url, [to_bytes(ds)]).status_code == 200
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80'
    reply = requests.get(instance_url(server.url, ds), headers={"Accept": accept}, timeout=60)
    (part,) = parse_multipart(reply)
    source, target = tmp_path / "jls.dcm", tmp_path / "native.dcm"
    source.write_bytes(part.content)
    subprocess.run(["dcmdjpls", str(source), str(target)], check=True, capture_output=True)
    decoded = pydicom.dcmread(target)
    bits = int(ds.BitsStored)
    assert np.array_equal(stored_bits(decoded.pixel_array, bits), stored_bits(ds.pixel_array, bits))


def test_q_values_and_406(kura_factory):
    ct = read_sample("CT_small.dcm")
    server = kura_factory()
    assert stow(server.url, [to_bytes(ct)]).status_code == 200
    url = instance_url(server.url, ct)

    def ask(accept: str) -> requests.Response:
        return requests.get(url, headers={"Accept": accept}, timeout=60)

    dicom = 'multipart/related; type="application/dicom"; transfer-syntax={}'
    # Highest q wins; among equal q the smallest lossless syntax.
    reply = ask(f"{dicom.format('1.2.840.10008.1.2.4.80')}; q=0.4, {dicom.format('1.2.840.10008.1.2.4.90')}; q=0.8")
    assert parse_multipart(reply)[0].transfer_syntax == "1.2.840.10008.1.2.4.90"
    reply = ask(", ".join(dicom.format(ts) for ts in ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.201",
                                                       "1.2.840.10008.1.2.4.80"]))
    assert parse_multipart(reply)[0].transfer_syntax == "1.2.840.10008.1.2.4.80"
    # A syntax Kura neither stores nor encodes: 406, never 400.
    assert ask(dicom.format("1.2.840.10008.1.2.4.50")).status_code == 406
    assert ask(dicom.format("1.2.840.10008.1.2.4.91")).status_code == 406
    # Lossy stored data is never relabelled lossless.
    lossy = read_sample("JPEG-lossy.dcm")
    assert stow(server.url, [to_bytes(lossy)]).status_code == 200
    reply = requests.get(instance_url(server.url, lossy),
                         headers={"Accept": dicom.format("1.2.840.10008.1.2.4.80")}, timeout=60)
    assert reply.status_code == 406, reply.text
    reply = requests.get(frame_url(server.url, lossy, "1"),
                         headers={"Accept": 'multipart/related; type="image/jphc"'}, timeout=60)
    assert reply.status_code == 406, reply.text


@pytest.mark.skipif(shutil.which("opj_decompress") is None, reason="OpenJPEG's opj_decompress is not installed")
@pytest.mark.parametrize("media_type", ["image/jphc", "image/jp2"])
def test_the_first_bytes_decode_to_a_reduced_image(kura_factory, tmp_path, media_type):
    """RPCL order: a short prefix of a frame already holds every packet of the lowest resolutions.

    OpenJPEG's opj_decompress (non-strict, `-allow-partial`) decodes the first 5% of the
    codestream at 1/8 scale (`-r 3`) to exactly what the whole codestream gives at that scale.
    """
    from PIL import Image

    ds = read_sample("examples_overlay.dcm")  # 484×300, 12-bit
    server = kura_factory()
    assert stow(server.url, [to_bytes(ds)]).status_code == 200
    reply = requests.get(frame_url(server.url, ds, "1"),
                         headers={"Accept": f'multipart/related; type="{media_type}"'}, timeout=60)
    codestream = parse_multipart(reply)[0].content

    def decode(data: bytes, reduce: int) -> np.ndarray:
        source, target = tmp_path / "frame.j2k", tmp_path / "frame.pgm"
        source.write_bytes(data)
        target.unlink(missing_ok=True)
        subprocess.run(["opj_decompress", "-quiet", "-allow-partial", "-i", str(source), "-o", str(target),
                        "-r", str(reduce)], check=True, capture_output=True)
        return np.array(Image.open(target))

    eighth = decode(codestream, 3)
    assert eighth.shape == (38, 61)  # ⌈300/8⌉ × ⌈484/8⌉
    prefix = codestream[: len(codestream) // 20]
    assert np.array_equal(decode(prefix, 3), eighth), "the first 5% do not hold the 1/8-scale image"
    # The codestream's COD marker says RPCL (progression order 2).
    at = codestream.find(b"\xff\x52")
    assert codestream[at + 5] == 2
