"""One cluster's backup work on this instance: requests (under leases), the schedule, the
janitor (retention and orphans, one instance at a time) and the WAL archiver."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lifeboat.backup.agentrestore import AgentRestore
from lifeboat.backup.answers import Asker
from lifeboat.backup.catalogue import Catalogue
from lifeboat.backup.commands import Decision
from lifeboat.backup.decide import (
    Policy,
    correlation,
    decide_backup,
    decide_delete,
    decide_restore,
    decide_retention,
    decide_schedule,
    decide_verify,
)
from lifeboat.backup.executor import Executor
from lifeboat.backup.mirror import Mirror
from lifeboat.backup.nodes import Connections, observe
from lifeboat.backup.pipeline import Transfer
from lifeboat.backup.plan import BASE_BACKUPS, RetentionPolicy
from lifeboat.backup.settings import BackupSettings
from lifeboat.backup.wal import Archiver
from lifeboat.backup.worker import Held, claim
from lifeboat.common.breakers import Breakers
from lifeboat.common.clusters import ClusterSpec
from lifeboat.common.events import (
    BackupDeleteRequested,
    BackupFailed,
    BackupKind,
    BackupRequested,
    BackupVerifyRequested,
    ClusterEvent,
    RestoreFailed,
    RestoreRequested,
    Source,
)
from lifeboat.common.kv import LeaseStore
from lifeboat.objstore.client import make_light_s3_client
from lifeboat.pg.osuser import OsUser

log = logging.getLogger(__name__)


class ClusterBackups:
    def __init__(
        self,
        spec: ClusterSpec,
        settings: BackupSettings,
        *,
        leases: LeaseStore,
        publish: Callable[[ClusterEvent], Awaitable[None]],
        source: Source,
        breakers: Breakers,
        bindir: Path,
        os_user: OsUser,
        mirror: Mirror | None = None,
        asker: Asker | None = None,
        agents: AgentRestore | None = None,
    ) -> None:
        self.spec = spec
        self.mirror = mirror
        self.cluster = spec.name
        self.settings = settings
        self.leases = leases
        self.publish = publish
        self.source = source
        self.conns = Connections(
            spec,
            settings.postgres_password(),
            settings.replication_secret(),
            connect_timeout=max(settings.pg_connect_timeout_seconds, 2.0),
        )
        self.transfer = Transfer(
            make_light_s3_client(settings, bulk=True),
            settings.s3_backup_bucket,
            settings.codec(),
            part_size=settings.part_size_mb * 1024 * 1024,
            concurrency=settings.upload_concurrency,
        )
        work = settings.work_dir / spec.name
        self.executor = Executor(
            self.cluster,
            self.conns,
            self.transfer,
            bindir,
            os_user,
            work,
            publish,
            source,
            breakers,
            settings.physical_max_rate,
            asker=asker,
            agents=agents,
        )
        self.policy = Policy(
            prefer_standby=settings.prefer_standby,
            max_source_lag_bytes=settings.max_source_lag_bytes,
            verify_after_backup=settings.verify_after_backup,
            retention=RetentionPolicy(
                max_age=timedelta(days=settings.retention_days),
                min_count={
                    BackupKind.PHYSICAL: settings.retention_min_physical,
                    BackupKind.LOGICAL: settings.retention_min_logical,
                },
            ),
        )
        self.archiver = Archiver(
            cluster=self.cluster,
            conns=self.conns,
            transfer=self.transfer,
            spool=work / "wal-spool",
            bindir=bindir,
            slot=settings.wal_slot,
            publish=publish,
            source=source,
            breakers=breakers,
            spool_max_bytes=settings.wal_spool_max_mb * 1024 * 1024,
            slot_max_keep_mb=settings.wal_slot_max_keep_mb,
            status_interval=settings.wal_status_interval_seconds,
        )

    @property
    def catalogue(self) -> Catalogue:
        return Catalogue(self.transfer.client, self.transfer.bucket, self.cluster)

    @property
    def ttl(self) -> int:
        return self.settings.lease_ttl_seconds

    async def _under(self, held: Held, work: Awaitable[object]) -> None:
        """Run `work` while the lease holds; losing it cancels the work (and the message
        goes back, for a worker that holds the lease)."""
        task = asyncio.ensure_future(work)
        lost = asyncio.ensure_future(held.lost.wait())
        try:
            done, _ = await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
            if task not in done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise RuntimeError("the backup lease was lost: another worker may run this")
            task.result()
        finally:
            lost.cancel()
            await held.release()

    async def on_backup(self, request: BackupRequested) -> None:
        rid = str(request.event_id)
        done = frozenset({rid}) if await self.catalogue.has_request(rid) else frozenset()
        if done:
            log.info("request %s already produced a listed backup", rid)
            return
        name = f"backup-{self.cluster}-{request.kind.value}"
        held = await claim(self.leases, name, self.settings.instance_id, rid, self.ttl)
        if isinstance(held, str):
            await self.publish(
                BackupFailed(
                    cluster=self.cluster,
                    source=self.source,
                    kind=request.kind,
                    request_id=request.event_id,
                    correlation_id=correlation(request),
                    reason=f"a {request.kind.value} backup of {self.cluster} is already "
                    f"running on {held}",
                )
            )
            return

        async def work() -> None:
            nodes = await observe(self.conns)
            decision = decide_backup(
                request, nodes, done, self.policy, datetime.now(UTC), self.source
            )
            log.info("backup request %s: %s", rid, decision.reason)
            await self.executor.run(decision)
            try:
                await self.retain()
            except Exception as exc:
                # The outcome is published: a failed retention (S3 just came back, or not
                # yet) must not put the request back to be taken again. The janitor retries.
                log.warning("retention after request %s: %s", rid, exc)

        await self._under(held, work())

    async def on_verify(self, request: BackupVerifyRequested) -> None:
        held = await claim(
            self.leases, f"verify-{self.cluster}", self.settings.instance_id,
            str(request.event_id), self.ttl,
        )  # fmt: skip
        if isinstance(held, str):
            raise RuntimeError(f"a verification runs on {held}: retried later")
        entries = tuple(i.entry() for i in await self.catalogue.listed())
        decision = decide_verify(entries, request, datetime.now(UTC), self.source)
        await self._under(held, self.executor.run(decision))
        await self.refresh_mirror()

    async def on_delete(self, request: BackupDeleteRequested) -> None:
        entries = tuple(i.entry() for i in await self.catalogue.listed())
        await self.executor.run(decide_delete(entries, request, datetime.now(UTC), self.source))
        await self.refresh_mirror()

    async def on_restore(self, request: RestoreRequested) -> None:
        restore_id = f"r{request.event_id.hex[:10]}"
        held = await claim(
            self.leases, f"restore-{self.cluster}", self.settings.instance_id,
            str(request.event_id), self.ttl,
        )  # fmt: skip
        if isinstance(held, str):
            await self.publish(
                RestoreFailed(
                    cluster=self.cluster,
                    source=self.source,
                    backup_id=request.backup_id,
                    request_id=request.event_id,
                    correlation_id=correlation(request),
                    reason=f"a restore of {self.cluster} is already running on {held}",
                )
            )
            return

        async def work() -> None:
            catalogue = self.catalogue
            entries = tuple(i.entry() for i in await catalogue.listed())
            wal = tuple(await catalogue.wal())
            nodes = await observe(self.conns)
            local = frozenset(n.name for n in self.spec.nodes if n.data_dir is not None)
            decision = decide_restore(
                entries, wal, nodes, request, restore_id, datetime.now(UTC), self.source, local
            )
            log.info("restore request %s: %s", request.event_id, decision.reason)
            await self.executor.run(decision)

        await self._under(held, work())

    async def retain(self) -> Decision:
        catalogue = self.catalogue
        entries = tuple(i.entry() for i in await catalogue.listed())
        wal = tuple(await catalogue.wal())
        grace = timedelta(seconds=self.settings.orphan_grace_seconds)
        orphans = tuple(await catalogue.orphans(grace))
        await catalogue.abort_stale_uploads(grace)
        decision = decide_retention(entries, wal, orphans, self.policy.retention, datetime.now(UTC))
        await self.executor.run(decision)
        await self.refresh_mirror()
        return decision

    async def refresh_mirror(self) -> None:
        if self.mirror is None:
            return
        try:
            await self.mirror.catalogue(self.cluster, await self.catalogue.listed())
        except Exception as exc:  # the mirror is a convenience: S3 stays the truth
            log.warning("could not mirror the catalogue of %s: %s", self.cluster, exc)

    async def mirror_wal(self, every: float = 5.0) -> None:
        while True:
            await asyncio.sleep(every)
            if self.mirror is not None:
                with contextlib.suppress(Exception):
                    await self.mirror.wal(self.archiver.status())

    async def janitor(self) -> None:
        """Retention and orphan removal, by whichever instance holds the janitor lease."""
        holder = f"{self.settings.instance_id}|janitor"
        while True:
            try:
                lease = await self.leases.acquire(
                    f"backup-janitor-{self.cluster}",
                    holder,
                    max(self.ttl, int(self.settings.janitor_interval_seconds) + self.ttl),
                )
                if lease is not None:
                    await self.retain()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("janitor of %s: %s", self.cluster, exc)
            await asyncio.sleep(self.settings.janitor_interval_seconds)

    async def schedule(self, tick: float = 10.0) -> None:
        schedules = {
            BackupKind.PHYSICAL: self.settings.schedule_physical,
            BackupKind.LOGICAL: self.settings.schedule_logical,
        }
        after = datetime.now(UTC) - timedelta(seconds=tick)
        # Only where a backup can work: without the replication password it cannot.
        first = (
            self.settings.first_backup_at_start and self.settings.replication_secret() is not None
        )
        while True:
            now = datetime.now(UTC)
            if first:
                try:
                    listed = await self.catalogue.listed()
                    first = not any(i.manifest.kind in BASE_BACKUPS for i in listed)
                except Exception as exc:
                    log.warning("cannot list the backups of %s yet: %s", self.cluster, exc)
                    await asyncio.sleep(tick)
                    continue
            decision = decide_schedule(
                self.cluster,
                schedules,
                self.settings.schedule_verify,
                after,
                now,
                self.source,
                first_physical=first,
            )
            first = False
            try:
                await self.executor.run(decision)
                after = now
            except Exception as exc:
                log.warning("schedule of %s: %s", self.cluster, exc)
            await asyncio.sleep(tick)
