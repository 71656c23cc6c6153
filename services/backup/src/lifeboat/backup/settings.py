from __future__ import annotations

from pathlib import Path

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from lifeboat.common.secrets import resolve_secret
from lifeboat.common.settings import ReplicationSettings, S3Settings, ServiceSettings
from lifeboat.objstore.codec import Codec, Compression, load_key


class BackupSettings(ServiceSettings, S3Settings, ReplicationSettings):
    model_config = SettingsConfigDict(env_prefix="LIFEBOAT_", extra="ignore", frozen=True)

    http_port: int = Field(default=8103, ge=0, le=65535)
    """Port of the health endpoint."""
    work_dir: Path = Path(".lifeboat/backup")
    """Local room: the WAL spool and scratch instances for test restores."""

    @field_validator("work_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Scratch instances run with their data directory as working directory: a relative
        # socket directory under it would not exist there.
        return value.absolute()

    pg_bindir: Path | None = None
    """Where the PostgreSQL binaries are, if not found by themselves."""
    restore_serve_host: str = "127.0.0.1"
    """A restore into a node on another host (no `data_dir` in the cluster file) recovers
    here, listens on this address, and the node's agent copies it from there: an address of
    this host the nodes reach (under compose, the backup service's host name)."""
    restore_agent_timeout_seconds: PositiveFloat = 3600
    """How long a node's agent may take to copy a restored database in (it gives up before
    the swap past it); its swap and start get 5 minutes more."""
    pg_os_user: str | None = None
    """Who runs initdb/pg_ctl for scratch instances when the service runs as root."""

    compression: Compression = Compression.ZSTD
    """`zstd` or `gzip`, for backups and WAL."""
    compression_level: int = Field(default=3, ge=-7, le=22)
    """zstd's level (negative: faster), or gzip's (1-9)."""
    compression_threads: NonNegativeInt = 0
    """zstd worker threads; 0 compresses on one thread beside the upload threads."""
    encryption_key: SecretStr | None = None
    """AES-256 key, 64 hex digits or base64; backups and WAL are encrypted when set."""
    encryption_key_file: Path | None = None
    """A file holding that key."""
    physical_max_rate: str | None = None
    """pg_basebackup --max-rate (e.g. 64M): spare a busy source's disks; unlimited if unset."""
    part_size_mb: int = Field(default=5, ge=5)
    """Multipart part size (S3's smallest, doubled every 1,000 parts): with
    `upload_concurrency`, what a transfer holds in memory, about size x (concurrency + 1)."""
    upload_concurrency: PositiveInt = 2
    """Parts of one transfer uploading at once (two keep a local store busy; more for a far
    one, at a part's size in memory each)."""

    schedule_physical: str = "0 2 * * *"
    """Cron expression of scheduled physical backups; empty for none."""
    schedule_logical: str = ""
    """Cron expression of scheduled logical backups; empty for none."""
    first_backup_at_start: bool = True
    """Ask for a physical backup at start when the cluster has none listed (once per start;
    workers starting together ask with one request id)."""
    schedule_verify: str = "0 5 * * 0"
    """Cron expression of test restores of the newest backup of each kind."""
    retention_days: PositiveFloat = 7
    """Backups older than this are removed, beyond the minimum counts below."""
    retention_min_physical: PositiveInt = 3
    """Physical (and full) backups always kept, however old."""
    retention_min_logical: PositiveInt = 3
    """Logical backups always kept, however old."""
    verify_after_backup: bool = True
    """Verify every backup by a test restore once it is listed."""
    prefer_standby: bool = True
    """Back up from a healthy streaming standby when there is one, sparing the primary."""
    max_source_lag_bytes: NonNegativeInt = 64 * 1024 * 1024
    """A standby further behind than this is not chosen as the source."""

    wal_archive: bool = True
    """Archive WAL continuously from the primary (PITR and full backups need it)."""
    wal_slot: str = "lifeboat_archiver"
    """The replication slot the archiver streams through."""
    wal_spool_max_mb: PositiveInt = 2048
    """Bound of WAL waiting on this host for S3; receiving pauses beyond it."""
    wal_slot_max_keep_mb: NonNegativeInt = 8192
    """Sets the primary's max_slot_wal_keep_size when it is unlimited, so the archiver's slot
    can never fill the primary's disk; 0 leaves the setting alone."""
    wal_status_interval_seconds: PositiveFloat = 1.0
    """How often `wal.status` (the archive lag) is published."""

    lease_ttl_seconds: PositiveInt = 15
    """The per-cluster-and-kind backup lease; renewed every third of it."""
    ack_wait_seconds: PositiveFloat = 30
    """How long a request stays with a silent worker before JetStream hands it to another;
    a live worker extends it while it works."""
    orphan_grace_seconds: PositiveFloat = 6 * 3600
    """Objects of a backup that never got its manifest are removed after this long."""
    janitor_interval_seconds: PositiveFloat = 600
    """How often retention runs and orphaned objects are looked for."""

    def codec(self) -> Codec:
        secret = resolve_secret(
            "LIFEBOAT_ENCRYPTION_KEY", self.encryption_key, self.encryption_key_file
        )
        return Codec(
            compression=self.compression,
            level=self.compression_level,
            key=None if secret is None else load_key(secret.get_secret_value()),
            threads=self.compression_threads,
        )
