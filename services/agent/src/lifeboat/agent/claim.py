"""The agent's hold on its node's lease (kv.agent_lease_name): one agent process at a time.

The holder is `<cluster>/<node>/<identity>/<place>:<pid>`: the agent's identity, kept
beside the data directory (node.agent_identity), then this process — the place is the
host's name, its boot and the data directory. Which holder may take a lease it finds held:

- its own process: renewed;
- the same identity at this place: a predecessor, gone — the agent holds the data
  directory's lock (node.agent_lock), which goes with its process — taken over at once, by
  compare-and-set on the revision found;
- the same identity elsewhere (another boot, a container made again, or a holder written
  before process tokens): taken over once nobody renewed it while this process watched it
  for `WATCH_SECONDS`, across rounds (no round waits for it). Renewed meanwhile, it is a
  live process with this identity — a clone of the host or volume, which copies the id
  file: a duplicate, refused for good;
- lost, after this process held it, to another process with the same identity: refused
  for good too, so two clones do not take it from each other in turn;
- another identity: another agent (a copied configuration), refused while it holds it.

A refused agent confirms nothing (its reads fail) and, while the conflict is recent, no
failsafe holds its node up and it takes no restore. An error that is not a conflict (NATS
answering 503 during an election, a timeout) is a read that failed, nothing more.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from lifeboat.common.kv import LeaseLostError, LeaseStore, Versioned
from lifeboat.common.state import Lease

WATCH_SECONDS = 0.75  # a live holder renews every round (0.5 s)


class LeaseConflictError(LeaseLostError):
    """The lease is another agent's (or a duplicate's): this one confirms nothing."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def place_of(data_dir: Path) -> str:
    """Where an agent runs, as a holder's token says it: the host's name, its boot, and
    the data directory (hashed: a token is part of a subject-safe name)."""
    where = hashlib.sha256(str(data_dir).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}:{_boot_id()}:{where}"


def predecessor(found: str, identity_holder: str, cluster_node: str) -> bool:
    """Whether holder `found` has this agent's identity: a token after it, none (written
    before tokens), or the name alone (written before identities)."""
    return found in (identity_holder, cluster_node) or found.startswith(f"{identity_holder}/")


def same_place(found: str, place: str) -> bool:
    """Whether holder `found`'s process ran at `place` (this host, boot and directory)."""
    return found.rpartition("/")[2].rpartition(":")[0] == place


@dataclass
class Claim:
    name: str  # the lease's
    cluster_node: str  # `<cluster>/<node>`
    identity: str
    identity_file: Path
    ttl_seconds: int
    place: str
    lease: Versioned[Lease] | None = None
    held_once: bool = False
    duplicate: str | None = None  # refused for good
    watching: tuple[int, float] | None = None  # the revision found, and since when
    conflict: tuple[str, float] | None = None  # the last refusal, and when
    _one_at_a_time: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def identity_holder(self) -> str:
        return f"{self.cluster_node}/{self.identity}"

    @property
    def holder(self) -> str:
        return f"{self.identity_holder}/{self.place}:{os.getpid()}"

    def conflicting(self, now: float) -> str | None:
        """Why the lease is another's, if that was seen within its TTL."""
        if self.conflict is None or now - self.conflict[1] > self.ttl_seconds:
            return None
        return self.conflict[0]

    async def renew(self, leases: LeaseStore, bound: float) -> None:
        """Renew the lease, or take it (see the module); raise LeaseLostError when not held.
        One at a time: the round and the orders renew it, and two renewals at once would
        refuse each other."""
        async with self._one_at_a_time:
            try:
                await self._renew(leases, bound)
            except LeaseConflictError as exc:
                self.conflict = (str(exc), time.monotonic())
                raise
            self.conflict = None

    async def _renew(self, leases: LeaseStore, bound: float) -> None:
        if self.duplicate is not None:
            raise LeaseConflictError(self.duplicate)
        if self.lease is not None:
            try:
                self.lease = await leases.renew(self.lease)
                return
            except LeaseLostError:
                self.lease = None
        taken = await leases.acquire(self.name, self.holder, self.ttl_seconds, guard_seconds=bound)
        if taken is None:
            taken = await self._take(leases, bound)
        self.lease, self.held_once, self.watching = taken, True, None

    async def _take(self, leases: LeaseStore, bound: float) -> Versioned[Lease]:
        held = await leases.current(self.name)
        if held is None:
            raise LeaseLostError(f"{self.name} changed hands meanwhile: the next round takes it")
        found = held.value.holder
        if found == self.holder:  # ours: a renewal that failed for another reason (a 503)
            return await leases.renew(held)
        if not predecessor(found, self.identity_holder, self.cluster_node):
            raise LeaseConflictError(
                f"{self.name} is held by another agent ({found}): is a second agent configured "
                f"as {self.cluster_node}? This one confirms nothing and answers no order meanwhile"
            )
        if self.held_once:
            self.duplicate = (
                f"{self.name} was taken by another process with this agent's identity "
                f"({found}): a cloned host or volume? Remove the clone's "
                f"{self.identity_file.name}. This one confirms nothing and answers no order "
                "until it is restarted"
            )
            raise LeaseConflictError(self.duplicate)
        if not same_place(found, self.place):
            now = time.monotonic()
            if self.watching is None or self.watching[0] != held.revision:
                if self.watching is not None:  # renewed while watched: a live process
                    self.duplicate = (
                        f"{self.name} is renewed by another process with this agent's identity "
                        f"({found}): a cloned host or volume? Remove the clone's "
                        f"{self.identity_file.name}. This one confirms nothing and answers "
                        "no order until it is restarted"
                    )
                    raise LeaseConflictError(self.duplicate)
                self.watching = (held.revision, now)
            if now - self.watching[1] < WATCH_SECONDS:
                raise LeaseLostError(
                    f"{self.name} is held by {found}, of this agent's identity: taken over once "
                    f"nobody renews it for {WATCH_SECONDS:g}s"
                )
        return await leases.take_over(held, self.holder, self.ttl_seconds, guard_seconds=bound)
