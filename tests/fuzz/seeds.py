#!/usr/bin/env python3
"""Builds the seed corpora of the fuzz targets under the directory given (default
tests/fuzz/corpus): the part10 target gets pydicom's DICOM test files (its data/test_files and
data/charset_files directories, those of at most MAX_BYTES), and so does metadata_writers; the
multipart target STOW-RS bodies wrapping a few of them, frame_map a few layouts in its own input
format, and the text targets the small seeds committed under tests/fuzz/seeds/.
Nothing is downloaded: only the files that ship in the pydicom package are used."""

import os
import shutil
import struct
import sys
from pathlib import Path

import pydicom

MAX_BYTES = 64 * 1024
HERE = Path(__file__).resolve().parent
# pydicom files that crash a target now (see regressions/<target>/README.md): left out of the
# seeds so that a short run explores the rest; the crash itself is a regression test. Remove a
# name when its fix is in.
KNOWN_CRASHERS: set[str] = set()


def dicom_files():
    data = Path(pydicom.__file__).parent / "data"
    for directory in ("test_files", "charset_files"):
        for path in sorted((data / directory).iterdir()):
            if not path.is_file() or path.stat().st_size > MAX_BYTES or path.name in KNOWN_CRASHERS:
                continue
            head = path.read_bytes()[:132]
            if head[128:132] == b"DICM":
                yield path


def multipart(boundary, parts, chunk):
    body = bytearray(b"preamble\r\n")
    for content_type, payload in parts:
        body += b"--" + boundary + b"\r\nContent-Type: " + content_type + b"\r\n\r\n" + payload + b"\r\n"
    body += b"--" + boundary + b"--\r\n"
    header = b'multipart/related; type="application/dicom"; boundary=' + boundary
    return header + b"\n" + bytes([chunk]) + bytes(body)


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "corpus"
    files = list(dicom_files())
    if not files:
        sys.exit("seeds.py: no DICOM test files found in the pydicom package")
    part10 = out / "part10"
    part10.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copyfile(path, part10 / path.name)
    smallest = sorted(files, key=lambda p: p.stat().st_size)[:4]
    bodies = out / "multipart"
    bodies.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(smallest):
        payload = path.read_bytes()
        (bodies / f"one-{i}").write_bytes(multipart(b"kura-b0und", [(b"application/dicom", payload)], 7 + i))
    two = [(b"application/dicom", smallest[0].read_bytes()[:300]), (b"text/plain", b"not dicom")]
    (bodies / "two").write_bytes(multipart(b"x", two, 63))
    (bodies / "empty").write_bytes(multipart(b"abc", [], 0))
    for target in ("query", "frames_range", "render_params"):
        shutil.copytree(HERE / "seeds" / target, out / target, dirs_exist_ok=True)
    # frames_range seeds: 8 bytes of frame count / value length, then the text.
    ranges = out / "frames_range"
    for name, number, text in [("bin-a", 10, b"1,2,3"), ("bin-b", 1000, b"bytes=0-99"), ("bin-c", 5, b"bytes=-3")]:
        (ranges / name).write_bytes(struct.pack("<Q", number) + text)
    # metadata_writers reads PS3.10 files as part10 does.
    shutil.copytree(part10, out / "metadata_writers", dirs_exist_ok=True)
    frame_map(out / "frame_map")
    print(f"seeds.py: {len(files)} DICOM files, corpus in {out}")


def frame_map(directory):
    """Seeds of the frame_map input format (tests/fuzz/bodies.rs `frame_map`; the same as
    smoke.rs `frame_map_seeds`): a mode byte, Rows, Columns, SamplesPerPixel, BitsAllocated
    (u16), NumberOfFrames (u32), then a native value length (u32) or an offset table (u16 count,
    u32 entries) and fragments (u16 length, flag byte)."""
    directory.mkdir(parents=True, exist_ok=True)

    def header(mode, rows, columns, samples, bits, frames):
        return bytes([mode]) + struct.pack("<HHHHI", rows, columns, samples, bits, frames)

    fragments = b"".join(struct.pack("<HB", 10, flag) for flag in (1, 0, 0, 1, 0))
    table = header(3, 4, 4, 1, 8, 2) + struct.pack("<HII", 2, 0, 54) + fragments
    seeds = {
        "native": header(0, 4, 4, 1, 16, 3) + struct.pack("<I", 96),
        "table": table,
        "scan": bytes([1]) + table[1:],
        "one-per-fragment": header(1, 8, 8, 3, 8, 3) + struct.pack("<H", 0) + bytes([20, 0, 1]) * 3,
    }
    for name, data in seeds.items():
        (directory / name).write_bytes(data)


if __name__ == "__main__":
    main()
