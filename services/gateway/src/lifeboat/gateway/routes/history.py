"""`/clusters/{cluster}/history`: decisions about a cluster, from the event stream."""

from __future__ import annotations

from fastapi import APIRouter, Query

from lifeboat.common.events import Envelope
from lifeboat.gateway.deps import ClusterDep, GatewayDep
from lifeboat.gateway.history import read_history
from lifeboat.gateway.schemas import ErrorDetail, HistoryEvent

router = APIRouter(prefix="/clusters", tags=["clusters"])


@router.get(
    "/{cluster}/history",
    response_model=list[HistoryEvent],
    responses={404: {"model": ErrorDetail, "description": "no such cluster"}},
)
async def history(
    spec: ClusterDep, gw: GatewayDep, limit: int = Query(100, ge=1, le=1000)
) -> list[Envelope]:
    """Failovers, switchovers, refusals, holds, fencings and rejoins, oldest first."""
    return await read_history(gw.js, spec.name, limit)
