"""A set's files snapshots as backups of the kind `files`: listed in the catalogue beside the
database kinds, verified by reading every object back, deleted on request.

The catalogue entries and the delete decision are pure (snapshots and verifications in);
`read_back` is the verification's I/O. A `full` backup's snapshot is half of that backup: it
is listed, verified and deleted as part of it (by the backup service), never on its own here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lifeboat.filesync.store import SetStore
from lifeboat.objstore.filesets import Snapshot, SnapshotVerification

SHOWN = 5  # problems named in a verification's detail


def expired(snapshots: Mapping[str, Snapshot], now: datetime) -> list[Snapshot]:
    """The snapshots past their expiry, but never the set's newest `files` one: like the
    backup service's retention, which always keeps the newest backup of each kind, so a set
    whose snapshots stopped (a schedule off, a mirror down for weeks) still has one."""
    files = [s for s in snapshots.values() if s.kind == "files"]
    newest = max(files, key=lambda s: (s.taken_at, s.snapshot_id), default=None)
    return [s for s in snapshots.values() if not s.live(now) and s is not newest]


def listed(snapshots: Mapping[str, Snapshot], now: datetime) -> list[Snapshot]:
    """The `files` snapshots not expired, newest first: what the catalogue lists for the set."""
    gone = {s.snapshot_id for s in expired(snapshots, now)}
    kept = [s for s in snapshots.values() if s.kind == "files" and s.snapshot_id not in gone]
    return sorted(kept, key=lambda s: (s.taken_at, s.snapshot_id), reverse=True)


def catalogue_entry(
    snap: Snapshot, verification: SnapshotVerification | None, node: str, key: str
) -> dict[str, Any]:
    """One snapshot in the shape the backup service lists its backups (the gateway reads both
    alike): kind `files`, the status its latest verification gives."""
    objects = {e.sha256: e.size for e in snap.entries.values()}
    return {
        "backup_id": snap.snapshot_id,
        "cluster": snap.cluster,
        "kind": "files",
        "fileset": snap.fileset,
        "request_id": snap.request_id,
        "source": {"node": node, "role": "mirror"},
        "started_at": snap.taken_at.isoformat(),
        "stopped_at": snap.taken_at.isoformat(),
        "expires_at": snap.expires_at.isoformat() if snap.expires_at else None,
        "duration_seconds": 0.0,
        "raw_bytes": snap.size_bytes,
        "stored_bytes": sum(objects.values()),  # content-addressed: each content once
        "files": len(snap.entries),
        "objects": len(objects),
        "components": [f"files:{snap.fileset}"],
        "manifest_key": key,
        "sha256": snap.digest(),
        "listed_status": "unverified"
        if verification is None
        else ("verified" if verification.ok else "failed_verification"),
        "verification": None
        if verification is None
        else {
            "ok": verification.ok,
            "detail": verification.detail,
            "verified_at": verification.verified_at.isoformat(),
            "restore_seconds": verification.restore_seconds,
        },
    }


@dataclass(frozen=True)
class Refused:
    reason: str


def plan_delete(
    snapshots: Mapping[str, Snapshot],
    verifications: Mapping[str, SnapshotVerification],
    snapshot_id: str,
    *,
    force: bool,
    now: datetime,
) -> Snapshot | Refused:
    """The snapshot to delete, or why not — the backup service's rule for its kinds: never the
    last good backup of the set without `force`."""
    snap = snapshots.get(snapshot_id)
    if snap is None or snap in expired(snapshots, now):
        return Refused(f"no files snapshot {snapshot_id!r} is listed")
    if snap.kind != "files":
        return Refused(f"{snapshot_id} is part of a full backup: it goes with that backup")

    def good(s: Snapshot) -> bool:
        v = verifications.get(s.snapshot_id)
        return v is None or v.ok

    others = [s for s in listed(snapshots, now) if s.snapshot_id != snapshot_id and good(s)]
    if good(snap) and not others and not force:
        return Refused(
            f"{snapshot_id} is the last good snapshot of {snap.fileset}: delete it with force"
        )
    return snap


def read_back(
    store: SetStore, snap: Snapshot, pool: ThreadPoolExecutor, now: datetime
) -> SnapshotVerification:
    """Every distinct object the snapshot names, downloaded and hashed (what a restore would
    read), in the pool; a missing or changed object fails the verification and is named."""
    started = time.monotonic()
    objects = {e.sha256: e.size for e in snap.entries.values()}
    problems = [p for p in pool.map(lambda item: store.read_back(*item), objects.items()) if p]
    seconds = time.monotonic() - started
    total = sum(objects.values())
    if problems:
        shown = "; ".join(problems[:SHOWN])
        detail = f"{len(problems)} of {len(objects)} objects unreadable or changed: {shown}"
    else:
        detail = (
            f"{len(snap.entries)} files, {len(objects)} objects, {total} bytes read back: "
            "every object present and matching its hash"
        )
    return SnapshotVerification(
        snapshot_id=snap.snapshot_id,
        ok=not problems,
        detail=detail,
        verified_at=now,
        restore_seconds=seconds,
        files=len(snap.entries),
        bytes=total,
    )
