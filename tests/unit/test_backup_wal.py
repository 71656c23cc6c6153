"""The WAL archiver's spool repairs, on plain files."""

from __future__ import annotations

from pathlib import Path

from lifeboat.backup.wal import pad_partials


def test_a_partial_segment_left_half_padded_is_padded_out(tmp_path: Path) -> None:
    seg = 1024
    (tmp_path / "000000010000000000000003.partial").write_bytes(b"WAL" + b"\0" * 300)
    (tmp_path / "000000010000000000000002").write_bytes(b"\0" * seg)  # whole: untouched
    (tmp_path / "000000010000000000000004.partial").write_bytes(b"")  # empty: pg_receivewal's
    assert pad_partials(tmp_path, seg) == ["000000010000000000000003.partial"]
    padded = (tmp_path / "000000010000000000000003.partial").read_bytes()
    assert padded == b"WAL" + b"\0" * (seg - 3)
    assert (tmp_path / "000000010000000000000004.partial").stat().st_size == 0
