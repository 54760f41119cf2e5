"""Every instance Kura serves over WADO-RS is the instance it was given.

pydicom's sample files (many transfer syntaxes, character sets, sequences, multi-frame,
waveforms, SR, SEG) and generated instances are each stored with STOW-RS exactly as they are
on disk, retrieved with WADO-RS, and compared: the bytes are identical except the zeroed
128-byte preamble, and pydicom reads back a dataset equal to the original element by element.

Several sample files are the same image in different transfer syntaxes under one SOP Instance
UID, so the files are spread over as many archives as needed to keep UIDs unique in each.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from kura_interop import (
    kura_servers,
    EXPLICIT_VR_LITTLE_ENDIAN,
    assert_same_content,
    is_transcoded,
    served_syntax,
    UNIQUE_SAMPLES,
    VARIANT_SAMPLES,
    KuraServer,
    Patient,
    assert_same_dataset,
    assert_same_file,
    from_bytes,
    make_image,
    parse_multipart,
    sample_bytes,
    stored_sop_uids,
    stow,
    to_bytes,
    uid,
    wado,
)

MZ = b"MZ" + bytes(range(1, 127))


def _generated() -> dict[str, bytes]:
    study = uid("roundtrip-study")
    patient = Patient("Roundtrip^Generated", "RT-GEN")

    def image(key: str, **kw) -> bytes:
        ds = make_image(patient=patient, study_uid=study, series_uid=uid("roundtrip", key),
                        instance_number=1, sop_uid=uid("roundtrip-sop", key), **kw)
        return to_bytes(ds)

    return {
        "generated-ct-512x512": image("ct512", rows=512, cols=512),
        "generated-multiframe": image("mf", frames=12, rows=96, cols=80),
        "generated-implicit-vr": image("implicit", transfer_syntax=ImplicitVRLittleEndian),
        "generated-utf8": _utf8(study),
        "generated-mz-preamble": MZ + image("mz")[128:],
    }


def _utf8(study: str) -> bytes:
    ds = make_image(patient=Patient("Gómez^José=ゴメス^ホセ", "RT-UTF8"), study_uid=study,
                    series_uid=uid("roundtrip", "utf8"), instance_number=1,
                    sop_uid=uid("roundtrip-sop", "utf8"), charset="ISO_IR 192",
                    study_description="Étude de référence – ünïcödé")
    return to_bytes(ds)


ITEMS: dict[str, bytes] = {
    **{name: sample_bytes(name) for name in UNIQUE_SAMPLES + VARIANT_SAMPLES},
    **_generated(),
}


def _layers() -> list[list[str]]:
    """Greedy spread: each archive holds each SOP Instance UID at most once."""
    layers: list[tuple[set[str], list[str]]] = []
    for name, data in ITEMS.items():
        sop = from_bytes(data).SOPInstanceUID
        for seen, names in layers:
            if sop not in seen:
                break
        else:
            seen, names = set(), []
            layers.append((seen, names))
        seen.add(sop)
        names.append(name)
    return [names for _, names in layers]


LAYERS = _layers()
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


class Archives:
    def __init__(self, servers: list[KuraServer]):
        self.servers = servers
        self.stow_responses: dict[str, requests.Response] = {}

    def url(self, name: str) -> str:
        return self.servers[LAYER_OF[name]].url

    def stored(self, name: str) -> bool:
        """Whether STOW-RS stored the item under its own SOP Instance UID."""
        response = self.stow_responses[name]
        return response.status_code == 200 and stored_sop_uids(response.json()) == [
            from_bytes(ITEMS[name]).SOPInstanceUID
        ]

    def require_stored(self, name: str) -> None:
        # test_wado_instance_roundtrip fails for such an item; don't report it thrice.
        if not self.stored(name):
            pytest.skip(f"{name} was not stored correctly; see test_wado_instance_roundtrip")


@pytest.fixture(scope="module")
def archives(kura_bin):
    with kura_servers(kura_bin, len(LAYERS)) as servers:
        archives = Archives(servers)
        # One instance per request: what is tested here is the content, not the framing.
        for name, data in ITEMS.items():
            archives.stow_responses[name] = stow(archives.url(name), [data])
        yield archives


def _expected_bytes(data: bytes) -> bytes:
    return b"\0" * 128 + data[128:]


@pytest.mark.parametrize("name", list(ITEMS))
def test_wado_instance_roundtrip(archives, name):
    data = ITEMS[name]
    original = from_bytes(data)
    response = archives.stow_responses[name]
    assert response.status_code == 200, f"{response.status_code}: {response.headers.get('Warning')}"
    assert stored_sop_uids(response.json()) == [original.SOPInstanceUID]

    retrieved = wado(archives.url(name), original.StudyInstanceUID,
                     original.SeriesInstanceUID, original.SOPInstanceUID)
    assert retrieved.status_code == 200
    [part] = parse_multipart(retrieved)
    assert part.content_type.startswith("application/dicom")
    assert part.transfer_syntax == served_syntax(original.file_meta.TransferSyntaxUID)
    assert part.content[:128] == b"\0" * 128
    served = from_bytes(part.content)
    if is_transcoded(original):
        assert_same_content(original, served)
        return
    assert part.content[128:] == data[128:]
    assert served.preamble == b"\0" * 128
    assert_same_file(original, served)


@pytest.mark.parametrize("layer", range(len(LAYERS)))
def test_wado_study_and_series_roundtrip(archives, layer):
    """Study- and series-level retrieval return every instance, each identical."""
    names = LAYERS[layer]
    url = archives.servers[layer].url
    by_study: dict[str, dict[str, bytes]] = {}
    by_series: dict[tuple[str, str], set[str]] = {}
    for name in names:
        if not archives.stored(name):
            continue  # reported by test_wado_instance_roundtrip
        ds = from_bytes(ITEMS[name])
        by_study.setdefault(ds.StudyInstanceUID, {})[ds.SOPInstanceUID] = ITEMS[name]
        by_series.setdefault((ds.StudyInstanceUID, ds.SeriesInstanceUID), set()).add(
            ds.SOPInstanceUID)
    assert by_study

    for study, expected in by_study.items():
        response = wado(url, study)
        assert response.status_code == 200
        parts = parse_multipart(response)
        got = {from_bytes(p.content).SOPInstanceUID: p.content for p in parts}
        assert len(parts) == len(expected)
        assert set(got) == set(expected)
        for sop, data in expected.items():
            original = from_bytes(data)
            if is_transcoded(original):
                assert_same_content(original, from_bytes(got[sop]))
            else:
                assert got[sop] == _expected_bytes(data), sop

    for (study, series), sops in by_series.items():
        response = wado(url, study, series)
        assert response.status_code == 200
        parts = parse_multipart(response)
        assert sorted(from_bytes(p.content).SOPInstanceUID for p in parts) == sorted(sops)


@pytest.mark.parametrize("layer", range(len(LAYERS)))
def test_dicomweb_client_reads_every_study(archives, layer):
    """dicomweb-client's own multipart decoding yields datasets equal to the originals."""
    names = [n for n in LAYERS[layer] if archives.stored(n)]
    originals = {}
    for name in names:
        ds = from_bytes(ITEMS[name])
        originals[ds.SOPInstanceUID] = ds
    client = DICOMwebClient(url=archives.servers[layer].url)
    for study in {ds.StudyInstanceUID for ds in originals.values()}:
        for served in client.retrieve_study(study, media_types=(("application/dicom", "*"),)):
            original = originals[served.SOPInstanceUID]
            if is_transcoded(original):
                assert served.file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
                assert_same_content(original, served)
                continue
            assert_same_dataset(original.file_meta, served.file_meta, "file_meta.")
            assert_same_dataset(original, served)


