"""The health model every service reports, and the checks that fill it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from lifeboat.common.breakers import BreakerSnapshot
from lifeboat.common.events import utcnow
from lifeboat.common.redact import redact


class Status(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


_RANK = {Status.HEALTHY: 0, Status.DEGRADED: 1, Status.UNHEALTHY: 2}


def worst(statuses: list[Status]) -> Status:
    return max(statuses, key=_RANK.__getitem__, default=Status.HEALTHY)


class ComponentHealth(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    status: Status
    message: str = ""
    checked_at: AwareDatetime
    details: dict[str, str | int | float | bool | None] = {}


class HealthReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    service: str
    instance: str
    status: Status
    uptime_seconds: float
    checked_at: datetime
    components: tuple[ComponentHealth, ...]

    @property
    def http_status(self) -> int:
        """What `/health` answers with: 503 when unhealthy, 200 when healthy or degraded."""
        return 503 if self.status is Status.UNHEALTHY else 200


class Liveness(BaseModel):
    """`/health/live`: the process answers."""

    model_config = ConfigDict(frozen=True)

    status: Literal["alive"] = "alive"
    service: str


class Readiness(BaseModel):
    """`/health/ready`: whether the service can do its work now (503 when not)."""

    model_config = ConfigDict(frozen=True)

    ready: bool
    status: Status
    service: str
    message: str = ""

    @property
    def http_status(self) -> int:
        return 200 if self.ready else 503


class BreakerReport(BaseModel):
    """`/health/circuit-breakers`: every dependency's breaker."""

    model_config = ConfigDict(frozen=True)

    breakers: list[BreakerSnapshot]


Check = Callable[[], Awaitable[ComponentHealth]]


def component(
    name: str, status: Status, message: str = "", **details: str | int | float | bool | None
) -> ComponentHealth:
    return ComponentHealth(
        name=name, status=status, message=redact(message), checked_at=utcnow(), details=details
    )


class HealthRegistry:
    """Named checks, run concurrently with a deadline so one hung dependency cannot stall it."""

    def __init__(self, service: str, instance: str, *, timeout: float = 3.0) -> None:
        self.service = service
        self.instance = instance
        self.timeout = timeout
        self._started = time.monotonic()
        self._checks: dict[str, Check] = {}

    def add(self, name: str, check: Check) -> None:
        self._checks[name] = check

    async def _run(self, name: str, check: Check) -> ComponentHealth:
        try:
            return await asyncio.wait_for(check(), self.timeout)
        except TimeoutError:
            return component(name, Status.UNHEALTHY, f"check timed out after {self.timeout}s")
        except Exception as exc:  # a failing check is a finding, never a crash of /health
            return component(name, Status.UNHEALTHY, f"{type(exc).__name__}: {exc}")

    async def report(self, only: Collection[str] | None = None) -> HealthReport:
        """Run every check (or only those named in `only`) and combine them."""
        checks = {n: c for n, c in self._checks.items() if only is None or n in only}
        results = await asyncio.gather(*(self._run(n, c) for n, c in checks.items()))
        return HealthReport(
            service=self.service,
            instance=self.instance,
            status=worst([c.status for c in results]),
            uptime_seconds=round(time.monotonic() - self._started, 3),
            checked_at=utcnow(),
            components=tuple(results),
        )
