"""Starting, cutting and stopping a lazyfs mount from Python (the tests and run.py use it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAZYFS = HERE / "lazyfs.py"


def fuse_available() -> bool:
    """/dev/fuse, root (a FUSE mount without fusermount needs it) and mfusepy over libfuse."""
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        return False
    try:
        import mfusepy  # noqa: F401  (loads libfuse)
    except (ImportError, OSError, EnvironmentError):
        return False
    return True


def is_mounted(mountpoint: Path) -> bool:
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mounts") as mounts:
        return any(
            len(fields) > 1 and fields[1].replace("\\040", " ") == target
            for fields in (line.split() for line in mounts)
        )


class LazyMount:
    """One lazyfs process at a time over `backing`, mounted at `mountpoint`."""

    def __init__(self, backing: Path, mountpoint: Path, dirs: str = "strict",
                 log_path: Path | None = None):
        self.backing = Path(backing)
        self.mountpoint = Path(mountpoint)
        self.dirs = dirs
        self.log_path = log_path or self.backing.parent / "lazyfs.log"
        self.proc: subprocess.Popen | None = None
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 15.0) -> "LazyMount":
        assert self.proc is None, "already mounted"
        if is_mounted(self.mountpoint):
            raise RuntimeError(f"{self.mountpoint} is already a mount point")
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, str(LAZYFS), "mount", str(self.backing), str(self.mountpoint),
                 "--dirs", self.dirs],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise RuntimeError(f"lazyfs exited with {code} at mount:\n{self.log_tail()}")
            if is_mounted(self.mountpoint):
                # The mount shows up before libfuse serves it; one stat makes sure it does.
                os.stat(self.mountpoint)
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"lazyfs did not mount within {timeout}s:\n{self.log_tail()}")

    def _signal_and_wait(self, signum: int, wait: bool, timeout: float) -> None:
        assert self.proc is not None, "not mounted"
        self.proc.send_signal(signum)
        if wait:
            self.wait(timeout)

    def wait(self, timeout: float = 120.0) -> None:
        """Waits for the mount process to revert, save and exit."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            raise RuntimeError(f"lazyfs did not exit within {timeout}s:\n{self.log_tail()}")
        self.proc = None
        if code != 0:
            raise RuntimeError(f"lazyfs exited with {code}:\n{self.log_tail()}")

    def cut(self, remount: bool = True, wait: bool = True) -> None:
        """The power cut: the mount reverts to its durable state. Kill its users first."""
        self._signal_and_wait(signal.SIGUSR1, wait=wait or remount, timeout=120)
        if remount:
            self.start()

    def restart(self) -> None:
        """An orderly unmount (everything becomes durable) and a new mount."""
        self._signal_and_wait(signal.SIGTERM, wait=True, timeout=120)
        self.start()

    def stop(self) -> None:
        """Orderly unmount; whatever happened, nothing is left mounted or running."""
        if self.proc is not None:
            try:
                self._signal_and_wait(signal.SIGTERM, wait=True, timeout=60)
            except Exception:
                pass
        if is_mounted(self.mountpoint):
            subprocess.run(["umount", "-l", str(self.mountpoint)], stderr=subprocess.DEVNULL)
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def backing_inodes(self) -> list[Path]:
        return sorted((self.backing / "inodes").iterdir())

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"
