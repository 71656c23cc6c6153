"""`/clusters/{cluster}/exposure` (what would be lost right now) and `/sla?days=30`."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Query

from lifeboat.gateway import views
from lifeboat.gateway.auth import Reader
from lifeboat.gateway.deps import ClusterDep, GatewayDep
from lifeboat.gateway.problems import responses
from lifeboat.gateway.schemas import Exposure, Sla

router = APIRouter(prefix="/clusters", tags=["clusters"])


@router.get("/{cluster}/exposure", responses=responses(401, 403, 404))
async def exposure(spec: ClusterDep, gw: GatewayDep, _: Reader) -> Exposure:
    """If the primary's host vanished now: synchronous state, each standby's lag, the WAL
    archive's lag (the RPO now), the last verified backup and its measured restore time
    (the RTO from backup), the last sync of each file set."""
    return views.exposure(gw.projection, spec, datetime.now(UTC))


@router.get("/{cluster}/sla", responses=responses(401, 403, 404, 422))
async def sla(
    spec: ClusterDep, gw: GatewayDep, _: Reader, days: float = Query(30, gt=0, le=366)
) -> Sla:
    """Availability, failovers with their RTO, backup success and verification rates."""
    return views.sla(gw.projection, spec, days, datetime.now(UTC))
