"""The gateway's view of the whole system: each dependency as one health component."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from lifeboat.common.breakers import Breakers
from lifeboat.common.clusters import ClusterSpec, NodeSpec
from lifeboat.common.events import Role
from lifeboat.common.health import Check, ComponentHealth, Status, component
from lifeboat.common.redact import redact
from lifeboat.common.settings import ServiceSettings
from lifeboat.gateway.projection import Projection
from lifeboat.pg.probe import ProbeError, probe_role


def postgres_node_check(
    cluster: ClusterSpec, node: NodeSpec, settings: ServiceSettings, breakers: Breakers
) -> Check:
    name = f"postgres:{cluster.name}/{node.name}"
    timeout = settings.pg_connect_timeout_seconds

    async def check() -> ComponentHealth:
        dsn = cluster.node_dsn(node, settings.postgres_password(), connect_timeout=timeout)
        try:
            async with breakers.guard(name):
                found = await probe_role(dsn, timeout)
        except ProbeError as exc:
            return component(name, Status.UNHEALTHY, f"unreachable: {exc}", role=Role.UNKNOWN)
        if found.role is Role.PRIMARY:
            status = Status.HEALTHY if found.writable else Status.DEGRADED
            message = "primary, accepting writes" if found.writable else "primary, read-only"
        elif found.wal_receiver == "streaming":
            status, message = Status.HEALTHY, "standby, streaming"
        else:
            status = Status.DEGRADED
            message = f"standby, WAL receiver {found.wal_receiver or 'not running'}"
        return component(
            name,
            status,
            message,
            role=found.role,
            writable=found.writable,
            latency_ms=found.latency_ms,
        )

    return check


def service_check(name: str, base_url: str, timeout: float, breakers: Breakers) -> Check:
    key = f"service:{name}"

    async def check() -> ComponentHealth:
        try:
            async with breakers.guard(key), httpx.AsyncClient(timeout=timeout) as client:
                resp = await client.get(f"{base_url.rstrip('/')}/health/ready")
        except httpx.HTTPError as exc:
            return component(key, Status.UNHEALTHY, f"unreachable: {type(exc).__name__} {exc}")
        if resp.status_code == 200:
            return component(key, Status.HEALTHY, "ready")
        return component(key, Status.UNHEALTHY, redact(f"not ready ({resp.status_code})"))

    return check


def instances_check(projection: Projection, services: list[str], within: float = 60.0) -> Check:
    """Every running instance of every service, as seen on the bus (their events' source)
    within `within` seconds: the monitors' heartbeats, the failover service's decisions, ..."""

    async def check() -> ComponentHealth:
        now = datetime.now(UTC)
        recent: dict[str, list[str]] = {}
        for (service, instance), at in projection.instances.items():
            if (now - at).total_seconds() <= within:
                recent.setdefault(service, []).append(instance)
        details: dict[str, str | int | float | bool | None] = {
            s: ", ".join(sorted(i)) for s, i in sorted(recent.items())
        }
        names = ", ".join(f"{s} x{len(i)}" for s, i in sorted(recent.items()))
        status = (
            Status.HEALTHY if "monitor" in recent or "monitor" not in services else Status.DEGRADED
        )
        message = f"seen on the bus in the last {within:.0f}s: {names or 'nobody'}"
        return component("instances", status, message, **details)

    return check


def projection_check(projection: Projection) -> Check:
    async def check() -> ComponentHealth:
        if not projection.caught_up.is_set():
            return component("projection", Status.DEGRADED, "replaying the history")
        return component(
            "projection",
            Status.HEALTHY,
            f"current: {projection.applied['events']} events, "
            f"{len(projection.heartbeats)} heartbeats held",
            events=projection.applied["events"],
            lag_seconds=round(projection.lag_seconds["heartbeats"], 3),
        )

    return check
