"""Typed access to the JetStream KV buckets behind Lifeboat's shared state.

Every write is a compare-and-swap on the key's revision, so two services never overwrite each
other's decision unknowingly. Leases expire on their own: they are written with a per-message
TTL, and renewed by a JetStream publish that carries both the TTL and the expected last
sequence of the key, because `KeyValue.update` would drop the TTL and make a renewed lease
immortal.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue
from pydantic import BaseModel

from lifeboat.common.state import Lease, Topology
from lifeboat.common.subjects import MAINTENANCE_BUCKET

TOPOLOGY_BUCKET = "lifeboat_topology"
LEASE_BUCKET = "lifeboat_leases"
NAME_MAX = 63  # a lease's name is a `Name`
# The buckets that decide what failover may do: replicated with the streams.
BUCKETS = (TOPOLOGY_BUCKET, LEASE_BUCKET, MAINTENANCE_BUCKET)

M = TypeVar("M", bound=BaseModel)


class ConflictError(RuntimeError):
    """The key changed since it was read (or exists when it should not)."""


class LeaseLostError(RuntimeError):
    """The lease is no longer ours: it expired, or another holder has it."""


@dataclass(frozen=True)
class Versioned(Generic[M]):
    value: M
    revision: int


async def open_bucket(js: JetStreamContext, bucket: str, *, history: int = 1) -> KeyValue:
    """The bucket, created on first use with per-message TTLs allowed."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(bucket=bucket, history=history, storage=StorageType.FILE)
        )


async def ensure_buckets(js: JetStreamContext, *, replicas: int = 1) -> list[str]:
    """Create the topology and lease buckets, or bring them to `replicas` copies.

    On a JetStream cluster the buckets that decide leadership must be replicated (R3): a
    write is acknowledged only once a majority of servers holds it, so losing one server
    neither loses nor rolls back a lease, an epoch or a topology. Returns their streams.
    """
    for bucket in BUCKETS:
        config = KeyValueConfig(
            bucket=bucket, history=1, storage=StorageType.FILE, replicas=replicas
        )
        try:
            kv = await js.key_value(bucket)
        except BucketNotFoundError:
            await js.create_key_value(config)
            continue
        status = await kv.status()
        if status.stream_info.config.num_replicas != replicas:
            stream = status.stream_info.config
            stream.num_replicas = replicas
            await js.update_stream(stream)
    return [f"KV_{bucket}" for bucket in BUCKETS]


async def _get(kv: KeyValue, key: str, model: type[M]) -> Versioned[M] | None:
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    if entry.value is None or entry.revision is None:
        return None
    return Versioned(model.model_validate_json(entry.value), entry.revision)


# JetStream's refusals of a write that expected a subject's last sequence: another sequence
# is the last, or another such write to the subject is still being agreed on (in flight).
WRONG_LAST_SEQUENCE = (10071, 10164)
CURRENT_TRIES = 3  # reads a `read_current` makes before it gives up
CAS_TRIES = 5  # a compare-and-set refused while the record stays at its revision is retried


class StaleReadError(RuntimeError):
    """The topology could not be read as a majority of the NATS servers holds it."""


