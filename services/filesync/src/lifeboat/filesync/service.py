"""One file set as one instance serves it: a mirror (watcher + periodic reconciliation) or a
pull copy (periodic + following `file.synced`), and the operator's requests about it.

Every pass runs in a worker thread, one at a time per set; it publishes a `file.status`
heartbeat, and into the history only what an operator wants to read later: `file.synced` when
something changed (or was asked for), `file.sync_failed`, and `file.sync_paused` once per pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from uuid import UUID, uuid4

import watchfiles
from pydantic import SecretStr

from lifeboat.common.clusters import ClusterSpec, FileSetPlacement, FileSetSpec
from lifeboat.common.decision import stamped
from lifeboat.common.events import (
    BackupCompleted,
    BackupDeleted,
    BackupDeleteRefused,
    BackupDeleteRequested,
    BackupKind,
    BackupVerified,
    BackupVerifyRequested,
    Envelope,
    FileReferencesChecked,
    FileRestored,
    FileRestoreRequested,
    FileSnapshotTaken,
    FileStatus,
    FileSynced,
    FileSyncFailed,
    FileVerified,
    Source,
)
from lifeboat.filesync.check import check, compare_references, referenced_paths
from lifeboat.filesync.index import Index
from lifeboat.filesync.mirror import Mirror, PassResult, SetRef
from lifeboat.filesync.plan import Policy
from lifeboat.filesync.pull import FetchResult, fetch, restore_target
from lifeboat.filesync.scan import TMP_PREFIX
from lifeboat.filesync.snapshots import Refused, catalogue_entry, listed, plan_delete, read_back
from lifeboat.filesync.store import SetStore
from lifeboat.objstore.filesets import Entry, SnapshotVerification, snapshot_key

log = logging.getLogger(__name__)

Publish = Callable[[Envelope], Awaitable[None]]
# Writes the set's listed snapshots into the catalogue (KV), newest first.
Catalogue = Callable[[list[dict[str, Any]]], Awaitable[None]]
PROBLEMS = 20
State = Literal["syncing", "in_sync", "paused", "failed"]


@dataclass(frozen=True)
class Timing:
    scan_interval: float = 300
    pull_interval: float = 10
    debounce_ms: int = 50
    check_interval: float = 0
    snapshot_keep: timedelta | None = timedelta(days=30)


def _problems(problems: dict[str, str]) -> tuple[str, ...]:
    return tuple(f"{p}: {why}" for p, why in sorted(problems.items())[:PROBLEMS])


class SetWorker:
    def __init__(
        self,
        cluster: ClusterSpec,
        fileset: FileSetSpec,
        placement: FileSetPlacement,
        *,
        store: SetStore,
        state_dir: Path,
        pool: ThreadPoolExecutor,
        source: Source,
        publish: Publish,
        timing: Timing = Timing(),
        pg_password: SecretStr | None = None,
        catalogue: Catalogue | None = None,
    ) -> None:
        self.cluster = cluster
        self.spec = fileset
        self.placement = placement
        self.root = fileset.root_on(placement.node)
        self.store = store
        self.pool = pool
        self.source = source
        self.publish = publish
        self.timing = timing
        self.pg_password = pg_password
        self.catalogue = catalogue
        self._catalogued: list[dict[str, Any]] | None = None
        self.policy = Policy(
            max_delete_share=fileset.max_delete_share,
            tombstone_retention=timedelta(days=fileset.tombstone_days),
        )
        self.state_base = state_dir / cluster.name / fileset.name
        self.index = Index(self.state_base / "index.sqlite")
        self.mirror: Mirror | None = None
        if placement.mode == "mirror":
            ref = SetRef(cluster.name, fileset.name, self.root, self.policy)
            self.mirror = Mirror(ref, store, self.index, source, pool)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._paused: str | None = None
        self.last: PassResult | FetchResult | None = None
        self.last_pass_at: float | None = None

    @property
    def name(self) -> str:
        return f"{self.cluster.name}/{self.spec.name}"

    def _base(self, correlation: UUID | None = None) -> dict[str, Any]:
        """The fields every event about this set has; an answer to a request also carries
        the request's `correlation_id`, which is how its asker follows it."""
        return {
            "cluster": self.cluster.name,
            "fileset": self.spec.name,
            "correlation_id": correlation,
        }

    def wake(self) -> None:
        self._wake.set()

    # --- passes -------------------------------------------------------------------------

    async def sync_now(
        self,
        *,
        confirm_deletions: bool = False,
        requested: bool = False,
        correlation: UUID | None = None,
    ) -> None:
        async with self._lock:
            try:
                if self.mirror is not None:
                    mirror = self.mirror
                    result: PassResult | FetchResult = await asyncio.to_thread(
                        lambda: mirror.sync(allow_mass_delete=confirm_deletions)
                    )
                else:
                    result = await asyncio.to_thread(self._pull, confirm_deletions)
            except Exception as exc:
                log.exception("%s: pass failed", self.name)
                await self._emit(
                    FileSyncFailed(source=self.source, **self._base(correlation), reason=str(exc))
                )
                await self._status("failed", str(exc))
                return
            self.last, self.last_pass_at = result, time.time()
            await self._report(result, requested, correlation)
        await self._list()

    def _pull(self, confirm: bool) -> FetchResult:
        manifest = self.store.read_manifest(self.cluster.name, self.spec.name)
        return fetch(
            cluster=self.cluster.name,
            fileset=self.spec.name,
            source=self.source,
            store=self.store,
            root=self.root,
            wanted=manifest.entries,
            index=self.index,
            pool=self.pool,
            remove_extra=True,
            policy=self.policy,
            allow_mass_delete=confirm,
        )

    async def _report(
        self, result: PassResult | FetchResult, requested: bool, correlation: UUID | None = None
    ) -> None:
        if result.paused is not None:
            if result.paused != self._paused:  # an alert once per pause, not every pass
                for event in result.events:
                    await self._emit(event)
            self._paused = result.paused
            await self._status("paused", result.paused)
            return
        self._paused = None
        if isinstance(result, PassResult):
            copied, deleted, nbytes = result.uploaded, result.deleted, result.uploaded_bytes
            changed = result.changed
            unchanged, skipped = result.unchanged, result.skipped
        else:
            copied, deleted, nbytes = result.fetched, result.removed, result.fetched_bytes
            changed = bool(result.fetched or result.removed or result.fixed)
            unchanged, skipped = result.files - result.fetched - result.fixed, 0
        if changed or requested or result.problems:
            await self._emit(
                FileSynced(
                    source=self.source,
                    **self._base(correlation),
                    files_copied=copied,
                    files_unchanged=max(unchanged, 0),
                    files_deleted=deleted,
                    bytes_copied=nbytes,
                    duration_seconds=result.seconds,
                    files_unreadable=len(result.problems),
                    files_skipped=skipped,
                    problems=_problems(result.problems),
                )
            )
        await self._status("in_sync" if not result.problems else "syncing", "")

    async def _status(self, state: State, detail: str) -> None:
        r = self.last
        files = r.files if r is not None else 0
        nbytes = r.bytes if isinstance(r, PassResult) else 0
        generation = r.generation if isinstance(r, PassResult) else 0
        await self._emit(
            FileStatus(
                source=self.source,
                **self._base(),
                node=self.placement.node,
                mode=self.placement.mode,
                state=state,
                files=files,
                bytes=nbytes,
                pending=len(r.problems) if r is not None else 0,
                pass_seconds=r.seconds if r is not None else 0,
                generation=generation,
                detail=detail[:500],
            )
        )

    async def _emit(self, event: Envelope) -> None:
        try:
            await self.publish(event)
        except Exception as exc:  # NATS away: the next pass reports again
            log.warning("%s: could not publish %s: %s", self.name, event.type, exc)

    # --- loops --------------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: a pass at start, on every wake-up, and at the interval."""
        watcher = asyncio.create_task(self._watch()) if self.mirror is not None else None
        interval = self.timing.scan_interval if self.mirror else self.timing.pull_interval
        checked = time.monotonic()
        try:
            while True:
                await self.sync_now()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), interval)
                self._wake.clear()
                every = self.timing.check_interval
                if every and time.monotonic() - checked > every:
                    checked = time.monotonic()
                    await self.check_now()
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    async def _watch(self) -> None:
        """Wake the pass on any change under the root; a root that is not there (yet) is
        looked for again, and the periodic scan covers whatever the watcher misses."""

        def relevant(change: watchfiles.Change, path: str) -> bool:
            return TMP_PREFIX not in path

        while True:
            try:
                async for _ in watchfiles.awatch(
                    self.root,
                    watch_filter=relevant,
                    debounce=self.timing.debounce_ms,
                    step=10,
                    ignore_permission_denied=True,
                    recursive=True,
                ):
                    self._wake.set()
            except (FileNotFoundError, OSError) as exc:
                log.info("%s: cannot watch %s (%s); scanning only", self.name, self.root, exc)
            self._wake.set()  # the root went or came back: look now
            await asyncio.sleep(2)

    # --- requests -----------------------------------------------------------------------

    async def check_now(
        self, *, rehash: bool = False, references: bool = True, correlation: UUID | None = None
    ) -> None:
        async with self._lock:
            try:
                manifest = await asyncio.to_thread(
                    self.store.read_manifest, self.cluster.name, self.spec.name
                )
                report = await asyncio.to_thread(
                    check, self.root, self.store, self.index, self.pool, manifest.entries,
                    rehash=rehash,
                )  # fmt: skip
            except Exception as exc:
                await self._emit(
                    FileSyncFailed(
                        source=self.source, **self._base(correlation), reason=f"check: {exc}"
                    )
                )
                return
            await self._emit(
                FileVerified(
                    source=self.source,
                    **self._base(correlation),
                    matching=report.matching,
                    differences=report.differences(),
                    missing_remote=len(report.missing_remote),
                    missing_local=len(report.missing_local),
                    differing=len(report.differing),
                    objects_missing=len(report.objects_missing),
                )
            )
            local = set(manifest.entries) - set(report.missing_local)
            local |= set(report.missing_remote)
        if references and self.spec.reference_query:
            await self.check_references(local, correlation)

    async def check_references(
        self, files: set[str], correlation: UUID | None = None
    ) -> FileReferencesChecked | None:
        assert self.spec.reference_query is not None
        try:
            rows = await referenced_paths(
                self.cluster, self.spec.reference_query, self.pg_password, root=self.root
            )
        except Exception as exc:
            await self._emit(
                FileSyncFailed(
                    source=self.source,
                    **self._base(correlation),
                    reason=f"reference query: {exc}",
                )
            )
            return None
        refs = compare_references(rows, files)
        event = FileReferencesChecked(
            source=self.source,
            **self._base(correlation),
            referenced=refs.referenced,
            files=refs.files,
            missing=len(refs.missing),
            orphans=len(refs.orphans),
            missing_sample=refs.missing[:PROBLEMS],
            orphan_sample=refs.orphans[:PROBLEMS],
        )
        await self._emit(event)
        return event

    async def restore(self, request: FileRestoreRequested) -> None:
        about = self._base(request.correlation_id or request.event_id)
        try:
            target = restore_target(
                Path(request.destination) if request.destination else None,
                self.root,
                confirm=request.confirm,
            )
            if request.snapshot_id:
                snap = await asyncio.to_thread(self.store.snapshot, request.snapshot_id)
                wanted: dict[str, Entry] = dict(snap.entries)
            else:
                manifest = await asyncio.to_thread(
                    self.store.read_manifest, self.cluster.name, self.spec.name
                )
                wanted = dict(manifest.entries)
            in_place = target == self.root
            async with self._lock:
                # Into another directory: an index of its own, thrown away afterwards.
                scratch = self.state_base / "restores" / uuid4().hex
                index = self.index if in_place else Index(scratch / "index.sqlite")
                result = await asyncio.to_thread(
                    lambda: fetch(
                        cluster=self.cluster.name,
                        fileset=self.spec.name,
                        source=self.source,
                        store=self.store,
                        root=target,
                        wanted=wanted,
                        index=index,
                        pool=self.pool,
                        remove_extra=in_place,
                        policy=self.policy,
                        allow_mass_delete=request.confirm,
                    )
                )
                if index is not self.index:
                    index.close()
                    shutil.rmtree(scratch, ignore_errors=True)
        except Exception as exc:
            await self._emit(FileSyncFailed(source=self.source, **about, reason=f"restore: {exc}"))
            return
        if result.problems or result.paused:
            why = result.paused or "; ".join(_problems(result.problems))
            await self._emit(FileSyncFailed(source=self.source, **about, reason=f"restore: {why}"))
        await self._emit(
            FileRestored(
                source=self.source,
                **about,
                destination=str(target),
                files_restored=result.fetched + result.fixed,
                bytes_restored=result.fetched_bytes,
                snapshot_id=request.snapshot_id,
                refused=tuple(result.refused[:PROBLEMS]),
            )
        )

    async def snapshot(
        self,
        *,
        request_id: UUID | None,
        kind: BackupKind = BackupKind.FILES,
        correlation: UUID | None = None,
    ) -> FileSnapshotTaken | None:
        """A files backup of this set; only its mirror can take one (it writes the set)."""
        if self.mirror is None:
            return None
        mirror = self.mirror
        started = time.monotonic()
        now = datetime.now(UTC)
        tail = request_id.hex[:8] if request_id else "manual"
        async with self._lock:
            try:
                snap, key = await asyncio.to_thread(
                    lambda: mirror.take_snapshot(
                        now=now,
                        keep_for=self.timing.snapshot_keep,
                        tail=tail,
                        request_id=str(request_id) if request_id else None,
                        kind="files" if kind is BackupKind.FILES else "full",
                    )
                )
            except Exception as exc:
                await self._emit(
                    FileSyncFailed(
                        source=self.source, **self._base(correlation), reason=f"snapshot: {exc}"
                    )
                )
                return None
        taken = FileSnapshotTaken(
            source=self.source,
            **self._base(correlation),
            snapshot_id=snap.snapshot_id,
            files=len(snap.entries),
            bytes=snap.size_bytes,
            manifest_key=key,
            expires_at=snap.expires_at,
            request_id=request_id,
            taken_at=now,
        )
        await self._emit(stamped(taken, now))
        if kind is BackupKind.FILES:
            await self._emit(
                BackupCompleted(
                    source=self.source,
                    cluster=self.cluster.name,
                    correlation_id=correlation,
                    backup_id=snap.snapshot_id,
                    kind=BackupKind.FILES,
                    node=self.placement.node,
                    size_bytes=snap.size_bytes,
                    raw_bytes=snap.size_bytes,
                    duration_seconds=time.monotonic() - started,
                    manifest_key=key,
                    sha256=snap.digest(),
                    request_id=request_id,
                    objects=len({e.sha256 for e in snap.entries.values()}),
                )
            )
        await self._list()
        return taken

    # --- files snapshots as backups -----------------------------------------------------

    async def _list(self) -> None:
        """The set's listed snapshots into the catalogue, when they changed (a snapshot taken,
        expired, deleted or verified); a failed write is tried again after the next pass."""
        if self.mirror is None or self.mirror.manifest is None or self.catalogue is None:
            return
        mirror, now = self.mirror, datetime.now(UTC)
        entries = [
            catalogue_entry(
                snap,
                mirror.verifications.get(snap.snapshot_id),
                self.placement.node,
                snapshot_key(self.store.prefix, snap.snapshot_id),
            )
            for snap in listed(dict(mirror.pinned), now)
        ]
        if entries == self._catalogued:
            return
        try:
            await self.catalogue(entries)
        except Exception as exc:
            log.warning("%s: could not list the snapshots in the catalogue: %s", self.name, exc)
            return
        self._catalogued = entries

    def serves(self, snapshot_id: str) -> bool:
        return self.mirror is not None and snapshot_id in self.mirror.pinned

    async def verify(self, request: BackupVerifyRequested) -> None:
        """Read the named snapshot back (or, asked for no id, the set's newest listed one)
        and answer `backup.verified`; the outcome is kept in S3 and listed with it."""
        if self.mirror is None:
            return
        mirror, now = self.mirror, datetime.now(UTC)
        if request.backup_id is not None:
            snap = mirror.pinned.get(request.backup_id)
        else:
            snap = next(iter(listed(dict(mirror.pinned), now)), None)
        if snap is None:
            return
        correlation = request.correlation_id or request.event_id
        try:
            verification = await asyncio.to_thread(
                lambda: read_back(self.store, snap, self.pool, now)
            )
            await asyncio.to_thread(self.store.write_verification, verification)
        except Exception as exc:
            verification = SnapshotVerification(
                snapshot_id=snap.snapshot_id,
                ok=False,
                detail=f"could not read the snapshot back: {exc}",
                verified_at=now,
                restore_seconds=0,
                files=len(snap.entries),
                bytes=snap.size_bytes,
            )
        if snap.snapshot_id in mirror.pinned:
            mirror.verifications[snap.snapshot_id] = verification
        await self._emit(
            BackupVerified(
                source=self.source,
                cluster=self.cluster.name,
                correlation_id=correlation,
                backup_id=snap.snapshot_id,
                ok=verification.ok,
                detail=verification.detail,
                request_id=request.event_id,
                restore_seconds=verification.restore_seconds,
            )
        )
        await self._list()

    async def delete(self, request: BackupDeleteRequested) -> None:
        """Delete a listed snapshot (never the set's last good one without `force`): unlisted
        first, then the objects no manifest, tombstone or other snapshot keeps."""
        if self.mirror is None:
            return
        mirror, now = self.mirror, datetime.now(UTC)
        correlation = request.correlation_id or request.event_id
        found = plan_delete(
            dict(mirror.pinned),
            dict(mirror.verifications),
            request.backup_id,
            force=request.force,
            now=now,
        )
        if isinstance(found, Refused):
            await self._emit(
                BackupDeleteRefused(
                    source=self.source,
                    cluster=self.cluster.name,
                    correlation_id=correlation,
                    backup_id=request.backup_id,
                    reason=found.reason,
                    request_id=request.event_id,
                )
            )
            return
        result = PassResult()
        async with self._lock:
            await asyncio.to_thread(mirror.drop_snapshots, [found], result)
        await self._emit(
            BackupDeleted(
                source=self.source,
                cluster=self.cluster.name,
                correlation_id=correlation,
                backup_id=found.snapshot_id,
                kind=BackupKind.FILES,
                request_id=request.event_id,
                forced=request.force,
                objects=result.garbage,
            )
        )
        await self._list()

    def paused_reason(self) -> str | None:
        return self._paused

    def close(self) -> None:
        self.index.close()
