"""What a probe result changes about a node, as plain data: which transition events are due.

A monitor keeps one `NodeState` per node; `step` is pure, so the rules (when a node is down,
when it is back, when lag is worth a warning, and the hysteresis that stops flapping) are
tested with tables, not servers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from lifeboat.common.events import LagLevel, Role


@dataclass(frozen=True)
class Thresholds:
    failure_threshold: int = 3
    lag_warning_seconds: float = 30.0
    lag_critical_seconds: float = 120.0
    # Lag must fall below this share of a threshold to leave its level: no flapping.
    hysteresis: float = 0.8


@dataclass(frozen=True)
class Observed:
    reachable: bool
    role: Role = Role.UNKNOWN
    writable: bool | None = None
    lag_seconds: float | None = None
    lag_bytes: int | None = None
    error: str | None = None
    refusing_connections: str | None = None


@dataclass(frozen=True)
class NodeState:
    consecutive_failures: int = 0
    consecutive_read_only: int = 0
    down: bool = False
    role: Role | None = None
    lag_level: LagLevel = LagLevel.OK
    refusing: bool = False  # new connections answered with a refusal


@dataclass(frozen=True)
class WentDown:
    reason: str


@dataclass(frozen=True)
class CameUp:
    role: Role


@dataclass(frozen=True)
class RoleChanged:
    previous: Role
    current: Role


@dataclass(frozen=True)
class LagChanged:
    level: LagLevel
    lag_seconds: float | None
    lag_bytes: int | None


@dataclass(frozen=True)
class AdmissionChanged:
    refusal: str | None  # None: accepting again


Transition = WentDown | CameUp | RoleChanged | LagChanged | AdmissionChanged

_ORDER = (LagLevel.OK, LagLevel.WARNING, LagLevel.CRITICAL)


def lag_level(current: LagLevel, lag_seconds: float, t: Thresholds) -> LagLevel:
    bounds = {LagLevel.WARNING: t.lag_warning_seconds, LagLevel.CRITICAL: t.lag_critical_seconds}
    target = LagLevel.OK
    for level in (LagLevel.WARNING, LagLevel.CRITICAL):
        if lag_seconds >= bounds[level]:
            target = level
    level = current
    while _ORDER.index(level) > _ORDER.index(target):
        if lag_seconds >= bounds[level] * t.hysteresis:
            break
        level = _ORDER[_ORDER.index(level) - 1]
    return max(level, target, key=_ORDER.index)


def step(state: NodeState, seen: Observed, t: Thresholds) -> tuple[NodeState, list[Transition]]:
    if not seen.reachable:
        failures = state.consecutive_failures + 1
        if not state.down and failures >= t.failure_threshold:
            reason = seen.error or "unreachable"
            return (
                replace(state, consecutive_failures=failures, consecutive_read_only=0, down=True),
                [WentDown(reason)],
            )
        return replace(state, consecutive_failures=failures, consecutive_read_only=0), []

    out: list[Transition] = []
    if state.down:
        out.append(CameUp(seen.role))
    elif state.role is not None and state.role != seen.role:
        out.append(RoleChanged(state.role, seen.role))
    level = state.lag_level
    if seen.role is Role.STANDBY and seen.lag_seconds is not None:
        level = lag_level(state.lag_level, seen.lag_seconds, t)
    elif seen.role is Role.PRIMARY:
        level = LagLevel.OK  # a primary has no replication lag of its own
    if level != state.lag_level:
        out.append(LagChanged(level, seen.lag_seconds, seen.lag_bytes))
    refusing = seen.refusing_connections is not None
    if refusing != state.refusing:
        out.append(AdmissionChanged(seen.refusing_connections))
    read_only = state.consecutive_read_only + 1 if seen.writable is False else 0
    return (
        NodeState(
            consecutive_read_only=read_only, role=seen.role, lag_level=level, refusing=refusing
        ),
        out,
    )
