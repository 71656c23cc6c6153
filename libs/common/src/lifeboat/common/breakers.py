"""Per-dependency circuit breakers (closed / open / half-open) on top of purgatory."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from enum import StrEnum

from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from pydantic import BaseModel, ConfigDict


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


_FROM_PURGATORY = {
    "closed": BreakerState.CLOSED,
    "opened": BreakerState.OPEN,
    "half-opened": BreakerState.HALF_OPEN,
}


class CircuitOpenError(RuntimeError):
    def __init__(self, name: str, retry_in: float) -> None:
        super().__init__(f"circuit {name!r} is open; next attempt in {retry_in:.1f}s")
        self.name = name
        self.retry_in = retry_in


class BreakerSnapshot(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    state: BreakerState
    failure_count: int
    failure_threshold: int
    reset_timeout_seconds: float
    opened_seconds_ago: float | None


class Breakers:
    """One breaker per named dependency; `guard(name)` wraps each call to it."""

    def __init__(self, *, failure_threshold: int = 3, reset_timeout: float = 10.0) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._factory = AsyncCircuitBreakerFactory(
            default_threshold=failure_threshold, default_ttl=reset_timeout
        )
        self._names: list[str] = []

    @asynccontextmanager
    async def guard(self, name: str) -> AsyncIterator[None]:
        if name not in self._names:
            self._names.append(name)
        breaker = await self._factory.get_breaker(name)
        try:
            async with breaker:
                yield
        except OpenedState:
            opened_at = breaker.context.opened_at or time.time()
            raise CircuitOpenError(
                name, max(0.0, opened_at + self.reset_timeout - time.time())
            ) from None

    async def snapshot(self) -> list[BreakerSnapshot]:
        out = []
        for name in self._names:
            ctx = (await self._factory.get_breaker(name)).context
            opened_at = ctx.opened_at
            out.append(
                BreakerSnapshot(
                    name=name,
                    state=_FROM_PURGATORY.get(ctx.state, BreakerState.CLOSED),
                    failure_count=ctx.failure_count or 0,
                    failure_threshold=int(ctx.threshold),
                    reset_timeout_seconds=float(ctx.ttl),
                    opened_seconds_ago=None if opened_at is None else time.time() - opened_at,
                )
            )
        return out
