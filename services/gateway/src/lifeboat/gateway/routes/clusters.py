"""`/clusters`: topology and node health, and the role checks load balancers poll."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from lifeboat.common.events import NodeHealth, Role
from lifeboat.gateway.deps import ClusterDep, GatewayDep, NodeDep, respond
from lifeboat.gateway.schemas import (
    ClusterStatus,
    ClusterSummary,
    ErrorDetail,
    NodeStatus,
    PrimaryCheck,
    ReplicaCheck,
)

router = APIRouter(prefix="/clusters", tags=["clusters"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorDetail, "description": "no such cluster or node"}
}


def is_writable_primary(report: NodeHealth | None) -> bool:
    return bool(report and report.reachable and report.role is Role.PRIMARY and report.writable)


def is_streaming_standby(report: NodeHealth | None) -> bool:
    return bool(
        report
        and report.reachable
        and report.role is Role.STANDBY
        and report.wal_receiver == "streaming"
    )


@router.get("")
async def clusters(gw: GatewayDep) -> list[ClusterSummary]:
    out = []
    for cluster in gw.settings.clusters.clusters:
        topo = await gw.topology(cluster.name)
        out.append(
            ClusterSummary(
                name=cluster.name,
                primary=topo.primary if topo else None,
                epoch=topo.epoch if topo else None,
            )
        )
    return out


@router.get("/{cluster}", responses=NOT_FOUND)
async def cluster_status(spec: ClusterDep, gw: GatewayDep) -> ClusterStatus:
    """Topology (primary, epoch, synchronous standbys, operation under way) and nodes."""
    now = datetime.now(UTC)
    return ClusterStatus(
        name=spec.name,
        dsn=spec.client_dsn(),
        topology=await gw.topology(spec.name),
        nodes=[
            NodeStatus.of(node, gw.reports.latest(spec.name, node.name, now)) for node in spec.nodes
        ],
    )


@router.get(
    "/{cluster}/nodes/{node}/primary",
    response_model=PrimaryCheck,
    responses={503: {"model": PrimaryCheck, "description": "not the primary"}, **NOT_FOUND},
)
async def is_primary(spec: ClusterDep, node: NodeDep, gw: GatewayDep) -> JSONResponse:
    """200 when the node is the primary and takes writes, 503 otherwise (for HAProxy)."""
    topo = await gw.topology(spec.name)
    report = gw.reports.latest(spec.name, node, datetime.now(UTC))
    ok = topo is not None and topo.primary == node and is_writable_primary(report)
    return respond(PrimaryCheck(node=node, primary=ok), 200 if ok else 503)


@router.get(
    "/{cluster}/nodes/{node}/replica",
    response_model=ReplicaCheck,
    responses={503: {"model": ReplicaCheck, "description": "not a streaming standby"}, **NOT_FOUND},
)
async def is_replica(spec: ClusterDep, node: NodeDep, gw: GatewayDep) -> JSONResponse:
    """200 when the node is a streaming standby, 503 otherwise (for HAProxy)."""
    ok = is_streaming_standby(gw.reports.latest(spec.name, node, datetime.now(UTC)))
    return respond(ReplicaCheck(node=node, replica=ok), 200 if ok else 503)
