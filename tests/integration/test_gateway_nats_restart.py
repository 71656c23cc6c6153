"""The gateway's projection when every NATS server restarts (the store kept): it hears the
heartbeats again. Before, its heartbeat consumer (started by time) could not be recreated,
and every node's health read as unknown until the gateway itself was restarted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats

from lifeboat.common.bus import ensure_streams, heartbeat_stream_config, stream_config
from lifeboat.common.events import NodeHealth, Role, Source
from lifeboat.devstack.procs import eventually
from lifeboat.devstack.throwaway import nats_on_free_ports
from lifeboat.gateway.projection import Projection

MONITOR = Source(service="monitor", instance="monitor-restart")


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
        await projection.start(js)
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
