"""What S3 holds for a file set, and where: written by filesync, read by anyone who lists,
restores or verifies application files (the backup catalogue's `files` and `full` kinds).

```
<prefix>objects/<sha256[:2]>/<sha256>   one object per distinct content (content-addressed)
<prefix>manifest.json                   the set now: path -> hash, size, mtime, mode; tombstones
<prefix>snapshots/<id>.json             immutable: the set as of a moment, until it expires
<prefix>verifications/<id>.json         a snapshot's latest verification (every object read back)
```

Content addressing makes an upload idempotent and a rename or an undelete free, and means an
object is never overwritten: a manifest only ever names bytes that were whole when stored. The
manifest is written last, after every object it names exists, so a reader (a pull node, a
restore) never sees a path whose bytes are missing. One mirror writes a set's manifest.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
)

FORMAT_VERSION = 1


class Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str
    size: NonNegativeInt
    mtime_ns: int
    mode: int = Field(ge=0, le=0o7777)  # permission bits only, restored with the content


class Tombstone(BaseModel):
    """A deleted path, recoverable until `deleted_at` + the set's retention."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entry: Entry
    deleted_at: AwareDatetime


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = FORMAT_VERSION
    cluster: str
    fileset: str
    generation: NonNegativeInt = 0  # +1 per written manifest
    updated_at: AwareDatetime | None = None
    entries: dict[str, Entry] = {}
    tombstones: dict[str, Tombstone] = {}

    def referenced(self) -> set[str]:
        """Every hash this manifest needs kept: live files and recoverable deletions."""
        return {e.sha256 for e in self.entries.values()} | {
            t.entry.sha256 for t in self.tombstones.values()
        }


class Snapshot(BaseModel):
    """A files backup: the set's entries as of `taken_at`, never changed afterwards."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = FORMAT_VERSION
    snapshot_id: str
    cluster: str
    fileset: str
    taken_at: AwareDatetime
    expires_at: AwareDatetime | None = None  # kept forever if None
    generation: NonNegativeInt  # of the manifest it was taken from
    entries: dict[str, Entry]
    request_id: str | None = None  # the backup request it answers (a `files` or `full` one)
    # `files`: a backup of its own, listed as one. `full`: half of a full backup, listed
    # (and deleted) as part of that one; snapshots from before the field were `files` ones.
    kind: Literal["files", "full"] = "files"

    @property
    def size_bytes(self) -> int:
        return sum(e.size for e in self.entries.values())

    def digest(self) -> str:
        """sha256 of the snapshot's document as stored."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    def live(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at


def object_key(prefix: str, sha256: str) -> str:
    return f"{prefix}objects/{sha256[:2]}/{sha256}"


def objects_prefix(prefix: str) -> str:
    return f"{prefix}objects/"


def manifest_key(prefix: str) -> str:
    return f"{prefix}manifest.json"


def snapshots_prefix(prefix: str) -> str:
    return f"{prefix}snapshots/"


def snapshot_key(prefix: str, snapshot_id: str) -> str:
    return f"{snapshots_prefix(prefix)}{snapshot_id}.json"


class SnapshotVerification(BaseModel):
    """A snapshot read back: every object it names downloaded and hashed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    snapshot_id: str
    ok: bool
    detail: str
    verified_at: AwareDatetime
    restore_seconds: NonNegativeFloat  # reading every object back
    files: NonNegativeInt
    bytes: NonNegativeInt


def verification_key(prefix: str, snapshot_id: str) -> str:
    return f"{prefix}verifications/{snapshot_id}.json"


_SNAPSHOT_ID = re.compile(r"^\d{8}T\d{6}Z-files-")


def snapshot_id(fileset: str, at: datetime, tail: str) -> str:
    """Sortable by time, like the backup service's ids."""
    return f"{at:%Y%m%dT%H%M%SZ}-files-{fileset}-{tail}"


def is_snapshot_id(backup_id: str) -> bool:
    """Whether a backup id names a files snapshot (filesync's to verify and delete), not a
    backup of the database kinds (the backup service's)."""
    return _SNAPSHOT_ID.match(backup_id) is not None
