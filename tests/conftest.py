"""Real servers for the suite, started as local processes on free loopback ports.

LIFEBOAT_TEST_SERVERS=docker runs NATS and S3 (MinIO) in containers through testcontainers
instead (needs a Docker engine and `uv sync --group docker`); the replicated PostgreSQL
cluster always comes from the local server binaries, as testcontainers has no streaming
replication. Every process is stopped by PID at teardown, after failures and Ctrl-C too.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient

from lifeboat.common.bus import ensure_streams, heartbeat_stream_config, stream_config
from lifeboat.devstack.postgres import PgCluster
from lifeboat.devstack.servers import S3Credentials, S3Ports, SeaweedS3
from lifeboat.devstack.throwaway import nats_on_free_ports, pg_on_free_ports, stop_cluster
from tests.endpoints import S3Endpoint

PROVIDER = os.environ.get("LIFEBOAT_TEST_SERVERS", "process")
BUCKETS = ("lifeboat-backups", "lifeboat-files")


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    # Not pytest's tmp_path: that is private to root, and PostgreSQL runs as another user.
    path = Path(tempfile.mkdtemp(prefix="lifeboat-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def nats_url(workdir: Path) -> Iterator[str]:
    if PROVIDER == "docker":
        from testcontainers.community.nats import NatsContainer

        with NatsContainer(jetstream=True) as container:
            yield container.nats_uri()
        return
    server = nats_on_free_ports(workdir / "nats", log_file=workdir / "nats.log")
    try:
        server.start()
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3(workdir: Path) -> Iterator[S3Endpoint]:
    if PROVIDER == "docker":
        from testcontainers.community.minio import MinioContainer

        from lifeboat.objstore.client import ensure_buckets, make_s3_client

        with MinioContainer() as container:
            cfg = container.get_config()
            endpoint = S3Endpoint(f"http://{cfg['endpoint']}", cfg["access_key"], cfg["secret_key"])
            ensure_buckets(make_s3_client(endpoint.settings()), BUCKETS)
            yield endpoint
        return
    creds = S3Credentials("lifeboat-test", secrets.token_urlsafe(16))
    # SeaweedFS adds 10000 to each port for gRPC; all stay below 32768.
    ports = S3Ports.free()
    server = SeaweedS3(workdir / "s3", ports, creds, log_file=workdir / "s3.log")
    try:
        server.start(buckets=BUCKETS)
        yield S3Endpoint(server.endpoint_url, creds.access_key_id, creds.secret_access_key)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_cluster(workdir: Path) -> Iterator[PgCluster]:
    cluster = pg_on_free_ports(workdir / "pg")
    try:
        cluster.up()
        cluster.wait_streaming()
        yield cluster
    finally:
        stop_cluster(cluster)


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_url, connect_timeout=5)
    await ensure_streams(
        client.jetstream(),
        stream_config(max_age_seconds=3600, max_bytes=256 * 1024**2, duplicate_window_seconds=120),
        heartbeat_stream_config(max_age_seconds=600, max_bytes=64 * 1024**2),
    )
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def unique() -> str:
    """A fresh name, so tests sharing one NATS never see each other's events."""
    return f"t{uuid.uuid4().hex[:10]}"
