"""A 3-server JetStream cluster: killing any one server loses no lease, epoch or event."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import nats
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError

from lifeboat.common import subjects
from lifeboat.common.bus import wait_for_leader
from lifeboat.common.events import FailoverCompleted, FailoverKind, Source
from lifeboat.common.kv import (
    LEASE_BUCKET,
    TOPOLOGY_BUCKET,
    LeaseStore,
    StaleReadError,
    TopologyStore,
    Versioned,
    ensure_buckets,
)
from lifeboat.common.runtime import ServiceRuntime
from lifeboat.common.settings import ServiceSettings
from lifeboat.common.state import Topology
from lifeboat.devstack.procs import eventually, free_port
from lifeboat.devstack.servers import NatsCluster
from lifeboat.devstack.throwaway import nats_cluster_on_free_ports

T = TypeVar("T")

SRC = Source(service="failover", instance="f-1")


@pytest.fixture
async def cluster(workdir: Path) -> AsyncIterator[NatsCluster]:
    servers = nats_cluster_on_free_ports(workdir / f"nats-cluster-{free_port()}")
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


async def first_write(
    write: Callable[[], Awaitable[T]], timeout: float = 30, *, idempotent: bool = False
) -> T:
    """The first write to a just-created R3 bucket, retried while the cluster still elects
    (on a loaded machine JetStream may answer "no responders" for seconds); what the test
    is about, losing a leader later, gets no retry. A request that timed out may have
    landed, so it is tried again only where repeating it is harmless (`idempotent`)."""
    retried: tuple[type[Exception], ...] = (NoRespondersError, NoStreamResponseError)
    if idempotent:
        retried = (*retried, NatsTimeoutError)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await write()
        except retried:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def declared_buckets(js: JetStreamContext, timeout: float = 60) -> None:
    """The R3 topology and lease buckets of a just-started cluster, each with a leader.
    Declaring them is idempotent, so a request that timed out while the cluster still
    elects its meta leader is tried again (CI saw one time out after 5 s)."""
    streams = await first_write(
        lambda: ensure_buckets(js, replicas=3), timeout=timeout, idempotent=True
    )
    for stream in streams:
        await wait_for_leader(js, stream, timeout=timeout)


async def test_losing_the_kv_leader_changes_nothing(cluster: NatsCluster) -> None:
    settings = ServiceSettings(nats_url=cluster.url, nats_replicas=3, instance_id="f-1")
    runtime = ServiceRuntime("failover", settings)
    await runtime.connect()
    try:
        js = runtime.broker.config.connection_state.stream
        for stream in (subjects.STREAM_NAME, subjects.HEARTBEAT_STREAM_NAME):
            assert (await js.stream_info(stream)).config.num_replicas == 3
        for bucket in (TOPOLOGY_BUCKET, LEASE_BUCKET):
            assert (await js.stream_info(f"KV_{bucket}")).config.num_replicas == 3

        topologies, leases = await TopologyStore.open(js), await LeaseStore.open(js)
        lease = await first_write(lambda: leases.acquire("failover-main", "f-1", ttl_seconds=10))
        assert lease is not None
        # The topology bucket's stream may elect its leader after the lease bucket's.
        topo = await first_write(
            lambda: topologies.create(Topology(cluster="main", primary="node1"))
        )
        event = FailoverCompleted(
            cluster="main",
            source=SRC,
            epoch=1,
            kind=FailoverKind.AUTOMATIC,
            old_primary="node1",
            new_primary="node2",
            reason="drill",
            total_seconds=1.0,
        )
        await runtime.publisher.publish(event)

        # Kill the server that leads the topology bucket's stream: the others elect a new
        # leader and carry on with what a majority acknowledged.
        info = await js.stream_info(f"KV_{TOPOLOGY_BUCKET}")
        assert info.cluster is not None
        leader = next(s for s in cluster.servers if s.name == info.cluster.leader)
        leader.stop()

        async def renewed() -> object:
            try:
                return await leases.renew(lease)
            except Exception:
                return None

        async with asyncio.timeout(30):
            renewed_lease = await eventually(renewed, timeout=30, what="the lease renewal")
        assert renewed_lease is not None
        moved = await eventually(
            lambda: _cas(topologies, topo.value.promoted("node2", None), topo.revision),
            timeout=30,
            what="a topology write on the survivors",
        )
        assert moved.value.epoch == 1
        kept = await js.get_last_msg(subjects.STREAM_NAME, event.subject())
        assert FailoverCompleted.model_validate_json(kept.data or b"") == event
    finally:
        await runtime.broker.stop()


async def _cas(
    store: TopologyStore, topology: Topology, revision: int
) -> Versioned[Topology] | None:
    try:
        return await store.compare_and_set(topology, revision)
    except Exception:
        return None


async def test_a_client_of_the_cluster_moves_to_another_server(cluster: NatsCluster) -> None:
    nc = await nats.connect(cluster.url.split(","), connect_timeout=5, reconnect_time_wait=0.5)
    try:
        first = nc.connected_url
        assert first is not None
        next(s for s in cluster.servers if str(s.ports.client) == str(first.port)).stop()
        await eventually(
            lambda: nc.is_connected and nc.connected_url is not None and nc.connected_url != first,
            timeout=30,
            what="the client to reconnect elsewhere",
        )
    finally:
        await nc.close()


async def test_an_agents_check_of_its_read_does_not_refuse_the_leaders_writes(
    cluster: NatsCluster,
) -> None:
    """An agent's `read_current` writes on the condition that the record is at the revision
    it read; while such a write is being agreed on, the cluster refuses any other write
    conditioned on that record (the leader's compare-and-set) as in flight. The leader's
    write is tried again while the record stays at its revision: none is lost to it."""
    nc = await nats.connect(cluster.url.split(","), connect_timeout=5)
    try:
        js = nc.jetstream(timeout=5)
        await declared_buckets(js)
        store = await TopologyStore.open(js)
        current = await first_write(lambda: store.create(Topology(cluster="main", primary="node1")))
        stop = asyncio.Event()
        checks = 0

        async def agent() -> None:
            nonlocal checks
            while not stop.is_set():
                with contextlib.suppress(StaleReadError):  # overtaken by the leader's writes
                    await store.read_current("main", "node1")
                checks += 1

        checking = asyncio.create_task(agent())
        deadline = time.monotonic() + 60
        try:
            # At least 100 writes, and as many as it takes to overlap 50 of the agent's
            # checks (how many fit beside 100 writes depends on the machine's speed).
            while (current.value.epoch < 100 or checks <= 50) and time.monotonic() < deadline:
                moved = current.value.model_copy(update={"epoch": current.value.epoch + 1})
                current = await store.compare_and_set(moved, current.revision)
        finally:
            stop.set()
            await checking
        assert current.value.epoch >= 100
        assert checks > 50, checks
    finally:
        await nc.close()
