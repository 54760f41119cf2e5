#!/usr/bin/env python3
"""What a remote reader waits for on a slow hospital link: Kura beside Orthanc + DICOMweb.

Both servers get the same data over loopback, then each is read through its own
`benches/slowlink.py` link (default 2 Mbit/s per direction, 150 ms round trip) by a client that
behaves like a browser: Kura over HTTP/2 (one connection, requests multiplexed; h2c with prior
knowledge, as no TLS is set up here), Orthanc 1.10 over HTTP/1.1 with at most six connections
(it has no HTTP/2). Every step starts with no open connection, so each pays its handshake.

Steps (issue #19's table):
  list        QIDO of the 20-study list, then one thumbnail per study (Kura: the study's
              thumbnail resource; Orthanc has none: a QIDO for one instance of the study, then its
              rendered image at viewport=128,128)
  first-image the 300-slice series' metadata, then the rendered JPEG of its first slice
  lossless    the first frame in the smallest lossless form the server gives: HTJ2K, JPEG-LS,
              JPEG XL, JPEG 2000, else native (the Accept headers tried are printed)
  preview     the whole series at preview quality: Kura one request for the series' rendered
              frames at viewport=256,256&quality=60; Orthanc one rendered request per instance
  study-bytes the whole study in the same lossless form as `lossless`, fetched over loopback (not
              the slow link: that would take minutes per server); the line time at the link's rate
              is computed from the bytes

    python3 benches/slowlink_viewer.py                   # Kura (target/release/kura) and Orthanc
    KURA_BIN=/path/to/kura python3 benches/slowlink_viewer.py --no-orthanc

Needs: pydicom, numpy, httpx, h2 (pip); Orthanc and orthanc-dicomweb (Debian) for the peer.
"""

import argparse
import asyncio
import copy
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

