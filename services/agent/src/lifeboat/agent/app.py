from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from nats.aio.msg import Msg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lifeboat.agent.agent import Agent
from lifeboat.agent.failsafe import VIEW_PATH
from lifeboat.agent.settings import AgentSettings
from lifeboat.common.events import (
    DeadLetter,
    Envelope,
    NodeRejoinOrdered,
    NodeRestoreOrdered,
    NodeStartRequested,
    NodeStopRequested,
    UndecodableEventError,
    decode_event,
)
from lifeboat.common.health import ComponentHealth, Status, component
from lifeboat.common.kv import LeaseStore, TopologyStore
from lifeboat.common.runtime import ServiceRuntime
from lifeboat.common.subjects import (
    NODE_REJOIN_ORDERED,
    NODE_RESTORE_ORDERED,
    NODE_START_REQUESTED,
    NODE_STOP_REQUESTED,
)
from lifeboat.pg.binaries import find_bindir
from lifeboat.pg.datadir import DataDir
from lifeboat.pg.osuser import OsUser

SERVICE = "agent"
log = logging.getLogger(__name__)


def build_app(settings: AgentSettings) -> Starlette:
    # Ready on the guard alone: an agent without NATS still guards its node (that is when it
    # matters most), so it must start, answer and stay up without it.
    runtime = ServiceRuntime(SERVICE, settings, ready_on=("guard",))
    data = DataDir(
        settings.agent_data_dir,
        OsUser.for_postgres(settings.pg_os_user),
        find_bindir(settings.pg_bindir),
    )
    client = httpx.AsyncClient()
    agent = Agent(settings, data, runtime.source, runtime.publisher.publish, client)
    tasks: list[asyncio.Task[None]] = []
    restores: set[asyncio.Task[None]] = set()

    async def connect() -> None:
        """NATS in the background, however long it takes: the guard does not wait for it.
        A connection only: declaring the streams at R3 (the services' start) can take longer
        than the bound on a cluster that just formed, and the agent, which starts first,
        would stop its primary meanwhile. Events wait in the outbox until the stream is."""
        while True:
            try:
                await runtime.broker.connect()
                js = runtime.broker.config.connection_state.stream
                # Retried with the connection: an agent whose buckets never opened would
                # never confirm its primary again (nor renew its lease).
                leases, store = await LeaseStore.open(js), await TopologyStore.open(js)
                break
            except Exception as exc:
                log.warning("NATS not reachable yet (%s); the guard runs without it", exc)
                await asyncio.sleep(1)
        agent.leases, agent.store = leases, store
        nc = runtime.broker.config.connection_state.connection
        mine = {"cluster": settings.agent_cluster, "node": settings.agent_node}
        await nc.subscribe(NODE_STOP_REQUESTED.subject(**mine), cb=on_stop_request)
        await nc.subscribe(NODE_START_REQUESTED.subject(**mine), cb=on_start_request)
        # Its own subscription: a rejoin takes minutes, and stops are not queued behind it.
        await nc.subscribe(NODE_REJOIN_ORDERED.subject(**mine), cb=on_rejoin_order)
        await nc.subscribe(NODE_RESTORE_ORDERED.subject(**mine), cb=on_restore_order)
        runtime.start_heartbeats()
        await runtime.declare(give_up_after=float("inf"))  # then the outbox can empty

    def order(msg: Msg, model: type[Envelope], *, epoch: bool = True) -> Envelope | None:
        """The request on `msg` (the leader's carry its epoch), or None once a malformed one
        is a dead letter."""
        try:
            request = decode_event(msg.data)
            if not isinstance(request, model) or (
                epoch and getattr(request, "epoch", None) is None
            ):
                with_epoch = " with an epoch" if epoch else ""
                raise UndecodableEventError(f"not a {model.topic.name}{with_epoch}")
        except UndecodableEventError as exc:
            agent.queue(
                DeadLetter(
                    source=runtime.source,
                    consumer=f"agent-{settings.agent_node}",
                    original_subject=msg.subject,
                    reason=str(exc),
                    payload=msg.data.decode("utf-8", errors="replace"),
                )
            )
            return None
        return request

    async def on_stop_request(msg: Msg) -> None:
        if isinstance(request := order(msg, NodeStopRequested), NodeStopRequested):
            agent.queue(await agent.stop_requested(request))

    async def on_start_request(msg: Msg) -> None:
        if isinstance(request := order(msg, NodeStartRequested), NodeStartRequested):
            agent.queue(await agent.start_requested(request))

    async def on_rejoin_order(msg: Msg) -> None:
        if isinstance(request := order(msg, NodeRejoinOrdered), NodeRejoinOrdered):
            await agent.rejoin_ordered(request)

    async def on_restore_order(msg: Msg) -> None:
        # In a task of its own: a second order while one runs is refused at once, not queued
        # behind it for hours while its service has long given up and served another copy.
        if isinstance(request := order(msg, NodeRestoreOrdered, epoch=False), NodeRestoreOrdered):
            task = asyncio.create_task(agent.restore_ordered(request), name="restore")
            restores.add(task)
            task.add_done_callback(restores.discard)

    async def start() -> None:
        tasks.append(asyncio.create_task(agent.run(), name="guard"))
        tasks.append(asyncio.create_task(agent.run_publishing(), name="publishing"))
        tasks.append(asyncio.create_task(connect(), name="connect"))
        runtime.mark_ready()

    async def shutdown() -> None:
        runtime.mark_ready(False)
        await runtime.stop_heartbeats()
        for task in (*tasks, *restores):
            task.cancel()
        await asyncio.gather(*tasks, *restores, return_exceptions=True)
        await client.aclose()
        await runtime.broker.stop()

    async def guard_health() -> ComponentHealth:
        if agent.last_round_at is None:
            return component("guard", Status.DEGRADED, "no round finished yet")
        age = time.monotonic() - agent.last_round_at
        late = age > 3 * settings.agent_check_seconds + settings.agent_nats_timeout_seconds
        return component(
            "guard",
            Status.UNHEALTHY if late else Status.HEALTHY,
            agent.verdict.reason if agent.verdict else "",
            last_round_seconds_ago=round(age, 3),
            fences=agent.fences,
            outbox=len(agent.outbox),
        )

    runtime.health.add("guard", guard_health)

    async def view(request: Request) -> JSONResponse:
        return JSONResponse(agent.view().model_dump(mode="json"))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await start()
        try:
            yield
        finally:
            await shutdown()

    # Not the services' FastStream app: it starts its broker before it serves, and would not
    # start at all without NATS. The health routes are the same ASGI handlers.
    routes = [Route(VIEW_PATH, view), *(Route(p, h) for p, h in runtime.health_routes())]
    return Starlette(routes=routes, lifespan=lifespan)
