from __future__ import annotations

from pathlib import Path

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from pydantic_settings import SettingsConfigDict

from lifeboat.common.settings import S3Settings, ServiceSettings
from lifeboat.common.subjects import Name

MiB = 1024 * 1024


class FilesyncSettings(ServiceSettings, S3Settings):
    model_config = SettingsConfigDict(env_prefix="LIFEBOAT_", extra="ignore", frozen=True)

    http_port: int = Field(default=8104, ge=0, le=65535)
    """Port of the health endpoint."""
    filesync_node: Name | None = None
    """The node this instance runs beside: it serves the file sets the cluster file places on
    that node (as mirror or pull) and nothing else; none without it."""
    filesync_state_dir: Path = Path(".lifeboat/filesync")
    """The local index of each set (sqlite: path, size, mtime, hash; multipart uploads)."""
    filesync_scan_interval_seconds: PositiveFloat = 300
    """Full reconciliation scan of a mirrored set (the watcher may miss events)."""
    filesync_pull_interval_seconds: PositiveFloat = 10
    """How often a pull copy reads the manifest (it also follows `file.synced` at once)."""
    filesync_debounce_ms: PositiveInt = 50
    """Changes seen by the watcher within this long are synced in one pass."""
    filesync_concurrency: PositiveInt = 16
    """Files hashed, uploaded or downloaded at once."""
    filesync_multipart_threshold_mb: PositiveInt = 64
    """Files at least this large go up as multipart uploads that resume after a crash."""
    filesync_part_size_mb: int = Field(default=16, ge=5)
    filesync_snapshot_keep_days: NonNegativeFloat = 30
    """A files snapshot (a `files` backup) and the objects it names are kept this long; 0
    keeps it forever."""
    filesync_check_interval_seconds: NonNegativeFloat = 24 * 3600
    """Scheduled check of each set against S3 and its reference query; 0 for none."""
