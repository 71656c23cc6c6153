"""Mirror passes against the real S3: initial and incremental sync, tombstones through their
window, the guard, a vanished root, hostile names, torn writes, a crashed multipart upload."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from lifeboat.filesync.index import Index
from lifeboat.filesync.plan import Policy
from lifeboat.filesync.scan import hash_file, hash_scan, scan
from lifeboat.filesync.store import Sizes
from lifeboat.objstore.filesets import Entry, object_key
from tests.integration.filesync.conftest import BUCKET, Rig, tree, write

MiB = 1024 * 1024


def test_initial_then_incremental_sync_and_restore_equals_the_source(rig: Rig) -> None:
    for i in range(20):
        write(rig.root, f"d{i % 3}/f{i}.bin", os.urandom(100 + i * 997), mode=0o600 + i % 2)
    write(rig.root, "empty", b"")
    write(rig.root, "old", b"old", mtime=1_000_000_000_000_000_000)
    m = rig.mirror()
    first = m.sync()
    assert (first.uploaded, first.recorded, first.files) == (22, 22, 22)  # two share content
    second = m.sync()
    assert (second.uploaded, second.recorded, second.unchanged) == (0, 0, 22)
    assert not second.changed

    write(rig.root, "d0/f0.bin", b"changed")
    (rig.root / "d1/f1.bin").rename(rig.root / "renamed.bin")
    third = m.sync()
    assert third.uploaded == 1  # the rename uploads nothing
    assert (third.recorded, third.deleted) == (2, 1)

    # A fresh instance (another process, after a restart) reads the same state from S3.
    again = rig.mirror(state="other")
    assert again.sync().uploaded == 0
    assert m.manifest is not None
    dest = rig.base / "restored"
    result = rig.restore(dest, dict(m.manifest.entries))
    assert result.fetched == 22
    assert not result.problems
    assert tree(dest) == tree(rig.root)


def test_a_deletion_is_recoverable_within_the_window_and_gone_after(rig: Rig) -> None:
    for i in range(4):
        write(rig.root, f"f{i}", f"content {i}".encode())
    m = rig.mirror(Policy(tombstone_retention=timedelta(days=7)))
    m.sync()
    (rig.root / "f3").unlink()
    now = datetime.now(UTC)
    assert m.sync(now=now).deleted == 1
    assert m.manifest is not None
    stone = m.manifest.tombstones["f3"]
    client, key = rig.store().client, object_key(rig.prefix, stone.entry.sha256)
    # recoverable: restore the tombstone's entry
    dest = rig.base / "undelete"
    rig.restore(dest, {"f3": stone.entry})
    assert (dest / "f3").read_bytes() == b"content 3"
    later = m.sync(now=now + timedelta(days=8))
    assert later.expired == 1
    assert later.garbage == 1
    assert "f3" not in m.manifest.tombstones
    with pytest.raises(ClientError):
        client.head_object(Bucket=BUCKET, Key=key)


def test_mass_deletion_pauses_and_a_missing_root_deletes_nothing(rig: Rig) -> None:
    for i in range(10):
        write(rig.root, f"f{i}", f"{i}".encode())
    m = rig.mirror()
    m.sync()
    for i in range(6):
        (rig.root / f"f{i}").unlink()
    paused = m.sync()
    assert paused.paused is not None
    assert "60%" in paused.paused
    assert paused.events
    assert paused.events[0].type == "file.sync_paused"
    assert m.manifest is not None
    assert len(m.manifest.entries) == 10
    confirmed = m.sync(allow_mass_delete=True)
    assert confirmed.deleted == 6

    rig.root.rename(rig.base / "moved")
    gone = m.sync()
    assert gone.paused is not None
    assert "root is missing" in gone.paused
    assert len(m.manifest.entries) == 4


def test_hostile_names_symlinks_and_unreadable_files(rig: Rig) -> None:
    names = [
        "ünïcødé/日本語.txt",
        "with space/and  two",
        "new\nline",
        "tab\there",
        "-leading-dash",
        "/".join(["d" * 100] * 20) + "/deep",  # a 2 KB path
    ]
    for n in names:
        write(rig.root, n, n.encode())
    outside = rig.base / "secret"
    outside.write_text("outside the root")
    os.symlink(outside, rig.root / "link-out")
    os.symlink("../secret", rig.root / "rel-link")
    os.symlink(rig.base, rig.root / "dir-link")
    locked = write(rig.root, "locked", b"no", mode=0o000)
    m = rig.mirror()
    r = m.sync()
    assert m.manifest is not None
    if os.geteuid() == 0:  # root reads anything: make it unreadable another way
        assert "locked" in m.manifest.entries
    else:
        assert "locked" in r.problems
    assert set(names) <= set(m.manifest.entries)
    assert r.skipped == 3  # the symlinks, never followed
    assert not any("secret" in p or p.startswith("dir-link") for p in m.manifest.entries)
    locked.chmod(0o644)

    dest = rig.base / "restored"
    rig.restore(dest, dict(m.manifest.entries))
    for n in names:
        assert (dest / n).read_bytes() == n.encode()


def test_a_file_that_cannot_be_read_is_reported_and_the_pass_goes_on(
    rig: Rig, pool: ThreadPoolExecutor
) -> None:
    """As root nothing is unreadable by mode, so the file vanishes between the scan and its
    read instead: the same path through the code (open fails), whoever runs the suite."""
    write(rig.root, "ok", b"fine")
    write(rig.root, "going", b"x")
    found = scan(rig.root)
    (rig.root / "going").unlink()
    hashed = hash_scan(rig.root, found, {}, pool)
    assert set(hashed.entries) == {"ok"}
    assert "going" in hashed.unreadable
    m = rig.mirror()
    m.sync()
    (rig.root / "ok").chmod(0o000)
    r = m.sync()
    if os.geteuid() != 0:
        assert "ok" in r.problems
    assert r.deleted == 0
    assert m.manifest is not None
    assert "ok" in m.manifest.entries


def test_a_file_rewritten_during_its_upload_is_never_stored_torn(rig: Rig) -> None:
    rig.sizes = Sizes(multipart_threshold=6 * MiB, part_size=5 * MiB)
    path = write(rig.root, "big", b"a" * (12 * MiB))
    m = rig.mirror()
    rewritten = threading.Event()

    def rewrite(part: int) -> None:
        if part == 1 and not rewritten.is_set():
            rewritten.set()
            path.write_bytes(b"b" * (12 * MiB))  # a writer, mid-upload

    original = m.store.upload

    def upload(p: Path, e: object, index: Index, on_part: object = None) -> object:
        return original(p, e, index, rewrite)  # type: ignore[arg-type]

    m.store.upload = upload  # type: ignore[method-assign,assignment]
    r = m.sync()
    assert rewritten.is_set()
    assert not r.problems
    assert m.manifest is not None
    dest = rig.base / "restored"
    rig.restore(dest, dict(m.manifest.entries))
    assert (dest / "big").read_bytes() == b"b" * (12 * MiB)  # the whole new version
    stored = rig.store().stored_objects()
    assert len(stored) == 1  # the torn attempt left nothing behind


class Crash(BaseException):
    """Stands for the process dying: nothing below catches it, nothing is cleaned up."""


def test_a_multipart_upload_resumes_after_a_crash(rig: Rig) -> None:
    rig.sizes = Sizes(multipart_threshold=6 * MiB, part_size=5 * MiB)
    data = os.urandom(13 * MiB)
    write(rig.root, "big", data)
    m = rig.mirror()

    def die_after_two(part: int) -> None:
        if part == 2:
            raise Crash

    assert m.manifest is None
    m.load()
    sha, s = hash_file(rig.root / "big")
    entry = Entry(sha256=sha, size=s.size, mtime_ns=s.mtime_ns, mode=s.mode)
    with pytest.raises(Crash):
        m.store.upload(rig.root / "big", entry, m.index, die_after_two)
    m.index.close()

    # A new process: same state directory, new client. Only the missing part goes up.
    resumed = rig.mirror()
    sent: list[int] = []
    assert resumed.store.upload(rig.root / "big", entry, resumed.index, sent.append) == entry
    assert sent == [3]
    assert resumed.index.upload(sha) is None
    resumed.load()
    assert resumed.sync().uploaded == 0  # already stored
    assert resumed.manifest is not None
    dest = rig.base / "restored"
    rig.restore(dest, dict(resumed.manifest.entries))
    assert (dest / "big").read_bytes() == data
