#!/usr/bin/env python3
"""Soak test: mixed load on one `kura serve` over real HTTP for KURA_SOAK_SECONDS (default 30,
what tests/run runs in CI; the long mode is 600), sampling the server's RSS every second.

The load, from KURA_SOAK_WORKERS threads (default 6) with keep-alive sessions, by weight: STOW-RS
of new instances (1 to 3 frames, 64 x 64, into a pool of studies; every fourth into studies
that only the deletes touch, unless KURA_SOAK_DELETE_RACE=1), QIDO-RS (studies, series,
instances; wildcards, fuzzy matching, includefield=all, paging), WADO-RS metadata (study and
series), frames, rendered and thumbnail, whole studies as ZIP, instance and series deletes, and
abusive requests from issue 17 (offsets past 2^64, unknown query parameters, a 1-pixel instance
claiming 4294967295 frames and its rendered, frame lists past the end, non-finite windows,
malformed multipart, a STOW body with no delimiter). Beside them one thread plays slow and silent
clients: connections that send nothing, request heads trickled a byte at a time, a ZIP read at
1 KiB per 100 ms.

Asserts, and exits non-zero otherwise:
  * no response is a 5xx, and every request gets a response (no reset, no timeout);
  * the server is alive at the end and answers a QIDO;
  * RSS is flat: the largest sample of the last third of the run is at most the largest of the
    first two thirds plus the slack, max(KURA_SOAK_RSS_SLACK_MIB (default 32) MiB, 10 %).
    The first two thirds include the warm-up (caches, index segments, allocator arenas), so
    growth after them is what a leak would look like.
Prints the figures: requests by kind with their statuses and latencies, and the RSS samples'
summary.

KURA_BIN is the binary (else cargo's target directory's release/kura).
"""

from __future__ import annotations

import collections
import io
import os
import random
import socket
import sys
import threading
import time
import zipfile
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
from kura_interop import KuraServer, Patient, kura_binary, make_image, multipart_body, to_bytes, uid  # noqa: E402

SECONDS = float(os.environ.get("KURA_SOAK_SECONDS", "30"))
WORKERS = int(os.environ.get("KURA_SOAK_WORKERS", "6"))
SLACK_MIB = float(os.environ.get("KURA_SOAK_RSS_SLACK_MIB", "32"))
SEED = int(os.environ.get("KURA_SOAK_SEED", "17"))
# Deletes of instances that other requests are reading at the same time. Off by default: the
# 600 s run found it answering 3 of 2,878 metadata requests with 500 and cutting 2 of 968 ZIP
# responses short (an open defect; see tests/soak/README.md), which would make a 30 s CI run flaky.
DELETE_RACE = os.environ.get("KURA_SOAK_DELETE_RACE") == "1"
TIMEOUT = 60

# Outcomes that are not failures: a trickled request head that took longer than the server's
# header timeout (10 s by default; it happens when the machine is loaded) is cut off, as it must be.
EXPECTED = {"cut-by-header-timeout"}
HEADER_TIMEOUT = 10.0

OCTETS = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)
        self.failures: list[str] = []

    def record(self, kind: str, status: int | str, seconds: float, detail: str = "") -> None:
        with self.lock:
            self.statuses[kind][status] += 1
            self.latencies[kind].append(seconds)
            if (isinstance(status, str) and status not in EXPECTED) or (isinstance(status, int) and status >= 500):
                if len(self.failures) < 50:
                    self.failures.append(f"{kind}: {status} {detail[:300]}")


