"""run.py against fake_kura.py: the harness passes a server that fsyncs what it acknowledges,
and catches one that does not (lost stores, deletes that come back). Needs /dev/fuse and root."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from powercut_support import fuse_available

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse, root and mfusepy")


def run_harness(tmp_path: Path, **fake_env: str) -> tuple[int, dict[str, int], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KURA_", "FAKE_KURA_"))}
    env.update(fake_env)
    proc = subprocess.run(
        [sys.executable, str(HERE / "run.py"), "--bin", str(HERE / "fake_kura.py"),
         "--cycles", "2", "--seed", "11", "--deletes", "--min-load", "1.5", "--max-load", "2.5",
         "--workdir", str(tmp_path / "work")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    summary = re.search(r"SUMMARY (.*)", out)
    assert summary, out
    figures = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", summary.group(1))}
    return proc.returncode, figures, out


def test_a_durable_server_passes(tmp_path):
    code, figures, out = run_harness(tmp_path, FAKE_KURA_DURABLE="1")
    assert code == 0, out
    assert figures["cycles"] == 2 and figures["acknowledged"] > 100, out
    assert figures["deletes_acknowledged"] > 0, out
    assert figures["lost"] == 0 and figures["failures"] == 0 and figures["resurrected"] == 0, out
    assert "powercut: 2 passed, 0 failed" in out


def test_a_server_without_fsync_loses_acknowledged_instances(tmp_path):
    code, figures, out = run_harness(tmp_path, FAKE_KURA_DURABLE="0")
    assert code == 1, out
    assert figures["lost"] > 0, out
    assert "powercut: 0 passed, 2 failed" in out


def test_a_delete_answered_before_its_fsync_comes_back(tmp_path):
    code, figures, out = run_harness(tmp_path, FAKE_KURA_DURABLE="1", FAKE_KURA_DELETE_FSYNC="0")
    assert code == 1, out
    assert figures["deletes_acknowledged"] > 0, out
    assert figures["resurrected"] > 0 and figures["lost"] == 0, out
