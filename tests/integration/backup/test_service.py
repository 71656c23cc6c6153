"""The backup service end to end, as a process on NATS: requests taken once, progress and
outcomes with the request's id, verification by restore (and a corrupted object caught),
restores on request, deletes refused for the last good backup, a worker killed mid-upload
whose request another worker finishes with nothing half-listed."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from nats.aio.client import Client as NatsClient
from psycopg import sql

from lifeboat.backup.catalogue import Catalogue
from lifeboat.common.events import (
    BackupDeleteRequested,
    BackupKind,
    BackupRequested,
    BackupVerifyRequested,
    RestoreRequested,
)
from lifeboat.devstack.postgres import PgCluster
from lifeboat.pg.datadir import DataDir
from tests.endpoints import S3Endpoint
from tests.integration.backup.conftest import BUCKET, transfer
from tests.integration.backup.harness import SRC, Watch, Workers, backup_env, send


@pytest.fixture(scope="module")
def data(cluster: PgCluster) -> PgCluster:
    # ~25 MB of table data: a base backup at 4 MB/s takes several seconds.
    p = cluster.primary
    p.execute(sql.SQL("create table big (id int, pad text)"), dbname="app")
    p.execute(
        sql.SQL(
            "insert into big select g, md5(g::text) || md5((g * 7)::text) "
            "from generate_series(1, 250000) g"
        ),
        dbname="app",
    )
    cluster.wait_streaming()
    return cluster


@pytest.fixture(scope="module")
def workers(
    data: PgCluster, nats_url: str, s3: S3Endpoint, workdir: Path, cluster_name: str
) -> Iterator[Workers]:
    w = Workers(backup_env(data, nats_url, s3, workdir, cluster_name), workdir)
    try:
        yield w
    finally:
        w.stop_all()


async def test_a_request_is_backed_up_once_with_progress_and_can_be_restored(
    workers: Workers, watch: tuple[Watch, NatsClient], cluster_name: str, s3: S3Endpoint,
    data: PgCluster, workdir: Path,
) -> None:  # fmt: skip
    events, client = watch
    workers.start("bk-a")
    rid = await send(
        client,
        BackupRequested(cluster=cluster_name, source=SRC, kind=BackupKind.PHYSICAL, verify=True),
    )
    done = await events.wait("backup.completed", rid)
    assert done["source_role"] == "standby"
    assert done["raw_bytes"] > done["size_bytes"] > 0
    assert events.of("backup.started", rid)
    assert events.of("backup.progress", rid)
    verified = await events.wait("backup.verified", rid)
    assert verified["ok"], verified["detail"]
    assert verified["restore_seconds"] > 0
    assert verified["tables_checked"] >= 1
    listed = await Catalogue(transfer(s3).client, BUCKET, cluster_name).listed()
    assert [i.manifest.backup_id for i in listed] == [done["backup_id"]]
    # The catalogue is mirrored into KV for the gateway (S3 stays the truth).
    deadline = time.monotonic() + 20
    while True:
        try:
            entry = await (await client.jetstream().key_value("lifeboat_backups")).get(cluster_name)
            mirrored = json.loads(entry.value or b"{}")["backups"]
            if [b["backup_id"] for b in mirrored] == [done["backup_id"]]:
                break
        except Exception:
            pass
        assert time.monotonic() < deadline, "catalogue not mirrored into KV"
        await asyncio.sleep(0.2)

    restore = await send(
        client,
        RestoreRequested(
            cluster=cluster_name, source=SRC, backup_id=done["backup_id"],
            data_dir=str(workdir / f"restored-{cluster_name}"),
        ),
    )  # fmt: skip
    restored = await events.wait("restore.completed", restore)
    events.assert_correlated(rid, least=4)  # started, progress, completed, verified
    events.assert_correlated(restore, least=2)  # started, completed
    conninfo = f"host=127.0.0.1 port={restored['port']} user=postgres dbname=app"
    password = data.passwords.superuser.get_secret_value()
    with psycopg.connect(conninfo, password=password) as conn:
        assert conn.execute("select count(*) from big").fetchone() == (250000,)
    DataDir(Path(restored["data_dir"]), data.os_user, data.bindir).stop("immediate")

    unknown = await send(
        client, RestoreRequested(cluster=cluster_name, source=SRC, backup_id="nope")
    )
    failed = await events.wait("restore.failed", unknown)
    assert "no backup 'nope'" in failed["reason"]
    events.assert_correlated(unknown)


async def test_a_worker_killed_mid_upload_leaves_nothing_listed_and_another_finishes(
    workers: Workers, watch: tuple[Watch, NatsClient], cluster_name: str, s3: S3Endpoint,
) -> None:  # fmt: skip
    events, client = watch
    for proc in workers.procs.values():
        proc.stop()
    workers.procs.clear()
    slow = {"LIFEBOAT_PHYSICAL_MAX_RATE": "3M"}
    first = workers.start("bk-slow-1", **slow)
    workers.start("bk-slow-2", **slow)
    catalogue = Catalogue(transfer(s3).client, BUCKET, cluster_name)
    before = {i.manifest.backup_id for i in await catalogue.listed()}
    rid = await send(
        client, BackupRequested(cluster=cluster_name, source=SRC, kind=BackupKind.PHYSICAL)
    )
    started = await events.wait("backup.started", rid)
    runner = started["source"]["instance"]
    # Well past AckWait (3 s): the live worker's in-progress acks keep it from being run twice.
    await events.wait("backup.progress", rid)
    await asyncio.sleep(4)
    assert len(events.of("backup.started", rid)) == 1
    victim = workers.procs[runner]
    victim.signal(signal.SIGKILL)
    victim.stop()
    assert {i.manifest.backup_id for i in await catalogue.listed()} == before
    done = await events.wait("backup.completed", rid, timeout=120)
    assert done["source"]["instance"] != runner
    after = {i.manifest.backup_id for i in await catalogue.listed()}
    assert after - before == {done["backup_id"]}
    assert first is not None


async def test_a_corrupted_object_fails_verification_loudly_and_deletes_are_guarded(
    workers: Workers, watch: tuple[Watch, NatsClient], cluster_name: str, s3: S3Endpoint,
) -> None:  # fmt: skip
    events, client = watch
    if not any(p.alive() for p in workers.procs.values()):
        workers.start("bk-c")
    rid = await send(
        client, BackupRequested(cluster=cluster_name, source=SRC, kind=BackupKind.LOGICAL)
    )
    done = await events.wait("backup.completed", rid)
    client_s3 = transfer(s3).client
    manifest = await Catalogue(client_s3, BUCKET, cluster_name).manifest(done["backup_id"])
    key = manifest.objects[0].key
    body = bytearray(client_s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[len(body) // 3] ^= 0x55
    client_s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    vid = await send(
        client,
        BackupVerifyRequested(cluster=cluster_name, source=SRC, backup_id=done["backup_id"]),
    )
    verified = await events.wait("backup.verified", vid)
    assert not verified["ok"]
    assert "restore failed" in verified["detail"]
    events.assert_correlated(vid)

    # The corrupted logical backup is no longer good: it may go; then nothing good is left
    # of its kind... so make a good one, which is then the last good logical backup.
    good = await send(
        client, BackupRequested(cluster=cluster_name, source=SRC, kind=BackupKind.LOGICAL)
    )
    good_id = (await events.wait("backup.completed", good))["backup_id"]
    operation = uuid.uuid4()  # the gateway's operation id, when it sends the request
    refused = await send(
        client,
        BackupDeleteRequested(
            cluster=cluster_name, source=SRC, backup_id=good_id, correlation_id=operation
        ),
    )
    assert "last good" in (await events.wait("backup.delete_refused", refused))["reason"]
    events.assert_correlated(refused, operation)
    bad = await send(
        client,
        BackupDeleteRequested(cluster=cluster_name, source=SRC, backup_id=done["backup_id"]),
    )
    await events.wait("backup.deleted", bad)
    events.assert_correlated(bad)
    forced = await send(
        client,
        BackupDeleteRequested(cluster=cluster_name, source=SRC, backup_id=good_id, force=True),
    )
    assert (await events.wait("backup.deleted", forced))["forced"]
