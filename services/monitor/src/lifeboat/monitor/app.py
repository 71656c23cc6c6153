from __future__ import annotations

import asyncio
import time

from faststream.asgi import AsgiFastStream

from lifeboat.common.health import ComponentHealth, Status, component
from lifeboat.common.runtime import ServiceRuntime, cluster_file_check
from lifeboat.monitor.monitor import Monitor
from lifeboat.monitor.probe import NodeProber
from lifeboat.monitor.settings import MonitorSettings
from lifeboat.monitor.transitions import Thresholds

SERVICE = "monitor"


def build_monitor(settings: MonitorSettings, runtime: ServiceRuntime) -> Monitor:
    password = settings.postgres_password()
    timeout = settings.probe_timeout_seconds
    probers = {
        (c.name, n.name): NodeProber(
            c.node_dsn(n, password, connect_timeout=timeout),
            timeout,
            check_new_connections=settings.check_new_connections,
            knock_every=settings.knock_seconds,
            admission_every=settings.admission_check_seconds,
        )
        for c in settings.clusters.clusters
        for n in c.nodes
    }
    return Monitor(
        settings.clusters,
        probers,
        runtime.source,
        runtime.publisher.publish,
        interval=settings.probe_interval_seconds,
        thresholds=Thresholds(
            failure_threshold=settings.failure_threshold,
            lag_warning_seconds=settings.lag_warning_seconds,
            lag_critical_seconds=settings.lag_critical_seconds,
        ),
        location=settings.location,
        outbox_size=settings.outbox_size,
    )


def build_app(settings: MonitorSettings) -> AsgiFastStream:
    runtime = ServiceRuntime(SERVICE, settings)
    runtime.health.add("clusters", cluster_file_check(settings))
    tasks: list[asyncio.Task[None]] = []
    monitor: list[Monitor] = []

    async def start() -> None:
        m = build_monitor(settings, runtime)
        monitor.append(m)
        tasks.append(asyncio.create_task(m.run_probing(), name="probing"))
        tasks.append(asyncio.create_task(m.run_publishing(), name="publishing"))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if monitor:
            await monitor[0].close()

    async def probing_health() -> ComponentHealth:
        m = monitor[0] if monitor else None
        if m is None or m.last_round_at is None:
            return component("probing", Status.DEGRADED, "no probe round finished yet")
        age = time.monotonic() - m.last_round_at
        late = age > 3 * settings.probe_interval_seconds + settings.probe_timeout_seconds
        return component(
            "probing",
            Status.UNHEALTHY if late else Status.HEALTHY,
            f"last round {age:.1f}s ago, took {m.last_round_seconds or 0:.3f}s",
            rounds=m.rounds,
            nodes=len(m.probers),
            outbox=len(m.outbox),
        )

    runtime.health.add("probing", probing_health)
    return runtime.asgi_app(on_startup=[start], on_shutdown=[stop])
