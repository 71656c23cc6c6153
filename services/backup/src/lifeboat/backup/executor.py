"""Performs the backup decisions' commands: S3, PostgreSQL and events. The one place that acts.

A backup's outcome is published here because only here is it known: `backup.completed` after
the manifest (the commit point) is written, `backup.failed` with the reason otherwise. A
backup whose worker dies before its manifest leaves objects that are never listed; the
janitor removes them after the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
from botocore.exceptions import BotoCoreError, ClientError

from lifeboat.backup.agentrestore import AgentRestore
from lifeboat.backup.answers import Asker, FilesUnanswered
from lifeboat.backup.catalogue import Catalogue, Listed
from lifeboat.backup.commands import (
    Command,
    Decision,
    DeleteBackup,
    ExpireBackup,
    PruneWal,
    RemoveOrphans,
    Restore,
    TakeBackup,
    VerifyBackup,
)
from lifeboat.backup.manifest import FileSnapshotRef, Manifest, Verification
from lifeboat.backup.nodes import Connections, observe, primary_of
from lifeboat.backup.pipeline import Transfer
from lifeboat.backup.plan import BASE_BACKUPS
from lifeboat.backup.restore import RestoreContext, free_port, restore_logical, restore_physical
from lifeboat.backup.take import TAKERS, Context, Job
from lifeboat.backup.verify import verify
from lifeboat.backup.walnames import parse_segment
from lifeboat.common import subjects
from lifeboat.common.breakers import Breakers, BreakerState, CircuitOpenError
from lifeboat.common.decision import Outcome, Publish, execute
from lifeboat.common.events import (
    BackupCompleted,
    BackupDeleted,
    BackupExpired,
    BackupFailed,
    BackupKind,
    BackupProgress,
    BackupVerified,
    BackupVerifyRequested,
    ClusterEvent,
    FileRestored,
    FileRestoreRequested,
    FileSnapshotRequested,
    FileSnapshotTaken,
    RestoreCompleted,
    RestoreFailed,
    RestoreStarted,
    Role,
    Source,
)
from lifeboat.common.redact import redact
from lifeboat.pg.datadir import DataDir
from lifeboat.pg.osuser import OsUser
from lifeboat.pg.scratch import Instance
from lifeboat.pg.swap import start_swapped, swap_in

log = logging.getLogger(__name__)

PublishFn = Callable[[ClusterEvent], Awaitable[None]]


@dataclass
class Executor:
    cluster: str
    conns: Connections
    transfer: Transfer
    bindir: Path
    os_user: OsUser
    work_dir: Path
    publish: PublishFn
    source: Source
    breakers: Breakers
    max_rate: str | None = None
    s3_attempts: int = 4  # takes of one backup while S3 fails (and its breaker lets them)
    s3_retry_seconds: float = 2.0  # the first pause between them, doubled each time
    asker: Asker | None = None  # reaches filesync: the files half of `full` backups
    agents: AgentRestore | None = None  # reaches the agents: restores into remote nodes
    files_timeout: float = 300.0  # for every file set's snapshot, or restore, to be answered

    @property
    def catalogue(self) -> Catalogue:
        return Catalogue(self.transfer.client, self.transfer.bucket, self.cluster)

    def restore_context(self) -> RestoreContext:
        return RestoreContext(self.transfer, self.bindir, self.os_user)

    async def run(self, decision: Decision) -> list[Outcome[Command]]:
        return await execute(decision.commands, self._one, critical=lambda c: False)

    async def _one(self, command: Command) -> str:
        match command:
            case Publish(event):
                await self.publish(event)
                return event.type
            case TakeBackup(job, verify_after):
                manifest = await self.take(command)
                if manifest is not None and verify_after:
                    await self.verify(manifest.backup_id, job.request_id, command.correlation_id)
                return "taken" if manifest else "failed"
            case VerifyBackup(backup, request_id, correlation_id):
                return await self.verify(backup, request_id, correlation_id)
            case ExpireBackup(backup, kind, reason):
                await self.catalogue.delete_backup(backup)
                await self.publish(
                    BackupExpired(
                        cluster=self.cluster,
                        source=self.source,
                        backup_id=backup,
                        kind=kind,
                        reason=reason,
                    )
                )
                return f"expired {backup}"
            case DeleteBackup(backup, kind, request_id, forced, correlation_id):
                count = await self.catalogue.delete_backup(backup)
                await self.publish(
                    BackupDeleted(
                        cluster=self.cluster,
                        source=self.source,
                        correlation_id=correlation_id,
                        backup_id=backup,
                        kind=kind,
                        request_id=request_id,
                        forced=forced,
                        objects=count,
                    )
                )
                return f"deleted {backup}"
            case PruneWal(below):
                wal = await self.catalogue.wal()
                keys = [w.key for w in wal if w.segno is not None and w.segno < below]
                await self.catalogue.delete_keys(keys)
                return f"{len(keys)} WAL segment(s) no retained backup needs"
            case RemoveOrphans(keys):
                await self.catalogue.delete_keys(list(keys))
                return f"{len(keys)} orphaned object(s)"
            case Restore():
                return await self.restore(command)
        raise AssertionError(f"unknown command {command!r}")

    async def take(self, command: TakeBackup) -> Manifest | None:
        """Take the backup; an S3 failure is retried (the whole take, after a growing pause)
        while the S3 breaker stays closed: a blip, not an outage (each S3 call has its own
        retries with backoff beneath). Any other failure, the breaker open or the attempts
        used up is `backup.failed` with the reason; nothing is listed then."""
        job, cid = command.job, command.correlation_id
        delay = self.s3_retry_seconds
        last: str | None = None
        reason = "not attempted"
        for attempt in range(1, self.s3_attempts + 1):
            try:
                taken = await self._take_once(job, cid)
            except CircuitOpenError as exc:
                reason = f"S3 is unavailable: {exc}" + (f" (last error: {last})" if last else "")
                break
            except Exception as exc:
                last = redact(f"{type(exc).__name__}: {exc}")
                if not _s3_failure(exc):
                    reason = last
                    break
                if attempt == self.s3_attempts:
                    reason = f"S3 failed {attempt} time(s) in a row: {last}"
                    break
                if not await self._s3_closed():
                    # Not a blip: a half-open trial would cost a whole take. Say so now.
                    reason = f"S3 is unavailable (its breaker opened): {last}"
                    break
                log.warning(
                    "backup %s: S3 failed (attempt %d of %d), again in %.1fs: %s",
                    job.backup_id, attempt, self.s3_attempts, delay, last,
                )  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            manifest, key = taken
            await self.publish(
                BackupCompleted(
                    cluster=self.cluster,
                    source=self.source,
                    correlation_id=cid,
                    backup_id=manifest.backup_id,
                    kind=manifest.kind,
                    node=manifest.source.node,
                    size_bytes=manifest.stored_bytes,
                    duration_seconds=manifest.duration_seconds,
                    manifest_key=key,
                    sha256=manifest.objects[0].sha256,
                    request_id=job.request_id,
                    raw_bytes=manifest.raw_bytes,
                    source_role=manifest.source.role,
                    timeline=manifest.timeline,
                    start_lsn=manifest.start_lsn,
                    stop_lsn=manifest.stop_lsn,
                    objects=len(manifest.objects),
                    encrypted=manifest.encryption is not None,
                )
            )
            return manifest
        log.warning("backup %s failed: %s", job.backup_id, reason)
        await self.publish(
            BackupFailed(
                **self._about(job, cid),
                node=job.source.node,
                reason=reason[:2000],
            )
        )
        return None

    def _about(self, job: Job, cid: UUID | None) -> dict[str, Any]:
        """What every event about a backup under way says: which, of what kind, whose."""
        return {
            "cluster": self.cluster,
            "source": self.source,
            "correlation_id": cid,
            "backup_id": job.backup_id,
            "kind": job.kind,
            "request_id": job.request_id,
        }

    async def _s3_closed(self) -> bool:
        states = {b.name: b.state for b in await self.breakers.snapshot()}
        return states.get("s3", BreakerState.CLOSED) is BreakerState.CLOSED

    async def _take_once(self, job: Job, cid: UUID | None) -> tuple[Manifest, str]:
        started = time.monotonic()

        async def progress(raw: int, stored: int) -> None:
            seconds = time.monotonic() - started
            await self.publish(
                BackupProgress(
                    **self._about(job, cid),
                    raw_bytes=raw,
                    stored_bytes=stored,
                    seconds=round(seconds, 3),
                    mb_per_s=round(raw / 1e6 / seconds, 2) if seconds > 0 else 0,
                )
            )

        ctx = Context(self.conns, self.transfer, self.bindir, progress, max_rate=self.max_rate)
        other: Exception | None = None
        async with self.breakers.guard("s3"):
            try:
                manifest = await TAKERS[job.kind](ctx, job)
                if job.kind is BackupKind.FULL:
                    manifest = await self._with_files(manifest, cid)
                key = await self.catalogue.write_manifest(manifest)
            except Exception as exc:
                if _s3_failure(exc):
                    raise  # counted by the breaker
                other = exc  # PostgreSQL's or the tool's failure is not S3's
        if other is not None:
            raise other
        return manifest, key

    def _mirrored_sets(self, node: str | None = None) -> frozenset[str]:
        """The cluster's file sets with a mirror (only a mirror snapshots); placed on `node`
        if given (only those restore onto it)."""
        return frozenset(
            f.name
            for f in self.conns.spec.filesets
            if any(p.mode == "mirror" for p in f.placement)
            and (node is None or any(p.node == node for p in f.placement))
        )

    def _filesync(self) -> Asker:
        if self.asker is None:
            raise FilesUnanswered("this backup worker has no way to reach filesync")
        return self.asker

    async def _with_files(self, manifest: Manifest, cid: UUID | None) -> Manifest:
        """The files half of a `full` backup, once its base backup has ended: a restore point
        on the primary, then a snapshot of every set, then (bounded) the restore point's WAL
        in the archive, so that a listed full backup can be restored at once."""
        sets = self._mirrored_sets()
        if not sets:
            raise FilesUnanswered(
                f"{self.cluster} has no file set with a mirror: a full backup needs one "
                "(a physical backup is the database alone)"
            )
        files_lsn, segment = await self._restore_point(f"lifeboat-{manifest.backup_id}")
        request = FileSnapshotRequested(
            cluster=self.cluster,
            source=self.source,
            correlation_id=cid,
            request_id=manifest.request_id or uuid4(),
            filesets=tuple(sorted(sets)),
        )
        answers = await self._filesync().ask(
            [request], subjects.FILE_SNAPSHOT_TAKEN, sets, self.files_timeout
        )
        refs = tuple(
            FileSnapshotRef(
                fileset=a.fileset,
                snapshot_id=a.snapshot_id,
                manifest_key=a.manifest_key,
                taken_at=a.taken_at or a.occurred_at,
                files=a.files,
                bytes=a.bytes,
            )
            for a in (answers[name] for name in sorted(answers))
            if isinstance(a, FileSnapshotTaken)
        )
        await self._archived(segment, manifest.wal_segment_size)
        return manifest.model_copy(
            update={
                "file_snapshots": refs,
                "files_lsn": files_lsn,
                "files_at": min(r.taken_at for r in refs),
            }
        )

    async def _restore_point(self, name: str) -> tuple[str, str]:
        """A named restore point on the primary and its segment switched out, so the archive
        gets it now: (its LSN, the segment's name)."""
        primary = primary_of(await observe(self.conns))
        if primary is None:
            raise RuntimeError("no single primary to write the full backup's restore point on")
        dsn = self.conns.dsn(self.conns.spec.node(primary)).reveal()
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cur = await conn.execute(
                "select lsn::text, pg_walfile_name(lsn) from pg_create_restore_point(%s) lsn",
                (name,),
            )
            row = await cur.fetchone()
            await conn.execute("select pg_switch_wal()")
        assert row is not None
        return str(row[0]), str(row[1])

    async def _archived(self, segment: str, seg_size: int) -> None:
        """Wait (bounded) until the archive holds `segment` or a later one of its timeline."""
        parsed = parse_segment(segment, seg_size)
        assert parsed is not None
        timeline, segno = parsed
        deadline = time.monotonic() + self.files_timeout
        while time.monotonic() < deadline:
            archived = await self.catalogue.wal()
            # A whole segment: an uploaded partial of it is not what recovery can read past.
            if any(
                w.timeline == timeline and (w.segno or -1) >= segno and ".partial" not in w.key
                for w in archived
            ):
                return
            await asyncio.sleep(0.5)
        raise FilesUnanswered(
            f"WAL segment {segment} (the full backup's restore point) was not archived within "
            f"{self.files_timeout:g}s: a full backup needs WAL archiving"
        )

    async def _restore_files(
        self, manifest: Manifest, command: Restore, files_home: Path | None
    ) -> dict[str, str]:
        """A `full` backup's files, as of its snapshots: into `files_home/<set>` beside a new
        database, or onto the node's own roots (the restore into it was confirmed)."""
        if manifest.files_lsn is None or command.plan.target_lsn != manifest.files_lsn:
            return {}  # the database to another moment than its files': the database alone
        request = command.request
        node = request.node if files_home is None else None
        wanted = {r.fileset: r for r in manifest.file_snapshots}
        sets = frozenset(wanted) & (self._mirrored_sets(node) if node else frozenset(wanted))
        if not sets:
            return {}
        asks = [
            FileRestoreRequested(
                cluster=self.cluster,
                source=self.source,
                correlation_id=command.correlation_id,
                fileset=name,
                snapshot_id=wanted[name].snapshot_id,
                destination=None if files_home is None else str(files_home / name),
                node=node,
                confirm=node is not None,
                requested_by=f"backup restore {command.restore_id}",
            )
            for name in sorted(sets)
        ]
        answers = await self._filesync().ask(asks, subjects.FILE_RESTORED, sets, self.files_timeout)
        return {name: a.destination for name, a in answers.items() if isinstance(a, FileRestored)}

    async def verify(
        self, backup: str, request_id: UUID | None = None, correlation_id: UUID | None = None
    ) -> str:
        rid = request_id
        try:
            manifest = await self.catalogue.manifest(backup)
            result = await verify(self.restore_context(), manifest, self.work_dir / "scratch")
            if manifest.file_snapshots:
                result = await self._verify_files(manifest, result)
        except Exception as exc:
            reason = redact(f"restore failed: {type(exc).__name__}: {exc}")[:2000]
            result = Verification(
                backup_id=backup,
                ok=False,
                detail=reason,
                verified_at=datetime.now(UTC),
                restore_seconds=0,
            )
        try:
            await self.catalogue.write_verification(result)
        except Exception as exc:
            log.warning("could not record the verification of %s: %s", backup, exc)
        await self.publish(
            BackupVerified(
                cluster=self.cluster,
                source=self.source,
                correlation_id=correlation_id or rid,
                backup_id=backup,
                ok=result.ok,
                detail=result.detail,
                request_id=rid,
                restore_seconds=result.restore_seconds if result.ok else None,
                check_seconds=result.check_seconds if result.ok else None,
                tables_checked=result.tables_checked,
            )
        )
        if not result.ok:
            log.error("verification of %s FAILED: %s", backup, result.detail)
        return ("verified " if result.ok else "verification failed: ") + result.detail

    async def _verify_files(self, manifest: Manifest, database: Verification) -> Verification:
        """A `full` backup is good only if its files are too: filesync reads each snapshot
        back (every object, its hash), asked under an id of its own so that its answers do
        not close the operator's request before this whole verification does."""
        wanted = {r.snapshot_id: r.fileset for r in manifest.file_snapshots}
        cid = uuid4()
        asks = [
            BackupVerifyRequested(
                cluster=self.cluster,
                source=self.source,
                correlation_id=cid,
                backup_id=snapshot,
                requested_by=f"verification of {manifest.backup_id}",
            )
            for snapshot in sorted(wanted)
        ]
        try:
            answers = await self._filesync().ask(
                asks,
                subjects.BACKUP_VERIFIED,
                frozenset(wanted),
                self.files_timeout,
                key=lambda e: e.backup_id if isinstance(e, BackupVerified) else None,
            )
        except FilesUnanswered as exc:
            return database.model_copy(
                update={"ok": False, "detail": f"{database.detail}; files: {exc}"}
            )
        files = [a for a in answers.values() if isinstance(a, BackupVerified)]
        said = "; ".join(f"{wanted[a.backup_id]}: {a.detail}" for a in files)
        return database.model_copy(
            update={
                "ok": database.ok and all(a.ok for a in files),
                "detail": f"{database.detail}; files: {said}",
            }
        )

    async def restore(self, command: Restore) -> str:
        request, plan = command.request, command.plan
        started = time.monotonic()
        backup = plan.backup.backup_id
        await self.publish(
            RestoreStarted(
                cluster=self.cluster,
                source=self.source,
                correlation_id=command.correlation_id,
                restore_id=command.restore_id,
                backup_id=backup,
                target=request.target,
                request_id=request.event_id,
            )
        )
        try:
            manifest = await self.catalogue.manifest(backup)
            if request.target == "node":
                assert request.node is not None
                if command.through_agent:
                    data_dir, port = await self._restore_through_agent(manifest, command)
                else:
                    data_dir, port = await self._restore_into_node(manifest, command)
                try:
                    files = await self._restore_files(manifest, command, None)
                except FilesUnanswered as exc:
                    raise FilesUnanswered(
                        f"{request.node} runs on the restored database, but its files were not "
                        f"restored: {exc}"
                    ) from exc
                detail = f"{request.node} restored"
            else:
                home = (
                    Path(request.data_dir)
                    if request.data_dir
                    else self.work_dir / "restores" / command.restore_id
                )
                instance = Instance(home, request.port or free_port(), self.os_user, self.bindir)
                ctx = self.restore_context()
                if manifest.kind in BASE_BACKUPS:
                    await restore_physical(ctx, manifest, plan, instance, listen="127.0.0.1")
                else:
                    await restore_logical(ctx, manifest, instance)
                data_dir, port = instance.data_dir, instance.port
                files = await self._restore_files(manifest, command, home / "files")
                detail = f"running on port {port}, data in {data_dir}"
        except Exception as exc:
            reason = redact(f"{type(exc).__name__}: {exc}")[:2000]
            await self.publish(
                RestoreFailed(
                    cluster=self.cluster,
                    source=self.source,
                    correlation_id=command.correlation_id,
                    restore_id=command.restore_id,
                    backup_id=backup,
                    request_id=request.event_id,
                    reason=reason,
                )
            )
            return f"restore failed: {reason}"
        target = plan.target_time.isoformat() if plan.target_time else plan.target_lsn
        await self.publish(
            RestoreCompleted(
                cluster=self.cluster,
                source=self.source,
                correlation_id=command.correlation_id,
                restore_id=command.restore_id,
                backup_id=backup,
                target=request.target,
                duration_seconds=round(time.monotonic() - started, 3),
                request_id=request.event_id,
                data_dir=str(data_dir),
                port=port,
                wal_segments=len(plan.wal),
                recovered_to=target or "consistency",
                files=files,
            )
        )
        return detail

    async def _restore_through_agent(
        self, manifest: Manifest, command: Restore
    ) -> tuple[Path, int]:
        """Restore here, serve the recovered copy, and have the node's agent copy it in; the
        copy here is removed once the agent has answered, whatever it said."""
        request = command.request
        assert request.node is not None
        if self.agents is None:
            raise RuntimeError(f"{request.node} is on another host and no agent is reachable")
        staging = Instance(
            self.work_dir / "restores" / command.restore_id,
            free_port(),
            self.os_user,
            self.bindir,
        )
        await restore_physical(
            self.restore_context(), manifest, command.plan, staging, listen=self.agents.serve_host
        )
        try:
            done = await self.agents.copy_in(
                self.cluster,
                request.node,
                command.restore_id,
                staging.port,
                command.correlation_id,
            )
        finally:
            await asyncio.to_thread(staging.remove)
        spec = self.conns.spec.node(request.node)
        log.warning("%s restored through its agent: %s", request.node, done.detail)
        return Path(done.data_dir), spec.port

    async def _restore_into_node(self, manifest: Manifest, command: Restore) -> tuple[Path, int]:
        """Restore beside the node's data directory while the node runs on, then swap. The
        node's own directory is touched only once the restored copy has recovered: the node is
        stopped then (refused if it became the primary meanwhile), its directory renamed to
        `<data>.replaced-<restore id>` (kept, never deleted here), the copy moved in and the
        node started. If it does not start, the old directory goes back and starts again."""
        request = command.request
        assert request.node is not None
        spec = self.conns.spec.node(request.node)
        assert spec.data_dir is not None
        data_dir = spec.data_dir
        if manifest.kind not in BASE_BACKUPS:
            raise RuntimeError("only a physical or full backup restores into a node")
        node = DataDir(data_dir, self.os_user, self.bindir)
        log_file = data_dir.parent / "postgres.log"
        staging = Instance(
            data_dir.parent / f"restore-{command.restore_id}",
            free_port(),
            self.os_user,
            self.bindir,
        )
        await restore_physical(
            self.restore_context(),
            manifest,
            command.plan,
            staging,
            own_config_from=data_dir,
            trust_local=False,
        )
        was_running = False
        try:
            await asyncio.to_thread(staging.data.stop, "fast")
            if await asyncio.to_thread(node.running):
                was_running = True
                state = next((n for n in await observe(self.conns) if n.name == spec.name), None)
                if state is not None and state.reachable and state.role is Role.PRIMARY:
                    raise RuntimeError(
                        f"{spec.name} became the primary during the restore: its data is "
                        "left as it was"
                    )
                await asyncio.to_thread(node.stop, "fast")
            kept = await asyncio.to_thread(swap_in, staging.data_dir, data_dir, command.restore_id)
        except BaseException:
            await asyncio.to_thread(staging.remove)
            if was_running and not await asyncio.to_thread(node.running):
                await asyncio.to_thread(node.start, log_file)  # as it was
            raise
        await asyncio.to_thread(staging.remove)  # what is left: its home, its socket directory
        await asyncio.to_thread(start_swapped, node, kept, command.restore_id, log_file)
        return data_dir, spec.port


def _s3_failure(exc: BaseException) -> bool:
    """Whether S3 failed here: a botocore error, or a failure caused by one (a tool that
    died of its broken pipe once the upload failed)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, BotoCoreError | ClientError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def listed_request_ids(listed: list[Listed]) -> frozenset[str]:
    return frozenset(str(i.manifest.request_id) for i in listed if i.manifest.request_id)
