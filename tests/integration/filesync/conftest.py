"""Filesync tests: each gets its own prefix in the session's real S3, its own directories."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from lifeboat.common.events import Source
from lifeboat.filesync.index import Index
from lifeboat.filesync.mirror import Mirror, SetRef
from lifeboat.filesync.plan import Policy
from lifeboat.filesync.pull import FetchResult, fetch
from lifeboat.filesync.scan import hash_file
from lifeboat.filesync.store import SetStore, Sizes
from lifeboat.objstore.client import make_light_s3_client
from lifeboat.objstore.filesets import Entry
from tests.endpoints import S3Endpoint

BUCKET = "lifeboat-files"
SOURCE = Source(service="filesync", instance="test")


@pytest.fixture(scope="session")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as p:
        yield p


@dataclass
class Rig:
    """A mirror of `root` into its own prefix, and a place to restore to."""

    s3: S3Endpoint
    base: Path
    pool: ThreadPoolExecutor
    prefix: str
    sizes: Sizes

    @property
    def root(self) -> Path:
        return self.base / "root"

    def store(self) -> SetStore:
        return SetStore(
            make_light_s3_client(self.s3.settings(), bulk=True), BUCKET, self.prefix, self.sizes
        )

    def mirror(self, policy: Policy | None = None, state: str = "state") -> Mirror:
        ref = SetRef("main", "up", self.root, policy or Policy())
        index = Index(self.base / state / "index.sqlite")
        return Mirror(ref, self.store(), index, SOURCE, self.pool)

    def restore(
        self, dest: Path, wanted: dict[str, Entry], *, remove_extra: bool = False, state: str = "r"
    ) -> FetchResult:
        return fetch(
            cluster="main",
            fileset="up",
            source=SOURCE,
            store=self.store(),
            root=dest,
            wanted=wanted,
            index=Index(self.base / state / "index.sqlite"),
            pool=self.pool,
            remove_extra=remove_extra,
        )


@pytest.fixture
def rig(s3: S3Endpoint, tmp_path: Path, pool: ThreadPoolExecutor) -> Rig:
    r = Rig(s3, tmp_path, pool, f"t{uuid.uuid4().hex[:10]}/up/", Sizes())
    r.root.mkdir()
    return r


def write(root: Path, rel: str, data: bytes, mode: int = 0o644, mtime: int | None = None) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))
    return path


def tree(root: Path) -> dict[str, tuple[str, int, int]]:
    """path -> (sha256, mode, mtime_ns) of every regular file, symlinks not followed."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            sha, s = hash_file(path)
            out[str(path.relative_to(root))] = (sha, s.mode, s.mtime_ns)
    return out
