"""`GET /events?subject=…&since=…`: live events as Server-Sent Events.

Each SSE event is one Lifeboat event: `event:` its type, `data:` its JSON, `id:` its stream
sequence. A subject of a heartbeat topic (`node.health.>`, `wal.status.>`, ...) reads
LIFEBOAT_HEARTBEATS, any other LIFEBOAT_EVENTS. `since` (a sequence, or an ISO time) or the
`Last-Event-ID` header a reconnecting browser sends resumes after that point, from what the
projection holds (the whole history; the last `LIFEBOAT_HEARTBEAT_BUFFER` heartbeats). A
reader too slow to keep up is disconnected, and resumes with its Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime

from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from lifeboat.gateway.auth import Reader
from lifeboat.gateway.deps import GatewayDep
from lifeboat.gateway.problems import Problem, responses
from lifeboat.gateway.projection import Stored, stream_of, subject_matches

router = APIRouter(tags=["events"])
QUEUE = 10000


def _start(since: str | None, last_event_id: str | None) -> tuple[int | None, datetime | None]:
    """(after this sequence, at or after this time) from `Last-Event-ID` or `since`."""
    for value in (last_event_id, since):
        if value is None or not value.strip():
            continue
        text = value.strip()
        if text.isdigit():
            return int(text), None
        try:
            return None, datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise Problem(
                422,
                "Unprocessable Content",
                f"since: {text!r} is neither a sequence nor an ISO time",
                errors=[{"field": "query.since", "reason": "a sequence or an ISO time"}],
            ) from None
    return None, None


def _sse(stored: Stored) -> ServerSentEvent:
    return ServerSentEvent(
        data=stored.event.model_dump_json(), event=stored.event.type, id=str(stored.seq)
    )


@router.get(
    "/events",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "a stream of events"},
        **responses(401, 403, 422),
    },
)
async def events(
    request: Request,
    gw: GatewayDep,
    _: Reader,
    subject: str = Query(">", description="NATS subject pattern, e.g. node.health.main.>"),
    since: str | None = Query(None, description="a stream sequence or an ISO time"),
    last_event_id: str | None = Header(None, alias="Last-Event-ID"),
) -> EventSourceResponse:
    """Live events matching `subject`, from `since` (or `Last-Event-ID`) or from now."""
    stream = stream_of(subject)
    after, at = _start(since, last_event_id)
    projection = gw.projection
    queue: asyncio.Queue[Stored | None] = asyncio.Queue(QUEUE)

    def on_event(stored: Stored) -> None:
        if stored.stream != stream or not subject_matches(subject, stored.subject):
            return
        try:
            queue.put_nowait(stored)
        except asyncio.QueueFull:
            unsubscribe()
            queue.get_nowait()
            queue.put_nowait(None)  # too slow: end the stream, the reader resumes

    unsubscribe = projection.listen(on_event)
    start = projection.last_seq(stream) if after is None and at is None else (after or 0)

    async def generate() -> AsyncIterator[ServerSentEvent]:
        last = start
        try:
            for stored in list(projection.buffered(stream, start)):
                if subject_matches(subject, stored.subject) and (
                    at is None or stored.event.occurred_at >= at
                ):
                    last = stored.seq
                    yield _sse(stored)
            while True:
                item = await queue.get()
                if item is None:
                    return
                if item.seq > last:
                    last = item.seq
                    yield _sse(item)
        finally:
            with contextlib.suppress(ValueError):
                unsubscribe()

    return EventSourceResponse(generate(), ping=15, headers={"X-Accel-Buffering": "no"})
