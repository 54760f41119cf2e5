"""The cost of authentication and the audit trail (issue 18): STOW-RS throughput and QIDO-RS
latency of a `kura serve` child with audit off (`--no-audit`, no authentication), audit on (the
default; loopback, no credentials), and audit on with an API key on every request
(`--require-auth`). Sequential STOW of small CT instances (one per request), then QIDO by
PatientID with one client (p50/p95) and with `CLIENTS` clients (requests/s). Rounds alternate
the modes so that background load hits them alike.

    KURA_BIN=target/release/kura python3 benches/audit_cost.py   # ROUNDS=2 STOWS=200 QIDOS=400 CLIENTS=4
"""

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "interop"))
from kura_interop import Patient, make_image, to_bytes, uid  # noqa: E402

BIN = os.environ.get("KURA_BIN", "target/release/kura")
ROUNDS, STOWS, QIDOS, CLIENTS = (int(os.environ.get(k, d)) for k, d in
                                 (("ROUNDS", 2), ("STOWS", 200), ("QIDOS", 400), ("CLIENTS", 4)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(mode: str) -> str:
    data = Path(tempfile.mkdtemp()) / "data"
    flags, headers = [], {}
    if mode == "off":
        flags = ["--no-audit"]
    if mode == "auth+audit":
        key = subprocess.run([BIN, "key", "create", "--data", str(data), "--institution", "bench",
                              "--role", "uploader,reader"], check=True, capture_output=True, text=True).stdout.strip()
        flags, headers = ["--require-auth"], {"Authorization": f"Bearer {key}"}
    port = free_port()
    server = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data", str(data), *flags],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/dicomweb"
    for _ in range(400):
        try:
            requests.get(base + "/studies", headers=headers, timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.05)
    session = requests.Session()
    session.headers.update(headers)
    bodies = [to_bytes(make_image(patient=Patient(f"Bench^{i}", f"B{i}"), study_uid=uid("bench", i),
                                  series_uid=uid("bench-series", i), instance_number=1)) for i in range(STOWS)]
    content_type = 'multipart/related; type="application/dicom"; boundary=xx'
    started = time.perf_counter()
    for body in bodies:
        part = b"--xx\r\nContent-Type: application/dicom\r\n\r\n" + body + b"\r\n--xx--\r\n"
        reply = session.post(base + "/studies", data=part, headers={"Content-Type": content_type,
                                                                     "Accept": "application/dicom+json"})
        assert reply.status_code == 200, reply.text
    stow_rate = STOWS / (time.perf_counter() - started)
    latencies = []
    for i in range(QIDOS):
        started = time.perf_counter()
        reply = session.get(base + "/studies", params={"PatientID": f"B{i % STOWS}"})
        latencies.append(time.perf_counter() - started)
        assert reply.status_code == 200 and len(reply.json()) == 1
    latencies.sort()
    done = [0] * CLIENTS

    def client(n: int) -> None:
        own = requests.Session()
        own.headers.update(headers)
        for i in range(QIDOS // CLIENTS):
            assert own.get(base + "/studies", params={"PatientID": f"B{(i * 7 + n) % STOWS}"}).status_code == 200
            done[n] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    qido_rate = sum(done) / (time.perf_counter() - started)
    server.terminate()
    server.wait()
    return (f"| {mode} | {stow_rate:.1f} | {latencies[len(latencies) // 2] * 1000:.2f} | "
            f"{latencies[int(len(latencies) * 0.95)] * 1000:.2f} | {qido_rate:.0f} |")


print("| mode | STOW instances/s (1 client) | QIDO p50 ms | QIDO p95 ms | QIDO req/s (%d clients) |" % CLIENTS)
print("|---|---|---|---|---|")
for _ in range(ROUNDS):
    for mode in ("off", "audit", "auth+audit"):
        print(run(mode), flush=True)
