"""The gateway's projection when every NATS server restarts: with the store kept, it hears the
heartbeats again (before, its heartbeat consumer, started by time, could not be recreated,
and every node's health read as unknown until the gateway itself was restarted); with the
store rolled back, its history follows the store."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext

from lifeboat.common.bus import ensure_streams, heartbeat_stream_config, stream_config
from lifeboat.common.events import Envelope, NodeHealth, NodeRejoinRequested, Role, Source
from lifeboat.devstack.procs import eventually
from lifeboat.devstack.servers import NatsServer
from lifeboat.devstack.throwaway import nats_on_free_ports
from lifeboat.gateway.projection import Projection

MONITOR = Source(service="monitor", instance="monitor-restart")
GATEWAY = Source(service="gateway", instance="gateway-restart")


@dataclass
class Bus:
    """A NATS server of its own with both streams, and a projection not started yet."""

    store: Path
    server: NatsServer
    js: JetStreamContext
    projection: Projection


@pytest.fixture
async def bus(workdir: Path, unique: str) -> AsyncIterator[Bus]:
    store = workdir / f"{unique}-nats"
    server = nats_on_free_ports(store)
    server.start()
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    projection = Projection()
    try:
        js = nc.jetstream()
        await ensure_streams(
            js,
            stream_config(max_age_seconds=3600, max_bytes=8 << 20, duplicate_window_seconds=60),
            heartbeat_stream_config(max_age_seconds=3600, max_bytes=8 << 20),
        )
        yield Bus(store, server, js, projection)
    finally:
        await projection.stop()
        await nc.close()
        server.stop()


async def publish_when_back(js: JetStreamContext, event: Envelope) -> None:
    """Published, retried until the client is back after a restart (and its consumers with
    it: until then a publish may fail)."""
    for _ in range(60):
        try:
            await js.publish(event.subject(), event.model_dump_json().encode())
            return
        except Exception:
            await asyncio.sleep(0.5)


async def test_the_projection_hears_heartbeats_again_after_nats_restarted(
    bus: Bus, unique: str
) -> None:
    js, projection = bus.js, bus.projection

    def health(lag: int) -> NodeHealth:
        return NodeHealth(
            cluster=unique,
            node="node2",
            source=MONITOR,
            reachable=True,
            role=Role.STANDBY,
            lag_bytes=lag,
        )

    def heard(lag: int) -> bool:
        return any(getattr(s.event, "lag_bytes", None) == lag for s in projection.heartbeats)

    before = health(1)  # before the start: within the backfill
    await js.publish(before.subject(), before.model_dump_json().encode())
    await projection.start(js, rewind_check_seconds=0.5)
    await eventually(lambda: heard(1), timeout=10, what="the backfilled report")

    bus.server.stop()
    bus.server.start()
    await publish_when_back(js, health(2))
    await eventually(lambda: heard(2), timeout=30, what="a report after the restart")


async def test_the_history_follows_a_store_rolled_back_under_it(bus: Bus, unique: str) -> None:
    """The store copied back to an older state: the events it hands out again under sequence
    numbers the gateway had seen are in the history, and those it lost are not. Before, the
    history kept the lost ones and missed the new ones until the stream grew past its old end."""
    js, projection, server, store = bus.js, bus.projection, bus.server, bus.store
    copy = store.with_name(f"{unique}-copy")

    async def publish(count: int) -> list[str]:
        ids = []
        for _ in range(count):
            event = NodeRejoinRequested(cluster=unique, node="node2", source=GATEWAY)
            await publish_when_back(js, event)
            ids.append(str(event.event_id))
        return ids

    def history() -> list[str]:
        return [str(s.event.event_id) for s in projection.events]

    kept = await publish(3)
    await projection.start(js, rewind_check_seconds=0.5)
    server.stop()
    shutil.copytree(store, copy)
    server.start()
    lost = await publish(5)
    await eventually(lambda: history() == kept + lost, timeout=30, what="every event")

    server.stop()
    shutil.rmtree(store)
    shutil.copytree(copy, store)
    server.start()
    new = await publish(2)  # stored as 4 and 5 again
    await eventually(
        lambda: history() == kept + new,
        timeout=30,
        what=f"the history of the rolled-back store (has {len(history())} events)",
    )
    assert [s.seq for s in projection.events] == [1, 2, 3, 4, 5]
