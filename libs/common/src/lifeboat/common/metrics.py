"""Prometheus metrics every service can serve at `/metrics` (`ServiceRuntime` mounts it).

`ServiceMetrics` owns a registry of its own (no global state: two runtimes in one process,
e.g. in tests, do not collide) with what every service has: its circuit breakers and build
info. A service adds its own metrics to `registry`, and `refresh` hooks that update gauges
just before a scrape (e.g. from async state such as the breakers).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from lifeboat.common.breakers import Breakers, BreakerState

BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
CONTENT_TYPE = CONTENT_TYPE_LATEST

Refresh = Callable[[], Awaitable[None]]


class ServiceMetrics:
    def __init__(self, service: str, instance: str, breakers: Breakers) -> None:
        self.service = service
        self.instance = instance
        self.registry = CollectorRegistry()
        self._breakers = breakers
        self._refresh: list[Refresh] = [self._breaker_states]
        Gauge(
            "lifeboat_service_info",
            "A running Lifeboat service instance (always 1)",
            ["service", "instance"],
            registry=self.registry,
        ).labels(service, instance).set(1)
        self.breaker_state = Gauge(
            "lifeboat_breaker_state",
            "Circuit breaker per dependency: 0 closed, 1 half-open, 2 open",
            ["service", "breaker"],
            registry=self.registry,
        )
        self.breaker_failures = Gauge(
            "lifeboat_breaker_failures",
            "Failures in a row counted by a circuit breaker",
            ["service", "breaker"],
            registry=self.registry,
        )

    def on_refresh(self, hook: Refresh) -> None:
        self._refresh.append(hook)

    async def _breaker_states(self) -> None:
        for snap in await self._breakers.snapshot():
            self.breaker_state.labels(self.service, snap.name).set(BREAKER_VALUES[snap.state])
            self.breaker_failures.labels(self.service, snap.name).set(snap.failure_count)

    async def render(self) -> bytes:
        """The text exposition format, after every refresh hook ran."""
        for hook in self._refresh:
            await hook()
        return generate_latest(self.registry)
