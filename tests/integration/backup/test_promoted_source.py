"""A standby promoted during its own base backup (throttled so there is time to promote it):
the backup fails with the reason, carries the request's correlation id, and nothing is
listed, so no manifest claims the old timeline for what is now another; the promoted node's
next backup names its new timeline."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from psycopg import sql

from lifeboat.backup.catalogue import Catalogue
from lifeboat.backup.manifest import backup_prefix
from lifeboat.common.events import BackupKind, BackupRequested
from lifeboat.devstack.postgres import PgCluster, PgNode
from lifeboat.devstack.procs import eventually
from tests.endpoints import S3Endpoint
from tests.integration.backup.conftest import BUCKET, transfer
from tests.integration.backup.harness import SRC, Watch, Workers, backup_env, send, watching


@pytest.fixture(scope="module")
def data(cluster: PgCluster) -> PgCluster:
    # ~15 MB of table data beside the ~30 MB of an empty cluster: at 4 MB/s, ten seconds.
    cluster.primary.execute(sql.SQL("create table big (id int, pad text)"), dbname="app")
    cluster.primary.execute(
        sql.SQL("insert into big select g, md5(g::text) from generate_series(1, 200000) g"),
        dbname="app",
    )
    cluster.wait_streaming()
    return cluster


@pytest.fixture(scope="module")
def workers(
    data: PgCluster, nats_url: str, s3: S3Endpoint, workdir: Path, cluster_name: str
) -> Iterator[Workers]:
    env = backup_env(data, nats_url, s3, workdir, cluster_name, LIFEBOAT_PHYSICAL_MAX_RATE="4M")
    w = Workers(env, workdir)
    try:
        yield w
    finally:
        w.stop_all()


@pytest.fixture
async def watch(nats_url: str, cluster_name: str) -> AsyncIterator[tuple[Watch, NatsClient]]:
    w, client = await watching(nats_url, cluster_name, ("backup",))
    try:
        yield w, client
    finally:
        await client.close()


def rows(node: PgNode) -> int:
    return int(str(node.query(sql.SQL("select count(*) from big"), dbname="app")[0][0]))


async def test_a_standby_promoted_during_its_base_backup_fails_it_and_nothing_is_listed(
    data: PgCluster, workers: Workers, watch: tuple[Watch, NatsClient], cluster_name: str,
    s3: S3Endpoint,
) -> None:  # fmt: skip
    events, client = watch
    primary, standby = data.nodes
    await eventually(lambda: rows(standby) == 200000, timeout=30, what="the standby to replay")
    workers.start("pr-a")
    catalogue = Catalogue(transfer(s3).client, BUCKET, cluster_name)
    rid = await send(
        client,
        BackupRequested(cluster=cluster_name, source=SRC, kind=BackupKind.PHYSICAL, verify=False),
    )
    started = await events.wait("backup.started", rid)
    assert started["node"] == standby.name
    assert started["source_role"] == "standby"
    await events.wait("backup.progress", rid)
    standby.data.pg("pg_ctl", "-D", str(standby.data_dir), "-w", "-t", "30", "promote")

    failed = await events.wait("backup.failed", rid, timeout=90)
    assert "promoted" in failed["reason"], failed["reason"]
    assert failed["backup_id"] == started["backup_id"]
    assert not events.of("backup.completed", rid)
    events.assert_correlated(rid, least=3)  # started, progress, failed
    assert await catalogue.listed() == []
    keys = [k for k, _, _ in await catalogue.keys(backup_prefix(cluster_name, failed["backup_id"]))]
    assert not [k for k in keys if k.endswith("manifest.json")], keys

    # One primary left, the promoted node on its new timeline: its backup says so.
    primary.stop()
    again = await send(
        client,
        BackupRequested(cluster=cluster_name, source=SRC, kind=BackupKind.PHYSICAL, verify=False),
    )
    done = await events.wait("backup.completed", again, timeout=90)
    assert done["node"] == standby.name
    assert done["source_role"] == "primary"
    assert done["timeline"] == 2
    (listed,) = await catalogue.listed()
    assert listed.manifest.timeline == 2
    assert listed.manifest.backup_id == done["backup_id"]
    events.assert_correlated(again, least=2)
