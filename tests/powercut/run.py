#!/usr/bin/env python3
"""Power-loss test of Kura: STOW-RS under load, a power cut at a random moment, restart, verify.

kill -9 cannot show a missing fsync: a killed process leaves its writes in the page cache, and
the next start reads them back. Here Kura runs on lazyfs (lazyfs.py beside this file), a FUSE
file system that keeps only what was made durable: a file's data and size when that file was
fsynced, a directory entry when its directory was fsynced. Each cycle:

 1. mount lazyfs (the backing store keeps what survived earlier cuts) and start Kura on
    <mount>/data: that Kura starts at all is the first check;
 2. verify everything the archive has promised so far (below);
 3. run --clients concurrent STOW-RS clients (small generated CT instances, 1-5 per request,
    and ~512 KiB ones, one per request), recording each instance a 200/202 response lists in
    its ReferencedSOPSequence; with --deletes also a client that deletes whole studies, series
    or single instances of studies no client writes to any more, recording each 200/204;
 4. after a random time (seeded) cut the power: SIGKILL Kura, then lazyfs reverts to the
    durable state (nothing unsynced survives) and mounts again.
After the last cycle Kura starts once more for the final verification.

Verification, after each cut: every acknowledged instance is retrievable with WADO-RS
(application/dicom, transfer-syntax=*) byte for byte as sent (except the 128-byte preamble, which
Kura zeroes) and is listed by QIDO; every instance of an acknowledged delete stays gone from both;
a delete that was in flight at the cut took effect whole or not at all; an instance whose STOW was
in flight at the cut is either absent or whole and visible everywhere; the study-level instance
counts agree with the instances QIDO lists. What a verification observed for an in-flight
operation becomes the expected state from then on.

Usage: run.py [--bin target/release/kura] [--cycles N] [--seed S] [--deletes] [--dirs strict|eager]
Environment: KURA_BIN, KURA_POWERCUT_CYCLES (default 3; the long mode is >= 50),
KURA_POWERCUT_SEED, KURA_POWERCUT_DELETES=1. Needs root, /dev/fuse, mfusepy and pydicom
(run.sh installs what is missing). Exits 0 only when nothing was lost and nothing failed; the
last lines are a summary and "powercut: N passed, M failed" (one per cycle).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests" / "interop"))

import requests  # noqa: E402

from kura_interop import Patient, make_image, multipart_body, to_bytes, uid, value, values  # noqa: E402
from powercut_support import LazyMount, fuse_available  # noqa: E402

ACCEPT_INSTANCE = "application/dicom; transfer-syntax=*"
STUDY_COUNT_TAG = "00201208"  # NumberOfStudyRelatedInstances
SOP_TAG = "00080018"
STUDY_TAG = "0020000D"
STARTUP_TIMEOUT = 180.0  # a restart after a cut may rebuild the whole index

# States of an instance, as the harness expects it after the next restart.
PRESENT = "present"  # acknowledged (or observed after a cut): must be there, byte-exact
ABSENT = "absent"  # never stored, or deleted with an acknowledgement: must stay gone
UNKNOWN = "unknown"  # an operation on it was in flight at the cut: either, but whole


@dataclass
class Instance:
    sop: str
    study: str
    series: str
    digest: str  # SHA-256 of the bytes after the preamble
    size: int
    cycle: int
    state: str = UNKNOWN
    acked_at: float | None = None  # monotonic time of the acknowledgement


@dataclass
class Delete:
    level: str  # "study", "series" or "instance"
    study: str
    series: str | None
    sop: str | None
    scope: list[str]
    cycle: int
    prior: dict[str, str] = field(default_factory=dict)  # states before the request
    status: int | None = None  # HTTP status; None: in flight at the cut
    acked_at: float | None = None


@dataclass
class Study:
    uid: str
    series: list[str] = field(default_factory=list)
    closed: bool = False  # no client writes to it any more
    deleted: bool = False


class Ledger:
    """Everything sent and what the archive acknowledged; shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.instances: dict[str, Instance] = {}
        self.studies: dict[str, Study] = {}
        self.deletes: list[Delete] = []
        self.stow_status: Counter = Counter()
        # Acknowledged STOW-RS requests per study: each answered only once its audit record was
        # durable (issue 18), so each must still have its record after a cut.
        self.audited_stows: Counter = Counter()
        self.delete_status: Counter = Counter()
        self.client_errors: Counter = Counter()

    def acknowledged(self) -> int:
        return sum(1 for i in self.instances.values() if i.acked_at is not None)


