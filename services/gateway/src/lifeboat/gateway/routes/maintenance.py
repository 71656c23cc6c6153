"""Maintenance: `POST /clusters/{cluster}/pause` switches automatic failover off (Patroni's
pause), `/resume` back on. The state is KV `lifeboat_maintenance`/<cluster>, which the
failover service reads; each change is an event. Manual operations still work."""

from __future__ import annotations

from fastapi import APIRouter

from lifeboat.common import subjects
from lifeboat.common.events import MaintenancePaused, MaintenanceResumed, MaintenanceState
from lifeboat.common.kv import open_bucket
from lifeboat.gateway import views
from lifeboat.gateway.auth import Operator, Reader
from lifeboat.gateway.deps import ClusterDep, Gateway, GatewayDep
from lifeboat.gateway.problems import responses
from lifeboat.gateway.schemas import MaintenanceView, PauseRequest

router = APIRouter(prefix="/clusters", tags=["maintenance"])


async def _set(gw: Gateway, state: MaintenanceState) -> MaintenanceView:
    kv = await open_bucket(gw.js, subjects.MAINTENANCE_BUCKET)
    await kv.put(state.cluster, state.model_dump_json().encode())
    gw.projection.set_maintenance(state.cluster, state)
    event: MaintenancePaused | MaintenanceResumed
    if state.paused:
        event = MaintenancePaused(
            cluster=state.cluster,
            source=gw.runtime.source,
            reason=state.reason,
            requested_by=state.requested_by,
        )
    else:
        event = MaintenanceResumed(
            cluster=state.cluster,
            source=gw.runtime.source,
            reason=state.reason,
            requested_by=state.requested_by,
        )
    await gw.runtime.publisher.publish(event)
    return views.maintenance_view(state.cluster, state)


@router.post("/{cluster}/pause", responses=responses(401, 403, 404, 422))
async def pause(
    who: Operator, spec: ClusterDep, gw: GatewayDep, body: PauseRequest | None = None
) -> MaintenanceView:
    """Switch automatic failover off for the cluster; manual operations still work."""
    reason = (body or PauseRequest()).reason
    return await _set(
        gw, MaintenanceState(cluster=spec.name, paused=True, reason=reason, requested_by=who.name)
    )


@router.post("/{cluster}/resume", responses=responses(401, 403, 404, 422))
async def resume(
    who: Operator, spec: ClusterDep, gw: GatewayDep, body: PauseRequest | None = None
) -> MaintenanceView:
    """Switch automatic failover back on."""
    reason = body.reason if body else "resumed"
    return await _set(
        gw, MaintenanceState(cluster=spec.name, paused=False, reason=reason, requested_by=who.name)
    )


@router.get("/{cluster}/maintenance", responses=responses(401, 403, 404))
async def maintenance(spec: ClusterDep, gw: GatewayDep, _: Reader) -> MaintenanceView:
    return views.maintenance_view(spec.name, gw.projection.maintenance.get(spec.name))
