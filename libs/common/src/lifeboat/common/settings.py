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
    model_config = SettingsConfigDict(env_prefix="LIFEBOAT_", extra="ignore", frozen=True)

    nats_url: str = "nats://127.0.0.1:4222"
    instance_id: str = Field(default_factory=default_instance_id, min_length=1)
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8100, ge=0, le=65535)
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    clusters_file: Path = Path("clusters.yaml")

    # The history stream (LIFEBOAT_EVENTS): decisions and outcomes, bounded by age and size.
    events_max_age_seconds: PositiveFloat = 30 * 24 * 3600
    events_max_bytes: PositiveInt = 1024**3
    events_duplicate_window_seconds: PositiveFloat = 120
    # The heartbeat stream (LIFEBOAT_HEARTBEATS): node.health, wal.archived; live use only.
    heartbeats_max_age_seconds: PositiveFloat = 3600
    heartbeats_max_bytes: PositiveInt = 256 * 1024**2

    pg_password: SecretStr | None = None
    pg_password_file: Path | None = None
    pg_connect_timeout_seconds: PositiveFloat = 1.0

    breaker_failure_threshold: PositiveInt = 3
    breaker_reset_seconds: PositiveFloat = 10.0
    shutdown_grace_seconds: PositiveFloat = 5.0

    @cached_property
    def clusters(self) -> ClustersFile:
        return load_clusters(self.clusters_file)

    def postgres_password(self) -> SecretStr | None:
        return resolve_secret("LIFEBOAT_PG_PASSWORD", self.pg_password, self.pg_password_file)

    def safe_nats_url(self) -> str:
        return redact(self.nats_url)


class S3Settings(BaseSettings):
    """Where backups and file copies go; mixed into the services that touch S3."""

    model_config = SettingsConfigDict(env_prefix="LIFEBOAT_", extra="ignore", frozen=True)

    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_secret_access_key_file: Path | None = None
    s3_backup_bucket: str = "lifeboat-backups"
    s3_files_bucket: str = "lifeboat-files"
    s3_timeout_seconds: PositiveFloat = 2.0

    def s3_secret(self) -> SecretStr | None:
        return resolve_secret(
            "LIFEBOAT_S3_SECRET_ACCESS_KEY",
            self.s3_secret_access_key,
            self.s3_secret_access_key_file,
        )

    @property
    def s3_buckets(self) -> tuple[str, ...]:
        return (self.s3_backup_bucket, self.s3_files_bucket)
