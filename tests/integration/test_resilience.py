"""Circuit breakers and the health model."""

from __future__ import annotations

import asyncio

import pytest

from lifeboat.common.breakers import Breakers, BreakerState, CircuitOpenError
from lifeboat.common.health import ComponentHealth, HealthRegistry, Status, component, worst


async def _fail(breakers: Breakers, name: str) -> None:
    with pytest.raises(ConnectionError):
        async with breakers.guard(name):
            raise ConnectionError("refused")


async def test_breaker_opens_after_threshold_and_recovers_half_open() -> None:
    breakers = Breakers(failure_threshold=2, reset_timeout=0.3)
    await _fail(breakers, "s3")
    assert (await breakers.snapshot())[0].state is BreakerState.CLOSED
    await _fail(breakers, "s3")
    snap = (await breakers.snapshot())[0]
    assert snap.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError, match="circuit 's3' is open"):
        async with breakers.guard("s3"):
            pytest.fail("an open circuit must not run the call")
    await asyncio.sleep(0.35)
    async with breakers.guard("s3"):  # the half-open trial succeeds and closes it
        pass
    assert (await breakers.snapshot())[0].state is BreakerState.CLOSED


async def test_breaker_failed_trial_reopens() -> None:
    breakers = Breakers(failure_threshold=1, reset_timeout=0.2)
    await _fail(breakers, "pg")
    await asyncio.sleep(0.25)
    await _fail(breakers, "pg")
    assert (await breakers.snapshot())[0].state is BreakerState.OPEN


async def test_breakers_are_per_dependency() -> None:
    breakers = Breakers(failure_threshold=1, reset_timeout=10)
    await _fail(breakers, "a")
    async with breakers.guard("b"):
        pass
    states = {b.name: b.state for b in await breakers.snapshot()}
    assert states == {"a": BreakerState.OPEN, "b": BreakerState.CLOSED}


def test_worst_status_wins() -> None:
    assert worst([]) is Status.HEALTHY
    assert worst([Status.HEALTHY, Status.DEGRADED]) is Status.DEGRADED
    assert worst([Status.DEGRADED, Status.UNHEALTHY, Status.HEALTHY]) is Status.UNHEALTHY


async def test_health_registry_isolates_hung_and_failing_checks() -> None:
    registry = HealthRegistry("svc", "i-1", timeout=0.2)

    async def ok() -> ComponentHealth:
        return component("ok", Status.HEALTHY, "fine")

    async def hangs() -> ComponentHealth:
        await asyncio.sleep(10)
        raise AssertionError

    async def raises() -> ComponentHealth:
        raise RuntimeError("password=hunter2 rejected")

    registry.add("ok", ok)
    registry.add("hangs", hangs)
    registry.add("raises", raises)
    report = await asyncio.wait_for(registry.report(), 2)
    by_name = {c.name: c for c in report.components}
    assert by_name["ok"].status is Status.HEALTHY
    assert by_name["hangs"].status is Status.UNHEALTHY
    assert "timed out" in by_name["hangs"].message
    assert by_name["raises"].status is Status.UNHEALTHY
    assert "hunter2" not in by_name["raises"].message
    assert report.status is Status.UNHEALTHY
    assert report.uptime_seconds >= 0
