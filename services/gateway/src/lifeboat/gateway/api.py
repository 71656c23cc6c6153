"""The FastAPI application: health endpoints now; cluster, failover and backup APIs build on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from lifeboat.common.breakers import BreakerSnapshot
from lifeboat.common.health import HealthReport, Status
from lifeboat.common.runtime import ServiceRuntime
from lifeboat.common.s3 import s3_check
from lifeboat.gateway.checks import postgres_node_check, service_check
from lifeboat.gateway.settings import GatewaySettings

SERVICE = "gateway"


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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.connect()
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

    return app
