"""PostgreSQL's WAL file names: `TTTTTTTTXXXXXXXXYYYYYYYY` segments and `TTTTTTTT.history`."""

from __future__ import annotations

import re

from lifeboat.common.lsn import lsn_to_int

SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
HISTORY_RE = re.compile(r"^([0-9A-F]{8})\.history$")


def segments_per_xlogid(seg_size: int) -> int:
    return 0x100000000 // seg_size


def segment_name(timeline: int, segno: int, seg_size: int) -> str:
    per = segments_per_xlogid(seg_size)
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def parse_segment(name: str, seg_size: int) -> tuple[int, int] | None:
    """(timeline, segment number) of a segment file name, None for anything else."""
    m = SEGMENT_RE.match(name)
    if m is None:
        return None
    return int(m[1], 16), int(m[2], 16) * segments_per_xlogid(seg_size) + int(m[3], 16)


def history_timeline(name: str) -> int | None:
    m = HISTORY_RE.match(name)
    return None if m is None else int(m[1], 16)


def lsn_segno(lsn: str, seg_size: int) -> int:
    return lsn_to_int(lsn) // seg_size
