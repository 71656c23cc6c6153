"""`/clusters/{cluster}/history`: a page of the cluster's events, from the projection."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from lifeboat.gateway.auth import Reader
from lifeboat.gateway.deps import ClusterDep, GatewayDep
from lifeboat.gateway.history import HISTORY_TYPES
from lifeboat.gateway.problems import responses
from lifeboat.gateway.schemas import HistoryEntry, HistoryPage

router = APIRouter(prefix="/clusters", tags=["clusters"])


@router.get("/{cluster}/history", responses=responses(401, 403, 404))
async def history(
    spec: ClusterDep,
    gw: GatewayDep,
    _: Reader,
    limit: int = Query(100, ge=1, le=1000),
    before: int | None = Query(None, ge=1, description="only events before this sequence"),
    after: int | None = Query(None, ge=0, description="only events after this sequence"),
    kind: Annotated[
        list[str] | None,
        Query(description="event types (e.g. failover.completed); the decisions by default"),
    ] = None,
    since: Annotated[
        datetime | None, Query(description="only events at or after this time")
    ] = None,
    until: Annotated[datetime | None, Query(description="only events before this time")] = None,
    all_kinds: bool = Query(False, description="every event type of the cluster"),
) -> HistoryPage:
    """Failovers, switchovers, refusals, holds, fencings, rejoins, maintenance (or the
    `kind`s asked for), oldest first; page back with `before=next_before`."""
    types = None if all_kinds else frozenset(kind) if kind else HISTORY_TYPES
    page = gw.projection.history(
        spec.name,
        types=types,
        since=since,
        until=until,
        before=before,
        after=after,
        limit=limit,
    )
    return HistoryPage(
        events=[
            HistoryEntry(seq=s.seq, subject=s.subject, event=s.event.model_dump(mode="json"))
            for s in page
        ],
        next_before=page[0].seq if len(page) == limit and after is None else None,
        last_seq=gw.projection.last_seq("events"),
    )
