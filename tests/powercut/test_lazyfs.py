"""The power-cut file system itself: what survives a cut and what does not.

Each test mounts a fresh lazyfs, does file operations through the real kernel mount, cuts the
power (SIGUSR1: the mount process reverts to the durable state and exits), mounts again and looks.
Needs /dev/fuse and root; skipped otherwise.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from powercut_support import LazyMount, fuse_available

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse, root and mfusepy")


@pytest.fixture
def fs():
    work = Path(tempfile.mkdtemp(prefix="lazyfs-test-"))
    mount = LazyMount(work / "backing", work / "mnt")
    mount.start()
    yield mount
    mount.stop()
    shutil.rmtree(work, ignore_errors=True)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path: Path, data: bytes, sync: bool = False, offset: int | None = None) -> None:
    flags = os.O_WRONLY | os.O_CREAT
    fd = os.open(path, flags, 0o644)
    try:
        if offset is None:
            os.write(fd, data)
        else:
            os.pwrite(fd, data, offset)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def test_write_without_fsync_is_lost(fs):
    root = fs.mountpoint
    write(root / "f", b"durable", sync=True)
    fsync_path(root)
    write(root / "f", b"LOST!", offset=2)  # overwrite inside the durable part
    write(root / "f", b"+tail", offset=7)  # append
    assert (root / "f").read_bytes() == b"duLOST!+tail"
    fs.cut()
    assert (root / "f").read_bytes() == b"durable"


def test_fdatasync_and_fsync_on_a_read_only_fd_count(fs):
    root = fs.mountpoint
    write(root / "a", b"one", sync=True)
    write(root / "b", b"two", sync=True)
    fsync_path(root)
    write(root / "a", b"ONE-more")
    fd = os.open(root / "a", os.O_RDONLY)
    os.fsync(fd)  # a read-only descriptor of the same inode
    os.close(fd)
    write(root / "b", b"TWO-more")
    fd = os.open(root / "b", os.O_WRONLY)
    os.fdatasync(fd)
    os.close(fd)
    fs.cut()
    assert (root / "a").read_bytes() == b"ONE-more"
    assert (root / "b").read_bytes() == b"TWO-more"


def test_sync_file_range_is_not_durable(fs):
    root = fs.mountpoint
    write(root / "log", b"", sync=True)
    fsync_path(root)
    fd = os.open(root / "log", os.O_WRONLY)
    os.write(fd, b"x" * 8192)
    # What sled 0.34 does on Linux instead of fsync: start and wait for write-back of the range.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    # SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER
    assert libc.sync_file_range(fd, 0, 8192, 1 | 2 | 4) == 0, os.strerror(ctypes.get_errno())
    os.close(fd)
    assert (root / "log").stat().st_size == 8192
    fs.cut()
    assert (root / "log").stat().st_size == 0


def test_new_file_fsynced_but_directory_not_is_lost(fs):
    root = fs.mountpoint
    (root / "dir").mkdir()
    fsync_path(root)
    write(root / "dir" / "new", b"data", sync=True)
    fs.cut()
    assert (root / "dir").is_dir()
    assert not (root / "dir" / "new").exists()


def test_new_file_and_directory_fsynced_is_kept(fs):
    root = fs.mountpoint
    (root / "dir").mkdir()
    fsync_path(root)
    write(root / "dir" / "new", b"data" * 5000, sync=True)
    fsync_path(root / "dir")
    fs.cut()
    assert (root / "dir" / "new").read_bytes() == b"data" * 5000


def test_directory_fsync_without_file_fsync_keeps_an_empty_file(fs):
    root = fs.mountpoint
    write(root / "f", b"data")
    fsync_path(root)
    fs.cut()
    assert (root / "f").exists()
    assert (root / "f").read_bytes() == b""


def test_new_directory_needs_its_parent_fsynced(fs):
    root = fs.mountpoint
    (root / "a" / "b").mkdir(parents=True)
    write(root / "a" / "b" / "f", b"x", sync=True)
    fsync_path(root / "a" / "b")
    fsync_path(root / "a")  # a's entry b is durable, but root's entry a is not
    fs.cut()
    assert not (root / "a").exists()


def test_rename_durable_only_after_directory_fsync(fs):
    root = fs.mountpoint
    write(root / "old", b"payload", sync=True)
    fsync_path(root)
    os.rename(root / "old", root / "new")
    fs.cut()
    assert (root / "old").read_bytes() == b"payload"
    assert not (root / "new").exists()

    os.rename(root / "old", root / "new")
    fsync_path(root)
    fs.cut()
    assert (root / "new").read_bytes() == b"payload"
    assert not (root / "old").exists()


def test_atomic_replace_by_rename(fs):
    """The write-temp, fsync, rename, fsync-directory idiom keeps either version, never a torn
    one; without the final directory fsync the old version is what survives."""
    root = fs.mountpoint
    write(root / "conf", b"version 1", sync=True)
    fsync_path(root)
    write(root / "conf.tmp", b"version 2", sync=True)
    os.replace(root / "conf.tmp", root / "conf")
    assert (root / "conf").read_bytes() == b"version 2"
    fs.cut()
    assert (root / "conf").read_bytes() == b"version 1"
    assert not (root / "conf.tmp").exists()

    write(root / "conf.tmp", b"version 2", sync=True)
    os.replace(root / "conf.tmp", root / "conf")
    fsync_path(root)
    fs.cut()
    assert (root / "conf").read_bytes() == b"version 2"


def test_unlink_durable_only_after_directory_fsync(fs):
    root = fs.mountpoint
    write(root / "f", b"keep me", sync=True)
    fsync_path(root)
    os.unlink(root / "f")
    fs.cut()
    assert (root / "f").read_bytes() == b"keep me"
    os.unlink(root / "f")
    fsync_path(root)
    fs.cut()
    assert not (root / "f").exists()
    assert not any(fs.backing_inodes())  # the data is gone from the backing store too


def test_truncate_is_undone_and_kept_after_fsync(fs):
    root = fs.mountpoint
    data = bytes(range(256)) * 1000
    write(root / "f", data, sync=True)
    fsync_path(root)
    os.truncate(root / "f", 1000)
    write(root / "f", b"z" * 10, offset=5000)
    fs.cut()
    assert (root / "f").read_bytes() == data
    os.truncate(root / "f", 1000)
    fsync_path(root / "f")
    fs.cut()
    assert (root / "f").read_bytes() == data[:1000]


def test_many_overwrites_between_fsyncs(fs):
    """The undo log keeps the first old version of each byte, whatever the overlap pattern."""
    root = fs.mountpoint
    import random

    rng = random.Random(7)
    durable = bytearray(rng.randbytes(300_000))
    write(root / "f", bytes(durable), sync=True)
    fsync_path(root)
    live = bytearray(durable)
    fd = os.open(root / "f", os.O_RDWR)
    for round_ in range(3):
        for _ in range(200):
            offset = rng.randrange(0, 320_000)
            chunk = rng.randbytes(rng.randrange(1, 20_000))
            os.pwrite(fd, chunk, offset)
            if offset > len(live):
                live.extend(b"\0" * (offset - len(live)))
            live[offset:offset + len(chunk)] = chunk
        if round_ == 1:
            os.fsync(fd)
            durable = bytearray(live)
    os.close(fd)
    assert (root / "f").read_bytes() == bytes(live)
    fs.cut()
    assert (root / "f").read_bytes() == bytes(durable)


def test_clean_unmount_keeps_everything(fs):
    root = fs.mountpoint
    (root / "d").mkdir()
    write(root / "d" / "f", b"unsynced")
    fs.restart()  # orderly: sync then unmount
    assert (root / "d" / "f").read_bytes() == b"unsynced"


def test_operations_fail_after_the_cut(fs):
    root = fs.mountpoint
    write(root / "f", b"x", sync=True)
    fd = os.open(root / "f", os.O_WRONLY)
    try:
        fs.cut(remount=False, wait=False)
        deadline = time.monotonic() + 10
        with pytest.raises(OSError):
            while time.monotonic() < deadline:  # the signal is asynchronous
                os.write(fd, b"after")
                time.sleep(0.01)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    fs.wait()
    fs.start()
    assert not (root / "f").exists()  # root itself was never fsynced


def test_punched_hole_is_undone_and_kept_after_fsync(fs):
    root = fs.mountpoint
    data = bytes(range(256)) * 64  # 16 KiB
    write(root / "f", data, sync=True)
    fsync_path(root)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fd = os.open(root / "f", os.O_RDWR)
    try:
        # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, as a compaction reclaiming space would
        assert libc.fallocate(fd, 0x02 | 0x01, 4096, 8192) == 0, os.strerror(ctypes.get_errno())
        punched = data[:4096] + bytes(8192) + data[12288:]
        assert os.pread(fd, len(data), 0) == punched
        assert libc.fallocate(fd, 0, 0, 65536) == 0  # plain allocation grows the file
        assert os.fstat(fd).st_size == 65536
    finally:
        os.close(fd)
    fs.cut()
    assert (root / "f").read_bytes() == data
    fd = os.open(root / "f", os.O_RDWR)
    try:
        assert libc.fallocate(fd, 0x02 | 0x01, 4096, 8192) == 0
        os.fsync(fd)
    finally:
        os.close(fd)
    fs.cut()
    assert (root / "f").read_bytes() == punched
