"""A mirror pass: scan, hash what moved, plan, upload in parallel, then the manifest, then
garbage. The only place a set's S3 copy changes.

Order matters for a reader on another host: objects first, the manifest (the commit point)
after every object it names exists, and only then objects no longer named by the manifest,
its tombstones or a live snapshot are deleted. The manifest and the set of stored hashes are
kept in memory between passes (this instance is the set's only writer), so a pass that finds
nothing changed costs one `stat` per file and no request to S3.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from lifeboat.common.decision import Publish
from lifeboat.common.events import ClusterEvent, Source
from lifeboat.filesync.index import Index, Known
from lifeboat.filesync.plan import (
    Expire,
    MirrorObservation,
    Pause,
    Policy,
    Record,
    Upload,
    plan_mirror,
)
from lifeboat.filesync.plan import Tombstone as Bury
from lifeboat.filesync.scan import Changed, hash_file, hash_scan, scan
from lifeboat.filesync.snapshots import expired
from lifeboat.filesync.store import SetStore
from lifeboat.objstore.filesets import (
    Entry,
    Manifest,
    Snapshot,
    SnapshotVerification,
    Tombstone,
    snapshot_id,
)

log = logging.getLogger(__name__)

UPLOAD_TRIES = 3


@dataclass(frozen=True)
class SetRef:
    cluster: str
    fileset: str
    root: Path
    policy: Policy = field(default_factory=Policy)


@dataclass
class PassResult:
    files: int = 0
    bytes: int = 0
    uploaded: int = 0
    uploaded_bytes: int = 0
    recorded: int = 0
    unchanged: int = 0
    deleted: int = 0
    expired: int = 0
    garbage: int = 0
    skipped: int = 0
    problems: dict[str, str] = field(default_factory=dict)
    paused: str | None = None
    seconds: float = 0.0
    generation: int = 0
    events: list[ClusterEvent] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.recorded or self.deleted or self.expired)


class Mirror:
    def __init__(
        self,
        ref: SetRef,
        store: SetStore,
        index: Index,
        source: Source,
        pool: ThreadPoolExecutor,
    ) -> None:
        self.ref = ref
        self.store = store
        self.index = index
        self.source = source
        self.pool = pool
        self.manifest: Manifest | None = None
        self.stored: set[str] = set()
        self.pinned: dict[str, Snapshot] = {}  # live snapshots: their objects are kept
        self.verifications: dict[str, SnapshotVerification] = {}  # the latest, by snapshot

    def load(self) -> None:
        """What S3 holds now: the manifest, the stored hashes, the snapshots."""
        self.manifest = self.store.read_manifest(self.ref.cluster, self.ref.fileset)
        self.stored = set(self.store.stored_objects())
        self.pinned = {s.snapshot_id: s for s in self.store.snapshots()}
        self.verifications = self.store.verifications(list(self.pinned))

    def sync(self, *, allow_mass_delete: bool = False, now: datetime | None = None) -> PassResult:
        started = time.monotonic()
        if self.manifest is None:
            self.load()
        assert self.manifest is not None
        now = now or datetime.now(UTC)
        result = PassResult()
        found = scan(self.ref.root)
        result.skipped = found.skipped
        known = self.index.all()
        hashed = hash_scan(self.ref.root, found, known, self.pool)
        self.index.put(hashed.known.items())
        self.index.forget(p for p in known if p not in found.stats)
        obs = MirrorObservation(
            now=now,
            cluster=self.ref.cluster,
            fileset=self.ref.fileset,
            source=self.source,
            root_present=found.root_present,
            local=hashed.entries,
            unreadable=frozenset(hashed.unreadable),
            manifest=self.manifest,
            stored=frozenset(self.stored),
            policy=self.ref.policy,
            allow_mass_delete=allow_mass_delete,
        )
        decision = plan_mirror(obs)
        result.problems = dict(hashed.unreadable)
        result.files = len(hashed.entries)
        result.bytes = sum(e.size for e in hashed.entries.values())
        for command in decision.commands:
            if isinstance(command, Pause):
                result.paused = command.reason
            elif isinstance(command, Publish):
                result.events.append(command.event)
        if result.paused is not None:
            result.seconds = time.monotonic() - started
            result.generation = self.manifest.generation
            return result

        uploads = [c for c in decision.commands if isinstance(c, Upload)]
        stored_as = self._upload_all(uploads, result)
        entries = dict(self.manifest.entries)
        tombstones = dict(self.manifest.tombstones)
        for command in decision.commands:
            if isinstance(command, Record):
                entry = stored_as.get(command.path, command.entry)
                if entry.sha256 not in self.stored:
                    continue  # its upload failed this pass: the next pass tries again
                entries[command.path] = entry
                tombstones.pop(command.path, None)
                result.recorded += 1
            elif isinstance(command, Bury):
                del entries[command.path]
                tombstones[command.path] = Tombstone(entry=command.entry, deleted_at=now)
                result.deleted += 1
            elif isinstance(command, Expire):
                tombstones.pop(command.path, None)
                result.expired += 1
        result.unchanged = len(hashed.entries) - result.recorded
        if result.changed:
            before = self.manifest.referenced()
            self.manifest = self.manifest.model_copy(
                update={
                    "entries": entries,
                    "tombstones": tombstones,
                    "generation": self.manifest.generation + 1,
                    "updated_at": now,
                }
            )
            self.store.write_manifest(self.manifest)
            self._collect(before - self.manifest.referenced(), result)
        self.expire_snapshots(now, result)
        result.generation = self.manifest.generation
        result.seconds = time.monotonic() - started
        return result

    def _upload_all(self, uploads: list[Upload], result: PassResult) -> dict[str, Entry]:
        """Upload in parallel; the entry actually stored per path (the file may have been
        rewritten since the scan: what is stored is what was read, whole)."""

        def one(command: Upload) -> tuple[Upload, Entry | str]:
            path = self.ref.root / command.path
            expected = command.entry
            for _ in range(UPLOAD_TRIES):
                try:
                    return command, self.store.upload(path, expected, self.index)
                except Changed:
                    try:  # read it again, whole, and try with what it is now
                        sha, s = hash_file(path)
                    except OSError as exc:
                        return command, exc.strerror or str(exc)
                    expected = Entry(sha256=sha, size=s.size, mtime_ns=s.mtime_ns, mode=s.mode)
                    self.index.put([(command.path, Known(s, sha))])
                except OSError as exc:
                    return command, exc.strerror or str(exc)
                except Exception as exc:  # S3 said no: reported, the pass goes on
                    return command, f"{type(exc).__name__}: {exc}"
            return command, "kept changing while being uploaded"

        stored_as: dict[str, Entry] = {}
        for command, outcome in self.pool.map(one, uploads):
            if isinstance(outcome, str):
                result.problems[command.path] = outcome
                continue
            self.stored.add(outcome.sha256)
            result.uploaded += 1
            result.uploaded_bytes += outcome.size
            if outcome != command.entry:
                stored_as[command.path] = outcome
        return stored_as

    def _collect(self, unreferenced: set[str], result: PassResult) -> None:
        pinned = {e.sha256 for s in self.pinned.values() for e in s.entries.values()}
        assert self.manifest is not None
        garbage = sorted(unreferenced - pinned - self.manifest.referenced())
        if garbage:
            self.store.delete_objects(garbage)
            self.stored.difference_update(garbage)
            result.garbage += len(garbage)

    # --- snapshots ----------------------------------------------------------------------

    def take_snapshot(
        self,
        *,
        now: datetime,
        keep_for: timedelta | None,
        tail: str,
        request_id: str | None,
        kind: Literal["files", "full"] = "files",
    ) -> tuple[Snapshot, str]:
        """The set as of `now`, after a pass, so what is on disk now is what is kept."""
        self.sync(now=now)
        assert self.manifest is not None
        snap = Snapshot(
            snapshot_id=snapshot_id(self.ref.fileset, now, tail),
            cluster=self.ref.cluster,
            fileset=self.ref.fileset,
            taken_at=now,
            expires_at=now + keep_for if keep_for is not None else None,
            generation=self.manifest.generation,
            entries=self.manifest.entries,
            request_id=request_id,
            kind=kind,
        )
        key = self.store.write_snapshot(snap)
        self.pinned[snap.snapshot_id] = snap
        return snap, key

    def expire_snapshots(self, now: datetime, result: PassResult) -> None:
        self.drop_snapshots(expired(self.pinned, now), result)

    def drop_snapshots(self, snapshots: list[Snapshot], result: PassResult) -> None:
        """Unlist the snapshots, then remove the objects nothing else keeps."""
        for snap in snapshots:
            self.store.delete_snapshot(snap.snapshot_id)
            del self.pinned[snap.snapshot_id]
            self.verifications.pop(snap.snapshot_id, None)
        if snapshots:
            self._collect({e.sha256 for s in snapshots for e in s.entries.values()}, result)
