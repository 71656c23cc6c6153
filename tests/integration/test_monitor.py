"""The monitor's probing against the real replicated cluster (events collected in memory here;
tests/integration/test_services.py follows them through NATS)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest
from psycopg import sql

from lifeboat.common.clusters import ClustersFile
from lifeboat.common.events import (
    ClusterEvent,
    NodeAdmissionChanged,
    NodeDown,
    NodeHealth,
    NodeUp,
    Role,
    Source,
)
from lifeboat.devstack.postgres import PgCluster
from lifeboat.devstack.procs import eventually
from lifeboat.monitor.monitor import Monitor
from lifeboat.monitor.probe import NodeProber
from lifeboat.monitor.transitions import Thresholds


class Sink:
    def __init__(self) -> None:
        self.events: list[ClusterEvent] = []
        self.fail = False

    async def publish(self, event: ClusterEvent) -> None:
        if self.fail:
            raise ConnectionError("NATS is away")
        self.events.append(event)

    def health(self) -> list[NodeHealth]:
        return [e for e in self.events if isinstance(e, NodeHealth)]


@pytest.fixture
async def monitor(pg_cluster: PgCluster) -> AsyncIterator[tuple[Monitor, Sink]]:
    spec = pg_cluster.spec()
    password = pg_cluster.passwords.superuser
    probers = {
        (spec.name, n.name): NodeProber(
            spec.node_dsn(n, password, connect_timeout=1),
            1.0,
            knock_every=0.2,
            admission_every=0.2,
        )
        for n in spec.nodes
    }
    sink = Sink()
    m = Monitor(
        ClustersFile(clusters=(spec,)),
        probers,
        Source(service="monitor", instance="m-test"),
        sink.publish,
        interval=0.3,
        thresholds=Thresholds(failure_threshold=3),
        location="dc-test",
        outbox_size=1000,
    )
    publishing = asyncio.create_task(m.run_publishing())
    yield m, sink
    publishing.cancel()
    await m.close()


async def rounds(m: Monitor, count: int) -> None:
    for _ in range(count):
        await m.round()
    await asyncio.sleep(0.05)  # let the publisher drain


async def test_a_round_reports_roles_lsns_and_replication(monitor: tuple[Monitor, Sink]) -> None:
    m, sink = monitor
    await rounds(m, 2)
    latest = {h.node: h for h in sink.health()}
    assert set(latest) == {"node1", "node2", "node3"}
    primary, s2, s3 = latest["node1"], latest["node2"], latest["node3"]
    assert primary.role is Role.PRIMARY
    assert primary.writable is True
    assert primary.current_lsn is not None
    assert primary.timeline == 1
    assert {r.name: r.state for r in primary.replicas} == {
        "node2": "streaming",
        "node3": "streaming",
    }
    assert primary.slots == {"node2": True, "node3": True}
    for standby in (s2, s3):
        assert standby.role is Role.STANDBY
        assert standby.writable is False
        assert standby.upstream == "node1"
        assert standby.wal_receiver == "streaming"
        assert standby.receive_lsn is not None
        assert standby.lag_bytes is not None
        assert standby.lag_seconds is not None
        assert standby.lag_seconds < 1  # a quiet primary is not lag
        assert standby.monitor_location == "dc-test"
        assert standby.source.instance == "m-test"


async def test_a_stopped_standby_goes_down_after_the_threshold_and_comes_back(
    monitor: tuple[Monitor, Sink], pg_cluster: PgCluster
) -> None:
    m, sink = monitor
    node3 = pg_cluster.nodes[2]
    node3.stop(mode="immediate")
    try:
        await rounds(m, 2)
        assert not [e for e in sink.events if isinstance(e, NodeDown)]
        await rounds(m, 1)
        downs = [e for e in sink.events if isinstance(e, NodeDown)]
        assert [d.node for d in downs] == ["node3"]
        last = [h for h in sink.health() if h.node == "node3"][-1]
        assert last.reachable is False
        assert last.consecutive_failures == 3
        assert last.error
    finally:
        node3.start()
    await rounds(m, 1)
    ups = [e for e in sink.events if isinstance(e, NodeUp)]
    assert [(u.node, u.role) for u in ups] == [("node3", Role.STANDBY)]
    pg_cluster.wait_streaming()


async def test_a_frozen_node_never_stalls_the_others(
    monitor: tuple[Monitor, Sink], pg_cluster: PgCluster
) -> None:
    m, sink = monitor
    await rounds(m, 1)  # connections open
    node2 = pg_cluster.nodes[1]
    node2.freeze()
    try:
        started = time.monotonic()
        await m.round()
        assert time.monotonic() - started < 1.6
    finally:
        node2.thaw()
    await asyncio.sleep(0.05)
    last = {h.node: h for h in sink.health()}
    assert last["node2"].reachable is False
    assert last["node1"].reachable is True
    assert last["node3"].reachable is True


async def test_probing_goes_on_while_events_cannot_be_published(
    monitor: tuple[Monitor, Sink],
) -> None:
    m, sink = monitor
    sink.fail = True
    await rounds(m, 3)
    assert len(m.outbox) >= 9  # kept, not lost
    assert sink.health() == []
    sink.fail = False
    await eventually(lambda: not m.outbox, timeout=5, what="the outbox to drain", interval=0.1)
    assert len(sink.health()) >= 9


async def test_a_postmaster_that_accepts_no_new_connection_fails_the_node(
    monitor: tuple[Monitor, Sink], pg_cluster: PgCluster
) -> None:
    """Only the postmaster stopped: the monitor's open session still answers every query,
    while no client gets in. That is a node down, as clients see it."""
    m, sink = monitor
    await rounds(m, 1)  # the persistent connections are open
    postmaster = pg_cluster.nodes[1].pid()
    assert postmaster is not None
    os.kill(postmaster, signal.SIGSTOP)

    def node2_down() -> list[NodeDown]:
        return [e for e in sink.events if isinstance(e, NodeDown) and e.node == "node2"]

    async def round_bounded() -> list[NodeDown]:
        started = time.monotonic()
        await rounds(m, 1)
        assert time.monotonic() - started < 1.6  # a hung knock never stalls the round
        return node2_down()

    try:
        # A knock is due every 0.2 s here, then every round: 3 failed knocks in a row.
        await eventually(round_bounded, timeout=10, what="node2 down", interval=0)
    finally:
        os.kill(postmaster, signal.SIGCONT)
    (down,) = [e for e in sink.events if isinstance(e, NodeDown) and e.node == "node2"]
    assert "accepts no new connection" in down.reason
    assert not [e for e in sink.events if isinstance(e, NodeDown) and e.node != "node2"]
    await eventually(lambda: rounds_until_up(m, sink, "node2"), timeout=10, what="node2 up")


async def rounds_until_up(m: Monitor, sink: Sink, node: str) -> bool:
    await rounds(m, 1)
    return any(isinstance(e, NodeUp) and e.node == node for e in sink.events)


async def test_a_node_refusing_new_connections_raises_an_alert_not_a_failover(
    monitor: tuple[Monitor, Sink], pg_cluster: PgCluster
) -> None:
    m, sink = monitor
    await rounds(m, 1)
    database = sql.Identifier(pg_cluster.database)
    primary = pg_cluster.primary
    primary.execute(sql.SQL("alter database {} allow_connections false").format(database))

    def admission(accepting: bool) -> set[str]:
        return {
            e.node
            for e in sink.events
            if isinstance(e, NodeAdmissionChanged) and e.accepting is accepting
        }

    async def seen(accepting: bool) -> bool:
        await rounds(m, 1)
        await asyncio.sleep(0.1)  # full connections are tried every 0.2 s here
        return admission(accepting) == {"node1", "node2", "node3"}

    try:
        await eventually(lambda: seen(False), timeout=10, what="every node's refusal")
    finally:
        primary.execute(sql.SQL("alter database {} allow_connections true").format(database))
    refused = [e for e in sink.events if isinstance(e, NodeAdmissionChanged)]
    assert all("not currently accepting connections" in (e.reason or "") for e in refused)
    assert not [e for e in sink.events if isinstance(e, NodeDown)]
    assert all(h.reachable for h in sink.health())
    await eventually(lambda: seen(True), timeout=10, what="every node accepting again")
