"""Shared helpers of the interoperability suite: test data, multipart framing, DICOM JSON.

Everything here is deterministic: generated instances use UIDs derived from fixed strings,
and pixel data from fixed formulas, so a failure reproduces byte for byte.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pydicom
import pydicom.data
import requests
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.datadict import tag_for_keyword
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    PYDICOM_IMPLEMENTATION_UID,
    generate_uid,
)

# pydicom's own UID root; generate_uid() with entropy sources is a hash, so deterministic.
UID_ROOT = "1.2.826.0.1.3680043.8.498."
MULTIFRAME_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"

CT_SMALL = "CT_small.dcm"
MR_SMALL = "MR_small.dcm"


def uid(*parts: object) -> str:
    """A deterministic UID for the given key parts."""
    return generate_uid(prefix=UID_ROOT, entropy_srcs=["kura-interop", *map(str, parts)])


# --------------------------------------------------------------------------------------------
# pydicom's sample files
# --------------------------------------------------------------------------------------------

_PYDICOM_DATA = Path(pydicom.data.__file__).parent


def sample_path(name: str) -> Path:
    """A file of pydicom's test data (test_files/ or charset_files/)."""
    for folder in ("test_files", "charset_files"):
        path = _PYDICOM_DATA / folder / name
        if path.is_file():
            return path
    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"pydicom does not ship {name}")
    return Path(path)


def sample_bytes(name: str) -> bytes:
    return sample_path(name).read_bytes()


def read_sample(name: str) -> FileDataset:
    return pydicom.dcmread(sample_path(name))


# Valid PS3.10 files from pydicom's test data, one per SOP Instance UID, in several transfer
# syntaxes (explicit/implicit little endian, big endian, RLE, JPEG baseline/extended,
# JPEG 2000) and character sets.
UNIQUE_SAMPLES: tuple[str, ...] = (
    CT_SMALL,  # Explicit VR Little Endian, 128x128 16-bit CT
    MR_SMALL,  # Explicit VR Little Endian MR
    "rtplan.dcm",  # Implicit VR Little Endian, nested sequences, no pixel data
    "rtdose.dcm",  # Implicit VR Little Endian, 15 frames of 32-bit dose
    "JPEG2000.dcm",  # JPEG 2000
    "JPGExtended.dcm",  # JPEG Extended
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG Baseline, RGB
    "SC_rgb_rle_2frame.dcm",  # RLE Lossless, 2 frames
    "ExplVR_BigEnd.dcm",  # Explicit VR Big Endian (retired)
    "liver_1frame.dcm",  # Segmentation
    "test-SR.dcm",  # Structured report, deep sequences
    "waveform_ecg.dcm",  # Waveform
    "chrArab.dcm",
    "chrFren.dcm",
    "chrGerm.dcm",
    "chrGreek.dcm",
    "chrH31.dcm",
    "chrH32.dcm",
    "chrHbrw.dcm",
    "chrI2.dcm",
    "chrJapMulti.dcm",
    "chrKoreanMulti.dcm",
    "chrRuss.dcm",
    "chrX1.dcm",
    "chrX2.dcm",
)

CHARSET_SAMPLES: tuple[str, ...] = tuple(n for n in UNIQUE_SAMPLES if n.startswith("chr"))

# Further valid files. Several share a SOP Instance UID with a file above (the same image in
# another transfer syntax), so they cannot all live in one archive.
VARIANT_SAMPLES: tuple[str, ...] = (
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
    "rtdose_rle.dcm",  # RLE; every element, UIDs included, has explicit VR UN
    "rtdose_1frame.dcm",
    "rtdose_expb.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_rle_16bit.dcm",
    "SC_rgb_rle_32bit_2frame.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_small_odd.dcm",
    "SC_rgb_small_odd_big_endian.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "SC_rgb_jpeg_dcmd.dcm",
    "SC_jpeg_no_color_transform.dcm",
    "693_J2KI.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "GDCMJ2K_TextGBR.dcm",
    "JPEG-lossy.dcm",
    "examples_jpeg2k.dcm",
    "examples_palette.dcm",
    "examples_overlay.dcm",
    "liver_expb_1frame.dcm",
    "reportsi.dcm",
    "chrFrenMulti.dcm",
    "chrJapMultiExplicitIR6.dcm",
)


# --------------------------------------------------------------------------------------------
# Generated instances
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Patient:
    name: str
    id: str
    birth_date: str = "19700101"
    sex: str = "O"


def _pixels(rows: int, cols: int, frames: int, seed: int) -> np.ndarray:
    n = rows * cols * frames
    values = (np.arange(n, dtype=np.uint64) * (2 * seed + 3) + seed * 977) % 4096
    shape = (frames, rows, cols) if frames > 1 else (rows, cols)
    return values.astype(np.uint16).reshape(shape)


