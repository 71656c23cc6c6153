"""The sync decision as tables, with a fixed clock: uploads, tombstones, expiry, the guard,
a missing root, pull and restore, paths that would escape the root."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from lifeboat.common.decision import Publish
from lifeboat.common.events import FileSyncPaused, Source
from lifeboat.filesync.plan import (
    Download,
    Expire,
    MirrorObservation,
    Pause,
    Policy,
    PullObservation,
    Record,
    Refuse,
    Remove,
    SetMeta,
    Tombstone,
    Upload,
    plan_mirror,
    plan_pull,
    unsafe_path,
)
from lifeboat.objstore.filesets import Entry, Manifest
from lifeboat.objstore.filesets import Tombstone as Stone

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SRC = Source(service="filesync", instance="t")


def e(sha: str, size: int = 1, mtime: int = 1, mode: int = 0o644) -> Entry:
    return Entry(sha256=sha * 64, size=size, mtime_ns=mtime, mode=mode)


def manifest(entries: dict[str, Entry], tombstones: dict[str, Stone] | None = None) -> Manifest:
    return Manifest(cluster="main", fileset="up", entries=entries, tombstones=tombstones or {})


def mirror(local: dict[str, Entry], remote: Manifest, **kw: object) -> MirrorObservation:
    stored = frozenset(remote.referenced())
    base = MirrorObservation(
        now=NOW,
        cluster="main",
        fileset="up",
        source=SRC,
        root_present=True,
        local=local,
        unreadable=frozenset(),
        manifest=remote,
        stored=stored,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


A, B, C, D = e("a"), e("b"), e("c"), e("d")


@pytest.mark.parametrize(
    ("local", "remote", "expected"),
    [
        ({}, {}, ()),
        ({"a": A}, {}, (Upload("a", A), Record("a", A))),
        ({"a": A, "b": B}, {"a": A, "b": B}, ()),
        # changed content: upload and record
        ({"a": B}, {"a": A}, (Upload("a", B), Record("a", B))),
        # only mtime/mode changed: the bytes are in S3 already
        ({"a": e("a", mtime=9)}, {"a": A}, (Record("a", e("a", mtime=9)),)),
        # a rename uploads nothing
        ({"b": A, "c": C}, {"a": A, "c": C}, (Record("b", A), Tombstone("a", A))),
        # two paths, one content: one upload
        ({"x": D, "y": D}, {}, (Upload("x", D), Record("x", D), Record("y", D))),
        # zero-byte files are files
        ({"z": e("e", size=0)}, {}, (Upload("z", e("e", size=0)), Record("z", e("e", size=0)))),
    ],
)
def test_mirror(
    local: dict[str, Entry], remote: dict[str, Entry], expected: tuple[object, ...]
) -> None:
    decision = plan_mirror(mirror(local, manifest(remote)))
    assert decision.commands == expected
    assert plan_mirror(mirror(local, manifest(remote))) == decision


def test_a_deletion_is_a_tombstone_then_expires_after_the_window() -> None:
    policy = Policy(tombstone_retention=timedelta(days=7))
    remote = manifest(
        {"a": A, "b": B, "c": C},
        {
            "old": Stone(entry=D, deleted_at=NOW - timedelta(days=8)),
            "new": Stone(entry=D, deleted_at=NOW - timedelta(days=1)),
        },
    )
    decision = plan_mirror(mirror({"a": A, "b": B}, remote, policy=policy))
    assert decision.commands == (Tombstone("c", C), Expire("old"))


def test_unreadable_files_are_left_as_s3_has_them() -> None:
    obs = mirror({"a": A}, manifest({"a": A, "b": B}), unreadable=frozenset({"b"}))
    assert plan_mirror(obs).commands == ()


@pytest.mark.parametrize(
    ("kept", "total", "share", "paused"),
    [(5, 10, 0.5, False), (4, 10, 0.5, True), (0, 10, 0.5, True), (1, 10, 0.95, False)],
)
def test_mass_deletion_guard(kept: int, total: int, share: float, paused: bool) -> None:
    remote = {f"f{i}": e(f"{i % 10}") for i in range(total)}
    local = {p: remote[p] for p in list(remote)[:kept]}
    obs = mirror(local, manifest(remote), policy=Policy(max_delete_share=share))
    decision = plan_mirror(obs)
    assert isinstance(decision.commands[0], Pause) is paused
    if paused:
        event = decision.commands[1]
        assert isinstance(event, Publish)
        assert isinstance(event.event, FileSyncPaused)
        assert event.event.files_missing == total - kept
        assert event.event.occurred_at == NOW
        assert not any(isinstance(c, Tombstone) for c in decision.commands)
        # confirmed by an operator: the deletions go ahead, as tombstones
        confirmed = plan_mirror(replace(obs, allow_mass_delete=True))
        assert sum(isinstance(c, Tombstone) for c in confirmed.commands) == total - kept
    else:
        assert all(isinstance(c, Tombstone) for c in decision.commands)


def test_a_missing_root_pauses_and_deletes_nothing() -> None:
    decision = plan_mirror(mirror({}, manifest({"a": A}), root_present=False))
    assert isinstance(decision.commands[0], Pause)
    assert "root is missing" in decision.reason
    assert len(decision.commands) == 2


def test_a_file_back_from_the_dead_is_recorded_without_upload() -> None:
    remote = manifest({"b": B}, {"a": Stone(entry=A, deleted_at=NOW)})
    assert plan_mirror(mirror({"a": A, "b": B}, remote)).commands == (Record("a", A),)


def pull(local: dict[str, Entry], wanted: dict[str, Entry], **kw: object) -> PullObservation:
    base = PullObservation(
        now=NOW,
        cluster="main",
        fileset="up",
        source=SRC,
        local=local,
        unreadable=frozenset(),
        wanted=wanted,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("local", "wanted", "remove_extra", "expected"),
    [
        ({}, {"a": A, "b": B}, True, (Download("a", A), Download("b", B))),
        ({"a": A}, {"a": A}, True, ()),
        ({"a": A}, {"a": B}, True, (Download("a", B),)),
        ({"a": A}, {"a": e("a", mode=0o600)}, True, (SetMeta("a", e("a", mode=0o600)),)),
        ({"a": A, "b": B, "x": C}, {"a": A, "b": B}, True, (Remove("x"),)),
        ({"a": A, "x": C}, {"a": A}, False, ()),
        (
            {},
            {"../etc/passwd": A, "/abs": B, "ok/f": C, "a//b": D},
            True,
            (
                Refuse("../etc/passwd", unsafe_path("../etc/passwd") or ""),
                Refuse("/abs", "absolute path"),
                Refuse("a//b", unsafe_path("a//b") or ""),
                Download("ok/f", C),
            ),
        ),
    ],
)
def test_pull_and_restore(
    local: dict[str, Entry],
    wanted: dict[str, Entry],
    remove_extra: bool,
    expected: tuple[object, ...],
) -> None:
    assert plan_pull(pull(local, wanted, remove_extra=remove_extra)).commands == expected


def test_an_emptied_manifest_does_not_empty_a_pull_copy() -> None:
    decision = plan_pull(pull({"a": A, "b": B}, {}))
    assert isinstance(decision.commands[0], Pause)


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("a.txt", True),
        ("dir/sub/ünïcødé name\nwith newline", True),
        ("..", False),
        ("a/../../b", False),
        ("./a", False),
        ("/etc", False),
        ("", False),
        ("a\x00b", False),
        ("..hidden", True),
    ],
)
def test_unsafe_paths(path: str, ok: bool) -> None:
    assert (unsafe_path(path) is None) is ok
