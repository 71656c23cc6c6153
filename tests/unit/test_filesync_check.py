"""The check's comparisons, the restore target rules and writing under a root, without servers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lifeboat.filesync.check import compare, compare_references, normalise
from lifeboat.filesync.pull import RestoreRefused, restore_target
from lifeboat.filesync.store import Unsafe, safe_target
from lifeboat.objstore.filesets import Entry


def e(sha: str, size: int = 1) -> Entry:
    return Entry(sha256=sha * 64, size=size, mtime_ns=1, mode=0o644)


def test_compare_finds_each_kind_of_difference() -> None:
    local = {"same": e("a"), "changed": e("b"), "only-local": e("c")}
    remote = {"same": e("a"), "changed": e("x"), "only-remote": e("d"), "lost": e("f")}
    remote_local = {**local, "lost": e("f")}
    stored = {e(s).sha256: 1 for s in "axd"}
    report = compare(remote_local, remote, stored)
    assert report.matching == 2
    assert report.missing_remote == ["only-local"]
    assert report.missing_local == ["only-remote"]
    assert report.differing == ["changed"]
    assert report.objects_missing == ["lost"]
    assert not report.ok


def test_an_unreadable_file_is_not_called_missing() -> None:
    report = compare({}, {"a": e("a")}, {e("a").sha256: 1}, {"a": "Permission denied"})
    assert report.ok


@pytest.mark.parametrize(
    ("path", "root", "expected"),
    [
        ("a.jpg", None, "a.jpg"),
        ("/a.jpg", None, "a.jpg"),
        ("/srv/up/x/a.jpg", Path("/srv/up"), "x/a.jpg"),
        ("/srv/upper/a.jpg", Path("/srv/up"), "srv/upper/a.jpg"),
    ],
)
def test_reference_paths(path: str, root: Path | None, expected: str) -> None:
    assert normalise(path, root) == expected


def test_rows_and_files() -> None:
    refs = compare_references(["a", "b", "gone", ""], ["a", "b", "orphan"])
    assert (refs.missing, refs.orphans, refs.referenced, refs.files) == (
        ("gone",),
        ("orphan",),
        3,
        3,
    )


def test_restore_targets(tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    assert restore_target(tmp_path / "elsewhere", live, confirm=False) == tmp_path / "elsewhere"
    with pytest.raises(RestoreRefused, match="confirm"):
        restore_target(None, live, confirm=False)
    with pytest.raises(RestoreRefused, match="confirm"):
        restore_target(live, live, confirm=False)
    with pytest.raises(RestoreRefused, match="overlaps"):
        restore_target(live / "inside", live, confirm=False)
    with pytest.raises(RestoreRefused, match="absolute"):
        restore_target(Path("relative"), live, confirm=False)
    assert restore_target(None, live, confirm=True) == live


def test_writes_never_go_through_a_symlink(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "link")
    with pytest.raises(Unsafe):
        safe_target(root, "link/file")
    (root / "afile").write_text("x")
    with pytest.raises(Unsafe):
        safe_target(root, "afile/below")
    (root / "adir").mkdir()
    with pytest.raises(Unsafe):
        safe_target(root, "adir")
    assert safe_target(root, "new/deep/file") == root / "new/deep/file"
    assert (root / "new/deep").is_dir()
