"""Performs a decision's commands in order: KV writes, SQL on nodes, events.

Every command that touches a node first checks, against KV, that the lease is still ours and
that the epoch it carries is the cluster's current one: a stale instance can decide what it
likes, it cannot act on it. A failed topology write or promotion stops the rest of the
decision; the next decision picks up from what is then true. The run loop itself is the one
every deciding service shares (`lifeboat.common.decision.execute`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from lifeboat.common.decision import Outcome, Publish, Refused, execute
from lifeboat.common.events import ClusterEvent, NodeFenced, NodeRejoined, Source
from lifeboat.common.kv import ConflictError, TopologyStore, Versioned
from lifeboat.common.state import Topology
from lifeboat.failover.commands import (
    Command,
    CreateTopology,
    Decision,
    Detach,
    Fence,
    Handover,
    Promote,
    Rejoin,
    Repoint,
    SetSynchronous,
    StartReadOnly,
    WriteTopology,
)
from lifeboat.failover.nodes import FenceUnconfirmedError, NodeActions

log = logging.getLogger(__name__)


class StaleEpochError(Refused):
    pass


class NotLeaderError(Refused):
    pass


# A failure of one of these stops the decision: what follows depends on it. A fence above
# all: nobody is promoted while the old primary may still acknowledge commits. A synchronous
# set PostgreSQL did not take is not announced as changed.
_CRITICAL = (Fence, Handover, Promote, CreateTopology, WriteTopology, SetSynchronous)


class Executor:
    def __init__(
        self,
        cluster: str,
        store: TopologyStore,
        nodes: NodeActions,
        publish: Callable[[ClusterEvent], Awaitable[None]],
        still_leader: Callable[[], Awaitable[bool]],
        source: Source,
        *,
        self_fence_wait: float = 0.0,
    ) -> None:
        """`self_fence_wait`: how long an unconfirmed fence that a forced failover accepts
        waits before the rest of the decision (see FailoverSettings.agent_self_fence_seconds)."""
        self.self_fence_wait = self_fence_wait
        # monotonic: no promotion before this (an accepted, unconfirmed fence's wait)
        self._promote_after = 0.0
        self.cluster = cluster
        self.store = store
        self.nodes = nodes
        self.publish = publish
        self.still_leader = still_leader
        self.source = source

    async def run(
        self, decision: Decision, topology: Versioned[Topology] | None
    ) -> list[Outcome[Command]]:
        current = topology

        async def perform(command: Command) -> str:
            nonlocal current
            detail, current = await self._one(command, current)
            return detail

        return await execute(
            decision.commands, perform, critical=lambda c: isinstance(c, _CRITICAL)
        )

    async def _guard(self, epoch: int) -> None:
        if not await self.still_leader():
            raise NotLeaderError("the failover lease is no longer ours")
        now = await self.store.get(self.cluster)
        if now is None or now.value.epoch != epoch:
            found = None if now is None else now.value.epoch
            raise StaleEpochError(f"epoch {epoch} is stale (cluster is at {found}): refused")

    async def _one(
        self, command: Command, current: Versioned[Topology] | None
    ) -> tuple[str, Versioned[Topology] | None]:
        match command:
            case CreateTopology(topology):
                return "created", await self.store.create(topology)
            case WriteTopology(topology):
                if current is None:
                    raise ConflictError("no topology to update")
                return "written", await self.store.compare_and_set(topology, current.revision)
            case Fence(node, epoch, reason, accepted, keep_running):
                await self._guard(epoch)
                try:
                    detail = await self.nodes.fence(
                        node, epoch=epoch, reason=reason, keep_running=keep_running
                    )
                except FenceUnconfirmedError as exc:
                    if not accepted:
                        raise
                    # The guard just read the new epoch in KV, so the old primary's agent
                    # stops it within its bound from now: nobody is promoted before — the
                    # longer of the bound configured here and the one its lease says. The
                    # wait is the promotion's, so that the standbys are detached first and
                    # the old primary has nobody to acknowledge its commits meanwhile.
                    wait = max(self.self_fence_wait, exc.agent_quiet or 0.0)
                    self._promote_after = time.monotonic() + wait
                    detail = f"not confirmed ({exc}), accepted by a forced failover: " + (
                        f"nobody is promoted for {wait:g}s, for its node agent to stop it"
                        if exc.agent_quiet is not None
                        else f"no agent lease was seen for it, so nothing is known to stop it: "
                        f"it may still take writes, which its detached standbys do not "
                        f"acknowledge; promoted on the operator's word after {wait:g}s"
                    )
                log.warning("fenced %s: %s (%s)", node, reason, detail)
                await self.publish(
                    NodeFenced(
                        cluster=self.cluster,
                        node=node,
                        source=self.source,
                        epoch=epoch,
                        reason=f"{reason}: {detail}",
                    )
                )
                return detail, current
            case Handover(primary, target, epoch):
                await self._guard(epoch)
                try:
                    return await self.nodes.handover(primary, target), current
                except Exception:
                    # Nobody was promoted (the handover runs under the old epoch and ends the
                    # switchover when it fails): the stopped old primary is started again,
                    # still the one, read-only until the next decision gives it its writes
                    # back — a failed switchover must not leave the cluster without a
                    # primary. Only while the lease and the epoch are still ours: another
                    # leader may have failed over meanwhile (the handover takes seconds).
                    await self._guard(epoch)
                    await self.nodes.start_again(primary)
                    raise
            case Rejoin(node, upstream, epoch):
                await self._guard(epoch)
                method, seconds, announced = await self.nodes.rejoin(
                    node, upstream, epoch=epoch, reason=f"rejoin as a standby of {upstream}"
                )
                if announced:  # by the node's agent, which did it
                    return f"rejoined with {method} by its agent", current
                await self.publish(
                    NodeRejoined(
                        cluster=self.cluster,
                        node=node,
                        source=self.source,
                        epoch=epoch,
                        method=method,
                        upstream=upstream,
                        seconds=round(seconds, 3),
                    )
                )
                return f"rejoined with {method}", current
            case StartReadOnly(node, epoch, reason):
                await self._guard(epoch)
                detail = await self.nodes.start_read_only(node, epoch=epoch, reason=reason)
                log.warning("started %s read-only: %s (%s)", node, reason, detail)
                return detail, current
            case Promote(node, epoch, peers, old_primary, synchronous, peers_optional):
                if (delay := self._promote_after - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                await self._guard(epoch)
                detail = await self.nodes.promote(
                    node,
                    peers=peers,
                    old_primary=old_primary,
                    synchronous=synchronous,
                    guard=lambda: self._guard(epoch),
                    peers_optional=peers_optional,
                )
                log.warning("promoted %s at epoch %d (%s)", node, epoch, detail)
                return f"promoted: {detail}", current
            case Detach(node, epoch, upstream):
                await self._guard(epoch)
                done = await self.nodes.detach(node, upstream)
                return f"detached from {upstream}" if done else "not following it", current
            case Repoint(node, upstream, epoch):
                await self._guard(epoch)
                await self.nodes.repoint(node, upstream)
                return f"now follows {upstream}", current
            case SetSynchronous(primary, standbys, epoch):
                await self._guard(epoch)
                await self.nodes.set_synchronous(primary, standbys)
                return f"synchronous: {standbys}", current
            case Publish(event):
                await self.publish(event)
                return event.type, current