class TopologyStore:
    def __init__(self, js: JetStreamContext, kv: KeyValue) -> None:
        self._js = js
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> TopologyStore:
        return cls(js, await open_bucket(js, TOPOLOGY_BUCKET, history=16))

    async def get(self, cluster: str) -> Versioned[Topology] | None:
        return (await self.read(cluster))[0]

    async def read(self, cluster: str) -> tuple[Versioned[Topology] | None, int]:
        """The record (None: none, or deleted) and the revision its key is at: the record's,
        a delete's marker's, 0 when the key never had one."""
        try:
            entry = await self._kv.get(cluster)
        except KeyNotFoundError as exc:  # a deleted key's error carries the marker's revision
            marker = getattr(exc, "entry", None)
            return None, (marker.revision or 0) if marker is not None else 0
        if entry.value is None or entry.revision is None:
            return None, entry.revision or 0
        return Versioned(Topology.model_validate_json(entry.value), entry.revision), entry.revision

    async def read_current(
        self,
        cluster: str,
        node: str,
        first: tuple[Versioned[Topology] | None, int] | None = None,
    ) -> Versioned[Topology] | None:
        """The record as a majority of the servers holds it: a read (`first`, if already
        made) followed by a write that a majority acknowledged on the condition that the
        key was still at the revision read. Read again while a newer write overtook it;
        StaleReadError after `CURRENT_TRIES` reads.

        A read alone is answered by whichever server believes it leads the bucket's
        stream — also one cut off from its peers that has not stepped down yet (seconds),
        which answers with the record as it was before the others took a newer one. The
        conditional write (JetStream's expected last sequence, checked against the record's
        subject) is acknowledged only once a majority holds it, and only while that revision
        is the newest; so the read it follows is one no newer write had overtaken when it
        was acknowledged. The write is `<cluster>.seen.<node>` in the same bucket (keys
        with a dot are no topology), kept as its history allows."""
        record = f"$KV.{TOPOLOGY_BUCKET}.{cluster}"
        for attempt in range(CURRENT_TRIES):
            found, at = first if attempt == 0 and first is not None else await self.read(cluster)
            try:
                await self._js.publish(
                    f"{record}.seen.{node}",
                    json.dumps({"node": node, "revision": at}).encode(),
                    headers={
                        "Nats-Expected-Last-Subject-Sequence": str(at),
                        "Nats-Expected-Last-Subject-Sequence-Subject": record,
                    },
                )
            except APIError as exc:
                if exc.err_code in WRONG_LAST_SEQUENCE:
                    continue
                raise
            return found
        raise StaleReadError(
            f"the topology read was overtaken {CURRENT_TRIES} times in a row "
            "(a NATS server behind its peers may be answering)"
        )

    async def create(self, topology: Topology) -> Versioned[Topology]:
        """Write the first record. nats-py says a refused create of a key that has no record
        with KeyNotFoundError: an agent's `read_current` of the missing record in flight."""
        body = topology.model_dump_json().encode()

        async def no_record(exc: Exception) -> bool:
            return isinstance(exc, KeyNotFoundError)

        rev = await self._retried(
            lambda: self._kv.create(topology.cluster, body),
            no_record,
            f"topology of {topology.cluster!r} already exists (or agents kept checking it)",
        )
        return Versioned(topology, rev)

    async def compare_and_set(self, topology: Topology, revision: int) -> Versioned[Topology]:
        """Write `topology` if the record is still at `revision`; refused while a read shows
        it still there, it was an agent's `read_current` in flight."""
        body = topology.model_dump_json().encode()

        async def still_there(_: Exception) -> bool:
            now = await self.get(topology.cluster)
            return now is not None and now.revision == revision

        rev = await self._retried(
            lambda: self._kv.update(topology.cluster, body, last=revision),
            still_there,
            f"topology of {topology.cluster!r} changed since revision {revision}",
        )
        return Versioned(topology, rev)

    async def _retried(
        self,
        write: Callable[[], Awaitable[int]],
        in_flight: Callable[[Exception], Awaitable[bool]],
        refused: str,
    ) -> int:
        """`write`, tried again (`CAS_TRIES` in all) while its refusal is another
        conditional write to the key being agreed on (the cluster refuses a second one
        meanwhile), not a change; ConflictError(`refused`) otherwise."""
        for attempt in range(CAS_TRIES):
            try:
                return await write()
            except (KeyWrongLastSequenceError, KeyNotFoundError) as exc:
                if attempt == CAS_TRIES - 1 or not await in_flight(exc):
                    raise ConflictError(refused) from None
            await asyncio.sleep(0.02 * (attempt + 1))
        raise AssertionError("unreachable: the last try returns or raises")


