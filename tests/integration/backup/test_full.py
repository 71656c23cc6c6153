"""A `full` backup: a physical backup of the cluster and a snapshot of its file set, taken
together by the backup and filesync services (processes on real NATS, S3 and PostgreSQL),
listed as one backup and restored together: the database to the moment of the files, and
the files as of that moment, whatever changed in either afterwards."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from nats.aio.client import Client as NatsClient
from psycopg import sql

from lifeboat.backup.catalogue import Catalogue
from lifeboat.common.clusters import ClusterSpec
from lifeboat.common.events import (
    BackupKind,
    BackupRequested,
    BackupVerifyRequested,
    RestoreRequested,
)
from lifeboat.devstack.launch import ServiceProcess
from lifeboat.devstack.postgres import PgCluster
from lifeboat.objstore.client import make_s3_client
from lifeboat.pg.datadir import DataDir
from tests.endpoints import S3Endpoint
from tests.integration.backup.conftest import BUCKET, transfer
from tests.integration.backup.harness import SRC, Watch, Workers, backup_env, send
from tests.integration.filesync.conftest import tree, write

TABLE = "images"
FILES = "lifeboat-files"  # the files bucket by default


@pytest.fixture(scope="module")
def setup(
    cluster: PgCluster, nats_url: str, s3: S3Endpoint, workdir: Path, cluster_name: str
) -> Iterator[Path]:
    """The backup service and a filesync mirror of the set `uploads` (on node1), as
    processes; the file set's root."""
    base = workdir / f"full-{cluster_name}"
    root = base / "uploads"
    root.mkdir(parents=True)
    spec = cluster.spec(cluster_name).model_dump(mode="json")
    spec["filesets"] = [
        {
            "name": "uploads",
            "root": str(root),
            "reference_query": f"select path from {TABLE}",
            "placement": [{"node": cluster.nodes[0].name, "mode": "mirror"}],
        }
    ]
    env = backup_env(
        cluster, nats_url, s3, base, cluster_name,
        spec=ClusterSpec.model_validate(spec), LIFEBOAT_WAL_ARCHIVE="true",
    )  # fmt: skip
    filesync = ServiceProcess(
        "filesync",
        env,
        instance=f"filesync-{cluster_name}",
        extra={
            "LIFEBOAT_FILESYNC_NODE": cluster.nodes[0].name,
            "LIFEBOAT_FILESYNC_STATE_DIR": str(base / "filesync-state"),
            "LIFEBOAT_FILESYNC_CHECK_INTERVAL_SECONDS": "0",
        },
        log_file=base / "filesync.log",
    )
    workers = Workers(env, base)
    try:
        filesync.start()
        filesync.wait_ready(60)
        workers.start(f"backup-{cluster_name}")
        yield root
    finally:
        workers.stop_all()
        filesync.stop()


async def test_a_full_backup_restores_the_database_and_the_files_of_one_moment(
    setup: Path, cluster: PgCluster, cluster_name: str,
    s3: S3Endpoint, watch: tuple[Watch, NatsClient], workdir: Path,
) -> None:  # fmt: skip
    root = setup
    events, client = watch
    primary = cluster.primary
    primary.execute(sql.SQL(f"create table {TABLE} (path text)"), dbname=cluster.database)
    for name in ("a.jpg", "b.jpg"):
        write(root, name, name.encode() * 100)
        primary.execute(
            sql.SQL(f"insert into {TABLE} values ({{}})").format(sql.Literal(name)),
            dbname=cluster.database,
        )
    await asyncio.sleep(1.5)  # the watcher's pass; the snapshot syncs first anyway
    at_backup = tree(root)

    full = BackupRequested(cluster=cluster_name, source=SRC, kind=BackupKind.FULL)
    rid = await send(client, full)
    done = await events.wait("backup.completed", rid)
    assert done["kind"] == "full"
    (listed,) = await Catalogue(transfer(s3).client, BUCKET, cluster_name).listed()
    manifest = listed.manifest
    assert manifest.kind is BackupKind.FULL
    assert manifest.backup_id == done["backup_id"]
    (snap,) = manifest.file_snapshots
    assert snap.fileset == "uploads"
    assert snap.files == 2
    assert manifest.files_at is not None
    assert manifest.files_at >= manifest.stopped_at
    assert manifest.files_lsn is not None

    # Afterwards both change: a new row and its file, a rewritten file. The backup is
    # restorable at once (its restore point's WAL was archived before it was listed).
    write(root, "c.jpg", b"after the backup")
    write(root, "b.jpg", b"rewritten after the backup")
    primary.execute(sql.SQL(f"insert into {TABLE} values ('c.jpg')"), dbname=cluster.database)

    restore = await send(
        client,
        RestoreRequested(
            cluster=cluster_name,
            source=SRC,
            backup_id=manifest.backup_id,
            data_dir=str(workdir / f"full-restored-{cluster_name}"),
        ),
    )
    restored = await events.wait("restore.completed", restore, timeout=180)
    assert restored["recovered_to"] == manifest.files_lsn
    files = Path(restored["files"]["uploads"])
    try:
        assert tree(files) == at_backup  # c.jpg absent, b.jpg as it was
        conninfo = f"host=127.0.0.1 port={restored['port']} user=postgres dbname={cluster.database}"
        password = cluster.passwords.superuser.get_secret_value()
        with psycopg.connect(conninfo, password=password) as conn:
            rows = conn.execute(f"select path from {TABLE} order by path").fetchall()
        assert [r[0] for r in rows] == ["a.jpg", "b.jpg"]  # the row added after is not there
    finally:
        DataDir(Path(restored["data_dir"]), cluster.os_user, cluster.bindir).stop("immediate")


async def test_a_full_backup_is_verified_with_its_files(
    setup: Path, cluster_name: str, s3: S3Endpoint, watch: tuple[Watch, NatsClient]
) -> None:
    """Its database by a restore, its files by filesync reading the snapshot back: an object
    of the snapshot changed in S3 fails the full backup's verification, naming the set."""
    events, client = watch
    (listed,) = await Catalogue(transfer(s3).client, BUCKET, cluster_name).listed()
    backup = listed.manifest.backup_id
    good = await send(
        client, BackupVerifyRequested(cluster=cluster_name, source=SRC, backup_id=backup)
    )
    verified = await events.wait("backup.verified", good, timeout=180, backup_id=backup)
    assert verified["ok"] is True, verified
    assert "files: uploads: 2 files" in verified["detail"]

    (snap,) = listed.manifest.file_snapshots
    s3c = make_s3_client(s3.settings())
    body = json.loads(s3c.get_object(Bucket=FILES, Key=snap.manifest_key)["Body"].read())
    sha = next(iter(body["entries"].values()))["sha256"]
    key = f"{snap.manifest_key.split('snapshots/')[0]}objects/{sha[:2]}/{sha}"
    original = s3c.get_object(Bucket=FILES, Key=key)["Body"].read()
    s3c.put_object(Bucket=FILES, Key=key, Body=b"bit rot")
    try:
        bad = await send(
            client, BackupVerifyRequested(cluster=cluster_name, source=SRC, backup_id=backup)
        )
        failed = await events.wait("backup.verified", bad, timeout=180, backup_id=backup)
    finally:
        s3c.put_object(Bucket=FILES, Key=key, Body=original)
    assert failed["ok"] is False
    assert "files: uploads:" in failed["detail"]
    assert sha[:12] in failed["detail"]
