"""Shared state on JetStream KV against a real nats-server: topology CAS and leases."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.client import Client as NatsClient

from lifeboat.common.events import Role
from lifeboat.common.kv import ConflictError, LeaseLostError, LeaseStore, TopologyStore
from lifeboat.common.state import Topology


async def test_topology_create_read_and_compare_and_set(nc: NatsClient, unique: str) -> None:
    store = await TopologyStore.open(nc.jetstream())
    assert await store.get(unique) is None
    initial = Topology(
        cluster=unique,
        primary="node1",
        members={"node1": Role.PRIMARY, "node2": Role.STANDBY, "node3": Role.STANDBY},
    )
    created = await store.create(initial)
    with pytest.raises(ConflictError, match="already exists"):
        await store.create(initial)

    read = await store.get(unique)
    assert read is not None
    assert read.value == initial

    promoted = read.value.promoted("node2")
    assert promoted.epoch == 1
    assert promoted.members == {"node1": Role.STANDBY, "node2": Role.PRIMARY, "node3": Role.STANDBY}
    updated = await store.compare_and_set(promoted, read.revision)
    assert updated.revision > created.revision

    # A second writer still holding the old revision loses: no lost update.
    with pytest.raises(ConflictError, match="changed since revision"):
        await store.compare_and_set(read.value.promoted("node3"), read.revision)
    final = await store.get(unique)
    assert final is not None
    assert final.value.primary == "node2"
    assert final.value.epoch == 1


async def test_two_contenders_racing_for_one_lease_never_both_win(
    nc: NatsClient, unique: str
) -> None:
    store = await LeaseStore.open(nc.jetstream())
    for round_no in range(20):
        name = f"{unique}-{round_no}"
        a, b = await asyncio.gather(store.acquire(name, "A", 5), store.acquire(name, "B", 5))
        winners = [lease for lease in (a, b) if lease is not None]
        assert len(winners) == 1, f"round {round_no}: {winners}"
        current = await store.current(name)
        assert current is not None
        assert current.value.holder == winners[0].value.holder


async def test_a_holder_that_stops_renewing_loses_the_lease_after_its_ttl(
    nc: NatsClient, unique: str
) -> None:
    store = await LeaseStore.open(nc.jetstream())
    a = await store.acquire(unique, "A", 2)
    assert a is not None
    assert await store.acquire(unique, "B", 2) is None
    started = time.monotonic()
    b = None
    while b is None and time.monotonic() - started < 10:
        await asyncio.sleep(0.1)
        b = await store.acquire(unique, "B", 2)
    elapsed = time.monotonic() - started
    assert b is not None
    assert b.value.holder == "B"
    assert 1.0 <= elapsed <= 4.0, elapsed
    with pytest.raises(LeaseLostError, match="no longer held by 'A'"):
        await store.renew(a)  # A woke up late: it must find out, not clobber B


async def test_renewing_keeps_the_lease_past_its_ttl(nc: NatsClient, unique: str) -> None:
    store = await LeaseStore.open(nc.jetstream())
    lease = await store.acquire(unique, "A", 1)
    assert lease is not None
    for _ in range(6):  # 3 s: three TTLs, renewed twice per TTL
        await asyncio.sleep(0.5)
        lease = await store.renew(lease)
        assert await store.acquire(unique, "B", 1) is None
    # Renewal kept the TTL: once A stops, the lease still expires.
    deadline = time.monotonic() + 5
    while await store.acquire(unique, "B", 1) is None:
        assert time.monotonic() < deadline, "a renewed lease must still expire"
        await asyncio.sleep(0.1)


async def test_acquire_by_the_holder_renews_and_release_frees_at_once(
    nc: NatsClient, unique: str
) -> None:
    store = await LeaseStore.open(nc.jetstream())
    first = await store.acquire(unique, "A", 30)
    assert first is not None
    again = await store.acquire(unique, "A", 30)
    assert again is not None
    assert again.revision > first.revision
    assert await store.release(first) is False  # stale revision: not ours to delete any more
    assert await store.release(again) is True
    assert await store.current(unique) is None
    taken = await store.acquire(unique, "B", 30)
    assert taken is not None
    assert taken.value.holder == "B"


async def test_lease_ttl_must_be_positive(nc: NatsClient, unique: str) -> None:
    store = await LeaseStore.open(nc.jetstream())
    with pytest.raises(ValueError, match="at least one second"):
        await store.acquire(unique, "A", 0)
