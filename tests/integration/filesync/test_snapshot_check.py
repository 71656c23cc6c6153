"""Snapshots stay fixed while the files change; the check finds each kind of difference."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from lifeboat.filesync.check import check, compare_references
from tests.integration.filesync.conftest import BUCKET, Rig, tree, write


def test_a_snapshot_keeps_its_content_while_files_change_then_expires(rig: Rig) -> None:
    write(rig.root, "a", b"version 1")
    write(rig.root, "b", b"kept")
    m = rig.mirror()
    now = datetime.now(UTC)
    snap, key = m.take_snapshot(now=now, keep_for=timedelta(days=1), tail="t1", request_id=None)
    before = tree(rig.root)
    write(rig.root, "a", b"version 2")
    (rig.root / "b").unlink()
    write(rig.root, "c", b"new")
    r = m.sync(now=now)
    assert r.recorded == 2
    assert r.deleted == 1
    assert r.garbage == 0  # version 1 is pinned by the snapshot

    again = rig.store().snapshot(snap.snapshot_id)
    assert again == snap
    assert again.digest() == snap.digest()
    dest = rig.base / "as-of-snapshot"
    result = rig.restore(dest, dict(again.entries))
    assert not result.problems
    assert tree(dest) == before

    # A fresh instance sees the pin too; once expired, the old version goes — the first
    # snapshot only: the newest outlives its expiry, like the newest backup of each kind.
    newer, _ = m.take_snapshot(
        now=now + timedelta(seconds=1), keep_for=timedelta(days=1), tail="t2", request_id=None
    )
    fresh = rig.mirror(state="fresh")
    fresh.load()
    assert snap.snapshot_id in fresh.pinned
    later = fresh.sync(now=now + timedelta(days=2))
    assert later.garbage == 1  # version 1: b is still a tombstone, so only a goes
    assert rig.store().snapshots() == [newer]
    client = rig.store().client
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=key)
    assert [o for page in pages for o in page.get("Contents", [])] == []


def test_check_finds_each_kind_of_difference(rig: Rig) -> None:
    for name in ("same", "changed", "deleted-locally", "object-lost"):
        write(rig.root, name, name.encode())
    m = rig.mirror()
    m.sync()
    assert m.manifest is not None
    clean = check(rig.root, m.store, m.index, rig.pool, m.manifest.entries)
    assert clean.ok
    assert clean.matching == 4

    write(rig.root, "changed", b"something else")
    (rig.root / "deleted-locally").unlink()
    write(rig.root, "only-local", b"never synced")
    lost = m.manifest.entries["object-lost"].sha256
    m.store.delete_objects([lost])
    for rehash in (False, True):
        report = check(rig.root, m.store, m.index, rig.pool, m.manifest.entries, rehash=rehash)
        assert report.missing_remote == ["only-local"]
        assert report.missing_local == ["deleted-locally"]
        assert report.differing == ["changed"]
        assert report.objects_missing == ["object-lost"]
        assert report.matching == 2
        assert len(report.differences()) == 4


def test_a_silently_corrupted_local_file_is_found_by_a_rehashing_check(rig: Rig) -> None:
    """Bit rot keeps size and mtime: only reading the file again finds it."""
    path = write(rig.root, "f", b"original")
    m = rig.mirror()
    m.sync()
    assert m.manifest is not None
    s = os.stat(path)
    with open(path, "r+b") as f:
        f.write(b"ORIGINAL")
    os.utime(path, ns=(s.st_atime_ns, s.st_mtime_ns))
    deep = check(rig.root, m.store, m.index, rig.pool, m.manifest.entries, rehash=True)
    assert deep.differing == ["f"]


def test_rows_and_files() -> None:
    refs = compare_references(["a.jpg", "/b.jpg", "missing.jpg", ""], ["a.jpg", "b.jpg", "orphan"])
    assert refs.missing == ("missing.jpg",)
    assert refs.orphans == ("orphan",)
    assert refs.referenced == 3
