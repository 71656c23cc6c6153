"""Which holder an agent may take its node's lease from (lifeboat.agent.claim), against an
in-memory lease store with the real one's compare-and-set on revisions."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest

from lifeboat.agent.claim import Claim, LeaseConflictError
from lifeboat.common.kv import LeaseLostError, LeaseStore, Versioned
from lifeboat.common.state import Lease

NAME = "agent-main-node1"
PLACE = "boot-1:64768:1234"  # the boot, and the lock file's device and inode


class Store:
    """One lease, its revision bumped by every write, as JetStream's per-subject sequence."""

    def __init__(self, holder: str | None = None) -> None:
        self.held: Versioned[Lease] | None = None
        self.revision = 0
        if holder is not None:
            self.write(holder)

    def write(self, holder: str) -> Versioned[Lease]:
        now = datetime.now(UTC)
        self.revision += 1
        lease = Lease(name=NAME, holder=holder, ttl_seconds=30, acquired_at=now, renewed_at=now)
        self.held = Versioned(lease, self.revision)
        return self.held

    async def acquire(
        self, name: str, holder: str, ttl: int, *, guard_seconds: float
    ) -> Versioned[Lease] | None:
        if self.held is None:
            return self.write(holder)
        return self.write(holder) if self.held.value.holder == holder else None

    async def current(self, name: str) -> Versioned[Lease] | None:
        return self.held

    async def renew(self, lease: Versioned[Lease]) -> Versioned[Lease]:
        if self.held is None or self.held.revision != lease.revision:
            raise LeaseLostError("wrong last sequence")
        return self.write(lease.value.holder)

    async def take_over(
        self, held: Versioned[Lease], holder: str, ttl: int, *, guard_seconds: float
    ) -> Versioned[Lease]:
        if self.held is None or self.held.revision != held.revision:
            raise LeaseLostError("wrong last sequence")
        return self.write(holder)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])  # the module's clock
    return now


def mine(*, locked: bool = True) -> Claim:
    identity_file = Path("/d/.data.lifeboat-agent-id")
    return Claim(NAME, "main/node1", "id-a", identity_file, 30, PLACE, locked=locked)


async def renew(c: Claim, store: Store) -> None:
    await c.renew(cast(LeaseStore, store), 5.0)


async def test_a_free_lease_is_taken_and_then_renewed(clock: list[float]) -> None:
    store, c = Store(), mine()
    await renew(c, store)
    await renew(c, store)
    assert store.held is not None
    assert store.held.value.holder == c.holder
    assert store.revision == 2


async def test_a_predecessor_on_this_host_is_taken_over_at_once(clock: list[float]) -> None:
    store = Store(f"main/node1/id-a/{PLACE}/0ld0")  # a process that is gone: we hold the lock
    c = mine()
    await renew(c, store)
    assert store.held is not None
    assert store.held.value.holder == c.holder


async def test_without_the_lock_the_same_place_proves_nothing(clock: list[float]) -> None:
    store, c = Store(f"main/node1/id-a/{PLACE}/0ld0"), mine(locked=False)
    with pytest.raises(LeaseLostError):
        await renew(c, store)
    clock[0] += 6.1  # the holder's bound (5 s) and the margin
    await renew(c, store)


@pytest.mark.parametrize(
    "found",
    [
        "main/node1/id-a/boot-9:64768:1234/0ld0",
        "main/node1/id-a/boot-1:64768:999/0ld0",
        "main/node1/id-a",
        "main/node1",
    ],
    ids=["another-boot", "another-lock-file", "before-places", "before-identities"],
)
async def test_the_same_identity_elsewhere_is_taken_once_nobody_renews_it(
    clock: list[float], found: str
) -> None:
    store, c = Store(found), mine()
    with pytest.raises(LeaseLostError) as watching:
        await renew(c, store)
    assert not isinstance(watching.value, LeaseConflictError)  # a failed read, no conflict
    clock[0] += 5.9
    with pytest.raises(LeaseLostError):  # the leader would not count it stopped yet
        await renew(c, store)
    clock[0] += 0.2  # the holder's bound (5 s) and the margin, unrenewed
    await renew(c, store)
    assert store.held is not None
    assert store.held.value.holder == c.holder


async def test_the_same_identity_renewed_while_watched_is_a_duplicate_for_good(
    clock: list[float],
) -> None:
    clone = "main/node1/id-a/boot-9:64768:1234/c10e"
    store, c = Store(clone), mine()
    with pytest.raises(LeaseLostError):
        await renew(c, store)
    store.write(clone)  # the clone renews
    clock[0] += 1
    with pytest.raises(LeaseConflictError, match="renewed by another process"):
        await renew(c, store)
    store.held = None  # even once it is gone
    with pytest.raises(LeaseConflictError):
        await renew(c, store)
    assert c.conflicting(clock[0] + 60) is not None  # for good


async def test_lost_to_another_process_of_the_same_identity_it_is_not_taken_back(
    clock: list[float],
) -> None:
    store, c = Store(), mine()
    await renew(c, store)
    store.write("main/node1/id-a/boot-9:64768:1234/c10e")  # a clone took it over
    with pytest.raises(LeaseConflictError, match="was taken by another process"):
        await renew(c, store)
    clock[0] += 5
    with pytest.raises(LeaseConflictError):
        await renew(c, store)


async def test_another_agent_is_refused_while_it_holds_it_then_not(clock: list[float]) -> None:
    store, c = Store("main/node1/id-b/boot-1:1:2/0the"), mine()
    with pytest.raises(LeaseConflictError, match="held by another agent"):
        await renew(c, store)
    assert c.conflicting(clock[0]) is not None
    assert c.conflicting(clock[0] + 31) is None  # the conflict lapses with the lease's TTL
    store.held = None  # it expired
    await renew(c, store)
    assert c.conflicting(clock[0]) is None


async def test_its_own_lease_after_a_failed_renewal_is_renewed_not_a_conflict(
    clock: list[float],
) -> None:
    store, c = Store(), mine()
    await renew(c, store)
    c.lease = None  # a renewal that failed (a 503), the store still holding ours,

    async def refused(*_: object, **__: object) -> None:  # and acquire's own renewal too
        return None

    store.acquire = refused  # type: ignore[method-assign]
    await renew(c, store)
    assert store.held is not None
    assert store.held.value.holder == c.holder
    assert c.duplicate is None
