"""Backup tests share one small PostgreSQL cluster per module (primary + one streaming
standby), their own, as some of them promote the standby; S3 and NATS are the session's."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from pydantic import SecretStr

from lifeboat.backup.nodes import Connections
from lifeboat.backup.pipeline import Transfer
from lifeboat.backup.restore import RestoreContext
from lifeboat.devstack.postgres import Passwords, PgCluster
from lifeboat.devstack.procs import free_port
from lifeboat.devstack.servers import S3Credentials, S3Ports, SeaweedS3
from lifeboat.objstore.client import make_s3_client
from lifeboat.objstore.codec import Codec
from tests.endpoints import S3Endpoint
from tests.integration.backup.harness import Watch, watching

BUCKET = "lifeboat-backups"


@contextmanager
def small_cluster(workdir: Path, nodes: int = 2) -> Iterator[PgCluster]:
    """A primary and streaming standbys of a module's own (some tests promote or replace
    them), stopped by PID afterwards."""
    passwords = Passwords(
        SecretStr(secrets.token_urlsafe(12)), SecretStr(secrets.token_urlsafe(12))
    )
    base = workdir / f"bk-{uuid.uuid4().hex[:6]}"
    pg = PgCluster(base, [free_port() for _ in range(nodes)], passwords, durable=False)
    try:
        pg.up()
        pg.wait_streaming()
        yield pg
    finally:
        pg.stop()
        for node in pg.nodes:
            node.kill()


@pytest.fixture(scope="module")
def cluster(workdir: Path) -> Iterator[PgCluster]:
    with small_cluster(workdir) as pg:
        yield pg


@pytest.fixture(scope="module")
def own_s3(workdir: Path) -> Iterator[SeaweedS3]:
    """An S3 server of the module's own, for the tests that stop and start it."""
    creds = S3Credentials("lifeboat-own", secrets.token_urlsafe(16))
    ports = S3Ports.free()
    server = SeaweedS3(workdir / f"s3-{uuid.uuid4().hex[:6]}", ports, creds)
    try:
        server.start(buckets=(BUCKET,))
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def endpoint(own_s3: SeaweedS3) -> S3Endpoint:
    c = own_s3.credentials
    return S3Endpoint(own_s3.endpoint_url, c.access_key_id, c.secret_access_key)


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


@pytest.fixture
async def watch(nats_url: str, cluster_name: str) -> AsyncIterator[tuple[Watch, NatsClient]]:
    """Every backup and restore event about the module's cluster, with a NATS client."""
    w, client = await watching(nats_url, cluster_name, ("backup", "restore"))
    try:
        yield w, client
    finally:
        await client.close()
