"""Has a stream gone back under the projection? (a NATS store restored or rolled back)

A JetStream store copied back, or a cluster that lost its newest writes, hands out again the
sequence numbers it had already given. An ordered consumer then resumes past them (it asks
for the sequence after the last it delivered), and the projection would ignore them anyway
as repeats: every event stored since would be missing from the history until the stream had
grown past the old end. Comparing the event id the store holds at our newest sequence with
ours shows it; the events both still agree on are a common prefix, so the last of them is
found by a binary search over what the projection holds.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol
from uuid import UUID

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError


class Held(Protocol):
    """What the projection holds of one stored message."""

    @property
    def seq(self) -> int: ...

    @property
    def event_id(self) -> UUID: ...


StoredId = Callable[[int], Awaitable[str]]


async def agreed_until(
    ours: Sequence[Held], stored_id: StoredId, first_seq: int, last_seq: int
) -> int | None:
    """None while the stream still holds our newest message; else the newest sequence on
    which it holds the message we hold (0: none of ours, the stream starts afresh there).
    `stored_id(seq)`: the event id stored at `seq` ("" for none, or not an event);
    `first_seq`, `last_seq`: the stream's oldest and newest sequence. What aged out of the
    stream's start is taken as agreed: it is older than anything it holds."""
    if not ours:
        return None

    async def same(held: Held) -> bool:
        if held.seq < first_seq:
            return True
        return held.seq <= last_seq and await stored_id(held.seq) == str(held.event_id)

    if await same(ours[-1]):
        return None
    lo, hi, agreed = 0, len(ours) - 1, 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if await same(ours[mid]):
            agreed, lo = ours[mid].seq, mid + 1
        else:
            hi = mid - 1
    return agreed


async def stream_rewound(js: JetStreamContext, stream: str, ours: Sequence[Held]) -> int | None:
    """`agreed_until` against `stream` as NATS holds it now."""
    if not ours:
        return None
    state = (await js.stream_info(stream)).state

    async def stored_id(seq: int) -> str:
        try:
            stored = await js.get_msg(stream, seq=seq)
        except NotFoundError:
            return ""
        try:
            value = json.loads(stored.data or b"").get("event_id")
        except (ValueError, AttributeError):
            return ""  # not an event of ours: not the one we hold
        return str(value) if value is not None else ""

    return await agreed_until(ours, stored_id, state.first_seq, state.last_seq)
