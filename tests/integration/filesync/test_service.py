"""The filesync service as it runs: two instances (the mirror's node and a pull node) on real
NATS, S3 and PostgreSQL. Changes reach S3 and the pull copy through the watcher; requests for
a check, a snapshot (a `files` backup) and a restore are answered with events; rows and files
are compared through the reference query; the pull copy converges after the mirror's host is
lost."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from psycopg import sql

from lifeboat.common.clusters import ClusterSpec
from lifeboat.common.events import (
    BackupKind,
    BackupRequested,
    Envelope,
    FileCheckRequested,
    FileRestoreRequested,
    FileSnapshotRequested,
    Source,
)
from lifeboat.devstack.launch import ServiceProcess, launch, service_env
from lifeboat.devstack.postgres import PgCluster
from lifeboat.devstack.procs import eventually
from lifeboat.devstack.throwaway import write_clusters
from tests.endpoints import S3Endpoint
from tests.integration.filesync.conftest import tree, write

SRC = Source(service="test", instance="t")


@dataclass
class Setup:
    base: Path
    cluster: str
    env: dict[str, str]
    procs: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def mirror_root(self) -> Path:
        return self.base / "node1-files"

    @property
    def pull_root(self) -> Path:
        return self.base / "node2-files"

    def start(self, node: str) -> ServiceProcess:
        proc = launch(
            "filesync",
            self.env,
            instance=f"filesync-{node}",
            extra={
                "LIFEBOAT_FILESYNC_NODE": node,
                "LIFEBOAT_FILESYNC_STATE_DIR": str(self.base / f"state-{node}"),
                "LIFEBOAT_FILESYNC_PULL_INTERVAL_SECONDS": "30",  # file.synced wakes it first
                "LIFEBOAT_FILESYNC_CHECK_INTERVAL_SECONDS": "0",
            },
            log_file=self.base / f"filesync-{node}.log",
        )
        self.procs[node] = proc
        proc.wait_ready(60)
        return proc


@pytest.fixture(scope="module")
def setup(nats_url: str, s3: S3Endpoint, pg_cluster: PgCluster, workdir: Path) -> Iterator[Setup]:
    name = f"fs{uuid.uuid4().hex[:8]}"
    base = workdir / name
    base.mkdir()
    spec = pg_cluster.spec(name).model_dump(mode="json")
    spec["filesets"] = [
        {
            "name": "uploads",
            "root": str(base / "node1-files"),
            "reference_query": f"select path from {name}_images",
            "placement": [
                {"node": "node1", "mode": "mirror"},
                {"node": "node2", "mode": "pull", "root": str(base / "node2-files")},
            ],
        }
    ]
    pg_cluster.primary.execute(
        sql.SQL("create table {} (id serial, path text)").format(sql.Identifier(f"{name}_images")),
        dbname=pg_cluster.database,
    )
    env = service_env(
        nats_url=nats_url,
        clusters_file=write_clusters(base / "clusters.yaml", ClusterSpec.model_validate(spec)),
        pg_password=pg_cluster.passwords.superuser.get_secret_value(),
        extra=s3.env(),
    )
    (base / "node1-files").mkdir()
    s = Setup(base, name, env)
    try:
        yield s
    finally:
        for proc in s.procs.values():
            proc.stop(timeout=10)


class Events:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def on(self, msg: Msg) -> None:
        self.seen.append(json.loads(msg.data))

    def of(self, type_: str, **match: object) -> list[dict[str, Any]]:
        return [
            e
            for e in self.seen
            if e["type"] == type_ and all(e.get(k) == v for k, v in match.items())
        ]


@pytest.fixture
async def events(nats_url: str, setup: Setup) -> AsyncIterator[tuple[Events, NatsClient]]:
    nc = await nats.connect(nats_url)
    ev = Events()
    await nc.subscribe(f"file.*.{setup.cluster}.>", cb=ev.on)
    await nc.subscribe(f"backup.completed.{setup.cluster}", cb=ev.on)
    try:
        yield ev, nc
    finally:
        await nc.close()


async def publish(nc: NatsClient, event: Envelope) -> None:
    await nc.jetstream().publish(event.subject(), event.model_dump_json().encode())


async def test_changes_reach_s3_and_the_pull_copy(
    setup: Setup, events: tuple[Events, NatsClient]
) -> None:
    ev, _ = events
    write(setup.mirror_root, "a.jpg", b"a" * 1000)
    write(setup.mirror_root, "dir/b.jpg", b"b" * 2000, mode=0o640)
    setup.start("node1")
    setup.start("node2")
    await eventually(
        lambda: tree(setup.pull_root) == tree(setup.mirror_root),
        timeout=20,
        what="the pull copy to equal the mirror",
    )
    write(setup.mirror_root, "c.jpg", b"new file")
    await eventually(
        lambda: tree(setup.pull_root) == tree(setup.mirror_root),
        timeout=10,
        what="the new file on the pull node",
    )
    synced = ev.of("file.synced", fileset="uploads")
    assert synced
    assert (
        sum(e["files_copied"] for e in synced if e["source"]["instance"] == "filesync-node1") >= 1
    )
    assert ev.of("file.status", node="node1", state="in_sync")
    # the history gets one summary per pass, never one event per file
    assert len(synced) < 8


async def test_check_and_rows_and_files(
    setup: Setup, pg_cluster: PgCluster, events: tuple[Events, NatsClient]
) -> None:
    ev, nc = events
    write(setup.mirror_root, "orphan.jpg", b"no row")
    table = sql.Identifier(f"{setup.cluster}_images")
    pg_cluster.primary.execute(
        sql.SQL("insert into {} (path) values ('a.jpg'), ('dir/b.jpg'), ('c.jpg'), "
                "('missing.jpg')").format(table),
        dbname=pg_cluster.database,
    )  # fmt: skip
    await eventually(
        lambda: bool(ev.of("file.synced", files_copied=1)), timeout=10, what="orphan.jpg synced"
    )
    await publish(nc, FileCheckRequested(source=SRC, cluster=setup.cluster, fileset="uploads"))
    await eventually(
        lambda: bool(ev.of("file.references_checked")), timeout=20, what="the rows-and-files check"
    )
    verified = [e for e in ev.of("file.verified") if e["source"]["instance"] == "filesync-node1"]
    assert verified
    assert verified[-1]["differences"] == []
    refs = [
        e for e in ev.of("file.references_checked") if e["source"]["instance"] == "filesync-node1"
    ]
    assert refs[-1]["missing_sample"] == ["missing.jpg"]
    assert refs[-1]["orphan_sample"] == ["orphan.jpg"]


async def test_a_files_backup_then_restore_it_as_of_then(
    setup: Setup, events: tuple[Events, NatsClient]
) -> None:
    ev, nc = events
    before = tree(setup.mirror_root)
    request = BackupRequested(source=SRC, cluster=setup.cluster, kind=BackupKind.FILES)
    await publish(nc, request)
    await eventually(
        lambda: bool(ev.of("backup.completed", kind="files")), timeout=20, what="the files backup"
    )
    taken = ev.of("file.snapshot_taken")[-1]
    assert taken["request_id"] == str(request.event_id)
    assert taken["correlation_id"] == str(request.event_id)
    # the files half of a `full` backup, asked for by the backup service: a snapshot, named
    # by the request and answering its correlation id, and no backup.completed of its own
    backup_id = uuid.uuid4()
    ask = FileSnapshotRequested(source=SRC, cluster=setup.cluster, request_id=backup_id)
    await publish(nc, ask)
    await eventually(
        lambda: ev.of("file.snapshot_taken", correlation_id=str(ask.event_id)),
        timeout=20,
        what="the files half of a full backup",
    )
    assert ev.of("file.snapshot_taken", request_id=str(backup_id))
    assert len(ev.of("backup.completed")) == 1
    write(setup.mirror_root, "a.jpg", b"changed after the snapshot")
    dest = setup.base / "restored"
    await publish(
        nc,
        FileRestoreRequested(
            source=SRC,
            cluster=setup.cluster,
            fileset="uploads",
            destination=str(dest),
            snapshot_id=taken["snapshot_id"],
        ),
    )
    await eventually(lambda: bool(ev.of("file.restored")), timeout=20, what="the snapshot restored")
    assert ev.of("file.restored")[-1]["correlation_id"] is not None
    assert tree(dest) == before
    # in place without confirmation: refused, nothing touched
    await publish(
        nc,
        FileRestoreRequested(source=SRC, cluster=setup.cluster, fileset="uploads", node="node1"),
    )
    await eventually(
        lambda: any("confirm" in e["reason"] for e in ev.of("file.sync_failed")),
        timeout=10,
        what="the in-place restore refused",
    )
    assert (setup.mirror_root / "a.jpg").read_bytes() == b"changed after the snapshot"


async def test_the_pull_copy_converges_after_the_mirror_host_is_lost(setup: Setup) -> None:
    setup.procs["node2"].stop(timeout=10)  # the pull node is away while the mirror works
    write(setup.mirror_root, "late.jpg", b"written just before the host died")
    (setup.mirror_root / "c.jpg").unlink()
    await asyncio.sleep(1.5)  # the watcher's pass
    expected = tree(setup.mirror_root)
    setup.procs["node1"].signal(signal.SIGKILL)  # the mirror's host is lost, disk and all
    setup.procs["node1"].stop(timeout=5)
    shutil.rmtree(setup.mirror_root)
    setup.start("node2")
    await eventually(
        lambda: tree(setup.pull_root) == expected, timeout=20, what="the pull copy to converge"
    )
