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
from nats.js.errors import KeyNotFoundError
from psycopg import sql

from lifeboat.common import subjects
from lifeboat.common.clusters import ClusterSpec
from lifeboat.common.events import (
    BackupDeleteRequested,
    BackupKind,
    BackupRequested,
    BackupVerifyRequested,
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
from lifeboat.objstore.client import make_s3_client
from tests.endpoints import S3Endpoint
from tests.integration.filesync.conftest import tree, write

SRC = Source(service="test", instance="t")
FILES = "lifeboat-files"  # the files bucket by default


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


async def listed_snapshots(nc: NatsClient, setup: Setup) -> list[dict[str, Any]]:
    kv = await nc.jetstream().key_value(subjects.BACKUPS_BUCKET)
    try:
        entry = await kv.get(f"{setup.cluster}.files.uploads")
    except KeyNotFoundError:
        return []
    assert entry.value is not None
    return list(json.loads(entry.value)["backups"])


async def test_a_files_backup_is_listed_verified_and_deleted_like_the_database_kinds(
    setup: Setup, s3: S3Endpoint, events: tuple[Events, NatsClient]
) -> None:
    """In the catalogue (KV) beside the database kinds, the `full` backup's snapshot not on
    its own; a verification reads every object back and names a corrupted one; a delete
    keeps the last good snapshot unless forced, and answers like the backup service."""
    ev, nc = events
    answers = Events()
    await nc.subscribe(f"backup.*.{setup.cluster}", cb=answers.on)
    listed = await eventually(
        lambda: listed_snapshots(nc, setup), timeout=10, what="the snapshot in the catalogue"
    )
    assert len(listed) == 1  # the files backup, not the full backup's half
    files_id = listed[0]["backup_id"]
    assert "-files-uploads-" in files_id
    assert listed[0]["kind"] == "files"
    assert listed[0]["listed_status"] == "unverified"
    assert listed[0]["files"] > 0
    assert listed[0]["raw_bytes"] > 0

    verify = BackupVerifyRequested(source=SRC, cluster=setup.cluster, backup_id=files_id)
    await publish(nc, verify)
    good = await eventually(
        lambda: answers.of("backup.verified", correlation_id=str(verify.event_id)),
        timeout=20,
        what="the snapshot verified",
    )
    assert good[0]["ok"] is True
    assert "matching its hash" in good[0]["detail"]
    await eventually(
        lambda: status_of(nc, setup, "verified"), timeout=10, what="listed as verified"
    )

    # An object of the snapshot changed behind filesync's back: the verification says so.
    client = make_s3_client(s3.settings())
    base = f"{setup.cluster}/uploads/"
    snapshot = json.loads(
        client.get_object(Bucket=FILES, Key=f"{base}snapshots/{files_id}.json")["Body"].read()
    )
    sha = next(iter(snapshot["entries"].values()))["sha256"]
    key = f"{base}objects/{sha[:2]}/{sha}"
    original = client.get_object(Bucket=FILES, Key=key)["Body"].read()
    client.put_object(Bucket=FILES, Key=key, Body=b"bit rot")
    try:
        again = BackupVerifyRequested(source=SRC, cluster=setup.cluster, backup_id=files_id)
        await publish(nc, again)
        bad = await eventually(
            lambda: answers.of("backup.verified", correlation_id=str(again.event_id)),
            timeout=20,
            what="the corrupted snapshot's verification",
        )
        assert bad[0]["ok"] is False
        assert sha[:12] in bad[0]["detail"]
    finally:
        client.put_object(Bucket=FILES, Key=key, Body=original)
    await eventually(
        lambda: status_of(nc, setup, "failed_verification"), timeout=10, what="listed as failed"
    )

    # A failed snapshot is no last good one: a second, verified, makes the first deletable.
    request = BackupRequested(source=SRC, cluster=setup.cluster, kind=BackupKind.FILES)
    await publish(nc, request)
    await eventually(
        lambda: ev.of("backup.completed", correlation_id=str(request.event_id)),
        timeout=20,
        what="a second files backup",
    )
    second = ev.of("backup.completed", correlation_id=str(request.event_id))[0]["backup_id"]
    refused = BackupDeleteRequested(source=SRC, cluster=setup.cluster, backup_id=second)
    await publish(nc, refused)
    why = await eventually(
        lambda: answers.of("backup.delete_refused", correlation_id=str(refused.event_id)),
        timeout=10,
        what="deleting the last good snapshot refused",
    )
    assert "last good snapshot" in why[0]["reason"]
    delete = BackupDeleteRequested(source=SRC, cluster=setup.cluster, backup_id=files_id)
    await publish(nc, delete)
    await eventually(
        lambda: answers.of("backup.deleted", correlation_id=str(delete.event_id)),
        timeout=10,
        what="the failed snapshot deleted",
    )
    await eventually(
        lambda: _ids(nc, setup, [second]), timeout=10, what="only the second one listed"
    )


async def _ids(nc: NatsClient, setup: Setup, expected: list[str]) -> bool:
    return [b["backup_id"] for b in await listed_snapshots(nc, setup)] == expected


async def status_of(nc: NatsClient, setup: Setup, status: str) -> bool:
    listed = await listed_snapshots(nc, setup)
    return bool(listed) and listed[-1]["listed_status"] == status


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
