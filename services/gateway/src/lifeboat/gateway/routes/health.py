"""`/health*`: the same answers every service gives (`ServiceRuntime`), as FastAPI routes,
plus every service's breakers and every service instance seen on the bus. Always open."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from lifeboat.common.health import BreakerReport
from lifeboat.common.redact import redact
from lifeboat.gateway import checks
from lifeboat.gateway.deps import GatewayDep, respond
from lifeboat.gateway.schemas import (
    AllBreakers,
    HealthReport,
    InstanceSeen,
    Liveness,
    Readiness,
    ServiceBreakers,
)

router = APIRouter(prefix="/health", tags=["health"])


@router.get(
    "",
    response_model=HealthReport,
    responses={503: {"model": HealthReport, "description": "something is unhealthy"}},
)
async def health(gw: GatewayDep) -> JSONResponse:
    """Every dependency: NATS, S3, each PostgreSQL node (role), each service's readiness,
    the instances of each service seen on the bus."""
    report = await gw.runtime.health_report()
    return respond(report, report.http_status)


@router.get("/live")
async def live(gw: GatewayDep) -> Liveness:
    return gw.runtime.liveness()


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not connected to NATS"}},
)
async def ready(gw: GatewayDep) -> JSONResponse:
    """Ready when connected to NATS with the history replayed into the projection."""
    answer = await gw.runtime.readiness()
    return respond(answer, answer.http_status)


async def _service_breakers(name: str, url: str, timeout: float) -> ServiceBreakers:
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            resp = await client.get(f"{url.rstrip('/')}/health/circuit-breakers")
        resp.raise_for_status()
        report = BreakerReport.model_validate(resp.json())
    except (httpx.HTTPError, ValueError) as exc:
        return ServiceBreakers(
            service=name, reachable=False, breakers=[], error=redact(f"{type(exc).__name__}: {exc}")
        )
    return ServiceBreakers(service=name, reachable=True, breakers=report.breakers)


@router.get("/circuit-breakers")
async def circuit_breakers(gw: GatewayDep) -> AllBreakers:
    """The gateway's own breakers (`breakers`) and every other service's (`services`)."""
    own = await gw.runtime.breaker_report()
    timeout = gw.settings.service_timeout_seconds
    others = await asyncio.gather(
        *(_service_breakers(n, u, timeout) for n, u in sorted(gw.settings.service_urls.items()))
    )
    seen = checks.instances(gw.projection, datetime.now(UTC))
    return AllBreakers(
        breakers=own.breakers, services=list(others), instances=[i for i in seen if i.heartbeat]
    )


@router.get("/instances")
async def instances(gw: GatewayDep) -> list[InstanceSeen]:
    """Every service instance: readiness, version and breakers from its heartbeats, or when
    its last event reached the bus."""
    return checks.instances(gw.projection, datetime.now(UTC))