HERE = os.path.dirname(os.path.abspath(__file__))
LOSSLESS = [
    ("HTJ2K", 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.201'),
    ("HTJ2K", 'multipart/related; type="image/jphc"'),
    ("JPEG-LS", 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.80'),
    ("JPEG-LS", 'multipart/related; type="image/jls"'),
    ("JPEG XL", 'multipart/related; type="image/jxl"'),
    ("JPEG 2000", 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.90'),
    ("JPEG 2000", 'multipart/related; type="image/jp2"'),
    ("native", 'multipart/related; type="application/octet-stream"'),
]
STUDY_TS = {
    "HTJ2K": "1.2.840.10008.1.2.4.201",
    "JPEG-LS": "1.2.840.10008.1.2.4.80",
    "JPEG XL": "1.2.840.10008.1.2.4.110",
    "JPEG 2000": "1.2.840.10008.1.2.4.90",
    "native": "1.2.840.10008.1.2.1",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


# ---------------------------------------------------------------------------------------------
# Data: a 300-slice CT made from a real 512×512 CT slice (pydicom-data's 693_UNCR), each slice
# shifted a little so that no two are identical but each compresses like the real one; and 20
# small studies of three such slices for the study list.

def ct_series(count, study_uid, patient, shift_seed=0):
    base = pydicom.dcmread(get_testdata_file("693_UNCR.dcm"))
    pixels = base.pixel_array
    series_uid = generate_uid()
    for n in range(count):
        ds = copy.deepcopy(base)
        shifted = np.roll(pixels, ((n + shift_seed) % 9 - 4, (n * 3 + shift_seed) % 7 - 3), axis=(0, 1))
        ds.PixelData = shifted.astype(pixels.dtype).tobytes()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.InstanceNumber = n + 1
        ds.PatientName = patient
        ds.PatientID = patient.replace("^", "")
        ds.SliceLocation = float(n)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        yield buffer.getvalue()


def make_data():
    main_study = generate_uid()
    studies = {main_study: list(ct_series(300, main_study, "SLOW^LINK"))}
    for k in range(19):
        uid = generate_uid()
        studies[uid] = list(ct_series(3, uid, f"LIST^{k:02d}", shift_seed=k))
    return main_study, studies


def multipart(parts, boundary="kura-slowlink-boundary"):
    body = bytearray()
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f'multipart/related; type="application/dicom"; boundary={boundary}'


def upload(root, studies):
    with httpx.Client(timeout=120) as client:
        for uid, parts in studies.items():
            for i in range(0, len(parts), 50):
                body, content_type = multipart(parts[i:i + 50])
                reply = client.post(f"{root}/studies", content=body, headers={"content-type": content_type})
                if reply.status_code != 200:
                    raise RuntimeError(f"STOW to {root}: {reply.status_code} {reply.text[:300]}")


# ---------------------------------------------------------------------------------------------
# Servers

class Kura:
    name = "Kura"

    def __init__(self, work):
        self.port = free_port()
        binary = os.environ.get("KURA_BIN", os.path.join(HERE, "..", "target", "release", "kura"))
        self.process = subprocess.Popen(
            [binary, "serve", "--data", os.path.join(work, "kura"), "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "kura.log"), "w"))
        wait_port(self.port)
        self.root = f"http://127.0.0.1:{self.port}/dicomweb"
        self.http2 = True

    def settle(self):
        # The store-time renditions run in the background after the STOWs were acknowledged.
        time.sleep(float(os.environ.get("KURA_SETTLE_SECS", "20")))

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


class Orthanc:
    name = "Orthanc"

    def __init__(self, work):
        self.port = free_port()
        storage = os.path.join(work, "orthanc")
        os.makedirs(storage, exist_ok=True)
        config = {
            "Name": "OrthancSlowLink", "StorageDirectory": storage, "IndexDirectory": storage,
            "StorageCompression": False,
            "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
            "HttpServerEnabled": True, "HttpPort": self.port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomServerEnabled": False, "OrthancExplorerEnabled": False,
            "HttpCompressionEnabled": True,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Ssl": False},
        }
        path = os.path.join(work, "orthanc.json")
        with open(path, "w") as f:
            json.dump(config, f)
        self.process = subprocess.Popen(["Orthanc", path], stdout=subprocess.DEVNULL,
                                        stderr=open(os.path.join(work, "orthanc.log"), "w"))
        wait_port(self.port)
        self.root = f"http://127.0.0.1:{self.port}/dicom-web"
        self.http2 = False

    def settle(self):
        pass

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


class Link:
    def __init__(self, port, rate_kbit, delay_ms):
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "slowlink.py"), "--listen", str(self.port), "--to",
             f"127.0.0.1:{port}", "--rate-kbit", str(rate_kbit), "--delay-ms", str(delay_ms)],
            stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self):
        self.process.terminate()
        self.process.wait()


# ---------------------------------------------------------------------------------------------
# Steps

def client_for(server, http2):
    limits = httpx.Limits(max_connections=1 if http2 else 6, max_keepalive_connections=6)
    return httpx.AsyncClient(http1=not http2, http2=http2, limits=limits, timeout=600,
                             headers={"accept-encoding": "gzip, deflate, br"})


def rebase(root, link_port):
    return root.replace(root.split("/")[2], f"127.0.0.1:{link_port}")


def first_value(item, tag):
    return item[tag]["Value"][0]


async def fetch(client, url, **options):
    """GET, once more on a fresh connection when the server closed a kept-alive one under it
    (Orthanc closes after some refusals), as a browser does."""
    try:
        return await client.get(url, **options)
    except (httpx.RemoteProtocolError, httpx.ReadError):
        return await client.get(url, **options)


async def rendered(client, url, params):
    """A rendered JPEG with `params`; without them when the server refuses them (Orthanc 1.10's
    DICOMweb plugin answers 400 to `viewport`), as a viewer would fall back."""
    reply = await fetch(client, url, params=params, headers={"accept": "image/jpeg"})
    if reply.status_code == 400:
        reply = await fetch(client, url, headers={"accept": "image/jpeg"})
    return reply


async def step_list(server, root):
    async with client_for(server, server.http2) as client:
        start = time.monotonic()
        studies = (await client.get(f"{root}/studies", params={"limit": "20"},
                                    headers={"accept": "application/dicom+json"})).json()
        uids = [first_value(s, "0020000D") for s in studies]

        async def thumbnail(uid):
            if server.name == "Kura":
                reply = await client.get(f"{root}/studies/{uid}/thumbnail", headers={"accept": "image/jpeg"})
            else:
                found = (await client.get(f"{root}/studies/{uid}/instances", params={"limit": "1"},
                                          headers={"accept": "application/dicom+json"})).json()[0]
                series, sop = first_value(found, "0020000E"), first_value(found, "00080018")
                reply = await rendered(client, f"{root}/studies/{uid}/series/{series}/instances/{sop}/rendered",
                                       {"viewport": "128,128"})
            reply.raise_for_status()
            return len(reply.content)

        sizes = await asyncio.gather(*(thumbnail(uid) for uid in uids))
        return time.monotonic() - start, f"{len(uids)} studies, thumbnails {sum(sizes)} bytes"


async def step_first_image(server, root, study, series, first_sop):
    async with client_for(server, server.http2) as client:
        start = time.monotonic()
        metadata = await fetch(client, f"{root}/studies/{study}/series/{series}/metadata",
                               headers={"accept": "application/dicom+json"})
        metadata.raise_for_status()
        count = len(metadata.json())
        image = await client.get(f"{root}/studies/{study}/series/{series}/instances/{first_sop}/rendered",
                                 headers={"accept": "image/jpeg"})
        image.raise_for_status()
        return time.monotonic() - start, (f"metadata of {count} instances "
                                          f"({metadata.headers.get('content-encoding', 'identity')} "
                                          f"{metadata.num_bytes_downloaded} bytes), "
                                          f"JPEG {len(image.content)} bytes")


async def step_lossless(server, root, study, series, first_sop):
    async with client_for(server, server.http2) as client:
        start = time.monotonic()
        tried = []
        for name, accept in LOSSLESS:
            reply = await fetch(client, f"{root}/studies/{study}/series/{series}/instances/{first_sop}/frames/1",
                                headers={"accept": accept})
            tried.append(f"{name}:{reply.status_code}")
            if reply.status_code == 200:
                return time.monotonic() - start, name, f"{len(reply.content)} bytes; tried {' '.join(tried)}"
        return time.monotonic() - start, None, f"none; tried {' '.join(tried)}"


async def step_preview(server, root, study, series, sops):
    async with client_for(server, server.http2) as client:
        start = time.monotonic()
        accept = {"accept": 'multipart/related; type="image/jpeg"'}
        if server.name == "Kura":
            reply = await client.get(f"{root}/studies/{study}/series/{series}/rendered",
                                     params={"viewport": "256,256", "quality": "60"}, headers=accept)
            reply.raise_for_status()
            total, count = len(reply.content), reply.content.count(b"\xff\xd8\xff")
        else:
            async def one(sop):
                reply = await rendered(client, f"{root}/studies/{study}/series/{series}/instances/{sop}/rendered",
                                       {"viewport": "256,256", "quality": "60"})
                reply.raise_for_status()
                return len(reply.content)
            sizes = await asyncio.gather(*(one(sop) for sop in sops))
            total, count = sum(sizes), len(sizes)
        return time.monotonic() - start, f"{count} previews, {total} bytes"


def study_bytes(server, study, syntax):
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={STUDY_TS[syntax]}'
    with httpx.Client(timeout=600) as client:
        reply = client.get(f"{server.root}/studies/{study}", headers={"accept": accept})
        if reply.status_code != 200:
            return None, f"{reply.status_code}"
        return len(reply.content), accept


def run(server, args, main_study, studies):
    upload(server.root, studies)
    server.settle()
    with httpx.Client(timeout=60) as client:
        found = client.get(f"{server.root}/studies/{main_study}/instances", params={"limit": "1000"},
                           headers={"accept": "application/dicom+json"}).json()
    found.sort(key=lambda item: int(first_value(item, "00200013")))
    series = first_value(found[0], "0020000E")
    sops = [first_value(item, "00080018") for item in found]
    native = sum(len(part) for part in studies[main_study])
    link = Link(server.port, args.rate_kbit, args.delay_ms)
    root = rebase(server.root, link.port)
    results = {}
    syntax = None

    def attempt(step, coroutine):
        try:
            results[step] = asyncio.run(coroutine)
        except Exception as error:  # a refusal of one server is a row of the table, not the end
            results[step] = (None, f"failed: {str(error)[:160]}")

    try:
        attempt("list", step_list(server, root))
        attempt("first-image", step_first_image(server, root, main_study, series, sops[0]))
        try:
            seconds, syntax, detail = asyncio.run(step_lossless(server, root, main_study, series, sops[0]))
            results["lossless"] = (seconds, detail)
        except Exception as error:
            results["lossless"] = (None, f"failed: {str(error)[:160]}")
        attempt("preview", step_preview(server, root, main_study, series, sops))
    finally:
        link.stop()
    if syntax:
        size, detail = study_bytes(server, main_study, syntax)
        if size:
            line = size * 8 / (args.rate_kbit * 1000)
            results["study-bytes"] = (line, f"{syntax}: {size} of {native} native bytes "
                                            f"({100 * size / native:.1f}%), line time computed")
        else:
            results["study-bytes"] = (None, f"study in {syntax}: {detail}")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate-kbit", type=float, default=2000)
    parser.add_argument("--delay-ms", type=float, default=75)
    parser.add_argument("--no-orthanc", action="store_true")
    args = parser.parse_args()
    main_study, studies = make_data()
    work = tempfile.mkdtemp(prefix="kura-slowlink-")
    servers = [Kura] + ([] if args.no_orthanc or not shutil.which("Orthanc") else [Orthanc])
    table = {}
    for make in servers:
        server = make(work)
        try:
            table[server.name] = run(server, args, main_study, studies)
        finally:
            server.stop()
    print(f"# {args.rate_kbit:g} kbit/s, {2 * args.delay_ms:g} ms RTT; seconds, then what was fetched")
    for step in ["list", "first-image", "lossless", "preview", "study-bytes"]:
        for name, results in table.items():
            seconds, detail = results.get(step, (None, "not run"))
            shown = f"{seconds:7.2f}" if seconds is not None else "      -"
            print(f"{step:12} {name:8} {shown}  {detail}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
