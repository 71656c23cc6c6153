"""The gateway's view of the whole system: each dependency as one health component."""

from __future__ import annotations

import httpx

from lifeboat.common.breakers import Breakers
from lifeboat.common.clusters import ClusterSpec, NodeSpec
from lifeboat.common.events import Role
from lifeboat.common.health import Check, ComponentHealth, Status, component
from lifeboat.common.redact import redact
from lifeboat.common.settings import ServiceSettings
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