def make_image(
    *,
    patient: Patient,
    study_uid: str,
    series_uid: str,
    instance_number: int,
    sop_uid: str | None = None,
    modality: str = "CT",
    study_date: str = "20200101",
    study_time: str = "101010",
    accession: str = "",
    study_description: str = "",
    series_number: int = 1,
    series_description: str = "",
    institution: str = "",
    rows: int = 64,
    cols: int = 64,
    frames: int = 1,
    transfer_syntax: str = ExplicitVRLittleEndian,
    charset: str | None = None,
    seed: int | None = None,
) -> FileDataset:
    """A minimal but valid 16-bit grayscale image (CT, MR or multi-frame SC)."""
    if sop_uid is None:
        sop_uid = uid("sop", series_uid, instance_number)
    if frames > 1:
        sop_class = MULTIFRAME_GRAYSCALE_WORD_SC
    elif modality == "MR":
        sop_class = MRImageStorage
    else:
        sop_class = CTImageStorage

    meta = FileMetaDataset()
    # PS3.10 Table 7.1-1: both are Type 1 (pydicom recomputes the length when writing).
    meta.FileMetaInformationGroupLength = 0
    meta.FileMetaInformationVersion = b"\0\1"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.ReferringPhysicianName = "Referring^Doctor"
    if institution:
        ds.InstitutionName = institution
    if study_description:
        ds.StudyDescription = study_description
    if series_description:
        ds.SeriesDescription = series_description
    ds.PatientName = patient.name
    ds.PatientID = patient.id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [0, 0, float(instance_number)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [0.5, 0.5]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    elif modality == "CT":
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
    # A small nested sequence, so that sequences are exercised everywhere.
    item = Dataset()
    item.CodeValue = "T-D0050"
    item.CodingSchemeDesignator = "SRT"
    item.CodeMeaning = "Tissue"
    ds.AnatomicRegionSequence = DicomSequence([item])
    ds.PixelData = _pixels(rows, cols, frames, instance_number if seed is None else seed).tobytes()
    return ds


def to_bytes(ds: Dataset, preamble: bytes | None = None) -> bytes:
    """Encodes a dataset as a PS3.10 file in the transfer syntax of its file meta."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    data = buffer.getvalue()
    if preamble is not None:
        assert len(preamble) == 128
        data = preamble + data[128:]
    return data


def from_bytes(data: bytes) -> FileDataset:
    return pydicom.dcmread(io.BytesIO(data))


# --------------------------------------------------------------------------------------------
# Dataset comparison
# --------------------------------------------------------------------------------------------

def assert_same_dataset(expected: Dataset, actual: Dataset, path: str = "") -> None:
    """Element-by-element equality: same tags, VRs and values, recursing into sequences."""
    expected_tags = set(expected.keys())
    actual_tags = set(actual.keys())
    missing = sorted(expected_tags - actual_tags)
    extra = sorted(actual_tags - expected_tags)
    assert not missing and not extra, (
        f"{path or 'dataset'}: missing elements {[str(t) for t in missing]}, "
        f"unexpected elements {[str(t) for t in extra]}"
    )
    for tag in sorted(expected_tags):
        want = expected[tag]
        got = actual[tag]
        where = f"{path}{want.tag}"
        assert want.VR == got.VR, f"{where}: VR {got.VR!r}, expected {want.VR!r}"
        if want.VR == "SQ":
            assert len(want.value) == len(got.value), (
                f"{where}: {len(got.value)} sequence items, expected {len(want.value)}"
            )
            for i, (a, b) in enumerate(zip(want.value, got.value)):
                assert_same_dataset(a, b, f"{where}[{i}].")
        else:
            assert want.value == got.value, (
                f"{where} ({want.keyword or 'private'}): {_short(got.value)}, "
                f"expected {_short(want.value)}"
            )


# PS3.18 §8.7.3: these are never sent on the web; Kura sends Explicit VR Little Endian instead.
WEB_FORBIDDEN_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.2"}
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def served_syntax(stored: str) -> str:
    """The transfer syntax Kura serves an instance stored in `stored` in, for `*`."""
    return EXPLICIT_VR_LITTLE_ENDIAN if stored in WEB_FORBIDDEN_SYNTAXES else stored


def is_transcoded(ds: FileDataset) -> bool:
    return ds.file_meta.TransferSyntaxUID in WEB_FORBIDDEN_SYNTAXES


def assert_same_content(expected: Dataset, actual: Dataset, path: str = "") -> None:
    """Equality that survives a change of transfer syntax: the same elements with the same
    values, binary values compared as pixels (byte order differs) or skipped, VRs not compared
    (Implicit VR files leave some to the reader)."""
    expected_tags = {t for t in expected.keys() if t.group != 0x0002}
    actual_tags = {t for t in actual.keys() if t.group != 0x0002}
    assert expected_tags == actual_tags, f"{path or 'dataset'}: {sorted(expected_tags ^ actual_tags)}"
    for tag in sorted(expected_tags):
        want, got = expected[tag], actual[tag]
        where = f"{path}{want.tag}"
        if want.VR == "SQ":
            assert len(want.value) == len(got.value), where
            for i, (a, b) in enumerate(zip(want.value, got.value)):
                assert_same_content(a, b, f"{where}[{i}].")
        elif want.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN", "OB or OW", "US or OW") or got.VR in ("OB", "OW", "UN"):
            continue
        else:
            assert want.value == got.value, f"{where}: {_short(got.value)}, expected {_short(want.value)}"
    if "PixelData" in expected and not path:
        import numpy as np
        assert np.array_equal(expected.pixel_array, actual.pixel_array), "pixel values differ"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) < 200 else text[:200] + "..."


def assert_same_file(expected: FileDataset, actual: FileDataset) -> None:
    """Same file meta, same encoding and the same data set."""
    assert_same_dataset(expected.file_meta, actual.file_meta, "file_meta.")
    assert expected.original_encoding == actual.original_encoding
    assert_same_dataset(expected, actual)


# --------------------------------------------------------------------------------------------
# Multipart framing
# --------------------------------------------------------------------------------------------

def multipart_body(
    parts: Iterable[bytes | tuple[bytes, str | None]],
    boundary: str | None = None,
) -> tuple[bytes, str]:
    """Frames the parts as multipart/related; returns (body, Content-Type)."""
    boundary = boundary or f"kura-interop-{uuid.uuid4().hex}"
    out = bytearray()
    for part in parts:
        content, content_type = (part, "application/dicom") if isinstance(part, bytes) else part
        out += f"--{boundary}\r\n".encode()
        if content_type is not None:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += b"\r\n" + content + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f'multipart/related; type="application/dicom"; boundary={boundary}'


def _param(content_type: str, name: str) -> str | None:
    match = re.search(rf'(?i);\s*{name}\s*=\s*("([^"]*)"|[^;\s]+)', content_type)
    if not match:
        return None
    return match.group(2) if match.group(2) is not None else match.group(1)


@dataclass
class Part:
    headers: dict[str, str]
    content: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def transfer_syntax(self) -> str | None:
        return _param(self.content_type, "transfer-syntax")


def parse_multipart(response: requests.Response) -> list[Part]:
    """Splits a multipart/related response into its parts (RFC 2046 framing)."""
    content_type = response.headers.get("Content-Type", "")
    assert content_type.lower().startswith("multipart/related"), content_type
    boundary = _param(content_type, "boundary")
    assert boundary, f"no boundary in {content_type!r}"
    body = b"\r\n" + response.content
    chunks = body.split(b"\r\n--" + boundary.encode())
    assert len(chunks) >= 2, "no multipart delimiter in the body"
    assert chunks[-1].startswith(b"--"), "multipart body has no close delimiter"
    parts = []
    for chunk in chunks[1:-1]:
        head, sep, content = chunk.partition(b"\r\n\r\n")
        assert sep, "part without a header/body separator"
        headers = {}
        for line in head.split(b"\r\n"):
            if not line.strip():
                continue
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            assert int(headers["content-length"]) == len(content), (
                f"part Content-Length {headers['content-length']} but {len(content)} bytes"
            )
        parts.append(Part(headers, content))
    return parts


# --------------------------------------------------------------------------------------------
# DICOM JSON
# --------------------------------------------------------------------------------------------

def tag_hex(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return f"{tag:08X}"


def values(row: dict, keyword: str) -> list:
    return row.get(tag_hex(keyword), {}).get("Value", [])


def value(row: dict, keyword: str):
    found = values(row, keyword)
    return found[0] if found else None


def uids(rows: Sequence[dict], keyword: str) -> list[str]:
    return [value(row, keyword) for row in rows]


def failure_reasons(response_json: dict) -> list[int]:
    return [value(item, "FailureReason") for item in values(response_json, "FailedSOPSequence")]


def stored_sop_uids(response_json: dict) -> list[str]:
    return [
        value(item, "ReferencedSOPInstanceUID")
        for item in values(response_json, "ReferencedSOPSequence")
    ]


# --------------------------------------------------------------------------------------------
# Thin HTTP helpers over requests
# --------------------------------------------------------------------------------------------

ACCEPT_ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def stow(base: str, parts, study: str | None = None, timeout: float = 60) -> requests.Response:
    body, content_type = multipart_body(parts)
    url = f"{base}/studies" + (f"/{study}" if study else "")
    return requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=timeout)


def qido(base: str, path: str, **params) -> requests.Response:
    response = requests.get(f"{base}/{path}", params=params, timeout=30)
    assert response.status_code == 200, (path, params, response.status_code, response.text)
    return response


def find_instances(base: str, **params) -> list[dict]:
    return qido(base, "instances", **params).json()


def wado(base: str, study: str, series: str | None = None, instance: str | None = None,
         accept: str = ACCEPT_ANY_TS) -> requests.Response:
    url = f"{base}/studies/{study}"
    if series:
        url += f"/series/{series}"
        if instance:
            url += f"/instances/{instance}"
    return requests.get(url, headers={"Accept": accept}, timeout=60)


# --------------------------------------------------------------------------------------------
# The server under test
# --------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]  # tests/interop/ -> repo
STARTUP_TIMEOUT = 30.0


def kura_binary() -> Path:
    """$KURA_BIN, or release/kura in cargo's target directory ($CARGO_TARGET_DIR included)."""
    if os.environ.get("KURA_BIN"):
        return Path(os.environ["KURA_BIN"])
    try:
        metadata = subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps"],
            cwd=REPO, capture_output=True, check=True, timeout=60,
        )
        return Path(json.loads(metadata.stdout)["target_directory"]) / "release" / "kura"
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return REPO / "target" / "release" / "kura"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def kura_servers(binary: Path, count: int):
    """`count` servers with empty archives, stopped on the way out whatever happened."""
    servers: list[KuraServer] = []
    try:
        for _ in range(count):
            servers.append(KuraServer(binary).start())
        yield servers
    finally:
        for server in servers:
            server.stop()


