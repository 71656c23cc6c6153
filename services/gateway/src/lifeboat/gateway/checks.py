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
from lifeboat.gateway.schemas import InstanceSeen
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


def instances(projection: Projection, now: datetime) -> list[InstanceSeen]:
    """Every service instance seen: its heartbeat (fresh within 3 intervals) or its events."""
    out = []
    for (service, instance), at in projection.instances.items():
        beat = projection.beats.get((service, instance))
        fresh = beat is not None and (now - beat.occurred_at).total_seconds() <= 3 * max(
            1.0, beat.interval_seconds
        )
        out.append(
            InstanceSeen(
                service=service,
                instance=instance,
                last_event_at=at,
                seconds_ago=round((now - at).total_seconds(), 3),
                heartbeat=fresh,
                ready=beat.ready if beat is not None and fresh else None,
                message=beat.message if beat is not None and fresh else "",
                version=beat.version if beat is not None else None,
                uptime_seconds=beat.uptime_seconds if beat is not None and fresh else None,
                breakers=dict(beat.breakers) if beat is not None and fresh else {},
            )
        )
    return sorted(out, key=lambda i: (i.service, i.instance))


def instances_check(projection: Projection, services: list[str], within: float = 60.0) -> Check:
    """Every running instance of every service: those whose heartbeat is fresh, with their
    readiness; those that sent no heartbeat but events within `within` seconds."""

    async def check() -> ComponentHealth:
        now = datetime.now(UTC)
        running: dict[str, list[str]] = {}
        not_ready = []
        for seen in instances(projection, now):
            if not seen.heartbeat and seen.seconds_ago > within:
                continue
            label = seen.instance if seen.ready is not False else f"{seen.instance} (not ready)"
            running.setdefault(seen.service, []).append(label)
            if seen.ready is False:
                not_ready.append(f"{seen.service}/{seen.instance}: {seen.message}")
        details: dict[str, str | int | float | bool | None] = {
            s: ", ".join(sorted(i)) for s, i in sorted(running.items())
        }
        names = ", ".join(f"{s} x{len(i)}" for s, i in sorted(running.items()))
        missing = [s for s in services if s not in running]
        if not_ready:
            status, message = Status.DEGRADED, "not ready: " + "; ".join(not_ready)
        elif missing:
            status, message = Status.DEGRADED, f"no instance heard from: {', '.join(missing)}"
        else:
            status, message = Status.HEALTHY, f"running: {names or 'nobody'}"
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
