"""The agent's hold on its node's lease (kv.agent_lease_name): one agent process at a time.

The holder is `<cluster>/<node>/<identity>/<place>/<token>`: the agent's identity, kept
beside the data directory (node.agent_identity), where it runs — the boot and the lock
file beside the data directory (device and inode) — and a random token of the process.
Which holder an agent may take a lease it finds held from:

- its own process: renewed;
- the same identity at this place, while this process holds the lock (node.agent_lock,
  which goes with its process): a predecessor, gone — taken over at once, by compare-and-
  set on the revision found;
- the same identity elsewhere (another boot or lock file, or a holder written before
  places): taken over once nobody renewed it while this process watched it for as long as
  the leader would wait to count it stopped (its bound and the margin), across rounds (no
  round waits for it): a live holder cut off that long has stopped its node. Renewed
  meanwhile, it is a live process with this identity — a clone of the host or volume,
  which copies the id file: a duplicate, refused for good;
- lost, after this process held it, to another process with the same identity: refused
  for good too, so two clones do not take it from each other in turn;
- another identity: another agent (a copied configuration), refused while it holds it.

A refused agent confirms nothing (its reads fail) and, while the conflict is recent, no
failsafe holds its node up and it takes no restore. An error that is not a conflict (NATS
answering 503 during an election, a timeout) is a read that failed, nothing more.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from lifeboat.common.kv import LeaseLostError, LeaseStore, Versioned
from lifeboat.common.state import Lease

MARGIN_SECONDS = 1.0  # beyond a holder's bound, as the leader counts (agents.Agents.margin)


class LeaseConflictError(LeaseLostError):
    """The lease is another agent's (or a duplicate's): this one confirms nothing."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def place_of(lock: Path) -> str:
    """Where an agent runs, as a holder says it: the boot and the lock file beside its data
    directory (device and inode: the same file under any path, container or mount)."""
    try:
        st = lock.stat()
    except OSError:
        return f"{_boot_id()}:no-lock"
    return f"{_boot_id()}:{st.st_dev}:{st.st_ino}"


def predecessor(found: str, identity_holder: str, cluster_node: str) -> bool:
    """Whether holder `found` has this agent's identity: a place and token after it, none
    (written before places), or the name alone (written before identities)."""
    return found in (identity_holder, cluster_node) or found.startswith(f"{identity_holder}/")


def same_place(found: str, place: str) -> bool:
    """Whether holder `found`'s process ran at `place`."""
    return found.rpartition("/")[0].rpartition("/")[2] == place


@dataclass
class Claim:
    name: str  # the lease's
    cluster_node: str  # `<cluster>/<node>`
    identity: str
    identity_file: Path
    ttl_seconds: int
    place: str
    locked: bool  # this process holds the data directory's lock
    token: str = field(default_factory=lambda: secrets.token_hex(4))
    lease: Versioned[Lease] | None = None
    held_once: bool = False
    duplicate: str | None = None  # refused for good
    watching: tuple[str, int, float] | None = None  # holder and revision found, since when
    conflict: tuple[str, float] | None = None  # the last refusal, and when
    _one_at_a_time: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def identity_holder(self) -> str:
        return f"{self.cluster_node}/{self.identity}"

    @property
    def holder(self) -> str:
        return f"{self.identity_holder}/{self.place}/{self.token}"

    def conflicting(self, now: float) -> str | None:
        """Why the lease is another's: a duplicate for good, another agent while that was
        seen within the lease's TTL."""
        if self.duplicate is not None:
            return self.duplicate
        if self.conflict is None or now - self.conflict[1] > self.ttl_seconds:
            return None
        return self.conflict[0]

    def refusal(self, now: float) -> str | None:
        """Why this agent may not act on its node's behalf now (it does not hold the lease),
        if it may not."""
        if (why := self.conflicting(now)) is not None:
            return why
        return None if self.lease is not None else "this agent holds no lease"

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

    def _duplicate(self, found: str, what: str) -> LeaseConflictError:
        self.duplicate = (
            f"{self.name} {what} another process with this agent's identity ({found}): a "
            f"cloned host or volume? Remove the clone's {self.identity_file.name}. This one "
            "confirms nothing and answers no order until it is restarted"
        )
        return LeaseConflictError(self.duplicate)

    async def _take(self, leases: LeaseStore, bound: float) -> Versioned[Lease]:
        held = await leases.current(self.name)
        if held is None:
            self.watching = None
            raise LeaseLostError(f"{self.name} changed hands meanwhile: the next round takes it")
        found = held.value.holder
        if found == self.holder:  # ours: a renewal that failed for another reason (a 503)
            return await leases.renew(held)
        if not predecessor(found, self.identity_holder, self.cluster_node):
            self.watching = None
            raise LeaseConflictError(
                f"{self.name} is held by another agent ({found}): is a second agent configured "
                f"as {self.cluster_node}? This one confirms nothing and answers no order meanwhile"
            )
        if self.held_once:
            raise self._duplicate(found, "was taken by")
        if not (self.locked and same_place(found, self.place)):
            now = time.monotonic()
            if self.watching is not None and self.watching[0] == found:
                if self.watching[1] != held.revision:  # renewed while watched: alive
                    raise self._duplicate(found, "is renewed by")
            else:
                self.watching = (found, held.revision, now)
            wait = (held.value.guard_seconds or bound) + MARGIN_SECONDS
            if now - self.watching[2] < wait:
                raise LeaseLostError(
                    f"{self.name} is held by {found}, of this agent's identity elsewhere: taken "
                    f"over once nobody renews it for {wait:g}s"
                )
        return await leases.take_over(held, self.holder, self.ttl_seconds, guard_seconds=bound)