class KuraServer:
    """One `kura serve` process with a fresh data directory."""

    def __init__(
        self,
        binary: Path,
        extra_args: tuple[str, ...] = (),
        *,
        scheme: str = "http",
        verify: str | bool = True,
        ready_headers: dict[str, str] | None = None,
    ):
        """`scheme`, `verify` (a CA bundle for https) and `ready_headers` (e.g. an API key)
        are what the readiness probe needs for a server started with TLS or --require-auth."""
        self.binary = binary
        self.extra_args = tuple(extra_args)
        self.scheme = scheme
        self.verify = verify
        self.ready_headers = ready_headers or {}
        self._tmp = tempfile.TemporaryDirectory(prefix="kura-interop-")
        self.data_dir = Path(self._tmp.name) / "data"
        self.log_path = Path(self._tmp.name) / "kura.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def root(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The DICOMweb root."""
        return f"{self.root}/dicomweb"

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def start(self) -> "KuraServer":
        env = {k: v for k, v in os.environ.items() if not k.startswith("KURA_")}
        env.setdefault("RUST_LOG", "info")
        last_error = ""
        for _attempt in range(3):  # the free port may be taken between probe and bind
            self.port = _free_port()
            log = open(self.log_path, "ab")
            try:
                self.proc = subprocess.Popen(
                    [
                        str(self.binary), "serve",
                        "--listen", f"127.0.0.1:{self.port}",
                        "--data", str(self.data_dir),
                        *self.extra_args,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                )
            finally:
                log.close()
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    last_error = f"exited with {self.proc.returncode}"
                    break
                try:
                    response = requests.get(
                        f"{self.url}/studies", timeout=1, verify=self.verify, headers=self.ready_headers
                    )
                    if response.status_code == 200:
                        return self
                except requests.RequestException:
                    pass
                time.sleep(0.05)
            else:
                self.stop(check=False)
                raise RuntimeError(
                    f"kura did not answer within {STARTUP_TIMEOUT}s\n{self.log_tail()}"
                )
        raise RuntimeError(f"kura could not start ({last_error})\n{self.log_tail()}")

    def stop(self, check: bool = True) -> None:
        """SIGTERM, then wait. With `check`, a server that died on its own is an error."""
        proc, self.proc = self.proc, None
        try:
            if proc is not None:
                died = proc.poll()
                if died is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                        if check:
                            raise AssertionError(
                                f"kura did not stop within 15s of SIGTERM\n{self.log_tail()}"
                            )
                elif check:
                    raise AssertionError(
                        f"kura exited on its own during the tests (code {died})\n{self.log_tail()}"
                    )
        finally:
            self._tmp.cleanup()
