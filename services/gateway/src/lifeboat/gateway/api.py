"""The REST API: health, cluster status, role checks for load balancers, failover operations,
history."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from lifeboat.common import subjects
from lifeboat.common.breakers import BreakerSnapshot
from lifeboat.common.bus import listen
from lifeboat.common.clusters import ClusterSpec
from lifeboat.common.events import (
    FailoverRequested,
    NodeHealth,
    NodeRejoinRequested,
    SwitchoverRequested,
)
from lifeboat.common.health import HealthReport, Status
from lifeboat.common.kv import TopologyStore
from lifeboat.common.runtime import ServiceRuntime
from lifeboat.common.s3 import s3_check
from lifeboat.common.state import Topology
from lifeboat.common.subjects import Name
from lifeboat.gateway.checks import postgres_node_check, service_check
from lifeboat.gateway.history import read_history
from lifeboat.gateway.observed import Observed
from lifeboat.gateway.requests import request_and_wait
from lifeboat.gateway.settings import GatewaySettings

SERVICE = "gateway"


class OperationRequest(BaseModel):
    target: Name | None = Field(default=None, description="node to promote; best if omitted")
    reason: str = Field(min_length=1, max_length=500, examples=["planned maintenance"])
    requested_by: str = Field(default="api", max_length=200)
    wait_seconds: float = Field(default=30, ge=0, le=300)


class RejoinRequest(BaseModel):
    requested_by: str = Field(default="api", max_length=200)
    wait_seconds: float = Field(default=120, ge=0, le=900)


def build_app(settings: GatewaySettings) -> FastAPI:
    runtime = ServiceRuntime(SERVICE, settings)
    runtime.health.add("s3", s3_check(settings, runtime.breakers))
    for cluster in settings.clusters.clusters:
        for node in cluster.nodes:
            runtime.health.add(
                f"postgres:{cluster.name}/{node.name}",
                postgres_node_check(cluster, node, settings, runtime.breakers),
            )
    for name, url in sorted(settings.service_urls.items()):
        runtime.health.add(
            f"service:{name}",
            service_check(name, url, settings.service_timeout_seconds, runtime.breakers),
        )
    observed = Observed()

    @listen(runtime.broker, subjects.NODE_HEALTH, title="gateway-node-health")
    async def on_health(report: NodeHealth) -> None:
        observed.add(report)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.connect()
        await runtime.broker.start()
        runtime.mark_ready()
        try:
            yield
        finally:
            runtime.mark_ready(False)
            await runtime.broker.stop()

    app = FastAPI(
        title="Lifeboat",
        description="High availability and disaster recovery for PostgreSQL clusters",
        version="0.1.0",
        lifespan=lifespan,
    )

    def js() -> Any:
        return runtime.broker.config.connection_state.stream

    def cluster_or_404(name: str) -> ClusterSpec:
        try:
            return settings.clusters.cluster(name)
        except KeyError:
            known = ", ".join(c.name for c in settings.clusters.clusters)
            raise HTTPException(404, f"no cluster named {name!r} (known: {known})") from None

    def node_or_404(cluster: ClusterSpec, node: str) -> None:
        if node not in {n.name for n in cluster.nodes}:
            known = ", ".join(n.name for n in cluster.nodes)
            raise HTTPException(
                404, f"cluster {cluster.name} has no node {node!r} (known: {known})"
            )

    async def topology(name: str) -> Topology | None:
        found = await (await TopologyStore.open(js())).get(name)
        return None if found is None else found.value

    # --- health -------------------------------------------------------------------------

    @app.get("/health", response_model=HealthReport, tags=["health"])
    async def health() -> JSONResponse:
        """Every dependency: NATS, S3, each PostgreSQL node (role), each service's readiness."""
        report = await runtime.health.report()
        code = 503 if report.status is Status.UNHEALTHY else 200
        return JSONResponse(report.model_dump(mode="json"), status_code=code)

    @app.get("/health/live", tags=["health"])
    async def live() -> dict[str, str]:
        return {"status": "alive", "service": SERVICE}

    @app.get("/health/ready", tags=["health"])
    async def ready() -> JSONResponse:
        """Ready when connected to NATS: the gateway can serve and publish requests."""
        nats = await runtime.check_nats()
        ok = nats.status is Status.HEALTHY
        return JSONResponse(
            {"ready": ok, "status": nats.status.value, "message": nats.message},
            status_code=200 if ok else 503,
        )

    @app.get("/health/circuit-breakers", tags=["health"])
    async def circuit_breakers() -> dict[str, list[BreakerSnapshot]]:
        return {"breakers": await runtime.breakers.snapshot()}

    # --- clusters -----------------------------------------------------------------------

    @app.get("/clusters", tags=["clusters"])
    async def clusters() -> list[dict[str, Any]]:
        out = []
        for cluster in settings.clusters.clusters:
            topo = await topology(cluster.name)
            out.append(
                {
                    "name": cluster.name,
                    "primary": topo.primary if topo else None,
                    "epoch": topo.epoch if topo else None,
                }
            )
        return out

    @app.get("/clusters/{cluster}", tags=["clusters"])
    async def cluster_status(cluster: str) -> dict[str, Any]:
        """Topology (primary, epoch, synchronous standbys, operation under way) and nodes."""
        spec = cluster_or_404(cluster)
        topo = await topology(cluster)
        nodes = []
        for node in spec.nodes:
            report = observed.latest(cluster, node.name)
            nodes.append(
                {
                    "name": node.name,
                    "host": node.host,
                    "port": node.port,
                    "priority": node.priority,
                    "tags": sorted(node.tags),
                    "location": node.location,
                    "health": None
                    if report is None
                    else report.model_dump(
                        mode="json",
                        include={
                            "reachable",
                            "role",
                            "writable",
                            "timeline",
                            "upstream",
                            "wal_receiver",
                            "lag_bytes",
                            "lag_seconds",
                            "occurred_at",
                        },
                    ),
                }
            )
        return {
            "name": cluster,
            "dsn": spec.client_dsn(),
            "topology": None if topo is None else topo.model_dump(mode="json"),
            "nodes": nodes,
        }

    @app.get("/clusters/{cluster}/nodes/{node}/primary", tags=["clusters"])
    async def is_primary(cluster: str, node: str) -> JSONResponse:
        """200 when the node is the primary and takes writes, 503 otherwise (for HAProxy)."""
        spec = cluster_or_404(cluster)
        node_or_404(spec, node)
        topo = await topology(cluster)
        ok = (
            topo is not None
            and topo.primary == node
            and observed.is_writable_primary(cluster, node)
        )
        return JSONResponse({"node": node, "primary": ok}, status_code=200 if ok else 503)

    @app.get("/clusters/{cluster}/nodes/{node}/replica", tags=["clusters"])
    async def is_replica(cluster: str, node: str) -> JSONResponse:
        """200 when the node is a streaming standby, 503 otherwise (for HAProxy)."""
        node_or_404(cluster_or_404(cluster), node)
        ok = observed.is_streaming_standby(cluster, node)
        return JSONResponse({"node": node, "replica": ok}, status_code=200 if ok else 503)

    @app.get("/clusters/{cluster}/history", tags=["clusters"])
    async def history(cluster: str, limit: int = Query(100, ge=1, le=1000)) -> list[Any]:
        """Failovers, switchovers, refusals, holds, fencings and rejoins, oldest first."""
        cluster_or_404(cluster)
        return await read_history(js(), cluster, limit)

    # --- operations ---------------------------------------------------------------------

    async def operate(cluster: str, body: OperationRequest, switchover: bool) -> JSONResponse:
        spec = cluster_or_404(cluster)
        if body.target is not None:
            node_or_404(spec, body.target)
        model = SwitchoverRequested if switchover else FailoverRequested
        request = model(
            cluster=cluster,
            source=runtime.source,
            target=body.target,
            reason=body.reason,
            requested_by=body.requested_by,
        )
        done, failed = (
            (subjects.SWITCHOVER_COMPLETED, subjects.SWITCHOVER_FAILED)
            if switchover
            else (subjects.FAILOVER_COMPLETED, subjects.FAILOVER_FAILED)
        )
        kind = "switchover" if switchover else "manual"
        answer = await request_and_wait(
            runtime.broker.connection,
            runtime.publisher,
            request,
            {done: {"cluster": cluster}, failed: {"cluster": cluster}},
            body.wait_seconds,
            accept=lambda e: e.get("kind") == kind,
        )
        return _answer(answer, done.name, request.event_id)

    @app.post("/clusters/{cluster}/failover", tags=["operations"])
    async def failover(cluster: str, body: OperationRequest) -> JSONResponse:
        """Promote `target` (or the best standby) now, fencing the primary."""
        return await operate(cluster, body, switchover=False)

    @app.post("/clusters/{cluster}/switchover", tags=["operations"])
    async def switchover(cluster: str, body: OperationRequest) -> JSONResponse:
        """Hand the primary role over without losing a write; the old primary follows."""
        return await operate(cluster, body, switchover=True)

    @app.post("/clusters/{cluster}/nodes/{node}/rejoin", tags=["operations"])
    async def rejoin(cluster: str, node: str, body: RejoinRequest) -> JSONResponse:
        """Turn a node (e.g. a fenced former primary) back into a standby of the primary."""
        node_or_404(cluster_or_404(cluster), node)
        request = NodeRejoinRequested(
            cluster=cluster, node=node, source=runtime.source, requested_by=body.requested_by
        )
        answer = await request_and_wait(
            runtime.broker.connection,
            runtime.publisher,
            request,
            {
                subjects.NODE_REJOINED: {"cluster": cluster, "node": node},
                subjects.FAILOVER_FAILED: {"cluster": cluster},
            },
            body.wait_seconds,
            accept=lambda e: e["type"] == "node.rejoined" or e.get("target") == node,
        )
        return _answer(answer, subjects.NODE_REJOINED.name, request.event_id)

    return app


def _answer(answer: dict[str, Any] | None, success: str, request_id: object) -> JSONResponse:
    if answer is None:
        return JSONResponse(
            {
                "status": "pending",
                "request_id": str(request_id),
                "message": "no answer yet: follow it in GET /clusters/{cluster}/history",
            },
            status_code=202,
        )
    if answer["type"] == success:
        return JSONResponse({"status": "done", "event": answer}, status_code=200)
    return JSONResponse(
        {"status": "refused", "reason": answer["reason"], "event": answer}, status_code=409
    )
