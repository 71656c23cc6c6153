"""`/clusters`: topology and node health from the projection, and the role checks load
balancers poll (always open: HAProxy sends no token)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from lifeboat.common.events import NodeHealth, Role
from lifeboat.gateway import fastpath, views
from lifeboat.gateway.auth import Reader, authorize
from lifeboat.gateway.auth import Role as Needs
from lifeboat.gateway.deps import ClusterDep, Gateway, GatewayDep, NodeDep, find_cluster, respond
from lifeboat.gateway.problems import responses
from lifeboat.gateway.schemas import ClusterStatus, ClusterSummary, PrimaryCheck, ReplicaCheck

router = APIRouter(prefix="/clusters", tags=["clusters"])
READ = responses(401, 403)
NOT_FOUND = responses(404)


def is_writable_primary(report: NodeHealth | None) -> bool:
    return bool(report and report.reachable and report.role is Role.PRIMARY and report.writable)


def is_streaming_standby(report: NodeHealth | None) -> bool:
    return bool(
        report
        and report.reachable
        and report.role is Role.STANDBY
        and report.wal_receiver == "streaming"
    )


@router.get("", responses=READ)
async def clusters(gw: GatewayDep, _: Reader) -> list[ClusterSummary]:
    return [views.cluster_summary(gw.projection, c) for c in gw.settings.clusters.clusters]


@router.get("/{cluster}", response_model=ClusterStatus, responses={**READ, **NOT_FOUND})
async def cluster_status(cluster: str, request: Request) -> Response:
    """Topology (primary, epoch, synchronous standbys, operation under way), each node's
    latest fresh report, maintenance and the last failover."""
    # The hottest read: `fastpath` answers it below the framework; here only what it passes
    # on (with a query string, or to answer 401/403/404).
    gw = cast(Gateway, request.app.state.gateway)
    authorize(request, Needs.READ)
    body = fastpath.render(gw, find_cluster(gw, cluster).name)
    assert body is not None
    return Response(body, media_type="application/json")


@router.get(
    "/{cluster}/nodes/{node}/primary",
    response_model=PrimaryCheck,
    responses={503: {"model": PrimaryCheck, "description": "not the primary"}, **NOT_FOUND},
)
async def is_primary(spec: ClusterDep, node: NodeDep, gw: GatewayDep) -> JSONResponse:
    """200 when the node is the primary and takes writes, 503 otherwise (for HAProxy)."""
    topo = gw.topology(spec.name)
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
