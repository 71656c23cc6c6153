"""The manifest: what one backup is, written last as its commit point, and the S3 layout.

The manifests in S3 are the catalogue: a backup is listed when, and only when, its
`manifest.json` exists. Everything else under a backup's prefix without a manifest is the
remains of a run that died, removed by the janitor after a grace period. The manifest never
holds a secret: encryption is named by the key's fingerprint only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, NonNegativeFloat, NonNegativeInt

from lifeboat.common.events import BackupKind, Role

FORMAT_VERSION = 1
WAL_SEGMENT_SIZE = 16 * 1024 * 1024


class StoredObject(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str  # base.tar, app.dump, globals.sql
    key: str
    raw_bytes: NonNegativeInt
    stored_bytes: NonNegativeInt
    sha256: str  # of the stored bytes
    database: str | None = None


class Source(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    node: str
    role: Role
    reason: str


class Encryption(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    algorithm: Literal["aes-256-gcm"] = "aes-256-gcm"
    key_id: str  # a fingerprint of the key, never the key


class FileSnapshotRef(BaseModel):
    """One file set's snapshot in a `full` backup (filesync wrote it; it keeps the objects)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fileset: str
    snapshot_id: str
    manifest_key: str
    taken_at: AwareDatetime
    files: NonNegativeInt
    bytes: NonNegativeInt


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = FORMAT_VERSION
    backup_id: str
    cluster: str
    kind: BackupKind
    request_id: UUID | None = None
    status: Literal["complete"] = "complete"
    source: Source
    pg_version: str
    pg_version_num: NonNegativeInt
    system_identifier: str | None = None
    timeline: NonNegativeInt | None = None
    start_lsn: str | None = None
    stop_lsn: str | None = None
    wal_segment_size: NonNegativeInt = WAL_SEGMENT_SIZE
    started_at: AwareDatetime
    stopped_at: AwareDatetime
    duration_seconds: NonNegativeFloat
    raw_bytes: NonNegativeInt
    stored_bytes: NonNegativeInt
    compression: str
    compression_level: int
    encryption: Encryption | None = None
    objects: tuple[StoredObject, ...]
    databases: tuple[str, ...] = ()
    # Rows per table ("db/schema.table") when the backup was taken, for test restores; exact
    # when `counts_exact` (one snapshot with the dump, or no write during a base backup).
    table_counts: dict[str, NonNegativeInt] = {}
    counts_exact: bool = False
    tools: dict[str, str] = {}
    # A `full` backup is a physical one plus a snapshot of each of the cluster's file sets.
    # Once the base backup ended, a restore point is written on the primary (`files_lsn`,
    # archived before the backup is listed), then the sets are snapshotted (`files_at`, the
    # earliest): the database restored to the restore point names no file the snapshots lack.
    file_snapshots: tuple[FileSnapshotRef, ...] = ()
    files_lsn: str | None = None
    files_at: AwareDatetime | None = None


class Verification(BaseModel):
    """The outcome of the latest test restore of a backup, kept beside its manifest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backup_id: str
    ok: bool
    detail: str
    verified_at: AwareDatetime
    restore_seconds: NonNegativeFloat
    check_seconds: NonNegativeFloat = 0
    tables_checked: NonNegativeInt = 0


def backup_id(kind: BackupKind, started: datetime, request_id: UUID | None) -> str:
    """Sortable by time, unique per request, and safe as a subject token or file name."""
    tail = request_id.hex[:8] if request_id is not None else "manual"
    return f"{started:%Y%m%dT%H%M%SZ}-{kind.value}-{tail}"


def backups_prefix(cluster: str) -> str:
    return f"{cluster}/backups/"


def backup_prefix(cluster: str, backup: str) -> str:
    return f"{cluster}/backups/{backup}/"


def manifest_key(cluster: str, backup: str) -> str:
    return backup_prefix(cluster, backup) + "manifest.json"


def verification_key(cluster: str, backup: str) -> str:
    return backup_prefix(cluster, backup) + "verification.json"


def wal_prefix(cluster: str) -> str:
    return f"{cluster}/wal/"
