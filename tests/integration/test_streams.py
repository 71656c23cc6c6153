"""History is never lost to heartbeats: the two streams, against a private nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamConfig

from lifeboat.common import subjects
from lifeboat.common.bus import ensure_streams, heartbeat_stream_config, stream_config
from lifeboat.common.events import FailoverCompleted, FailoverKind, NodeHealth, Source
from lifeboat.common.runtime import ServiceRuntime
from lifeboat.common.settings import ServiceSettings
from lifeboat.devstack.procs import free_port
from lifeboat.devstack.servers import NatsPorts, NatsServer

SRC = Source(service="monitor", instance="m-1")


@pytest.fixture
async def private_nats(workdir: Path) -> AsyncIterator[tuple[str, NatsClient]]:
    server = NatsServer(
        workdir / f"nats-streams-{free_port()}", NatsPorts(free_port(), free_port())
    )
    server.start()
    try:
        client = await nats.connect(server.url, connect_timeout=5)
        try:
            yield server.url, client
        finally:
            await client.close()
    finally:
        server.stop()


async def test_an_old_history_stream_lets_go_of_heartbeats(
    private_nats: tuple[str, NatsClient],
) -> None:
    """A stream declared by an earlier version captured `node.>`; declaring again moves
    node.health to the heartbeat stream (streams may not overlap) and keeps the history."""
    _, nc = private_nats
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=subjects.STREAM_NAME, subjects=["node.>", "failover.>"]))
    await js.publish("failover.completed.main", b"{}", stream=subjects.STREAM_NAME)
    await ensure_streams(
        js,
        stream_config(max_age_seconds=3600, max_bytes=10**8, duplicate_window_seconds=60),
        heartbeat_stream_config(max_age_seconds=600, max_bytes=10**7),
    )
    history = await js.stream_info(subjects.STREAM_NAME)
    beats = await js.stream_info(subjects.HEARTBEAT_STREAM_NAME)
    assert "node.health.>" not in (history.config.subjects or [])
    assert set(beats.config.subjects or []) == set(subjects.HEARTBEAT_STREAM_SUBJECTS)
    assert history.state.messages == 1


async def test_a_flood_of_heartbeats_evicts_no_history(
    private_nats: tuple[str, NatsClient],
) -> None:
    url, nc = private_nats
    settings = ServiceSettings(
        nats_url=url, instance_id="m-1", heartbeats_max_bytes=64 * 1024, events_max_bytes=64 * 1024
    )
    runtime = ServiceRuntime("monitor", settings)
    await runtime.connect()
    try:
        done = FailoverCompleted(
            cluster="main",
            source=SRC,
            epoch=2,
            kind=FailoverKind.AUTOMATIC,
            old_primary="node1",
            new_primary="node2",
            reason="node1 unreachable",
            total_seconds=2.5,
        )
        await runtime.publisher.publish(done)
        # Far more heartbeats than either stream's byte limit holds.
        for i in range(400):
            report = NodeHealth(
                cluster="main", node=f"node{i % 3 + 1}", source=SRC, reachable=True, error="x" * 200
            )
            await runtime.publisher.publish(report)
        js = nc.jetstream()
        beats = await js.stream_info(subjects.HEARTBEAT_STREAM_NAME)
        assert beats.state.bytes <= 64 * 1024
        assert beats.state.messages < 400  # the oldest heartbeats went
        kept = await js.get_last_msg(subjects.STREAM_NAME, done.subject())
        assert FailoverCompleted.model_validate_json(kept.data or b"") == done
    finally:
        await runtime.broker.stop()
