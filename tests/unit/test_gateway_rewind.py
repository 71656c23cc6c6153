"""`agreed_until` on plain data: where a stream that went back under the projection agrees
with what it holds."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from uuid import UUID, uuid4

import pytest

from lifeboat.gateway.rewind import agreed_until


@dataclass(frozen=True)
class Held:
    seq: int
    event_id: UUID


def held(first: int, count: int) -> list[Held]:
    return [Held(seq, uuid4()) for seq in range(first, first + count)]


OURS = held(1, 10)


def store(same_until: int, last: int, first: int = 1) -> dict[int, str]:
    """A stream holding `first..last`: ours up to `same_until`, other events after."""
    return {
        seq: str(OURS[seq - 1].event_id) if seq <= same_until else str(uuid4())
        for seq in range(first, last + 1)
    }


@pytest.mark.parametrize(
    ("why", "stream", "first", "last", "agreed"),
    [
        ("the same stream", store(10, 10), 1, 10, None),
        ("a stream that went on", store(10, 14), 1, 14, None),
        ("the older part aged out", store(10, 10, first=6), 6, 10, None),
        ("rolled back to 4, nothing new", store(4, 4), 1, 4, 4),
        ("rolled back to 4, two new", store(4, 6), 1, 6, 4),
        ("rolled back to 4, grown past our end", store(4, 13), 1, 13, 4),
        ("rolled back to 4, the start aged out", store(4, 8, first=3), 3, 8, 4),
        ("a new stream", store(0, 3), 1, 3, 0),
        ("a new, empty stream", {}, 0, 0, 0),
    ],
)
def test_where_the_stream_agrees(
    why: str, stream: dict[int, str], first: int, last: int, agreed: int | None
) -> None:
    async def stored_id(seq: int) -> str:
        return stream.get(seq, "")

    assert asyncio.run(agreed_until(OURS, stored_id, first, last)) == agreed, why


def test_nothing_held_nothing_to_compare() -> None:
    async def stored_id(seq: int) -> str:
        raise AssertionError("not asked")

    assert asyncio.run(agreed_until([], stored_id, 1, 5)) is None
