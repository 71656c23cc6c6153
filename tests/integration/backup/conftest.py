"""Backup tests share one small PostgreSQL cluster per module (primary + one streaming
standby), their own, as some of them promote the standby; S3 and NATS are the session's."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from lifeboat.backup.nodes import Connections
from lifeboat.backup.pipeline import Transfer
from lifeboat.backup.restore import RestoreContext
from lifeboat.devstack.postgres import Passwords, PgCluster
from lifeboat.devstack.procs import free_port
from lifeboat.objstore.client import make_s3_client
from lifeboat.objstore.codec import Codec
from tests.endpoints import S3Endpoint

BUCKET = "lifeboat-backups"


@pytest.fixture(scope="module")
def cluster(workdir: Path) -> Iterator[PgCluster]:
    passwords = Passwords(
        SecretStr(secrets.token_urlsafe(12)), SecretStr(secrets.token_urlsafe(12))
    )
    base = workdir / f"bk-{uuid.uuid4().hex[:6]}"
    pg = PgCluster(base, [free_port(), free_port()], passwords, durable=False)
    try:
        pg.up()
        pg.wait_streaming()
        yield pg
    finally:
        pg.stop()
        for node in pg.nodes:
            node.kill()


@pytest.fixture(scope="module")
def cluster_name() -> str:
    return f"bk{uuid.uuid4().hex[:8]}"


def connections(pg: PgCluster, name: str) -> Connections:
    return Connections(
        spec=pg.spec(name),
        password=pg.passwords.superuser,
        replication_password=pg.passwords.replication,
    )


def transfer(s3: S3Endpoint, codec: Codec | None = None) -> Transfer:
    client = make_s3_client(s3.settings(), bulk=True)
    return Transfer(client, BUCKET, codec or Codec(), part_size=5 * 1024 * 1024, concurrency=3)


def restore_context(s3: S3Endpoint, pg: PgCluster, codec: Codec | None = None) -> RestoreContext:
    return RestoreContext(transfer(s3, codec), pg.bindir, pg.os_user)
