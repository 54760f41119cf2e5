#!/usr/bin/env python3
"""A stand-in for `kura serve` that the harness's own tests run under lazyfs.

It speaks just enough DICOMweb for run.py (STOW-RS, QIDO-RS of studies and instances, WADO-RS of
one instance, DELETE of a study, series or instance) and keeps each instance as one file. With
FAKE_KURA_DURABLE=1 it follows the discipline a power cut needs: write a temporary file, fsync
it, rename it into place, fsync the directory, and only then answer; a delete unlinks and fsyncs
the directory before answering; the data directories it creates are fsynced into their parents.
With FAKE_KURA_DURABLE=0 it skips every fsync. The harness must pass the first and catch the
second: that is what tests/powercut/test_harness.py checks.

Usage: fake_kura.py serve --data DIR --listen 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pydicom

DURABLE = os.environ.get("FAKE_KURA_DURABLE", "1") != "0"
# FAKE_KURA_DELETE_FSYNC=0: deletes answer before their directory fsync (the harness must see
# the deleted instances come back after the cut).
DELETE_FSYNC = os.environ.get("FAKE_KURA_DELETE_FSYNC", "1") != "0"
ROOT = "/dicomweb"


def fsync_dir(path: Path) -> None:
    if DURABLE:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def make_dirs(path: Path) -> None:
    """mkdir -p, each new directory made durable in its parent."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir()
        fsync_dir(directory.parent)


class Store:
    def __init__(self, data: Path):
        self.dir = data / "instances"
        make_dirs(self.dir)
        for leftover in self.dir.glob("*/*.tmp"):
            leftover.unlink()
        self.lock = threading.Lock()

    def put(self, study: str, series: str, sop: str, data: bytes) -> None:
        folder = self.dir / study  # one folder per study, so that a delete has its own fsync
        make_dirs(folder)
        tmp = folder / f"{series}_{sop}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as out:
            out.write(b"\0" * 128 + data[128:])
            out.flush()
            if DURABLE:
                os.fsync(out.fileno())
        os.replace(tmp, folder / f"{series}_{sop}.dcm")
        fsync_dir(folder)

    def path(self, study: str, series: str, sop: str) -> Path:
        return self.dir / study / f"{series}_{sop}.dcm"

    def entries(self) -> list[tuple[str, str, str]]:
        return sorted((p.parent.name, *p.name[:-4].split("_")) for p in self.dir.glob("*/*.dcm"))

    def delete(self, study: str, series: str | None, sop: str | None) -> int:
        gone = 0
        for path in (self.dir / study).glob("*.dcm"):
            se, so = path.name[:-4].split("_")
            if series in (None, se) and sop in (None, so):
                path.unlink()
                gone += 1
        if gone and DELETE_FSYNC:
            fsync_dir(self.dir / study)  # one durability point: all of it or none of it
        return gone


def parts_of(body: bytes, content_type: str) -> list[bytes]:
    boundary = re.search(r'boundary="?([^";]+)"?', content_type).group(1).encode()
    chunks = (b"\r\n" + body).split(b"\r\n--" + boundary)
    return [chunk.partition(b"\r\n\r\n")[2] for chunk in chunks[1:-1]]


class Handler(BaseHTTPRequestHandler):
    store: Store
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle and delayed ACKs add 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/dicom+json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, rows) -> None:
        self._send(200, json.dumps(rows).encode())

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if urlsplit(self.path).path != f"{ROOT}/studies":
            return self._send(404)
        referenced = []
        for part in parts_of(body, self.headers["Content-Type"]):
            ds = pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True)
            with self.store.lock:
                self.store.put(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, part)
            referenced.append({"00081155": {"vr": "UI", "Value": [ds.SOPInstanceUID]}})
        self._json({"00081199": {"vr": "SQ", "Value": referenced}})

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        offset = int(query.get("offset", ["0"])[0])
        limit = int(query.get("limit", ["1000"])[0])
        parts = url.path[len(ROOT):].strip("/").split("/")
        if parts == ["instances"]:
            entries = self.store.entries()
            rows = [{"0020000D": {"vr": "UI", "Value": [st]}, "00080018": {"vr": "UI", "Value": [so]}}
                    for st, _se, so in entries]
            return self._json(rows[offset:offset + limit])
        if parts == ["studies"]:
            counts: dict[str, int] = {}
            for st, _se, _so in self.store.entries():
                counts[st] = counts.get(st, 0) + 1
            rows = [{"0020000D": {"vr": "UI", "Value": [st]},
                     "00201208": {"vr": "IS", "Value": [n]}} for st, n in sorted(counts.items())]
            return self._json(rows[offset:offset + limit])
        if len(parts) == 6 and parts[0] == "studies" and parts[2] == "series" and parts[4] == "instances":
            path = self.store.path(parts[1], parts[3], parts[5])
            try:
                return self._send(200, path.read_bytes(), "application/dicom")
            except FileNotFoundError:
                return self._send(404)
        self._send(404)

    def do_DELETE(self) -> None:
        parts = urlsplit(self.path).path[len(ROOT):].strip("/").split("/")
        if len(parts) not in (2, 4, 6) or parts[0] != "studies":
            return self._send(404)
        study = parts[1]
        series = parts[3] if len(parts) >= 4 else None
        sop = parts[5] if len(parts) == 6 else None
        with self.store.lock:
            gone = self.store.delete(study, series, sop)
        self._send(204 if gone else 404)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--data", required=True)
    parser.add_argument("--listen", required=True)
    args = parser.parse_args()
    Handler.store = Store(Path(args.data))
    host, port = args.listen.rsplit(":", 1)
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
