"""Files snapshots as backups, on plain data: what the catalogue lists, what may be deleted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from lifeboat.filesync.snapshots import Refused, catalogue_entry, expired, listed, plan_delete
from lifeboat.objstore.filesets import Entry, Snapshot, SnapshotVerification

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
A = Entry(sha256="a" * 64, size=10, mtime_ns=1, mode=0o644)
B = Entry(sha256="b" * 64, size=5, mtime_ns=1, mode=0o644)


def snap(sid: str, hours_ago: float, kind: str = "files", keep: float | None = 24) -> Snapshot:
    taken = NOW - timedelta(hours=hours_ago)
    return Snapshot.model_validate(
        {
            "snapshot_id": sid,
            "cluster": "main",
            "fileset": "uploads",
            "taken_at": taken,
            "expires_at": taken + timedelta(hours=keep) if keep is not None else None,
            "generation": 1,
            "entries": {"x.jpg": A, "copy.jpg": A, "y.jpg": B},
            "kind": kind,
        }
    )


def checked(sid: str, ok: bool) -> SnapshotVerification:
    return SnapshotVerification(
        snapshot_id=sid, ok=ok, detail="", verified_at=NOW, restore_seconds=1, files=3, bytes=15
    )


SNAPS = {
    "old": snap("old", 30),  # expired
    "s1": snap("s1", 5),
    "s2": snap("s2", 1),
    "full": snap("full", 2, kind="full"),
}


def test_the_catalogue_lists_live_files_snapshots_newest_first() -> None:
    assert [s.snapshot_id for s in listed(SNAPS, NOW)] == ["s2", "s1"]
    entry = catalogue_entry(SNAPS["s1"], checked("s1", False), "node1", "k")
    assert (entry["kind"], entry["listed_status"], entry["files"]) == (
        "files",
        "failed_verification",
        3,
    )
    assert (entry["raw_bytes"], entry["stored_bytes"], entry["objects"]) == (25, 15, 2)
    assert entry["source"] == {"node": "node1", "role": "mirror"}
    assert catalogue_entry(SNAPS["s1"], None, "node1", "k")["listed_status"] == "unverified"


def test_delete_keeps_the_last_good_snapshot_unless_forced() -> None:
    assert plan_delete(SNAPS, {}, "s1", force=False, now=NOW) == SNAPS["s1"]
    only = {"s1": SNAPS["s1"], "s2": SNAPS["s2"]}
    failed = {"s2": checked("s2", False)}
    refused = plan_delete(only, failed, "s1", force=False, now=NOW)
    assert isinstance(refused, Refused)
    assert "last good snapshot" in refused.reason
    assert plan_delete(only, failed, "s1", force=True, now=NOW) == SNAPS["s1"]
    # a failed one is never the last good one
    assert plan_delete(only, failed, "s2", force=False, now=NOW) == SNAPS["s2"]


def test_delete_refuses_unknown_expired_and_full_backups_halves() -> None:
    for sid, why in (("nope", "no files snapshot"), ("old", "no files snapshot"),
                     ("full", "part of a full backup")):  # fmt: skip
        refused = plan_delete(SNAPS, {}, sid, force=True, now=NOW)
        assert isinstance(refused, Refused)
        assert why in refused.reason


def test_the_newest_files_snapshot_outlives_its_expiry_like_the_newest_backup_of_a_kind() -> None:
    stale = {"a": snap("a", 50), "b": snap("b", 30), "full": snap("full", 40, kind="full")}
    assert sorted(s.snapshot_id for s in expired(stale, NOW)) == ["a", "full"]
    assert [s.snapshot_id for s in listed(stale, NOW)] == ["b"]
    assert isinstance(plan_delete(stale, {}, "b", force=True, now=NOW), Snapshot)
