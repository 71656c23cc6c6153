"""The gateway's projection when every NATS server restarts: with the store kept, it hears the
heartbeats again (before, its heartbeat consumer, started by time, could not be recreated,
and every node's health read as unknown until the gateway itself was restarted); with the
store rolled back, its history follows the store."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import nats

from lifeboat.common.bus import ensure_streams, heartbeat_stream_config, stream_config
from lifeboat.common.events import NodeHealth, NodeRejoinRequested, Role, Source
from lifeboat.devstack.procs import eventually
from lifeboat.devstack.throwaway import nats_on_free_ports
from lifeboat.gateway.projection import Projection

MONITOR = Source(service="monitor", instance="monitor-restart")
GATEWAY = Source(service="gateway", instance="gateway-restart")


async def test_the_projection_hears_heartbeats_again_after_nats_restarted(
    workdir: Path, unique: str
) -> None:
    server = nats_on_free_ports(workdir / f"{unique}-nats")
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

        async def report(lag: int) -> None:
            event = NodeHealth(
                cluster=unique,
                node="node2",
                source=MONITOR,
                reachable=True,
                role=Role.STANDBY,
                lag_bytes=lag,
            )
            await js.publish(event.subject(), event.model_dump_json().encode())

        def heard(lag: int) -> bool:
            return any(getattr(s.event, "lag_bytes", None) == lag for s in projection.heartbeats)

        await report(1)  # before the start: within the backfill
        await projection.start(js, rewind_check_seconds=0.5)
        await eventually(lambda: heard(1), timeout=10, what="the backfilled report")

        server.stop()
        server.start()
        # Until the client is back, and its consumers with it, a publish may fail.
        for _ in range(60):
            try:
                await report(2)
                break
            except Exception:
                await asyncio.sleep(0.5)
        await eventually(lambda: heard(2), timeout=30, what="a report after the restart")
    finally:
        await projection.stop()
        await nc.close()
        server.stop()


async def test_the_history_follows_a_store_rolled_back_under_it(workdir: Path, unique: str) -> None:
    """The store copied back to an older state: the events it hands out again under sequence
    numbers the gateway had seen are in the history, and those it lost are not. Before, the
    history kept the lost ones and missed the new ones until the stream grew past its old end."""
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

        async def publish(count: int) -> list[str]:
            ids = []
            for _ in range(count):
                event = NodeRejoinRequested(cluster=unique, node="node2", source=GATEWAY)
                for _ in range(60):  # until the client is back after a restart
                    try:
                        await js.publish(event.subject(), event.model_dump_json().encode())
                        break
                    except Exception:
                        await asyncio.sleep(0.5)
                ids.append(str(event.event_id))
            return ids

        def history() -> list[str]:
            return [str(s.event.event_id) for s in projection.events]

        kept = await publish(3)
        await projection.start(js, rewind_check_seconds=0.5)
        server.stop()
        shutil.copytree(store, workdir / f"{unique}-copy")
        server.start()
        lost = await publish(5)
        await eventually(lambda: history() == kept + lost, timeout=30, what="every event")

        server.stop()
        shutil.rmtree(store)
        shutil.copytree(workdir / f"{unique}-copy", store)
        server.start()
        new = await publish(2)  # stored as 4 and 5 again
        await eventually(
            lambda: history() == kept + new,
            timeout=30,
            what=f"the history of the rolled-back store (has {len(history())} events)",
        )
        assert [s.seq for s in projection.events] == [1, 2, 3, 4, 5]
    finally:
        await projection.stop()
        await nc.close()
        server.stop()
