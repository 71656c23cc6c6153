"""Bringing files from S3 to a directory: a pull copy kept current, or a restore.

A pull pass reads the set's manifest (a conditional GET: unchanged, it costs one request and
no body) and makes the local copy equal to it; a restore does the same once, from the
manifest or a snapshot, into a directory of the operator's choice or, confirmed, onto the
set's root in place. Every write goes through a temporary file checked against the hash and
is renamed into place with its mode and mtime; a path that would leave the target is refused.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from lifeboat.common.decision import Publish
from lifeboat.common.events import ClusterEvent, Source
from lifeboat.filesync.index import Index, Known
from lifeboat.filesync.plan import (
    Download,
    Pause,
    Policy,
    PullObservation,
    Refuse,
    Remove,
    SetMeta,
    plan_pull,
)
from lifeboat.filesync.scan import hash_scan, scan, stat_of
from lifeboat.filesync.store import SetStore, remove, set_meta
from lifeboat.objstore.filesets import Entry


class RestoreRefused(ValueError):
    pass


@dataclass
class FetchResult:
    files: int = 0
    fetched: int = 0
    fetched_bytes: int = 0
    fixed: int = 0
    removed: int = 0
    refused: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    paused: str | None = None
    seconds: float = 0.0
    events: list[ClusterEvent] = field(default_factory=list)


def fetch(
    *,
    cluster: str,
    fileset: str,
    source: Source,
    store: SetStore,
    root: Path,
    wanted: Mapping[str, Entry],
    index: Index,
    pool: ThreadPoolExecutor,
    remove_extra: bool,
    policy: Policy | None = None,
    allow_mass_delete: bool = False,
    now: datetime | None = None,
) -> FetchResult:
    """Make `root` hold `wanted` (and, with `remove_extra`, nothing else)."""
    started = time.monotonic()
    result = FetchResult(files=len(wanted))
    root.mkdir(parents=True, exist_ok=True)
    found = scan(root)
    known = index.all()
    hashed = hash_scan(root, found, known, pool)
    index.put(hashed.known.items())
    index.forget(p for p in known if p not in found.stats)
    decision = plan_pull(
        PullObservation(
            now=now or datetime.now(UTC),
            cluster=cluster,
            fileset=fileset,
            source=source,
            local=hashed.entries,
            unreadable=frozenset(hashed.unreadable),
            wanted=wanted,
            remove_extra=remove_extra,
            policy=policy or Policy(),
            allow_mass_delete=allow_mass_delete,
        )
    )
    result.problems.update(hashed.unreadable)

    Work = Download | SetMeta | Remove

    def one(command: Work) -> tuple[Work, str | None, Known | None]:
        try:
            if isinstance(command, Remove):
                remove(root, command.path)
                return command, None, None
            if isinstance(command, Download):
                store.download(root, command.path, command.entry)
            else:
                set_meta(root, command.path, command.entry)
            # Written from the manifest: its hash is known, the next pass need not read it.
            s = stat_of(os.lstat(root / command.path))
            return command, None, Known(s, command.entry.sha256)
        except Exception as exc:  # reported; the rest of the pass goes on
            return command, f"{type(exc).__name__}: {exc}", None

    work: list[Work] = []
    for command in decision.commands:
        if isinstance(command, Pause):
            result.paused = command.reason
        elif isinstance(command, Publish):
            result.events.append(command.event)
        elif isinstance(command, Refuse):
            result.refused.append(f"{command.path}: {command.reason}")
        elif isinstance(command, Download | SetMeta | Remove):
            work.append(command)
    if result.paused is not None:
        result.seconds = time.monotonic() - started
        return result
    written: list[tuple[str, Known]] = []
    for done, problem, fresh in pool.map(one, work):
        if fresh is not None:
            written.append((done.path, fresh))
        command = done
        if problem is not None:
            result.problems[command.path] = problem
        elif isinstance(command, Download):
            result.fetched += 1
            result.fetched_bytes += command.entry.size
        elif isinstance(command, SetMeta):
            result.fixed += 1
        elif isinstance(command, Remove):
            result.removed += 1
    # What was written is what the manifest says: no need to hash it again next pass.
    index.forget(c.path for c in work if isinstance(c, Remove) and c.path not in result.problems)
    result.seconds = time.monotonic() - started
    return result


def restore_target(destination: Path | None, set_root: Path, *, confirm: bool) -> Path:
    """Where a restore may write: a directory that is not the set's live root, or that root
    in place when the operator confirmed it."""
    if destination is None or destination.resolve() == set_root.resolve():
        if not confirm:
            raise RestoreRefused(
                f"restoring onto the set's root {set_root} in place replaces its files: "
                "confirm it, or give another destination"
            )
        return set_root
    if not destination.is_absolute():
        raise RestoreRefused(f"the destination {destination} must be an absolute path")
    dest, live = destination.resolve(), set_root.resolve()
    if (live.is_relative_to(dest) or dest.is_relative_to(live)) and not confirm:
        raise RestoreRefused(
            f"{destination} overlaps the set's root {set_root}: confirm, or choose another"
        )
    return destination