def agent_lease_name(cluster: str, node: str) -> str:
    """The lease a node's agent renews in every round it reaches NATS.

    Renewing is a write, which the replicated bucket acknowledges only once a majority of
    servers holds it. It lives in another stream than the topology, with a leader of its
    own, so it says nothing of whether the agent's topology read was current: that is
    `TopologyStore.read_current`'s job. The failover leader relies on the lease: one not
    renewed for its `guard_seconds` (plus a margin), as seen on the leader's own clock, is
    an agent that has stopped its node (or is gone: a lease that expired, TTL, guards
    nothing, and counts for nothing)."""
    name = f"agent-{cluster}-{node}"
    if len(name) <= NAME_MAX:
        return name
    return f"agent-{hashlib.sha256(f'{cluster}/{node}'.encode()).hexdigest()[:32]}"


def _fresh(name: str, holder: str, ttl_seconds: int, guard_seconds: float | None) -> Lease:
    now = datetime.now(UTC)
    return Lease(
        name=name,
        holder=holder,
        ttl_seconds=ttl_seconds,
        acquired_at=now,
        renewed_at=now,
        guard_seconds=guard_seconds,
    )


class LeaseStore:
    def __init__(self, js: JetStreamContext, kv: KeyValue, bucket: str) -> None:
        self._js = js
        self._kv = kv
        self._bucket = bucket

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str = LEASE_BUCKET) -> LeaseStore:
        return cls(js, await open_bucket(js, bucket), bucket)

    async def current(self, name: str) -> Versioned[Lease] | None:
        return await _get(self._kv, name, Lease)

    async def acquire(
        self, name: str, holder: str, ttl_seconds: int, *, guard_seconds: float | None = None
    ) -> Versioned[Lease] | None:
        """The lease if we got it (or already held it), None while someone else holds it."""
        if ttl_seconds < 1:
            raise ValueError("lease TTL must be at least one second")
        lease = _fresh(name, holder, ttl_seconds, guard_seconds)
        try:
            rev = await self._kv.create(name, lease.model_dump_json().encode(), msg_ttl=ttl_seconds)
            return Versioned(lease, rev)
        except KeyWrongLastSequenceError:
            pass
        held = await self.current(name)
        if held is None or held.value.holder != holder:
            return None
        # Ours from before (a restarted holder): renewed with what it says now, so that a
        # bound raised since is what the readers see, not the one it was first taken with.
        now_says = {"ttl_seconds": ttl_seconds, "guard_seconds": guard_seconds}
        held = Versioned(held.value.model_copy(update=now_says), held.revision)
        try:
            return await self.renew(held)
        except LeaseLostError:
            return None

    async def take_over(
        self, held: Versioned[Lease], holder: str, ttl_seconds: int, *, guard_seconds: float
    ) -> Versioned[Lease]:
        """The lease `held` (as read), now `holder`'s, if nobody wrote it since: a restarted
        process's predecessor's, which no longer renews it. LeaseLostError otherwise."""
        lease = _fresh(held.value.name, holder, ttl_seconds, guard_seconds)
        return await self.renew(Versioned(lease, held.revision))

    async def renew(self, lease: Versioned[Lease]) -> Versioned[Lease]:
        renewed = lease.value.model_copy(update={"renewed_at": datetime.now(UTC)})
        try:
            ack = await self._js.publish(
                f"$KV.{self._bucket}.{lease.value.name}",
                renewed.model_dump_json().encode(),
                headers={"Nats-Expected-Last-Subject-Sequence": str(lease.revision)},
                msg_ttl=lease.value.ttl_seconds,
            )
        except APIError as exc:
            raise LeaseLostError(
                f"lease {lease.value.name!r} is no longer held by {lease.value.holder!r}: "
                f"{exc.description or exc}"
            ) from None
        return Versioned(renewed, ack.seq)

    async def release(self, lease: Versioned[Lease]) -> bool:
        """Give the lease up; False if it had already passed to someone else."""
        try:
            await self._kv.delete(lease.value.name, last=lease.revision)
        except (KeyWrongLastSequenceError, APIError):
            return False
        return True
