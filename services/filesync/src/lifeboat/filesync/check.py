"""Does the copy match? Like `rclone check`: files missing on either side, content differing
by hash, objects the manifest names but the bucket lacks. And, where the set has a reference
query, do rows and files agree: paths the database references that are not there, and files
no row references (orphans).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from pydantic import SecretStr

from lifeboat.common.clusters import ClusterSpec
from lifeboat.filesync.index import Index
from lifeboat.filesync.scan import hash_scan, scan
from lifeboat.filesync.store import SetStore
from lifeboat.objstore.filesets import Entry

SAMPLE = 20


@dataclass
class CheckReport:
    matching: int = 0
    missing_remote: list[str] = field(default_factory=list)
    missing_local: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)
    objects_missing: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (
            self.missing_remote or self.missing_local or self.differing or self.objects_missing
        )

    def differences(self) -> tuple[str, ...]:
        lines = (
            [f"{p}: not in S3" for p in self.missing_remote]
            + [f"{p}: not on disk" for p in self.missing_local]
            + [f"{p}: content differs" for p in self.differing]
            + [f"{p}: object missing from the bucket" for p in self.objects_missing]
        )
        return tuple(lines[:SAMPLE])


def local_entries(
    root: Path, index: Index, pool: ThreadPoolExecutor, *, rehash: bool = False
) -> tuple[dict[str, Entry], dict[str, str]]:
    """The files under `root`, hashed; `rehash` reads every one instead of trusting the index
    (what `rclone check` does)."""
    found = scan(root)
    hashed = hash_scan(root, found, {} if rehash else index.all(), pool)
    if not rehash:
        index.put(hashed.known.items())
    return hashed.entries, hashed.unreadable


def compare(
    local: Mapping[str, Entry],
    remote: Mapping[str, Entry],
    stored: Mapping[str, int],
    unreadable: Mapping[str, str] | None = None,
) -> CheckReport:
    report = CheckReport(unreadable=dict(unreadable or {}))
    for path in sorted(set(local) | set(remote)):
        mine, theirs = local.get(path), remote.get(path)
        if theirs is None:
            report.missing_remote.append(path)
        elif mine is None:
            if path not in report.unreadable:
                report.missing_local.append(path)
        elif mine.sha256 != theirs.sha256:
            report.differing.append(path)
        else:
            report.matching += 1
        if theirs is not None and stored.get(theirs.sha256) != theirs.size:
            report.objects_missing.append(path)
    return report


def check(
    root: Path,
    store: SetStore,
    index: Index,
    pool: ThreadPoolExecutor,
    remote: Mapping[str, Entry],
    *,
    rehash: bool = False,
) -> CheckReport:
    listing = pool.submit(store.stored_objects)  # one listing, while the disk is scanned
    local, unreadable = local_entries(root, index, pool, rehash=rehash)
    return compare(local, remote, listing.result(), unreadable)


@dataclass(frozen=True)
class References:
    referenced: int
    files: int
    missing: tuple[str, ...]
    orphans: tuple[str, ...]


def compare_references(referenced: Iterable[str], files: Iterable[str]) -> References:
    wanted = {normalise(p) for p in referenced if p}
    have = set(files)
    return References(
        referenced=len(wanted),
        files=len(have),
        missing=tuple(sorted(wanted - have)),
        orphans=tuple(sorted(have - wanted)),
    )


def normalise(path: str, root: Path | None = None) -> str:
    """Rows may hold paths relative to the root (as the manifest does) or absolute under it."""
    if root is not None and path.startswith(str(root).rstrip("/") + "/"):
        path = path[len(str(root).rstrip("/")) + 1 :]
    return path.lstrip("/")


async def referenced_paths(
    cluster: ClusterSpec, query: str, password: SecretStr | None, *, root: Path | None = None
) -> list[str]:
    """The first column of `query`, on the first node that answers (a standby is as good as
    the primary for reading), every value a path."""
    errors = []
    for node in cluster.nodes:
        dsn = cluster.node_dsn(node, password, connect_timeout=2)
        try:
            # The query is the operator's, from the cluster file; run read-only all the same.
            async with await psycopg.AsyncConnection.connect(dsn.reveal()) as conn:
                await conn.set_read_only(True)
                rows = await (await conn.execute(query)).fetchall()
        except psycopg.OperationalError as exc:
            errors.append(f"{node.name}: {exc}")
            continue
        return [normalise(str(r[0]), root) for r in rows if r and r[0] is not None]
    raise ConnectionError("no node answered the reference query: " + "; ".join(errors))
