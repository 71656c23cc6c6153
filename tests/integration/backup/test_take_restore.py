"""Each kind backed up to S3 and restored into a scratch instance, data compared; backups from
a standby; encryption round trip and the wrong key; a corrupted object caught on restore."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql

from lifeboat.backup.catalogue import Catalogue, Listed
from lifeboat.backup.manifest import Manifest, backup_id
from lifeboat.backup.nodes import observe
from lifeboat.backup.plan import RestorePlan, SourceChoice, choose_source
from lifeboat.backup.restore import free_port, restore_logical, restore_physical
from lifeboat.backup.take import TAKERS, Context, Job
from lifeboat.common.events import BackupKind, Role
from lifeboat.devstack.postgres import PgCluster
from lifeboat.objstore.codec import Codec, WrongKeyError
from lifeboat.objstore.download import ChecksumMismatchError
from lifeboat.pg.scratch import Instance
from tests.endpoints import S3Endpoint
from tests.integration.backup.conftest import BUCKET, connections, restore_context, transfer

KEY = os.urandom(32)


@pytest.fixture(scope="module")
def data(cluster: PgCluster) -> PgCluster:
    p = cluster.primary
    p.execute(sql.SQL("create table items (id int primary key, label text)"), dbname="app")
    p.execute(
        sql.SQL("insert into items select g, md5(g::text) from generate_series(1, 20000) g"),
        dbname="app",
    )
    p.execute(sql.SQL("create table notes (id serial primary key, body text)"), dbname="app")
    p.execute(sql.SQL("insert into notes (body) values ('one'), ('two')"), dbname="app")
    p.execute(sql.SQL("create database other"))
    p.execute(sql.SQL("create table t (x int)"), dbname="other")
    p.execute(sql.SQL("insert into t values (1), (2), (3)"), dbname="other")
    p.execute(sql.SQL("create role app_reader login"))
    cluster.wait_streaming()
    _wait_replayed(cluster)
    return cluster


def _wait_replayed(pg: PgCluster) -> None:
    lsn = pg.primary.query(sql.SQL("select pg_current_wal_lsn()::text"))[0][0]
    for _ in range(100):
        rows = pg.nodes[1].query(
            sql.SQL("select pg_last_wal_replay_lsn() >= {}::pg_lsn").format(sql.Literal(lsn))
        )
        if rows[0][0]:
            return
        time.sleep(0.1)


def snapshot(conninfo: str) -> list[tuple[object, ...]]:
    with psycopg.connect(conninfo) as conn:
        return conn.execute("select id, label from items order by id").fetchall()


async def take(
    pg: PgCluster, s3: S3Endpoint, name: str, kind: BackupKind, codec: Codec | None = None,
    **job: object,
) -> Manifest:  # fmt: skip
    conns = connections(pg, name)
    choice = choose_source(await observe(conns))
    assert isinstance(choice, SourceChoice), choice
    started = datetime.now(UTC)
    ctx = Context(conns, transfer(s3, codec), pg.bindir)
    bid = backup_id(kind, started, uuid4())
    manifest = await TAKERS[kind](ctx, Job(name, bid, kind, choice, **job))  # type: ignore[arg-type]
    await Catalogue(ctx.transfer.client, BUCKET, name).write_manifest(manifest)
    return manifest


def scratch(pg: PgCluster, workdir: Path) -> Instance:
    return Instance(workdir / f"scratch-{uuid4().hex[:6]}", free_port(), pg.os_user, pg.bindir)


async def test_logical_backup_from_the_standby_restores_the_same_rows(
    data: PgCluster, s3: S3Endpoint, cluster_name: str, workdir: Path
) -> None:
    manifest = await take(data, s3, cluster_name, BackupKind.LOGICAL, all_databases=True)
    assert manifest.source.role is Role.STANDBY, manifest.source
    assert "spares the primary" in manifest.source.reason
    assert set(manifest.databases) >= {"app", "other", "postgres"}
    assert manifest.table_counts["app/public.items"] == 20000
    assert manifest.counts_exact
    assert {o.name for o in manifest.objects} >= {"globals.sql", "app.dump", "other.dump"}
    assert manifest.stored_bytes < manifest.raw_bytes
    listed = await Catalogue(transfer(s3).client, BUCKET, cluster_name).listed()
    assert manifest.backup_id in [item.manifest.backup_id for item in listed]

    instance = scratch(data, workdir)
    await restore_logical(restore_context(s3, data), manifest, instance)
    try:
        assert snapshot(instance.conninfo("app")) == snapshot(data.primary.conninfo("app"))
        with psycopg.connect(instance.conninfo("other")) as conn:
            assert conn.execute("select count(*) from t").fetchone() == (3,)
            roles = conn.execute("select rolname from pg_roles").fetchall()
        assert ("app_reader",) in roles  # the globals came along
    finally:
        instance.remove()


async def test_physical_backup_from_the_standby_restores_to_consistency(
    data: PgCluster, s3: S3Endpoint, cluster_name: str, workdir: Path
) -> None:
    manifest = await take(data, s3, cluster_name, BackupKind.PHYSICAL)
    assert manifest.source.role is Role.STANDBY
    assert manifest.timeline == 1
    assert manifest.start_lsn
    assert manifest.stop_lsn
    assert manifest.counts_exact
    instance = scratch(data, workdir)
    plan = RestorePlan(Listed(manifest, None).entry(), ())
    restored = await restore_physical(restore_context(s3, data), manifest, plan, instance)
    try:
        assert restored.seconds > 0
        assert snapshot(instance.conninfo("app")) == snapshot(data.primary.conninfo("app"))
    finally:
        instance.remove()


async def test_encrypted_backup_round_trips_and_the_wrong_key_is_refused(
    data: PgCluster, s3: S3Endpoint, cluster_name: str, workdir: Path
) -> None:
    codec = Codec(key=KEY)
    manifest = await take(data, s3, cluster_name, BackupKind.LOGICAL, codec)
    assert manifest.encryption is not None
    assert KEY.hex() not in manifest.model_dump_json()
    wrong = scratch(data, workdir)
    with pytest.raises(WrongKeyError, match="wrong key"):
        await restore_logical(restore_context(s3, data, Codec(key=os.urandom(32))), manifest, wrong)
    assert not wrong.data_dir.exists()  # refused before anything was created
    instance = scratch(data, workdir)
    await restore_logical(restore_context(s3, data, codec), manifest, instance)
    try:
        assert snapshot(instance.conninfo("app")) == snapshot(data.primary.conninfo("app"))
    finally:
        instance.remove()


async def test_a_corrupted_object_fails_the_restore_and_leaves_nothing(
    data: PgCluster, s3: S3Endpoint, cluster_name: str, workdir: Path
) -> None:
    manifest = await take(data, s3, cluster_name, BackupKind.PHYSICAL)
    obj = manifest.objects[0]
    client = transfer(s3).client
    body = bytearray(client.get_object(Bucket=BUCKET, Key=obj.key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    client.put_object(Bucket=BUCKET, Key=obj.key, Body=bytes(body))
    instance = scratch(data, workdir)
    plan = RestorePlan(Listed(manifest, None).entry(), ())
    with pytest.raises((ChecksumMismatchError, Exception)) as caught:
        await restore_physical(restore_context(s3, data), manifest, plan, instance)
    assert not isinstance(caught.value, AssertionError)
    assert not instance.home.exists()
