from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from faststream.asgi import AsgiFastStream
from nats.aio.msg import Msg

from lifeboat.backup.agentrestore import AgentRestore
from lifeboat.backup.answers import Asker
from lifeboat.backup.mirror import Mirror
from lifeboat.backup.service import ClusterBackups
from lifeboat.backup.settings import BackupSettings
from lifeboat.backup.worker import WorkQueue
from lifeboat.common import subjects
from lifeboat.common.bus import listen
from lifeboat.common.events import (
    BackupDeleteRequested,
    BackupRequested,
    BackupVerifyRequested,
    ClusterEvent,
    DeadLetter,
    FailoverCompleted,
    RestoreRequested,
    SwitchoverCompleted,
    WalState,
)
from lifeboat.common.health import ComponentHealth, Status, component
from lifeboat.common.kv import LeaseStore
from lifeboat.common.runtime import ServiceRuntime, cluster_file_check
from lifeboat.objstore.health import s3_check
from lifeboat.pg.binaries import find_bindir
from lifeboat.pg.osuser import OsUser

SERVICE = "backup"
log = logging.getLogger(__name__)

E = TypeVar("E", bound=ClusterEvent)


def build_app(settings: BackupSettings) -> AsgiFastStream:
    runtime = ServiceRuntime(SERVICE, settings, ready_on=("nats", "clusters"))
    runtime.health.add("s3", s3_check(settings, runtime.breakers))
    runtime.health.add("clusters", cluster_file_check(settings))
    clusters: dict[str, ClusterBackups] = {}
    tasks: list[asyncio.Task[None]] = []

    archiving = settings.wal_archive and settings.replication_secret() is not None

    async def check_wal() -> ComponentHealth:
        if not settings.wal_archive:
            return component("wal", Status.HEALTHY, "WAL archiving is off")
        if not archiving:
            return component(
                "wal",
                Status.HEALTHY,
                "WAL archiving is off: no replication password (LIFEBOAT_REPLICATION_PASSWORD)",
            )
        states = {name: c.archiver.status() for name, c in clusters.items()}
        bad = {n: s for n, s in states.items() if s.state is not WalState.STREAMING}
        detail = "; ".join(
            f"{n}: {s.state.value}, lag {s.lag_bytes} B / {s.lag_seconds} s"
            for n, s in states.items()
        )
        return component("wal", Status.DEGRADED if bad else Status.HEALTHY, detail or "starting")

    runtime.health.add("wal", check_wal)

    async def moved(event: FailoverCompleted | SwitchoverCompleted) -> None:
        target = clusters.get(event.cluster)
        if target is not None:
            target.archiver.primary_changed(f"{event.type}: {event.new_primary}")

    # Every instance's archiver must hear it: plain subscriptions, not a shared consumer.
    @listen(runtime.broker, subjects.FAILOVER_COMPLETED, title="backup-failover-completed")
    async def on_failover(event: FailoverCompleted) -> None:
        await moved(event)

    @listen(runtime.broker, subjects.SWITCHOVER_COMPLETED, title="backup-switchover-completed")
    async def on_switchover(event: SwitchoverCompleted) -> None:
        await moved(event)

    def route(
        pick: Callable[[ClusterBackups], Callable[[E], Awaitable[None]]],
    ) -> Callable[[E], Awaitable[None]]:
        async def handle(event: E) -> None:
            target = clusters.get(event.cluster)
            if target is None:
                log.warning("ignoring %s for unknown cluster %s", event.type, event.cluster)
                return
            await pick(target)(event)

        return handle

    async def dead_letter(msg: Msg, reason: str) -> None:
        letter = DeadLetter(
            source=runtime.source,
            consumer=f"backup-{msg.subject.split('.')[0]}",
            original_subject=msg.subject,
            reason=reason,
            payload=msg.data.decode("utf-8", errors="replace"),
            deliveries=msg.metadata.num_delivered or 1,
        )
        await runtime.publisher.publish(letter)

    async def start() -> None:
        js = runtime.broker.config.connection_state.stream
        leases = await LeaseStore.open(js)
        mirror = await Mirror.open(js)
        nc = runtime.broker.config.connection_state.connection
        asker = Asker(nc, runtime.publisher.publish)
        agents = AgentRestore(
            nc,
            runtime.publisher.publish,
            runtime.source,
            serve_host=settings.restore_serve_host,
            timeout=settings.restore_agent_timeout_seconds,
        )
        bindir = find_bindir(settings.pg_bindir)
        os_user = OsUser.for_postgres(settings.pg_os_user)
        for spec in settings.clusters.clusters:
            c = ClusterBackups(
                spec,
                settings,
                leases=leases,
                publish=runtime.publisher.publish,
                source=runtime.source,
                breakers=runtime.breakers,
                bindir=bindir,
                os_user=os_user,
                mirror=mirror,
                asker=asker,
                agents=agents,
            )
            clusters[spec.name] = c
            tasks.append(asyncio.create_task(c.refresh_mirror(), name=f"mirror-{spec.name}"))
            tasks.append(asyncio.create_task(c.schedule(), name=f"schedule-{spec.name}"))
            tasks.append(asyncio.create_task(c.janitor(), name=f"janitor-{spec.name}"))
            if archiving:
                tasks.append(asyncio.create_task(c.archiver.run(), name=f"wal-{spec.name}"))
                tasks.append(asyncio.create_task(c.mirror_wal(), name=f"wal-kv-{spec.name}"))

        def serve_queue(
            topic: subjects.Topic,
            model: type[E],
            pick: Callable[[ClusterBackups], Callable[[E], Awaitable[None]]],
            concurrency: int,
        ) -> None:
            queue = WorkQueue(
                js,
                service=SERVICE,
                topic=topic,
                model=model,
                handler=route(pick),
                ack_wait=settings.ack_wait_seconds,
                concurrency=concurrency,
                dead_letter=dead_letter,
            )
            tasks.append(asyncio.create_task(queue.run(), name=queue.durable))

        serve_queue(subjects.BACKUP_REQUESTED, BackupRequested, lambda c: c.on_backup, 2)
        serve_queue(
            subjects.BACKUP_VERIFY_REQUESTED, BackupVerifyRequested, lambda c: c.on_verify, 1
        )
        serve_queue(
            subjects.BACKUP_DELETE_REQUESTED, BackupDeleteRequested, lambda c: c.on_delete, 2
        )
        serve_queue(subjects.RESTORE_REQUESTED, RestoreRequested, lambda c: c.on_restore, 1)

    async def stop() -> None:
        """Cancel every loop and give them the grace period, no more: a stop is bounded."""
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=settings.shutdown_grace_seconds)
            for task in pending:
                log.warning("%s did not stop within the grace period", task.get_name())

    return runtime.asgi_app(on_startup=[start], on_shutdown=[stop])