@pytest.mark.parametrize("name", list(ITEMS))
def test_single_part_instance_retrieval(archives, name):
    data = ITEMS[name]
    ds = from_bytes(data)
    archives.require_stored(name)
    response = requests.get(
        f"{archives.url(name)}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}",
        headers={"Accept": "application/dicom; transfer-syntax=*"}, timeout=30,
    )
    assert response.status_code == 200
    content_type = response.headers["Content-Type"]
    if content_type.startswith("multipart/related"):
        [part] = parse_multipart(response)
        body = part.content
    else:
        assert content_type.startswith("application/dicom")
        assert f"transfer-syntax={served_syntax(ds.file_meta.TransferSyntaxUID)}" in content_type
        body = response.content
    if is_transcoded(ds):
        assert_same_content(ds, from_bytes(body))
    else:
        assert body == _expected_bytes(data)


LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91",
}


@pytest.mark.parametrize("name", list(ITEMS))
def test_retrieval_without_transfer_syntax_parameter(archives, name):
    """No transfer-syntax parameter means Explicit VR Little Endian (PS3.18 §8.7.3.5.2): the
    stored bytes when that is what is stored; pixel data held only in lossy form as stored
    (§8.7.3.4); otherwise a conversion whose pixels equal pydicom's decoding of the original,
    or 406 where Kura has no codec."""
    data = ITEMS[name]
    ds = from_bytes(data)
    archives.require_stored(name)
    response = wado(archives.url(name), ds.StudyInstanceUID, ds.SeriesInstanceUID,
                    ds.SOPInstanceUID, accept='multipart/related; type="application/dicom"')
    stored = ds.file_meta.TransferSyntaxUID
    if stored == ExplicitVRLittleEndian:
        assert response.status_code == 200
        [part] = parse_multipart(response)
        assert part.content == _expected_bytes(data)
        return
    if stored in LOSSY_SYNTAXES:
        assert response.status_code == 200, response.text
        [part] = parse_multipart(response)
        assert part.transfer_syntax == stored
        assert part.content == _expected_bytes(data)
        return
    assert response.status_code in (200, 406), response.status_code
    if response.status_code == 406:
        assert "transfer-syntax=*" in response.json()["message"]
        return
    [part] = parse_multipart(response)
    assert part.transfer_syntax == ExplicitVRLittleEndian
    served = from_bytes(part.content)
    assert served.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert served.SOPInstanceUID == ds.SOPInstanceUID
    if "PixelData" in ds:
        assert np.array_equal(served.pixel_array, ds.pixel_array), "decoded pixels differ"


def test_archives_hold_unique_sop_uids():
    # The spread itself: otherwise a 0111 would be blamed on the server.
    for names in LAYERS:
        sops = [from_bytes(ITEMS[n]).SOPInstanceUID for n in names]
        assert len(sops) == len(set(sops))
    assert len(LAYERS) >= 2 and sum(map(len, LAYERS)) == len(ITEMS)
