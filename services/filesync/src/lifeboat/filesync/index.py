"""The local index: what each file was when last hashed, so an unchanged file is never read.

One sqlite file per set in the state directory. A row is trusted while the file's size,
mtime, ctime, inode and mode are what they were: a no-op pass is one `stat` per file and no
read, no S3 listing. The index also remembers multipart uploads in flight, so a large file's
upload resumes after a crash instead of starting over.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
create table if not exists files (
    path text primary key, size integer, mtime_ns integer, ctime_ns integer, ino integer,
    mode integer, sha256 text
);
create table if not exists uploads (
    sha256 text primary key, key text, upload_id text, part_size integer
);
"""


@dataclass(frozen=True)
class Stat:
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    mode: int  # permission bits


@dataclass(frozen=True)
class Known:
    stat: Stat
    sha256: str


class Index:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # One writer (the pass), readers in worker threads: no thread affinity, WAL journal.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("pragma journal_mode=wal")
        self._db.execute("pragma synchronous=normal")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def all(self) -> dict[str, Known]:
        rows = self._db.execute(
            "select path, size, mtime_ns, ctime_ns, ino, mode, sha256 from files"
        )
        return {r[0]: Known(Stat(r[1], r[2], r[3], r[4], r[5]), r[6]) for r in rows}

    def put(self, items: Iterable[tuple[str, Known]]) -> None:
        rows = [
            (p, k.stat.size, k.stat.mtime_ns, k.stat.ctime_ns, k.stat.ino, k.stat.mode, k.sha256)
            for p, k in items
        ]
        if rows:
            with self._db:
                self._db.executemany("insert or replace into files values (?,?,?,?,?,?,?)", rows)

    def forget(self, paths: Iterable[str]) -> None:
        rows = [(p,) for p in paths]
        if rows:
            with self._db:
                self._db.executemany("delete from files where path = ?", rows)

    def upload(self, sha256: str) -> tuple[str, str, int] | None:
        row = self._db.execute(
            "select key, upload_id, part_size from uploads where sha256 = ?", (sha256,)
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]), int(row[2]))

    def upload_started(self, sha256: str, key: str, upload_id: str, part_size: int) -> None:
        with self._db:
            self._db.execute(
                "insert or replace into uploads values (?,?,?,?)",
                (sha256, key, upload_id, part_size),
            )

    def upload_done(self, sha256: str) -> None:
        with self._db:
            self._db.execute("delete from uploads where sha256 = ?", (sha256,))
