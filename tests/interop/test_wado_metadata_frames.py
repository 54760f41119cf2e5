"""WADO-RS metadata, frames and bulk data through Python dicomweb-client, on pydicom's sample
files (native, JPEG baseline/extended, JPEG 2000, RLE, JPEG-LS; single- and multi-frame).

What is checked: the metadata JSON agrees with pydicom's reading of the file for every
non-binary top-level attribute, Pixel Data is a BulkDataURI that resolves to the stored pixel
bytes, and every frame served equals pydicom's own frame of the original (native bytes, or the
compressed codestream of that frame).
"""

from __future__ import annotations

import pytest
from pydicom.encaps import generate_frames

from dicomweb_client.api import DICOMwebClient

from kura_interop import KuraServer, read_sample

# Several samples share SOP Instance UIDs, so each gets an archive of its own.
SAMPLES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "rtdose_1frame.dcm",
    "JPEG2000.dcm",
    "693_J2KI.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_rle_2frame.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "JPEG-lossy.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
]

MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


@pytest.fixture(scope="module")
def archives(kura_bin):
    """sample name → (client of an archive holding just that sample, its dataset)."""
    servers, stored = [], {}
    try:
        for name in SAMPLES:
            server = KuraServer(kura_bin).start()
            servers.append(server)
            client = DICOMwebClient(url=server.url)
            ds = read_sample(name)
            assert len(client.store_instances([ds]).ReferencedSOPSequence) == 1, name
            stored[name] = (client, ds)
        yield stored
    finally:
        for server in servers:
            server.stop()


def frame_media_types(ds):
    ts = ds.file_meta.TransferSyntaxUID
    if not ts.is_compressed:
        return (("application/octet-stream", "*"),)
    return ((MEDIA_TYPES[ts], ts),)


def original_frames(ds) -> list[bytes]:
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return [bytes(f) for f in generate_frames(ds.PixelData, number_of_frames=frames)]
    size = len(ds.PixelData) // frames
    return [bytes(ds.PixelData[i * size:(i + 1) * size]) for i in range(frames)]


@pytest.mark.parametrize("name", SAMPLES)
def test_frames_equal_the_originals(archives, name):
    client, ds = archives[name]
    expected = original_frames(ds)
    numbers = list(range(1, len(expected) + 1))
    frames = client.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
        frame_numbers=numbers, media_types=frame_media_types(ds),
    )
    assert [bytes(f) for f in frames] == expected, name


@pytest.mark.parametrize("name", SAMPLES)
def test_metadata_matches_the_file_and_pixel_data_resolves(archives, name):
    client, ds = archives[name]
    metadata = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert list(metadata) == sorted(metadata), "members in tag order"
    for element in ds:
        tag = f"{element.tag:08X}"
        if element.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ") or tag == "00080005":
            continue
        if element.tag.element == 0:
            assert tag not in metadata, "group lengths never appear (F.2.2)"
            continue
        assert tag in metadata, f"{name}: {element.keyword or tag} missing"
        got = metadata[tag].get("Value")
        if element.value in (None, "", b"") or element.VM == 0:
            assert got is None or got == [None] or got == [""], f"{name}: {tag} should be empty, got {got}"
            continue
        values = element.value if element.VM > 1 else [element.value]
        if element.VR == "PN":
            assert [v.get("Alphabetic", "") for v in got] == [str(v).split("=")[0] for v in values], f"{name}: {tag}"
        elif element.VR in ("IS", "DS", "US", "SS", "UL", "SL", "FL", "FD"):
            assert [float(g) for g in got] == pytest.approx([float(v) for v in values]), f"{name}: {tag}"
        elif element.VR == "AT":
            continue
        else:
            assert [str(g) for g in got] == [str(v).rstrip("\x00 ") for v in values], f"{name}: {tag}"
    uri = metadata["7FE00010"]["BulkDataURI"]
    assert "InlineBinary" not in metadata["7FE00010"]
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        bulk = client.retrieve_bulkdata(uri, media_types=(("application/octet-stream", "*"),))
        assert bytes(bulk[0]) == bytes(ds.PixelData), name
    else:
        bulk = client.retrieve_bulkdata(uri, media_types=frame_media_types(ds))
        assert [bytes(b) for b in bulk] == original_frames(ds), name


def test_series_and_study_metadata_list_every_instance(client):
    datasets = [read_sample(name) for name in ("CT_small.dcm", "MR_small.dcm", "rtdose_1frame.dcm")]
    client.store_instances(datasets)
    for ds in datasets:
        series = client.retrieve_series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID)
        assert [m["00080018"]["Value"][0] for m in series] == [ds.SOPInstanceUID]
        study = client.retrieve_study_metadata(ds.StudyInstanceUID)
        assert ds.SOPInstanceUID in {m["00080018"]["Value"][0] for m in study}
