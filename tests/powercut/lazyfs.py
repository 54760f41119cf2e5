#!/usr/bin/env python3
"""A FUSE file system that forgets, at a "power cut", everything that was not made durable.

It models a disk with strict POSIX durability, stricter than any real file system, so that a
program that survives it relies only on what POSIX promises:

- A file's data and size become durable only when that file is fsynced or fdatasynced: FUSE
  FSYNC on any open file of the inode, read-only ones included, or a write through a file opened
  with O_SYNC/O_DSYNC. `sync_file_range` is not durable: it is not a FUSE operation at all (the
  kernel only writes dirty pages back, which this file system sees as plain writes).
- A change to a directory entry (create, mknod, mkdir, symlink, link, unlink, rmdir, rename)
  becomes durable only when the directory that holds the entry is fsynced (FUSE FSYNCDIR). A new
  file whose data was fsynced but whose directory was not is gone after the cut; a renamed file
  whose directories were not fsynced comes back under its old name.
- Attributes other than the size (mode, owner, times) are kept as they are; nothing in a
  durability argument rests on them.

With `--dirs eager` directory entries are durable as soon as they change (only data and sizes
need fsync): that is the model of LazyFS and of most tools of this kind, useful to tell a
missing file fsync from a missing directory fsync.

How it works, so that it stays cheap: the namespace (directories, names, links) lives in
memory, twice: the live one that the mount shows, and the durable one, a copy of a directory's
entries taken when that directory is fsynced. Each file's bytes live in one backing file,
`<backing>/inodes/<id>`, which always holds the live content. What the cut must restore is kept
as an undo log: per file its durable size, and the old bytes of every range below that size that
was overwritten or truncated away since the last fsync (saved once, on the first overwrite). An
fsync of a file is therefore O(1) (forget the undo log, durable size := live size), and appends
past the durable size, the common case of a log, save nothing. A directory fsync copies one dict.

The power cut (SIGUSR1 to this process, or `PowerCut.cut()` from Python) never kills anything:
the caller kills the programs using the mount first. Then every later operation fails with EIO,
the mount is unmounted, every file reachable from the durable namespace gets its undo log
written back and is truncated to its durable size, every file not reachable is deleted, the
durable namespace becomes the live one, and the state is saved to `<backing>/state.json`. The
next `mount` of the same backing directory shows exactly the durable state. A clean unmount
(`umount`, SIGTERM) is an orderly shutdown: everything becomes durable first, as `sync; umount`.

Usage:
    lazyfs.py mount BACKING MOUNTPOINT [--dirs strict|eager]   (foreground; exits after unmount)
    lazyfs.py cut PID          (= kill -USR1 PID; the mount process reverts, saves and exits)

Requires mfusepy (PyPI) over libfuse 3 (Debian: libfuse3-3) and /dev/fuse; run as root.
"""

from __future__ import annotations

import argparse
import bisect
import ctypes
import errno
import json
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path

STATE_FILE = "state.json"
INODES_DIR = "inodes"
ROOT = 1
FUSE_CAP_WRITEBACK_CACHE = 1 << 16
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class Node:
    """An inode: a directory, a regular file or a symbolic link."""

    __slots__ = (
        "id", "kind", "mode", "uid", "gid", "atime_ns", "mtime_ns", "ctime_ns",
        "entries", "durable_entries", "target",
        "durable_size", "undo_starts", "undo_chunks",
        "links", "durable_refs", "opens", "fd",
    )

    def __init__(self, node_id: int, kind: str, mode: int, uid: int = 0, gid: int = 0):
        now = time.time_ns()
        self.id = node_id
        self.kind = kind  # "dir", "file" or "symlink"
        self.mode = mode  # including the S_IFMT bits
        self.uid = uid
        self.gid = gid
        self.atime_ns = self.mtime_ns = self.ctime_ns = now
        self.entries: dict[str, int] = {}  # live directory entries
        self.durable_entries: dict[str, int] = {}  # as of the last fsync of this directory
        self.target = ""  # symlink target
        self.durable_size = 0
        # Undo log: disjoint ranges [start, start + len(chunk)) below durable_size, sorted.
        self.undo_starts: list[int] = []
        self.undo_chunks: list[bytes] = []
        self.links = 0  # live directory entries naming this node
        self.durable_refs = 0  # durable directory entries naming this node
        self.opens = 0  # open handles
        self.fd = -1  # backing file descriptor while opens > 0