class Pool:
    """Stored instances: (study, series, sop), shared by the workers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.instances: list[tuple[str, str, str]] = []
        # Stored to be deleted: never read by the other operations (unless DELETE_RACE).
        self.doomed: list[tuple[str, str, str]] = []
        self.counter = 0

    def add(self, study: str, series: str, sop: str, doomed: bool = False) -> None:
        with self.lock:
            (self.doomed if doomed else self.instances).append((study, series, sop))

    def pick(self, rng: random.Random):
        with self.lock:
            return rng.choice(self.instances) if self.instances else None

    def take(self, rng: random.Random):
        """Removes and returns one to delete: a doomed one, or with DELETE_RACE one that the
        others may be reading (keeping at least 20)."""
        with self.lock:
            pool = self.instances if DELETE_RACE else self.doomed
            if len(pool) <= (20 if DELETE_RACE else 0):
                return None
            return pool.pop(rng.randrange(len(pool)))

    def next_number(self) -> int:
        with self.lock:
            self.counter += 1
            return self.counter


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Worker(threading.Thread):
    def __init__(self, index: int, base: str, pool: Pool, stats: Stats, stop: threading.Event) -> None:
        super().__init__(daemon=True, name=f"soak-{index}")
        self.rng = random.Random(SEED * 1000 + index)
        self.base, self.pool, self.stats, self.stop = base, pool, stats, stop
        self.session = requests.Session()

    def call(self, kind: str, method: str, url: str, **kwargs) -> requests.Response | None:
        started = time.monotonic()
        try:
            response = self.session.request(method, url, timeout=TIMEOUT, **kwargs)
            _ = response.content
        except requests.RequestException as error:
            self.stats.record(kind, type(error).__name__, time.monotonic() - started, str(error))
            self.session = requests.Session()
            return None
        self.stats.record(kind, response.status_code, time.monotonic() - started, response.text[:300])
        return response

    def instance_url(self, item) -> str:
        study, series, sop = item
        return f"{self.base}/studies/{study}/series/{series}/instances/{sop}"

    # -- operations --------------------------------------------------------------------------

    def stow(self) -> None:
        number = self.pool.next_number()
        study_index = number % 12
        # Every fourth instance goes to studies of its own, to be deleted (see DELETE_RACE).
        doomed = number % 4 == 0 and not DELETE_RACE
        study = uid("soak-doomed" if doomed else "soak-study", SEED, study_index)
        series = uid("soak-series", SEED, study_index, number % 3)
        sop = uid("soak-sop", SEED, number)
        frames = 1 + number % 3
        ds = make_image(
            patient=Patient(name=f"Soak^Patient{study_index}", id=f"SOAK{study_index:03d}"),
            study_uid=study, series_uid=series, instance_number=number, sop_uid=sop,
            frames=frames, accession=f"A{study_index}", study_description="soak test",
        )
        body, content_type = multipart_body([to_bytes(ds)])
        response = self.call("stow", "POST", f"{self.base}/studies", data=body,
                             headers={"Content-Type": content_type, "Accept": "application/dicom+json"})
        if response is not None and response.status_code == 200:
            self.pool.add(study, series, sop, doomed)

    def qido(self) -> None:
        path = self.rng.choice([
            "studies", "studies?PatientName=Soak*&limit=10", "studies?fuzzymatching=true&PatientName=soak",
            "series?Modality=CT", "instances?includefield=all&limit=20", "studies?offset=5&limit=3",
            "studies?StudyDate=20200101-&includefield=StudyDescription",
        ])
        item = self.pool.pick(self.rng)
        if item and self.rng.random() < 0.4:
            path = f"studies/{item[0]}/series/{item[1]}/instances"
        self.call("qido", "GET", f"{self.base}/{path}", headers={"Accept": "application/dicom+json"})

    def metadata(self) -> None:
        item = self.pool.pick(self.rng)
        if item is None:
            return
        url = f"{self.base}/studies/{item[0]}" + (f"/series/{item[1]}" if self.rng.random() < 0.5 else "")
        self.call("metadata", "GET", f"{url}/metadata")

    def frames(self) -> None:
        item = self.pool.pick(self.rng)
        if item is not None:
            self.call("frames", "GET", f"{self.instance_url(item)}/frames/1", headers={"Accept": OCTETS})

    def rendered(self) -> None:
        item = self.pool.pick(self.rng)
        if item is None:
            return
        if self.rng.random() < 0.7:
            # One frame: a multi-frame instance's rendered is several images (406 for image/jpeg).
            url = f"{self.instance_url(item)}/frames/1/rendered?window=2048,4096,linear"
        else:
            url = f"{self.base}/studies/{item[0]}/thumbnail"
        self.call("rendered", "GET", url, headers={"Accept": "image/jpeg"})

    def zip(self) -> None:
        item = self.pool.pick(self.rng)
        if item is None:
            return
        response = self.call("zip", "GET", f"{self.base}/studies/{item[0]}", headers={"Accept": "application/zip"})
        if response is not None and response.status_code == 200:
            with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
                if archive.testzip() is not None:
                    self.stats.record("zip", "corrupt-zip", 0.0)

    def delete(self) -> None:
        item = self.pool.take(self.rng)
        if item is not None:
            self.call("delete", "DELETE", self.instance_url(item))

    def abusive(self) -> None:
        item = self.pool.pick(self.rng)
        choice = self.rng.randrange(9)
        if choice == 0:
            self.call("abusive", "GET", f"{self.base}/studies?offset=10000000000000")
        elif choice == 1:
            self.call("abusive", "GET", f"{self.base}/studies?offset=18446744073709551000&limit=1000")
        elif choice == 2:
            self.call("abusive", "GET", f"{self.base}/studies?_=1700000000&PatientID=SOAK001")
        elif choice == 3:
            # A 1-pixel instance that claims 4294967295 frames, then its rendered resource.
            number = self.pool.next_number()
            study, series, sop = uid("soak-huge", SEED, number), uid("soak-huge-s", SEED, number), uid("soak-huge-i", SEED, number)
            ds = make_image(patient=Patient(name="Soak^Huge", id="SOAKHUGE"), study_uid=study, series_uid=series,
                            instance_number=1, sop_uid=sop, rows=1, cols=1)
            ds.NumberOfFrames = 4294967295
            body, content_type = multipart_body([to_bytes(ds)])
            self.call("abusive", "POST", f"{self.base}/studies", data=body, headers={"Content-Type": content_type})
            url = f"{self.base}/studies/{study}/series/{series}/instances/{sop}"
            self.call("abusive", "GET", f"{url}/rendered", headers={"Accept": "image/jpeg"})
            self.call("abusive", "GET", f"{url}/frames/4294967295", headers={"Accept": OCTETS})
            self.call("abusive", "DELETE", f"{self.base}/studies/{study}")
        elif choice == 4 and item:
            self.call("abusive", "GET", f"{self.instance_url(item)}/frames/1,2,99999999999", headers={"Accept": OCTETS})
        elif choice == 5 and item:
            self.call("abusive", "GET", f"{self.instance_url(item)}/rendered?window=nan,inf,linear",
                      headers={"Accept": "image/jpeg"})
        elif choice == 6:
            body = b"--x\r\nthis is not a header\r\n\r\nDICM\r\n--x--\r\n"
            self.call("abusive", "POST", f"{self.base}/studies", data=body,
                      headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=x'})
        elif choice == 7:
            # 4 MiB of body with no delimiter at all.
            self.call("abusive", "POST", f"{self.base}/studies", data=b"\0" * (4 << 20),
                      headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=nowhere'})
        elif item:
            self.call("abusive", "GET", f"{self.instance_url(item)}/bulkdata/7FE00010",
                      headers={"Accept": "application/octet-stream", "Range": "bytes=18446744073709551615-"})

    def run(self) -> None:
        operations = [
            (self.stow, 18), (self.qido, 20), (self.metadata, 12), (self.frames, 12), (self.rendered, 10),
            (self.zip, 4), (self.delete, 4), (self.abusive, 6),
        ]
        functions = [f for f, _ in operations]
        weights = [w for _, w in operations]
        while not self.stop.is_set():
            self.rng.choices(functions, weights)[0]()


class SlowClients(threading.Thread):
    """Connections that send nothing, request heads trickled a byte at a time, a ZIP read slowly."""

    def __init__(self, host: str, port: int, base: str, pool: Pool, stats: Stats, stop: threading.Event) -> None:
        super().__init__(daemon=True, name="soak-slow")
        self.address, self.base, self.pool, self.stats, self.stop = (host, port), base, pool, stats, stop
        self.rng = random.Random(SEED)

    def run(self) -> None:
        while not self.stop.is_set():
            silent = []
            for _ in range(20):
                try:
                    silent.append(socket.create_connection(self.address, timeout=5))
                except OSError as error:
                    self.stats.record("slow", f"connect-{type(error).__name__}", 0.0, str(error))
            trickle = socket.create_connection(self.address, timeout=5)
            head = b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            started = time.monotonic()
            try:
                for byte in head:
                    trickle.sendall(bytes([byte]))
                    time.sleep(0.02)
                answer = trickle.recv(64)
                status = int(answer.split(b" ")[1]) if answer.startswith(b"HTTP/1.1 ") else "no-answer"
                self.stats.record("slow", status, time.monotonic() - started)
            except OSError as error:
                elapsed = time.monotonic() - started
                outcome = "cut-by-header-timeout" if elapsed >= HEADER_TIMEOUT - 0.5 else f"trickle-{type(error).__name__}"
                self.stats.record("slow", outcome, elapsed, str(error))
            finally:
                trickle.close()
            item = self.pool.pick(self.rng)
            if item:
                self.slow_zip(item[0])
            for connection in silent:
                connection.close()

    def slow_zip(self, study: str) -> None:
        started = time.monotonic()
        with socket.create_connection(self.address, timeout=10) as connection:
            connection.sendall(
                f"GET /dicomweb/studies/{study} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/zip\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            first = b""
            try:
                for _ in range(20):
                    chunk = connection.recv(1024)
                    if not chunk:
                        break
                    first = first or chunk
                    time.sleep(0.1)
            except OSError as error:
                self.stats.record("slow", f"zip-{type(error).__name__}", time.monotonic() - started, str(error))
                return
            status = int(first.split(b" ")[1]) if first.startswith(b"HTTP/1.1 ") else "no-answer"
            self.stats.record("slow", status, time.monotonic() - started)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def main() -> int:
    binary = Path(os.environ["KURA_BIN"]) if os.environ.get("KURA_BIN") else kura_binary()
    server = KuraServer(binary, ("--max-connections-per-address", "256")).start()
    failures: list[str] = []
    try:
        pid = server.proc.pid
        stats, pool, stop = Stats(), Pool(), threading.Event()
        workers = [Worker(i, server.url, pool, stats, stop) for i in range(WORKERS)]
        threads = workers + [SlowClients("127.0.0.1", server.port, server.url, pool, stats, stop)]
        samples: list[tuple[float, int]] = []
        started = time.monotonic()
        for thread in threads:
            thread.start()
        while (elapsed := time.monotonic() - started) < SECONDS:
            if server.proc.poll() is not None:
                failures.append(f"the server exited with {server.proc.returncode} after {elapsed:.0f} s")
                break
            samples.append((elapsed, rss_bytes(pid)))
            time.sleep(1.0 - (time.monotonic() - started) % 1.0)
        stop.set()
        for thread in threads:
            thread.join(timeout=TIMEOUT + 10)
        duration = time.monotonic() - started

        if server.proc.poll() is None:
            response = requests.get(f"{server.url}/studies", timeout=10)
            if response.status_code != 200:
                failures.append(f"the final QIDO answered {response.status_code}")
        else:
            failures.append(f"the server is not running at the end ({server.proc.returncode})")

        total = sum(sum(c.values()) for c in stats.statuses.values())
        print(f"soak: {duration:.0f} s, {WORKERS} workers + slow clients, {total} requests "
              f"({total / duration:.0f}/s), {len(pool.instances)} instances in the pool at the end")
        for kind in sorted(stats.statuses):
            latencies = stats.latencies[kind]
            statuses = ", ".join(f"{status}: {count}" for status, count in sorted(stats.statuses[kind].items(), key=str))
            print(f"soak:   {kind:9} {sum(stats.statuses[kind].values()):6} requests  "
                  f"p50 {percentile(latencies, 0.5) * 1000:7.1f} ms  p99 {percentile(latencies, 0.99) * 1000:7.1f} ms  "
                  f"max {max(latencies) * 1000:7.1f} ms  [{statuses}]")
        failures.extend(stats.failures)

        rss = [value for _, value in samples]
        if len(rss) >= 3:
            cut = (2 * len(rss)) // 3
            early, late = max(rss[:cut]), max(rss[cut:])
            slack = max(SLACK_MIB * 2**20, 0.10 * early)
            mib = 2**20
            print(f"soak: RSS over {len(rss)} samples: start {rss[0] / mib:.1f} MiB, min {min(rss) / mib:.1f}, "
                  f"max of the first two thirds {early / mib:.1f}, max of the last third {late / mib:.1f} "
                  f"(allowed {(early + slack) / mib:.1f}: slack {slack / mib:.1f} MiB), end {rss[-1] / mib:.1f}")
            series = " ".join(f"{value / mib:.0f}" for value in rss[:: max(1, len(rss) // 30)])
            print(f"soak: RSS MiB, sampled: {series}")
            if late > early + slack:
                failures.append(f"RSS grew: the last third peaked at {late / mib:.1f} MiB, over "
                                f"{early / mib:.1f} MiB + {slack / mib:.1f} MiB slack")
        else:
            failures.append("too few RSS samples")
    finally:
        log_tail = server.log_tail()
        server.stop(check=False)
    if failures:
        print("soak: FAILED", file=sys.stderr)
        for failure in failures:
            print(f"soak:   {failure}", file=sys.stderr)
        print(log_tail, file=sys.stderr)
        return 1
    print("soak: 1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
