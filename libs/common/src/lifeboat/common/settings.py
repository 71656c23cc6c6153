"""Settings shared by every service; each service subclasses `ServiceSettings` once.

Every variable has the `LIFEBOAT_` prefix (e.g. `LIFEBOAT_NATS_URL`). Secrets are read from the
variable itself or from the file named by its `_FILE` twin.
"""

from __future__ import annotations

import os
import socket
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from lifeboat.common.clusters import ClustersFile, load_clusters
from lifeboat.common.redact import redact
from lifeboat.common.secrets import resolve_secret


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ServiceSettings(BaseSettings):
    # Attribute docstrings become field descriptions: docs/configuration.md is made from them.
    model_config = SettingsConfigDict(
        env_prefix="LIFEBOAT_", extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server, or a cluster's servers separated by commas (credentials are redacted)."""
    nats_replicas: PositiveInt = 1
    """Copies of every stream and KV bucket: 3 on a 3-server cluster, so that losing one
    server loses no event and no lease; 1 on a single server."""
    instance_id: str = Field(default_factory=default_instance_id, min_length=1)
    """This instance, on every event and log line; `<hostname>-<pid>` by default."""
    http_host: str = "127.0.0.1"
    """Address of the health (and, for the gateway, API) endpoint."""
    http_port: int = Field(default=8100, ge=0, le=65535)
    """Port of the health (and API) endpoint."""
    log_level: str = "INFO"
    """DEBUG, INFO, WARNING or ERROR."""
    log_format: Literal["text", "json"] = "text"
    """`json` for one JSON object per line."""
    clusters_file: Path = Path("clusters.yaml")
    """The cluster description file (clusters, nodes, priorities, tags)."""

    events_max_age_seconds: PositiveFloat = 30 * 24 * 3600
    """History stream LIFEBOAT_EVENTS (decisions and outcomes): how long events are kept."""
    events_max_bytes: PositiveInt = 1024**3
    """History stream: at most this many bytes, oldest dropped first."""
    events_duplicate_window_seconds: PositiveFloat = 120
    """A publish repeated within this window (same Nats-Msg-Id) is stored once."""
    heartbeats_max_age_seconds: PositiveFloat = 3600
    """Heartbeat stream LIFEBOAT_HEARTBEATS (node.health, wal.archived): how long kept."""
    heartbeats_max_bytes: PositiveInt = 256 * 1024**2
    """Heartbeat stream: at most this many bytes, oldest dropped first."""

    pg_password: SecretStr | None = None
    """Password of the cluster file's control user (or `LIFEBOAT_PG_PASSWORD_FILE`)."""
    pg_password_file: Path | None = None
    """A file holding that password."""
    pg_connect_timeout_seconds: PositiveFloat = 1.0
    """Deadline of one connection attempt to a node."""

    breaker_failure_threshold: PositiveInt = 3
    """Failures in a row that open a dependency's circuit breaker."""
    breaker_reset_seconds: PositiveFloat = 10.0
    """How long an open breaker waits before letting one call through again."""
    shutdown_grace_seconds: PositiveFloat = 5.0
    """Time to drain in-flight messages on SIGTERM."""
    service_heartbeat_seconds: PositiveFloat = 5.0
    """How often this instance publishes `service.heartbeat` (readiness, breakers, version)."""

    @cached_property
    def clusters(self) -> ClustersFile:
        return load_clusters(self.clusters_file)

    def postgres_password(self) -> SecretStr | None:
        return resolve_secret("LIFEBOAT_PG_PASSWORD", self.pg_password, self.pg_password_file)

    def safe_nats_url(self) -> str:
        return redact(self.nats_url)


class ReplicationSettings(BaseSettings):
    """The replication user's password; mixed into the services that clone or stream WAL."""

    model_config = SettingsConfigDict(
        env_prefix="LIFEBOAT_", extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    replication_password: SecretStr | None = None
    """The replication user's password (base backups, WAL streaming)."""
    replication_password_file: Path | None = None
    """A file holding the replication user's password."""

    def replication_secret(self) -> SecretStr | None:
        return resolve_secret(
            "LIFEBOAT_REPLICATION_PASSWORD",
            self.replication_password,
            self.replication_password_file,
        )


class S3Settings(BaseSettings):
    """Where backups and file copies go; mixed into the services that touch S3."""

    model_config = SettingsConfigDict(
        env_prefix="LIFEBOAT_", extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    s3_endpoint_url: str | None = None
    """S3 endpoint (MinIO, SeaweedFS, ...); empty for AWS."""
    s3_region: str = "us-east-1"
    """S3 region."""
    s3_access_key_id: str | None = None
    """S3 access key id."""
    s3_secret_access_key: SecretStr | None = None
    """S3 secret key (or `LIFEBOAT_S3_SECRET_ACCESS_KEY_FILE`)."""
    s3_secret_access_key_file: Path | None = None
    """A file holding the S3 secret key."""
    s3_backup_bucket: str = "lifeboat-backups"
    """Bucket of backups, WAL and manifests."""
    s3_files_bucket: str = "lifeboat-files"
    """Bucket of application files."""
    s3_timeout_seconds: PositiveFloat = 2.0
    """Deadline of the S3 health check."""

    def s3_secret(self) -> SecretStr | None:
        return resolve_secret(
            "LIFEBOAT_S3_SECRET_ACCESS_KEY",
            self.s3_secret_access_key,
            self.s3_secret_access_key_file,
        )

    @property
    def s3_buckets(self) -> tuple[str, ...]:
        return (self.s3_backup_bucket, self.s3_files_bucket)
