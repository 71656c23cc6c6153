"""Wiring: one `SetWorker` per file set the cluster file places on this instance's node, the
requests about them, and the health of each.

Requests reach every node's instance (a durable consumer per node, not one shared by all): the
instance that serves the set acts, the others ignore it. Work that can outlast a message's ack
deadline (a restore, a snapshot) runs as a task once the request is taken.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from faststream.asgi import AsgiFastStream

from lifeboat.common import subjects
from lifeboat.common.bus import listen, subscribe
from lifeboat.common.events import (
    BackupDeleteRequested,
    BackupKind,
    BackupRequested,
    BackupVerifyRequested,
    ClusterEvent,
    FileCheckRequested,
    FileRestoreRequested,
    FileSnapshotRequested,
    FileSynced,
    FileSyncRequested,
)
from lifeboat.common.health import ComponentHealth, Status, component
from lifeboat.common.kv import open_bucket
from lifeboat.common.runtime import ServiceRuntime, cluster_file_check
from lifeboat.filesync.service import Catalogue, SetWorker, Timing
from lifeboat.filesync.settings import FilesyncSettings, MiB
from lifeboat.filesync.store import SetStore, Sizes
from lifeboat.objstore.client import make_light_s3_client
from lifeboat.objstore.health import s3_check

SERVICE = "filesync"
REQUEST_MAX_AGE = timedelta(minutes=15)
log = logging.getLogger(__name__)


def build_app(settings: FilesyncSettings) -> AsgiFastStream:
    runtime = ServiceRuntime(SERVICE, settings, ready_on=("nats", "clusters"))
    runtime.health.add("s3", s3_check(settings, runtime.breakers))
    runtime.health.add("clusters", cluster_file_check(settings))
    workers: dict[tuple[str, str], SetWorker] = {}
    tasks: set[asyncio.Task[Any]] = set()
    pool = ThreadPoolExecutor(settings.filesync_concurrency, thread_name_prefix="filesync")
    node = settings.filesync_node
    # Per node: every node's instance sees every request and acts on its own sets.
    consumer = f"{SERVICE}-{node}" if node else SERVICE

    def spawn(work: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def check_sets() -> ComponentHealth:
        if node is None:
            return component("filesets", Status.HEALTHY, "no node set: serving no file set")
        if not workers:
            return component("filesets", Status.HEALTHY, f"no file set is placed on {node}")
        paused = {w.name: w.paused_reason() for w in workers.values() if w.paused_reason()}
        names = ", ".join(f"{w.name} ({w.placement.mode})" for w in workers.values())
        if paused:
            detail = "; ".join(f"{n}: {why}" for n, why in paused.items())
            return component("filesets", Status.DEGRADED, f"paused: {detail}")
        return component("filesets", Status.HEALTHY, names, sets=len(workers))

    runtime.health.add("filesets", check_sets)

    def worker(cluster: str, fileset: str) -> SetWorker | None:
        return workers.get((cluster, fileset))

    def stale(event: ClusterEvent) -> bool:
        """A new consumer starts at the beginning of the history: a request older than this
        was for whoever served the set then, and replaying it (a snapshot, a restore) now
        would do what nobody asked for today."""
        age = datetime.now(UTC) - event.occurred_at
        if age > REQUEST_MAX_AGE:
            log.info("ignoring %s of %s: %s old", event.type, event.occurred_at, age)
            return True
        return False

    async def on_sync(event: FileSyncRequested) -> None:
        if stale(event):
            return
        w = worker(event.cluster, event.fileset)
        if w is not None:
            spawn(
                w.sync_now(
                    confirm_deletions=event.confirm_deletions,
                    requested=True,
                    correlation=event.correlation_id or event.event_id,
                ),
                f"sync-{w.name}",
            )

    async def on_check(event: FileCheckRequested) -> None:
        if stale(event):
            return
        w = worker(event.cluster, event.fileset)
        if w is not None:
            spawn(
                w.check_now(
                    references=event.references,
                    correlation=event.correlation_id or event.event_id,
                ),
                f"check-{w.name}",
            )

    async def on_restore(event: FileRestoreRequested) -> None:
        if stale(event):
            return
        w = worker(event.cluster, event.fileset)
        if w is None:
            return
        # In place: the node named. Elsewhere: the set's mirror, else the first pull copy.
        mirror = [p.node for p in w.spec.placement if p.mode == "mirror"]
        chosen = event.node or (mirror or [w.spec.placement[0].node])[0]
        if chosen == w.placement.node:
            spawn(w.restore(event), f"restore-{w.name}")

    async def on_backup(event: BackupRequested) -> None:
        # `files`: a snapshot of each set is the backup. The database kinds, and `full`, are
        # the backup service's: it asks for a full backup's files once its base backup ended.
        if stale(event) or event.kind is not BackupKind.FILES:
            return
        for (cluster, _), w in workers.items():
            if cluster == event.cluster and w.mirror is not None:
                work = w.snapshot(
                    request_id=event.event_id,
                    correlation=event.correlation_id or event.event_id,
                )
                spawn(work, f"snapshot-{w.name}")

    async def on_snapshot(event: FileSnapshotRequested) -> None:
        if stale(event):
            return
        for (cluster, name), w in workers.items():
            wanted = not event.filesets or name in event.filesets
            if cluster == event.cluster and w.mirror is not None and wanted:
                work = w.snapshot(
                    request_id=event.request_id,
                    kind=BackupKind.FULL,
                    correlation=event.correlation_id or event.event_id,
                )
                spawn(work, f"snapshot-{w.name}")

    async def on_verify(event: BackupVerifyRequested) -> None:
        # A files snapshot's id, or none (the newest of every kind: each mirror its newest).
        if stale(event):
            return
        for (cluster, _), w in workers.items():
            if cluster != event.cluster:
                continue
            if event.backup_id is None or w.serves(event.backup_id):
                spawn(w.verify(event), f"verify-{w.name}")

    async def on_delete(event: BackupDeleteRequested) -> None:
        if stale(event):
            return
        for (cluster, _), w in workers.items():
            if cluster == event.cluster and w.serves(event.backup_id):
                spawn(w.delete(event), f"delete-{w.name}")

    b = runtime.broker
    subscribe(
        b,
        service=consumer,
        topic=subjects.BACKUP_VERIFY_REQUESTED,
        model=BackupVerifyRequested,
        handler=on_verify,
    )
    subscribe(
        b,
        service=consumer,
        topic=subjects.BACKUP_DELETE_REQUESTED,
        model=BackupDeleteRequested,
        handler=on_delete,
    )
    subscribe(
        b,
        service=consumer,
        topic=subjects.FILE_SYNC_REQUESTED,
        model=FileSyncRequested,
        handler=on_sync,
    )
    subscribe(
        b,
        service=consumer,
        topic=subjects.FILE_CHECK_REQUESTED,
        model=FileCheckRequested,
        handler=on_check,
    )
    subscribe(
        b,
        service=consumer,
        topic=subjects.FILE_RESTORE_REQUESTED,
        model=FileRestoreRequested,
        handler=on_restore,
    )
    subscribe(
        b,
        service=consumer,
        topic=subjects.BACKUP_REQUESTED,
        model=BackupRequested,
        handler=on_backup,
    )
    subscribe(
        b,
        service=consumer,
        topic=subjects.FILE_SNAPSHOT_REQUESTED,
        model=FileSnapshotRequested,
        handler=on_snapshot,
    )

    # A pull copy follows its mirror at once, not at its next interval.
    @listen(runtime.broker, subjects.FILE_SYNCED, title=f"{consumer}-file-synced")
    async def on_synced(event: FileSynced) -> None:
        w = worker(event.cluster, event.fileset)
        if w is not None and w.mirror is None:
            w.wake()

    async def start() -> None:
        if node is None:
            log.info("LIFEBOAT_FILESYNC_NODE is not set: serving no file set")
            return
        client = make_light_s3_client(settings, bulk=True)
        kv = await open_bucket(
            runtime.broker.config.connection_state.stream, subjects.BACKUPS_BUCKET
        )

        def catalogue(cluster: str, fileset: str) -> Catalogue:
            async def write(entries: list[dict[str, Any]]) -> None:
                await kv.put(
                    f"{cluster}.files.{fileset}", json.dumps({"backups": entries}).encode()
                )

            return write

        timing = Timing(
            scan_interval=settings.filesync_scan_interval_seconds,
            pull_interval=settings.filesync_pull_interval_seconds,
            debounce_ms=settings.filesync_debounce_ms,
            check_interval=settings.filesync_check_interval_seconds,
            snapshot_keep=timedelta(days=settings.filesync_snapshot_keep_days)
            if settings.filesync_snapshot_keep_days
            else None,
        )
        sizes = Sizes(
            multipart_threshold=settings.filesync_multipart_threshold_mb * MiB,
            part_size=settings.filesync_part_size_mb * MiB,
        )
        for cluster in settings.clusters.clusters:
            for fs in cluster.filesets:
                for placement in fs.placement:
                    if placement.node != node:
                        continue
                    store = SetStore(
                        client,
                        fs.bucket or settings.s3_files_bucket,
                        fs.key_prefix(cluster.name),
                        sizes,
                    )
                    w = SetWorker(
                        cluster,
                        fs,
                        placement,
                        store=store,
                        state_dir=settings.filesync_state_dir,
                        pool=pool,
                        source=runtime.source,
                        publish=runtime.publisher.publish,
                        timing=timing,
                        pg_password=settings.postgres_password(),
                        catalogue=catalogue(cluster.name, fs.name)
                        if placement.mode == "mirror"
                        else None,
                    )
                    workers[(cluster.name, fs.name)] = w
                    spawn(w.run(), f"run-{w.name}")
                    log.info("%s: %s of %s", w.name, placement.mode, w.root)

    async def stop() -> None:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in workers.values():
            w.close()
        pool.shutdown(wait=False, cancel_futures=True)

    return runtime.asgi_app(on_startup=[start], on_shutdown=[stop])
