"""PostgreSQL WAL positions ('16/B374D848') as integers, to compare and subtract."""

from __future__ import annotations


def lsn_to_int(lsn: str) -> int:
    high, _, low = lsn.partition("/")
    if not low:
        raise ValueError(f"not an LSN: {lsn!r}")
    return (int(high, 16) << 32) | int(low, 16)


def int_to_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