@dataclass
class CycleReport:
    cycle: int
    started: bool = True
    startup_s: float = 0.0
    acked: int = 0
    checked: int = 0
    lost: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)
    resurrected: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lost_ack_ages: list[float] = field(default_factory=list)  # seconds from ack to the cut
    verify_s: float = 0.0
    finish_s: float = 0.0
    cut_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.started and not (self.lost or self.corrupted or self.resurrected or self.failures)


def puid(*parts: object) -> str:
    """A deterministic UID for the key parts. One string with separators: kura_interop.uid
    hashes its parts concatenated, so ("x", 1, 23) and ("x", 12, 3) would give the same UID."""
    return uid("|".join(map(str, parts)))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Kura:
    """One `kura serve` process on the lazyfs mount."""

    def __init__(self, binary: Path, data_dir: Path, log_path: Path):
        self.binary = binary
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicomweb"

    def start(self, note: str) -> float:
        """Starts and waits until QIDO answers; returns the seconds it took."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KURA_")}
        env.setdefault("RUST_LOG", "info")
        self.port = free_port()
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== powercut: {note}: kura serve on port {self.port} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [str(self.binary), "serve", "--data", str(self.data_dir),
                 "--listen", f"127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )
        t0 = time.monotonic()
        while time.monotonic() - t0 < STARTUP_TIMEOUT:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise RuntimeError(f"kura exited with {code} at start-up:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/studies?limit=1", timeout=2).status_code in (200, 204):
                    return time.monotonic() - t0
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"kura did not answer within {STARTUP_TIMEOUT:.0f}s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def log_tail(self, n: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


# ------------------------------------------------------------------------------------ load


class Load:
    """The clients of one cycle."""

    def __init__(self, ledger: Ledger, url: str, cycle: int, run_id: str, rng: random.Random,
                 clients: int, deletes: bool, large_share: float, per_study: int):
        self.ledger = ledger
        self.url = url
        self.cycle = cycle
        self.run_id = run_id
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        seeds = [rng.randrange(1 << 30) for _ in range(clients + 1)]
        self.crashes: list[str] = []  # exceptions that ended a client: harness bugs
        for client in range(clients):
            self.threads.append(threading.Thread(
                target=self._guard, args=(self._stow_client, client, random.Random(seeds[client])),
                name=f"stow-{client}", daemon=True))
        if deletes:
            self.threads.append(threading.Thread(
                target=self._guard, args=(self._delete_client, random.Random(seeds[-1])),
                name="delete", daemon=True))
        self.large_share = large_share
        self.per_study = per_study

    def _guard(self, client, *args) -> None:
        try:
            client(*args)
        except Exception as err:  # noqa: BLE001 (reported as a failure of the cycle)
            self.crashes.append(f"{threading.current_thread().name} crashed: {err!r}")

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        """After the kill: the clients see their connections fail and stop."""
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)
            if thread.is_alive():
                raise RuntimeError(f"client {thread.name} did not stop")
        with self.ledger.lock:
            for study in self.ledger.studies.values():
                study.closed = True

    def _stow_client(self, client: int, rng: random.Random) -> None:
        session = requests.Session()
        patient = Patient(name=f"Power^Cut{client}", id=f"PC-{self.run_id}-{client}")
        request_no = 0
        study: Study | None = None
        while not self.stop.is_set():
            if study is None or request_no % self.per_study == 0:
                if study is not None:
                    with self.ledger.lock:
                        study.closed = True
                key = (self.run_id, self.cycle, client, request_no)
                study = Study(puid("pc-study", *key), [puid("pc-series", *key, s) for s in range(2)])
                with self.ledger.lock:
                    self.ledger.studies[study.uid] = study
            request_no += 1
            large = rng.random() < self.large_share
            count = 1 if large else rng.randint(1, 5)
            parts, batch = [], []
            for n in range(count):
                series = rng.choice(study.series)
                number = request_no * 10 + n
                ds = make_image(
                    patient=patient, study_uid=study.uid, series_uid=series,
                    instance_number=number,
                    sop_uid=puid("pc-sop", self.run_id, self.cycle, client, number),
                    rows=512 if large else 64, cols=512 if large else 64,
                    seed=rng.randrange(1 << 20),
                )
                data = to_bytes(ds, preamble=bytes([0x50, 0x43]) * 64)  # "PC": Kura zeroes it
                batch.append(Instance(ds.SOPInstanceUID, study.uid, series,
                                      hashlib.sha256(data[128:]).hexdigest(), len(data), self.cycle))
                parts.append(data)
            with self.ledger.lock:
                for inst in batch:
                    if inst.sop in self.ledger.instances:  # a harness bug, not Kura's
                        raise RuntimeError(f"SOP Instance UID {inst.sop} generated twice")
                    self.ledger.instances[inst.sop] = inst  # UNKNOWN until answered
            body, content_type = multipart_body(parts)
            try:
                response = session.post(f"{self.url}/studies", data=body,
                                        headers={"Content-Type": content_type,
                                                 "Accept": "application/dicom+json"},
                                        timeout=120)
            except requests.RequestException as err:
                with self.ledger.lock:
                    self.ledger.client_errors[type(err).__name__] += 1
                if self.stop.is_set() or not self._server_up(session):
                    return  # in flight at the cut: stays UNKNOWN
                continue
            now = time.monotonic()
            referenced: set[str] = set()
            if response.status_code in (200, 202):
                try:
                    referenced = {value(item, "ReferencedSOPInstanceUID")
                                  for item in values(response.json(), "ReferencedSOPSequence")}
                except ValueError:
                    referenced = set()
            with self.ledger.lock:
                self.ledger.stow_status[response.status_code] += 1
                if response.status_code in (200, 202):
                    self.ledger.audited_stows[study.uid] += 1
                for inst in batch:
                    if inst.sop in referenced:
                        inst.state, inst.acked_at = PRESENT, now
                    elif response.status_code < 500:
                        inst.state = ABSENT  # refused: must not appear later either

    def _server_up(self, session: requests.Session) -> bool:
        try:
            session.get(f"{self.url}/studies?limit=1", timeout=5)
            return True
        except requests.RequestException:
            return False

    def _delete_client(self, rng: random.Random) -> None:
        session = requests.Session()
        while not self.stop.wait(rng.uniform(0.1, 0.5)):
            with self.ledger.lock:
                candidates = [s for s in self.ledger.studies.values() if s.closed and not s.deleted
                              and any(i.state == PRESENT for i in self._in_study(s.uid))]
                if not candidates:
                    continue
                study = rng.choice(sorted(candidates, key=lambda s: s.uid))
                members = [i for i in self._in_study(study.uid) if i.state != ABSENT]
                level = rng.choices(["study", "series", "instance"], weights=[2, 1, 1])[0]
                url = f"{self.url}/studies/{study.uid}"
                series = sop = None
                if level == "study":
                    scope = members
                    study.deleted = True
                elif level == "series":
                    series = rng.choice(sorted({i.series for i in members}))
                    scope = [i for i in members if i.series == series]
                    url += f"/series/{series}"
                else:
                    target = rng.choice(sorted(members, key=lambda i: i.sop))
                    series, sop, scope = target.series, target.sop, [target]
                    url += f"/series/{series}/instances/{sop}"
                op = Delete(level, study.uid, series, sop, [i.sop for i in scope], self.cycle,
                            prior={i.sop: i.state for i in scope})
                self.ledger.deletes.append(op)
                for inst in scope:
                    inst.state = UNKNOWN  # until the answer
            try:
                response = session.delete(url, timeout=120)
            except requests.RequestException as err:
                with self.ledger.lock:
                    self.ledger.client_errors["delete " + type(err).__name__] += 1
                if self.stop.is_set() or not self._server_up(session):
                    return  # in flight at the cut
                continue
            with self.ledger.lock:
                op.status = response.status_code
                self.ledger.delete_status[response.status_code] += 1
                acked = response.status_code in (200, 204)
                if acked:
                    op.acked_at = time.monotonic()
                else:
                    study.deleted = False
                for sop_uid in op.scope:
                    # Not acknowledged (405 before delete exists, 404, ...): nothing changed.
                    self.ledger.instances[sop_uid].state = ABSENT if acked else op.prior[sop_uid]

    def _in_study(self, study_uid: str) -> list[Instance]:
        return [i for i in self.ledger.instances.values() if i.study == study_uid]


# ------------------------------------------------------------------------------- verify


def tag_value(row: dict, tag: str):
    found = row.get(tag, {}).get("Value", [])
    return found[0] if found else None


def qido_all(session: requests.Session, url: str, level: str) -> list[dict]:
    rows: list[dict] = []
    while True:
        extra = "&includefield=00201208" if level == "studies" else ""
        response = session.get(f"{url}/{level}?limit=1000&offset={len(rows)}{extra}", timeout=120)
        if response.status_code == 204:
            break
        response.raise_for_status()
        page = response.json()
        if not page:
            break
        rows.extend(page)
        if len(page) < 1000:
            break
    return rows


def verify(ledger: Ledger, url: str, report: CycleReport, rng: random.Random, sample_old: int,
           cut_at: float | None) -> None:
    """Checks the archive against the ledger, then takes what it saw as the new truth for
    operations that were in flight at the cut."""
    session = requests.Session()
    visible = {tag_value(row, SOP_TAG): row for row in qido_all(session, url, "instances")}
    studies = qido_all(session, url, "studies")
    by_study = Counter(tag_value(row, STUDY_TAG) for row in visible.values())
    for row in studies:
        study_uid = tag_value(row, STUDY_TAG)
        counted = tag_value(row, STUDY_COUNT_TAG)
        if counted is not None and int(counted) != by_study.get(study_uid, 0):
            report.failures.append(
                f"study {study_uid}: NumberOfStudyRelatedInstances {counted}, "
                f"but QIDO lists {by_study.get(study_uid, 0)} instances")
    for study_uid in set(by_study) - {tag_value(row, STUDY_TAG) for row in studies}:
        report.failures.append(f"QIDO lists instances of study {study_uid} but not the study")

    verify_audit(ledger, session, url, report)

    with ledger.lock:
        instances = list(ledger.instances.values())
    foreign = set(visible) - {i.sop for i in instances}
    for sop in sorted(foreign):
        report.failures.append(f"QIDO lists {sop}, which nobody sent")

    # Byte-exact retrieval: everything whose fate this cut decided or that QIDO disagrees on,
    # and a sample of the rest.
    last = report.cycle - 1

    def at_risk(i: Instance) -> bool:
        return (i.state == UNKNOWN or i.cycle == last or (i.state == ABSENT and i.sop in visible)
                or (i.state == PRESENT and i.sop not in visible))

    settled = [i for i in instances if not at_risk(i)]
    to_fetch = [i for i in instances if at_risk(i)] + rng.sample(settled, min(sample_old, len(settled)))
    present: dict[str, bool] = {}
    for inst in to_fetch:
        present[inst.sop] = fetch_exact(session, url, inst, report)
    for inst in instances:
        if inst.sop not in present:
            present[inst.sop] = inst.sop in visible  # settled and not sampled: QIDO only
        elif present[inst.sop] != (inst.sop in visible):
            where = "retrievable but not in QIDO" if present[inst.sop] else "in QIDO but not retrievable"
            report.failures.append(f"instance {inst.sop} is {where}")
    report.checked = len(to_fetch)

    for inst in instances:
        found = present[inst.sop]
        if inst.state == PRESENT and not found:
            if inst.sop not in report.corrupted:
                report.lost.append(inst.sop)
        elif inst.state == ABSENT and found:
            report.resurrected.append(inst.sop)

    # A delete in flight at the cut took effect whole or not at all.
    with ledger.lock:
        pending = [op for op in ledger.deletes if op.status is None]
    for op in pending:
        outcome = {present[sop] for sop in op.scope}
        if len(outcome) > 1:
            kept = sum(1 for sop in op.scope if present[sop])
            report.failures.append(
                f"a {op.level} delete in flight at the cut left {kept} of {len(op.scope)} "
                f"instances of study {op.study}: a mix of the old and the new state")
        op.status = 0  # settled by observation

    if cut_at is not None:
        lost = [ledger.instances[sop] for sop in report.lost]
        report.lost_ack_ages = sorted(cut_at - i.acked_at for i in lost if i.acked_at)
    # What was seen is the truth from now on.
    with ledger.lock:
        for inst in instances:
            inst.state = PRESENT if present[inst.sop] else ABSENT
        for study in ledger.studies.values():
            study.deleted = not any(i.state == PRESENT for i in instances if i.study == study.uid)


def verify_audit(ledger: Ledger, session: requests.Session, url: str, report: CycleReport) -> None:
    """Every acknowledged STOW-RS request has its audit record (the answer waited for it)."""
    root = url.removesuffix("/dicomweb")
    recorded: Counter = Counter()
    after = 0
    while True:
        reply = session.get(f"{root}/admin/audit", params={"action": "stow", "after": after, "limit": 1000},
                            timeout=60)
        if reply.status_code == 404 and after == 0:
            return  # a stand-in server (fake_kura.py) keeps no trail
        reply.raise_for_status()
        page = reply.json()
        for record in page["records"]:
            if record["status"] in (200, 202):
                recorded.update(set(record["studies"]))
        if page["next"] is None:
            break
        after = page["next"]
    with ledger.lock:
        expected = dict(ledger.audited_stows)
    for study_uid, count in sorted(expected.items()):
        # A request may touch one study only here, so one record per acknowledged request.
        if recorded.get(study_uid, 0) < count:
            report.failures.append(f"audit: {count} acknowledged STOW-RS requests to study {study_uid}, "
                                   f"but {recorded.get(study_uid, 0)} records of them after the cut")


def fetch_exact(session: requests.Session, url: str, inst: Instance, report: CycleReport) -> bool:
    """WADO-RS of one instance; True when present. A present instance that is not byte-exact
    is a failure whatever the expectation (nothing stored half-way)."""
    response = session.get(f"{url}/studies/{inst.study}/series/{inst.series}/instances/{inst.sop}",
                           headers={"Accept": ACCEPT_INSTANCE}, timeout=120)
    if response.status_code == 404:
        return False
    if response.status_code != 200:
        report.failures.append(f"WADO-RS of {inst.sop}: HTTP {response.status_code} "
                               f"{response.text[:200]!r}")
        return False
    body = response.content
    if len(body) != inst.size or hashlib.sha256(body[128:]).hexdigest() != inst.digest:
        report.corrupted.append(inst.sop)
        report.failures.append(f"instance {inst.sop} is not byte-exact: {len(body)} bytes, "
                               f"sent {inst.size}")
        return False
    return True


# --------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", default=os.environ.get("KURA_BIN") or str(REPO / "target" / "release" / "kura"))
    parser.add_argument("--cycles", type=int, default=int(os.environ.get("KURA_POWERCUT_CYCLES", "3")))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("KURA_POWERCUT_SEED", "0")) or None)
    parser.add_argument("--deletes", action="store_true",
                        default=os.environ.get("KURA_POWERCUT_DELETES", "") not in ("", "0"))
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--min-load", type=float, default=2.0, help="seconds of load before a cut, at least")
    parser.add_argument("--max-load", type=float, default=6.0, help="... and at most")
    parser.add_argument("--large-share", type=float, default=0.15, help="share of ~512 KiB requests")
    parser.add_argument("--per-study", type=int, default=6, help="requests per study and client")
    parser.add_argument("--sample-old", type=int, default=20,
                        help="instances of earlier cycles retrieved again after each cut")
    parser.add_argument("--dirs", choices=("strict", "eager"), default="strict",
                        help="lazyfs directory model (eager: entries durable at once, as LazyFS)")
    parser.add_argument("--precreate-data", action="store_true",
                        help="create <mount>/data durably before Kura's first start")
    parser.add_argument("--kill-only", action="store_true",
                        help="control run: SIGKILL and an orderly unmount (sync) instead of a "
                             "power cut; nothing may be lost even on a store without fsync")
    parser.add_argument("--workdir", help="keep the backing store, mount and logs here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    # SIGTERM (a CI timeout) and SIGINT end the run the same way: Kura killed, lazyfs unmounted.
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    binary = Path(args.bin)
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        print(f"powercut: Kura binary {binary} not found (cargo build --release, or KURA_BIN)")
        return 2
    if not fuse_available():
        print("powercut: SKIPPED: needs /dev/fuse, root and mfusepy over libfuse 3")
        return 0
    seed = args.seed or random.SystemRandom().randrange(1, 1 << 31)
    rng = random.Random(seed)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="kura-powercut-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"powercut: {args.cycles} cycles{' (kill -9 only, no power cut)' if args.kill_only else ''}, seed {seed}, {args.clients} STOW clients"
          f"{', deletes' if args.deletes else ''}, lazyfs --dirs {args.dirs}, work dir {work}",
          flush=True)

    mount = LazyMount(work / "backing", work / "mnt", dirs=args.dirs, log_path=work / "lazyfs.log")
    kura = Kura(binary, work / "mnt" / "data", work / "kura.log")
    ledger = Ledger()
    run_id = str(seed)
    reports: list[CycleReport] = []
    cut_at: float | None = None
    t_run = time.monotonic()
    try:
        mount.start()
        if args.precreate_data:
            (work / "mnt" / "data").mkdir()
            fd = os.open(work / "mnt", os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        for cycle in range(args.cycles + 1):
            report = CycleReport(cycle)
            reports.append(report)
            note = "first start" if cycle == 0 else f"restart after cut {cycle}"
            try:
                report.startup_s = kura.start(note)
            except RuntimeError as err:
                report.started = False
                report.failures.append(f"Kura did not start after cut {cycle}: {err}")
                print(f"powercut: cycle {cycle}: {report.failures[-1]}", flush=True)
                break
            t_verify = time.monotonic()
            if cycle > 0:
                try:
                    verify(ledger, kura.url, report, rng, args.sample_old, cut_at)
                except Exception as err:  # noqa: BLE001 (reported, and the run fails)
                    report.failures.append(f"verification failed: {err!r}")
            report.verify_s = time.monotonic() - t_verify
            if cycle == args.cycles:
                print_cycle(report, ledger)
                break
            load = Load(ledger, kura.url, cycle, run_id, rng, args.clients, args.deletes,
                        args.large_share, args.per_study)
            before = ledger.acknowledged()
            duration = rng.uniform(args.min_load, args.max_load)
            load.start()
            time.sleep(duration)
            if not kura.alive():
                report.failures.append(f"Kura died on its own during the load:\n{kura.log_tail()}")
            cut_at = time.monotonic()
            kura.kill()  # the power cut: the process first ...
            load.finish()
            report.failures.extend(load.crashes)
            report.finish_s = time.monotonic() - cut_at
            report.acked = ledger.acknowledged() - before
            if args.kill_only:
                mount.restart()  # control: the page cache survives, as after kill -9
            else:
                mount.cut()  # ... then everything the disk did not make durable
            report.cut_s = time.monotonic() - cut_at - report.finish_s
            print_cycle(report, ledger, duration)
    except KeyboardInterrupt:
        print("powercut: interrupted", flush=True)
    finally:
        kura.kill()
        mount.stop()

    # An exception inside lazyfs would make the model wrong: that fails the run too.
    try:
        fs_errors = [line for line in (work / "lazyfs.log").read_text(errors="replace").splitlines()
                     if "ERROR" in line or "Traceback" in line]
    except OSError:
        fs_errors = []
    if fs_errors:
        reports[-1].failures.append(f"lazyfs reported {len(fs_errors)} internal errors, e.g. "
                                    f"{fs_errors[0]} (see lazyfs.log)")
        print(f"powercut:   FAIL {reports[-1].failures[-1]}")
    cuts = max(len(reports) - 1, 0)
    acknowledged = ledger.acknowledged()
    lost = sum(len(r.lost) for r in reports)
    failures = sum(len(r.failures) for r in reports)
    failed_cycles = sum(1 for r in reports[1:] if not r.passed)
    resurrected = sum(len(r.resurrected) for r in reports)
    ok = lost == 0 and resurrected == 0 and failures == 0 and cuts == args.cycles
    ages = sorted(a for r in reports for a in r.lost_ack_ages)
    print(f"powercut: stow statuses {dict(ledger.stow_status)}, delete statuses "
          f"{dict(ledger.delete_status)}, client errors {dict(ledger.client_errors)}")
    if ages:
        print(f"powercut: lost instances were acknowledged {ages[0]:.3f}-{ages[-1]:.3f} s before the cut")
    deletes_acked = sum(1 for op in ledger.deletes if op.acked_at is not None)
    if args.deletes and not deletes_acked:
        print("powercut: NOTE no delete was acknowledged, so deletes were not exercised")
    print(f"powercut: SUMMARY cycles={cuts} acknowledged={acknowledged} lost={lost} "
          f"deletes_acknowledged={deletes_acked} "
          f"corrupted={sum(len(r.corrupted) for r in reports)} "
          f"resurrected={resurrected} failures={failures} "
          f"seed={seed} time={time.monotonic() - t_run:.0f}s")
    print(f"powercut: {cuts - failed_cycles} passed, {failed_cycles} failed", flush=True)
    if ok and not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    elif not ok:
        print(f"powercut: logs and the backing store are in {work} (kura.log, lazyfs.log)")
    return 0 if ok else 1


def print_cycle(report: CycleReport, ledger: Ledger, duration: float | None = None) -> None:
    parts = [f"powercut: cycle {report.cycle}: started in {report.startup_s:.1f}s"]
    if report.cycle > 0:
        parts.append(f"checked {report.checked} by WADO-RS, lost {len(report.lost)}, "
                     f"corrupted {len(report.corrupted)}, resurrected {len(report.resurrected)}, "
                     f"failures {len(report.failures)}")
    if duration is not None:
        parts.append(f"{report.acked} acknowledged in {duration:.1f}s of load, then cut")
    parts.append(f"(verify {report.verify_s:.1f}s, clients stopped in {report.finish_s:.1f}s, "
                 f"revert+mount {report.cut_s:.1f}s)")
    print("; ".join(parts), flush=True)
    for failure in report.failures[:10]:
        print(f"powercut:   FAIL {failure}", flush=True)
    if len(report.failures) > 10:
        print(f"powercut:   ... and {len(report.failures) - 10} more", flush=True)
    if report.lost:
        print(f"powercut:   LOST {len(report.lost)} acknowledged instances, e.g. "
              f"{', '.join(report.lost[:3])}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
