from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from faststream.asgi import AsgiFastStream

from lifeboat.common import subjects
from lifeboat.common.bus import listen
from lifeboat.common.events import (
    FailoverRequested,
    NodeHealth,
    NodeRejoinRequested,
    SwitchoverRequested,
)
from lifeboat.common.health import ComponentHealth, Status, component
from lifeboat.common.runtime import ServiceRuntime, cluster_file_check
from lifeboat.failover.decide import Request
from lifeboat.failover.service import ClusterLoop, run_forever
from lifeboat.failover.settings import FailoverSettings

SERVICE = "failover"


def _typed(
    handler: Callable[[Request], Awaitable[None]], model: type[Request]
) -> Callable[[Request], Awaitable[None]]:
    """The handler, annotated with the one model FastStream should validate (and document)."""

    async def handle(request: Request) -> None:
        await handler(request)

    handle.__annotations__ = {"request": model, "return": None}
    handle.__name__ = f"on_{model.__name__}"
    return handle


def build_app(settings: FailoverSettings) -> AsgiFastStream:
    runtime = ServiceRuntime(SERVICE, settings)
    runtime.health.add("clusters", cluster_file_check(settings))
    loops: dict[str, ClusterLoop] = {}
    tasks: list[asyncio.Task[None]] = []

    # Every instance needs every report to decide alone: a plain subscription, not a shared
    # durable consumer.
    @listen(runtime.broker, subjects.NODE_HEALTH, title="failover-node-health")
    async def on_health(report: NodeHealth) -> None:
        loop = loops.get(report.cluster)
        if loop is not None:
            loop.observe(report)

    async def on_request(request: Request) -> None:
        loop = loops.get(request.cluster)
        if loop is not None:
            loop.request(request)

    requests: tuple[tuple[subjects.Topic, type[Request]], ...] = (
        (subjects.FAILOVER_REQUESTED, FailoverRequested),
        (subjects.SWITCHOVER_REQUESTED, SwitchoverRequested),
        (subjects.NODE_REJOIN_REQUESTED, NodeRejoinRequested),
    )
    for topic, model in requests:
        # Every instance hears every request; only the lease holder acts on it.
        listen(runtime.broker, topic, title=f"failover-{topic.name}")(_typed(on_request, model))

    async def start() -> None:
        for cluster in settings.clusters.clusters:
            loops[cluster.name] = ClusterLoop(cluster, settings, runtime)
        for loop in loops.values():
            tasks.append(asyncio.create_task(loop.keep_lease(), name=f"lease-{loop.cluster.name}"))
        tasks.append(
            asyncio.create_task(
                run_forever(list(loops.values()), settings.loop_interval_seconds), name="failover"
            )
        )

    async def stop() -> None:
        """Cancel the loops, give them the grace period, no more, and hand the leases back
        (a successor then need not wait out their TTL)."""
        for task in tasks:
            task.cancel()
        # A rejoin under way is given the same grace before it is cancelled (a local rejoin
        # clones beside the old data and swaps, so a cancelled one leaves the old in place).
        rejoins = [t for loop in loops.values() for t in loop.rejoins.values() if not t.done()]
        if tasks or rejoins:
            await asyncio.wait([*tasks, *rejoins], timeout=settings.shutdown_grace_seconds)
        for task in rejoins:
            task.cancel()
        await asyncio.gather(*(loop.release() for loop in loops.values()))

    async def leadership() -> ComponentHealth:
        held = [name for name, loop in loops.items() if loop.lease is not None]
        message = f"leader for {', '.join(held)}" if held else "standing by (not leader)"
        return component("leadership", Status.HEALTHY, message, leader=bool(held))

    runtime.health.add("leadership", leadership)
    return runtime.asgi_app(on_startup=[start], on_shutdown=[stop])