def _split(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


class LazyFS:
    """The mfusepy operations. Every operation runs under one lock: correctness before speed."""

    use_ns = True

    def __init__(self, backing: Path, dirs: str = "strict"):
        assert dirs in ("strict", "eager"), dirs
        self.backing = Path(os.path.realpath(backing))
        self.inodes = self.backing / INODES_DIR
        self.inodes.mkdir(parents=True, exist_ok=True)
        self.eager_dirs = dirs == "eager"
        self._mutex = threading.RLock()
        self.nodes: dict[int, Node] = {}
        self.handles: dict[int, tuple[int, int]] = {}  # fh -> (node id, open flags)
        self.next_fh = 1
        self.next_id = ROOT + 1
        self.cut = False
        self.stats = {"fsync": 0, "fsyncdir": 0, "undo_bytes": 0}
        self._load()

    # ---------------------------------------------------------------- persistent state

    def _load(self) -> None:
        state_path = self.backing / STATE_FILE
        if not state_path.exists():
            root = Node(ROOT, "dir", stat.S_IFDIR | 0o755)
            self.nodes[ROOT] = root
            root.durable_refs = 1  # the mount itself
            root.links = 1
            return
        state = json.loads(state_path.read_text())
        self.next_id = state["next_id"]
        for raw in state["nodes"]:
            node = Node(raw["id"], raw["kind"], raw["mode"], raw["uid"], raw["gid"])
            node.atime_ns, node.mtime_ns, node.ctime_ns = raw["times"]
            node.entries = dict(raw.get("entries", {}))
            node.durable_entries = dict(node.entries)
            node.target = raw.get("target", "")
            if node.kind == "file":
                node.durable_size = os.stat(self._backing_path(node.id)).st_size
            self.nodes[node.id] = node
        for node in list(self.nodes.values()):
            for child in node.entries.values():
                self.nodes[child].links += 1
                self.nodes[child].durable_refs += 1
        self.nodes[ROOT].links += 1
        self.nodes[ROOT].durable_refs += 1

    def save(self) -> None:
        """Writes the namespace (live == durable by now) to state.json, durably."""
        nodes = []
        for node in self.nodes.values():
            raw = {
                "id": node.id, "kind": node.kind, "mode": node.mode, "uid": node.uid,
                "gid": node.gid, "times": [node.atime_ns, node.mtime_ns, node.ctime_ns],
            }
            if node.kind == "dir":
                raw["entries"] = node.entries
            if node.kind == "symlink":
                raw["target"] = node.target
            nodes.append(raw)
        tmp = self.backing / (STATE_FILE + ".tmp")
        with open(tmp, "w") as out:
            json.dump({"next_id": self.next_id, "nodes": nodes}, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.backing / STATE_FILE)
        fd = os.open(self.backing, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---------------------------------------------------------------- helpers

    def _backing_path(self, node_id: int) -> str:
        return str(self.inodes / str(node_id))

    def _check(self) -> None:
        if self.cut:
            raise OSError(errno.EIO, "power is off")

    def _resolve(self, path: str) -> Node:
        node = self.nodes[ROOT]
        for part in _split(path):
            if node.kind != "dir":
                raise OSError(errno.ENOTDIR, path)
            child = node.entries.get(part)
            if child is None:
                raise OSError(errno.ENOENT, path)
            node = self.nodes[child]
        return node

    def _parent(self, path: str) -> tuple[Node, str]:
        parts = _split(path)
        if not parts:
            raise OSError(errno.EINVAL, path)
        parent = self._resolve("/" + "/".join(parts[:-1]))
        if parent.kind != "dir":
            raise OSError(errno.ENOTDIR, path)
        return parent, parts[-1]

    def _node_of(self, path: str | None, fh: int | None) -> Node:
        if fh and fh in self.handles:
            return self.nodes[self.handles[fh][0]]
        if path is None:
            raise OSError(errno.EBADF, "no path and no handle")
        return self._resolve(path)

    def _new_node(self, kind: str, mode: int) -> Node:
        from mfusepy import fuse_get_context  # only under a mount

        uid, gid, _pid = fuse_get_context()
        node = Node(self.next_id, kind, mode, uid, gid)
        self.next_id += 1
        self.nodes[node.id] = node
        if kind == "file":
            fd = os.open(self._backing_path(node.id), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.close(fd)
        return node

    def _link(self, parent: Node, name: str, node: Node) -> None:
        """Adds a live entry (replacing none: the caller removed any old one)."""
        parent.entries[name] = node.id
        node.links += 1
        parent.mtime_ns = parent.ctime_ns = time.time_ns()
        if self.eager_dirs:
            self._set_durable(parent, name, node.id)

    def _unlink_entry(self, parent: Node, name: str) -> None:
        node = self.nodes[parent.entries.pop(name)]
        node.links -= 1
        node.ctime_ns = parent.mtime_ns = parent.ctime_ns = time.time_ns()
        if self.eager_dirs:
            self._set_durable(parent, name, None)
        self._collect(node)

    def _set_durable(self, parent: Node, name: str, node_id: int | None) -> None:
        old = parent.durable_entries.pop(name, None)
        if node_id is not None:
            parent.durable_entries[name] = node_id
            self.nodes[node_id].durable_refs += 1
        if old is not None:
            self.nodes[old].durable_refs -= 1
            self._collect(self.nodes[old])

    def _collect(self, node: Node) -> None:
        """Forgets a node that no live entry, no durable entry and no open handle names."""
        if node.id == ROOT or node.links or node.durable_refs or node.opens:
            return
        if self.nodes.get(node.id) is not node:
            return  # already forgotten
        del self.nodes[node.id]
        if node.kind == "file":
            try:
                os.unlink(self._backing_path(node.id))
            except FileNotFoundError:
                pass
        for child in node.durable_entries.values():
            self.nodes[child].durable_refs -= 1
            self._collect(self.nodes[child])
        node.durable_entries = {}

    def _size(self, node: Node) -> int:
        if node.fd >= 0:
            return os.fstat(node.fd).st_size
        return os.stat(self._backing_path(node.id)).st_size

    def _with_fd(self, node: Node):
        """The backing fd of a file, opened for the duration of a path-only operation."""
        if node.fd >= 0:
            return node.fd, False
        return os.open(self._backing_path(node.id), os.O_RDWR), True

    def _save_old(self, node: Node, fd: int, start: int, end: int) -> None:
        """Saves the current bytes of [start, end) below the durable size that the undo log
        does not cover yet, before they are overwritten or truncated away."""
        end = min(end, node.durable_size)
        if start >= end:
            return
        starts, chunks = node.undo_starts, node.undo_chunks
        i = bisect.bisect_right(starts, start) - 1
        if i < 0:
            i = 0
        pos = start
        gaps: list[tuple[int, int]] = []
        while pos < end:
            if i < len(starts) and starts[i] <= pos < starts[i] + len(chunks[i]):
                pos = starts[i] + len(chunks[i])
                i += 1
                continue
            if i < len(starts) and starts[i] + len(chunks[i]) <= pos:
                i += 1
                continue
            gap_end = min(end, starts[i]) if i < len(starts) else end
            gaps.append((pos, gap_end))
            pos = gap_end
        for gap_start, gap_end in gaps:
            old = os.pread(fd, gap_end - gap_start, gap_start)
            # Past the live end (only after a truncation, which saved them) nothing is missing;
            # pad in case, so that the chunk covers its whole range.
            old = old + b"\0" * (gap_end - gap_start - len(old))
            j = bisect.bisect_left(starts, gap_start)
            starts.insert(j, gap_start)
            chunks.insert(j, old)
            self.stats["undo_bytes"] += len(old)

    def _make_durable(self, node: Node, fd: int) -> None:
        node.durable_size = os.fstat(fd).st_size
        node.undo_starts = []
        node.undo_chunks = []

    def _attrs(self, node: Node) -> dict:
        if node.kind == "file":
            size = self._size(node)
        elif node.kind == "symlink":
            size = len(node.target.encode())
        else:
            size = 4096
        return {
            "st_ino": node.id, "st_mode": node.mode, "st_nlink": max(node.links, 1),
            "st_uid": node.uid, "st_gid": node.gid, "st_size": size,
            "st_blocks": (size + 511) // 512, "st_blksize": 4096,
            "st_atime": node.atime_ns, "st_mtime": node.mtime_ns, "st_ctime": node.ctime_ns,
        }

    # ---------------------------------------------------------------- FUSE operations

    flag_nopath = False
    flag_nullpath_ok = False

    def init_with_config(self, conn, config) -> None:
        if conn is not None:
            # Write-through: every write reaches this process at once (no kernel write-back
            # cache whose dirty pages could reach us after the writer was killed).
            conn.want &= ~FUSE_CAP_WRITEBACK_CACHE
        if config is not None:
            config.use_ino = 1
            config.hard_remove = 1

    def destroy(self, path) -> None:
        pass

    def getattr(self, path, fh=None):
        with self._mutex:
            self._check()
            return self._attrs(self._node_of(path, fh))

    def access(self, path, amode):
        with self._mutex:
            self._check()
            self._resolve(path)
            return 0

    def statfs(self, path):
        with self._mutex:
            self._check()
            st = os.statvfs(self.backing)
            return {key: getattr(st, key) for key in (
                "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                "f_favail", "f_flag", "f_namemax")}

    def opendir(self, path):
        with self._mutex:
            self._check()
            node = self._resolve(path)
            if node.kind != "dir":
                raise OSError(errno.ENOTDIR, path)
            fh = self.next_fh
            self.next_fh += 1
            self.handles[fh] = (node.id, os.O_RDONLY)
            node.opens += 1
            return fh

    def readdir(self, path, fh):
        with self._mutex:
            self._check()
            node = self._node_of(path, fh)
            listing = [(".", node.mode, 0), ("..", stat.S_IFDIR, 0)]
            for name, child in node.entries.items():
                listing.append((name, {"st_mode": self.nodes[child].mode, "st_ino": child}, 0))
            return listing

    def releasedir(self, path, fh):
        with self._mutex:
            node_id, _flags = self.handles.pop(fh)
            node = self.nodes[node_id]
            node.opens -= 1
            self._collect(node)
            return 0

    def fsyncdir(self, path, datasync, fh):
        with self._mutex:
            self._check()
            node = self._node_of(path, fh)
            self.stats["fsyncdir"] += 1
            old = node.durable_entries
            node.durable_entries = dict(node.entries)
            for child in node.durable_entries.values():
                self.nodes[child].durable_refs += 1
            for child in old.values():
                self.nodes[child].durable_refs -= 1
                self._collect(self.nodes[child])
            return 0

    def mkdir(self, path, mode):
        with self._mutex:
            self._check()
            parent, name = self._parent(path)
            if name in parent.entries:
                raise OSError(errno.EEXIST, path)
            node = self._new_node("dir", stat.S_IFDIR | (mode & 0o7777))
            self._link(parent, name, node)
            return 0

    def rmdir(self, path):
        with self._mutex:
            self._check()
            parent, name = self._parent(path)
            if name not in parent.entries:
                raise OSError(errno.ENOENT, path)
            node = self.nodes[parent.entries[name]]
            if node.kind != "dir":
                raise OSError(errno.ENOTDIR, path)
            if node.entries:
                raise OSError(errno.ENOTEMPTY, path)
            self._unlink_entry(parent, name)
            return 0

    def unlink(self, path):
        with self._mutex:
            self._check()
            parent, name = self._parent(path)
            if name not in parent.entries:
                raise OSError(errno.ENOENT, path)
            if self.nodes[parent.entries[name]].kind == "dir":
                raise OSError(errno.EISDIR, path)
            self._unlink_entry(parent, name)
            return 0

    def symlink(self, target, source):
        """Creates `target` as a symbolic link to `source` (mfusepy's argument order)."""
        with self._mutex:
            self._check()
            parent, name = self._parent(target)
            if name in parent.entries:
                raise OSError(errno.EEXIST, target)
            node = self._new_node("symlink", stat.S_IFLNK | 0o777)
            node.target = source
            self._link(parent, name, node)
            return 0

    def readlink(self, path):
        with self._mutex:
            self._check()
            node = self._resolve(path)
            if node.kind != "symlink":
                raise OSError(errno.EINVAL, path)
            return node.target

    def link(self, target, source):
        """Creates `target` as a hard link to `source`."""
        with self._mutex:
            self._check()
            node = self._resolve(source)
            if node.kind == "dir":
                raise OSError(errno.EPERM, source)
            parent, name = self._parent(target)
            if name in parent.entries:
                raise OSError(errno.EEXIST, target)
            self._link(parent, name, node)
            node.ctime_ns = time.time_ns()
            return 0

    def rename(self, old, new):
        with self._mutex:
            self._check()
            old_parent, old_name = self._parent(old)
            new_parent, new_name = self._parent(new)
            if old_name not in old_parent.entries:
                raise OSError(errno.ENOENT, old)
            node = self.nodes[old_parent.entries[old_name]]
            if node.kind == "dir":
                ancestor = new_parent  # no directory may move into itself
                walk = _split(new)[:-1]
                cursor = self.nodes[ROOT]
                for part in walk:
                    if cursor.id == node.id:
                        raise OSError(errno.EINVAL, new)
                    cursor = self.nodes[cursor.entries[part]]
                if ancestor.id == node.id:
                    raise OSError(errno.EINVAL, new)
            existing = new_parent.entries.get(new_name)
            if existing is not None:
                if existing == node.id:
                    return 0
                victim = self.nodes[existing]
                if victim.kind == "dir":
                    if node.kind != "dir":
                        raise OSError(errno.EISDIR, new)
                    if victim.entries:
                        raise OSError(errno.ENOTEMPTY, new)
                elif node.kind == "dir":
                    raise OSError(errno.ENOTDIR, new)
                self._unlink_entry(new_parent, new_name)
            # Link first, then unlink, so that the node is never collected on the way.
            self._link(new_parent, new_name, node)
            self._unlink_entry(old_parent, old_name)
            node.ctime_ns = time.time_ns()
            return 0

    def chmod(self, path, mode):
        with self._mutex:
            self._check()
            node = self._resolve(path)
            node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
            node.ctime_ns = time.time_ns()
            return 0

    def chown(self, path, uid, gid):
        with self._mutex:
            self._check()
            node = self._resolve(path)
            if uid != -1:
                node.uid = uid
            if gid != -1:
                node.gid = gid
            node.ctime_ns = time.time_ns()
            return 0

    def utimens(self, path, times=None):
        with self._mutex:
            self._check()
            node = self._resolve(path)
            now = time.time_ns()
            node.atime_ns, node.mtime_ns = times if times else (now, now)
            return 0

    def _open_node(self, node: Node, flags: int) -> int:
        if node.opens == 0 or node.fd < 0:
            node.fd = os.open(self._backing_path(node.id), os.O_RDWR)
        node.opens += 1
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = (node.id, flags)
        if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
            self._truncate(node, node.fd, 0)
        return fh

    def create(self, path, mode, flags=os.O_RDWR):
        with self._mutex:
            self._check()
            parent, name = self._parent(path)
            existing = parent.entries.get(name)
            if existing is not None:
                if flags & os.O_EXCL:
                    raise OSError(errno.EEXIST, path)
                return self._open_node(self.nodes[existing], flags)
            node = self._new_node("file", stat.S_IFREG | (mode & 0o7777))
            self._link(parent, name, node)
            return self._open_node(node, flags)

    def open(self, path, flags):
        with self._mutex:
            self._check()
            node = self._resolve(path)
            if node.kind != "file":
                raise OSError(errno.EISDIR if node.kind == "dir" else errno.EINVAL, path)
            return self._open_node(node, flags)

    def read(self, path, size, offset, fh):
        with self._mutex:
            self._check()
            node = self._node_of(path, fh)
            return os.pread(node.fd, size, offset)

    def write(self, path, data, offset, fh):
        with self._mutex:
            self._check()
            node = self._node_of(path, fh)
            flags = self.handles[fh][1] if fh in self.handles else 0
            self._save_old(node, node.fd, offset, offset + len(data))
            written = os.pwrite(node.fd, data, offset)
            node.mtime_ns = node.ctime_ns = time.time_ns()
            if flags & (os.O_SYNC | os.O_DSYNC):
                self._make_durable(node, node.fd)
            return written

    def _truncate(self, node: Node, fd: int, length: int) -> None:
        size = os.fstat(fd).st_size
        if length < size:
            self._save_old(node, fd, length, size)
        os.ftruncate(fd, length)
        node.mtime_ns = node.ctime_ns = time.time_ns()

    def truncate(self, path, length, fh=None):
        with self._mutex:
            self._check()
            node = self._node_of(path, fh)
            if node.kind != "file":
                raise OSError(errno.EISDIR, path)
            fd, close = self._with_fd(node)
            try:
                self._truncate(node, fd, length)
            finally:
                if close:
                    os.close(fd)
            return 0

    def fallocate(self, path, mode, offset, length, fh):
        """Allocation (mode 0 may grow the file, like a write) and hole punching or zeroing
        (which overwrite, so the old bytes go to the undo log first). Collapsing and inserting
        ranges shift data: not supported (EOPNOTSUPP), as on many file systems."""
        if mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            raise OSError(errno.EOPNOTSUPP, "fallocate mode")
        with self._mutex:
            self._check()
            node = self._node_of(path, fh)
            if node.kind != "file":
                raise OSError(errno.EISDIR, path)
            if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                self._save_old(node, node.fd, offset, offset + length)
            if _libc.fallocate(node.fd, mode, offset, length) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            node.mtime_ns = node.ctime_ns = time.time_ns()
            return 0

    def flush(self, path, fh):
        return 0  # close(2) is not a durability point

    def release(self, path, fh):
        with self._mutex:
            node_id, _flags = self.handles.pop(fh)
            node = self.nodes[node_id]
            node.opens -= 1
            if node.opens == 0 and node.fd >= 0:
                os.close(node.fd)
                node.fd = -1
            self._collect(node)
            return 0

    def fsync(self, path, datasync, fh):
        with self._mutex:
            self._check()
            node = self._node_of(path, fh)
            self.stats["fsync"] += 1
            if node.kind == "file":
                self._make_durable(node, node.fd)
            return 0

    # ---------------------------------------------------------------- power

    def power_cut(self) -> None:
        """From now on every operation fails: nothing written later can become durable."""
        with self._mutex:
            self.cut = True

    def sync_all(self) -> None:
        """An orderly shutdown: everything live becomes durable (sync(2) of every file and
        directory)."""
        with self._mutex:
            for node in self.nodes.values():
                if node.kind == "file":
                    node.durable_size = os.stat(self._backing_path(node.id)).st_size
                    node.undo_starts, node.undo_chunks = [], []
            for node in list(self.nodes.values()):
                if node.kind == "dir":
                    for child in node.entries.values():
                        self.nodes[child].durable_refs += 1
                    for child in node.durable_entries.values():
                        self.nodes[child].durable_refs -= 1
                    node.durable_entries = dict(node.entries)

    def revert(self) -> dict:
        """After the unmount: the backing store and the namespace become the durable state."""
        with self._mutex:
            for node in self.nodes.values():
                if node.fd >= 0:
                    os.close(node.fd)
                    node.fd = -1
            reachable: set[int] = set()
            stack = [ROOT]
            while stack:
                node_id = stack.pop()
                if node_id in reachable:
                    continue
                reachable.add(node_id)
                stack.extend(self.nodes[node_id].durable_entries.values())
            restored = dropped = 0
            for node in list(self.nodes.values()):
                if node.id not in reachable:
                    if node.kind == "file":
                        try:
                            os.unlink(self._backing_path(node.id))
                        except FileNotFoundError:
                            pass
                    del self.nodes[node.id]
                    dropped += 1
                    continue
                if node.kind == "file":
                    fd = os.open(self._backing_path(node.id), os.O_RDWR)
                    try:
                        for start, chunk in zip(node.undo_starts, node.undo_chunks):
                            os.pwrite(fd, chunk, start)
                            restored += len(chunk)
                        os.ftruncate(fd, node.durable_size)
                    finally:
                        os.close(fd)
                    node.undo_starts, node.undo_chunks = [], []
                node.entries = dict(node.durable_entries)
                node.opens = 0
            for node in self.nodes.values():
                node.links = node.durable_refs = 0
            for node in self.nodes.values():
                for child in node.entries.values():
                    self.nodes[child].links += 1
                    self.nodes[child].durable_refs += 1
            self.nodes[ROOT].links += 1
            self.nodes[ROOT].durable_refs += 1
            self.handles.clear()
            self.cut = False
            return {"restored_bytes": restored, "dropped_nodes": dropped, "nodes": len(self.nodes)}


def is_mounted(mountpoint: str) -> bool:
    """From /proc/self/mounts, without touching the mount (which fails after a cut)."""
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 1 and fields[1].replace("\\040", " ") == target:
                return True
    return False


def unmount(mountpoint: str) -> None:
    """umount2(2) directly: umount(8) stats the path first, which fails after a cut. Lazily
    (MNT_DETACH) if something still holds the mount: the FUSE loop then ends when the last user
    lets go, and after a cut every operation fails anyway."""
    target = os.path.realpath(mountpoint).encode()
    for flags in (0, 2):  # 2 = MNT_DETACH
        if _libc.umount2(target, flags) == 0:
            return
    err = ctypes.get_errno()
    raise OSError(err, f"could not unmount {mountpoint}: {os.strerror(err)}")


def mount(backing: str, mountpoint: str, dirs: str = "strict", debug: bool = False) -> int:
    """Mounts in the foreground until unmounted. SIGUSR1 cuts the power; SIGTERM/SIGINT and a
    plain unmount shut down in order. Returns 0 after the state is saved."""
    from mfusepy import FUSE

    import logging

    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="lazyfs: %(levelname)s %(message)s")
    mountpoint = os.path.realpath(mountpoint)
    fs = LazyFS(Path(backing), dirs)
    outcome = {"cut": False}
    # libfuse's worker threads inherit this mask, so only the control thread takes the signals.
    control_signals = {signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, control_signals)

    def control() -> None:
        while True:
            signum = signal.sigwait(control_signals)
            if signum == signal.SIGUSR1:
                outcome["cut"] = True
                fs.power_cut()
                print(f"lazyfs: power cut ({fs.stats})", file=sys.stderr, flush=True)
            # Wait until the mount is there before unmounting (a signal right after start).
            for _ in range(200):
                if is_mounted(mountpoint):
                    break
                time.sleep(0.05)
            unmount(mountpoint)
            return

    threading.Thread(target=control, daemon=True, name="lazyfs-control").start()
    FUSE(fs, mountpoint, foreground=True, nothreads=False, fsname="lazyfs",
         subtype="lazyfs", hard_remove=True, use_ino=True)
    if not outcome["cut"]:
        fs.sync_all()
    result = fs.revert()
    fs.save()
    kind = "cut" if outcome["cut"] else "clean unmount"
    print(f"lazyfs: {kind}: reverted to the durable state {result}", file=sys.stderr, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mount", help="mount BACKING at MOUNTPOINT in the foreground")
    m.add_argument("backing")
    m.add_argument("mountpoint")
    m.add_argument("--dirs", choices=("strict", "eager"), default="strict",
                   help="strict: directory entries need a directory fsync (default); "
                        "eager: they are durable at once, as in LazyFS")
    m.add_argument("--debug", action="store_true")
    c = sub.add_parser("cut", help="cut the power of the mount process PID")
    c.add_argument("pid", type=int)
    args = parser.parse_args(argv)
    if args.command == "mount":
        return mount(args.backing, args.mountpoint, args.dirs, args.debug)
    os.kill(args.pid, signal.SIGUSR1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
