"""`/health*`: the same answers every service gives (`ServiceRuntime`), as FastAPI routes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from lifeboat.gateway.deps import GatewayDep, respond
from lifeboat.gateway.schemas import BreakerReport, HealthReport, Liveness, Readiness

router = APIRouter(prefix="/health", tags=["health"])


@router.get(
    "",
    response_model=HealthReport,
    responses={503: {"model": HealthReport, "description": "something is unhealthy"}},
)
async def health(gw: GatewayDep) -> JSONResponse:
    """Every dependency: NATS, S3, each PostgreSQL node (role), each service's readiness."""
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
    """Ready when connected to NATS: the gateway can serve and publish requests."""
    answer = await gw.runtime.readiness()
    return respond(answer, answer.http_status)


@router.get("/circuit-breakers")
async def circuit_breakers(gw: GatewayDep) -> BreakerReport:
    return await gw.runtime.breaker_report()
