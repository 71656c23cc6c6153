"""Walking a root without trusting it: symlinks are never followed, unreadable entries are
reported and the walk goes on, names that are not UTF-8 (cannot be a manifest key) are
reported, and only regular files are taken. Hashing reuses the index where the stat matches.
"""

from __future__ import annotations

import hashlib
import os
import stat as st
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lifeboat.filesync.index import Known, Stat
from lifeboat.objstore.filesets import Entry

# Each of the pool's threads keeps one such buffer (16 threads: 4 MiB in all); 1 MiB ones
# held 16 MiB resident for no faster a hash.
READ_CHUNK = 256 * 1024
TMP_PREFIX = ".lifeboat-tmp-"  # partial downloads: never synced


@dataclass
class Scan:
    root_present: bool
    stats: dict[str, Stat] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # path -> why it was not taken
    skipped: int = 0  # symlinks, sockets, devices


def stat_of(s: os.stat_result) -> Stat:
    return Stat(s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino, st.S_IMODE(s.st_mode))


def scan(root: Path, *, ignore: tuple[str, ...] = ()) -> Scan:
    """Every regular file under `root`, by POSIX path relative to it."""
    try:
        if not st.S_ISDIR(os.lstat(root).st_mode):
            return Scan(root_present=False)
    except OSError:
        return Scan(root_present=False)
    out = Scan(root_present=True)
    for rel, entry in _walk(str(root), "", out):
        if any(rel == i or rel.startswith(i + "/") for i in ignore):
            continue
        try:
            s = entry.stat(follow_symlinks=False)
        except OSError as exc:
            out.problems[rel] = exc.strerror or str(exc)
            continue
        out.stats[rel] = stat_of(s)
    return out


def _walk(top: str, rel: str, out: Scan) -> Iterator[tuple[str, os.DirEntry[str]]]:
    try:
        entries = list(os.scandir(top))
    except OSError as exc:
        out.problems[rel or "."] = exc.strerror or str(exc)
        return
    for entry in entries:
        name = entry.name
        if name.startswith(TMP_PREFIX):
            continue
        path = f"{rel}/{name}" if rel else name
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            out.problems[path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")] = (
                "name is not valid UTF-8"
            )
            continue
        try:
            if entry.is_symlink():
                out.skipped += 1  # never followed: it may point out of the root
                continue
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(entry.path, path, out)
                continue
            if not entry.is_file(follow_symlinks=False):
                out.skipped += 1
                continue
        except OSError as exc:
            out.problems[path] = exc.strerror or str(exc)
            continue
        yield path, entry


def hash_file(path: Path) -> tuple[str, Stat]:
    """sha256 of the file, and its stat, checked unchanged across the read: a file written
    while we read it raises `Changed` rather than yielding a hash of no real version."""
    buf = _buffer()
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        before = stat_of(os.fstat(fd))
        digest = hashlib.sha256()
        while n := os.readv(fd, [buf]):
            digest.update(view[:n])
        after = stat_of(os.fstat(fd))
    finally:
        os.close(fd)
    if after != before:
        raise Changed(f"{path}: changed while being read")
    return digest.hexdigest(), after


_local = threading.local()


def _buffer() -> bytearray:
    """One read buffer per thread, reused: a fresh one per read is a fresh mapping to fault
    in (big allocations are mmapped, see `lifeboat.common.malloc`), which cost a third of a
    check's time."""
    buf: bytearray | None = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(READ_CHUNK)
    return buf


class Changed(OSError):
    """The file changed while being read; read it again later."""


@dataclass
class Hashed:
    entries: dict[str, Entry]
    known: dict[str, Known]  # to write back into the index
    unreadable: dict[str, str]
    hashed_files: int = 0
    hashed_bytes: int = 0


def hash_scan(root: Path, found: Scan, index: dict[str, Known], pool: ThreadPoolExecutor) -> Hashed:
    """Entries for every file found; only those whose stat moved since the index are read."""
    out = Hashed({}, {}, dict(found.problems))
    todo: list[str] = []
    for path, s in found.stats.items():
        known = index.get(path)
        if known is not None and known.stat == s:
            out.entries[path] = Entry(
                sha256=known.sha256, size=s.size, mtime_ns=s.mtime_ns, mode=s.mode
            )
        else:
            todo.append(path)

    def one(path: str) -> tuple[str, tuple[str, Stat] | str]:
        for _ in range(3):
            try:
                return path, hash_file(root / path)
            except Changed:
                continue
            except OSError as exc:
                return path, exc.strerror or str(exc)
        return path, "kept changing while being read"

    for path, result in pool.map(one, todo):
        if isinstance(result, str):
            out.unreadable[path] = result
            continue
        sha, s = result
        out.entries[path] = Entry(sha256=sha, size=s.size, mtime_ns=s.mtime_ns, mode=s.mode)
        out.known[path] = Known(s, sha)
        out.hashed_files += 1
        out.hashed_bytes += s.size
    return out
