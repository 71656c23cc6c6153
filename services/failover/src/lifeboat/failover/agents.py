"""Asking a node's agent to act on its node, for the nodes whose data directory is on
another host: stop it (the fence of a node the leader cannot fence over SQL: unreachable
from here, frozen), start it again read-only (an old primary that a manual failover stopped
and nobody could take over from), and rejoin it as a standby of the new primary (pg_rewind,
else a clone).

Services meet only on NATS: the requests are events under the leader's epoch, the answers
the agent's events, matched by correlation id (`bus.answers`: subscribed before the request
is published, so a quick answer is not missed). No answer within the bound is None: the
fence stays unconfirmed, the rejoin failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient

from lifeboat.common.bus import answers
from lifeboat.common.events import (
    ClusterEvent,
    Envelope,
    NodeRejoined,
    NodeRejoinFailed,
    NodeRejoinOrdered,
    NodeStarted,
    NodeStartRequested,
    NodeStopped,
    NodeStopRequested,
    Source,
)
from lifeboat.common.kv import LeaseStore, agent_lease_name
from lifeboat.common.subjects import (
    NODE_REJOIN_FAILED,
    NODE_REJOIN_STARTED,
    NODE_REJOINED,
    NODE_STARTED,
    NODE_STOPPED,
    Topic,
)


@dataclass(frozen=True)
class LeaseSeen:
    """A node agent's lease as the leader read it: its revision, the agent's bound, and when
    (the leader's monotonic clock) this revision was first read."""

    revision: int
    guard_seconds: float
    at: float


@dataclass(frozen=True)
class Agents:
    nc: NatsClient
    publish: Callable[[ClusterEvent], Awaitable[None]]
    cluster: str
    source: Source
    timeout: float  # a stop's answer
    rejoin_timeout: float  # a rejoin's: a clone of the whole database may take that long
    margin: float = 1.0  # beyond an agent's bound: clock rates, scheduling, the stop's signal
    bound: float = 0.0  # the agents' bound as this leader is configured: the longer one counts

    def quiet_for(self, seen: LeaseSeen) -> float:
        """How long the lease must go unrenewed before its agent has stopped its node."""
        return max(seen.guard_seconds, self.bound) + self.margin

    async def lease(self, node: str) -> LeaseSeen | None:
        """The node's agent's lease now (None: there is none); raises when it cannot be read."""
        async with asyncio.timeout(self.timeout):
            store = await LeaseStore.open(self.nc.jetstream())
            found = await store.current(agent_lease_name(self.cluster, node))
        if found is None or found.value.guard_seconds is None:
            return None
        return LeaseSeen(found.revision, found.value.guard_seconds, time.monotonic())

    async def stopped_by_its_bound(self, node: str, seen: LeaseSeen) -> str | None:
        """Whether the agent has stopped its node by its own bound: its lease, read before,
        not renewed since for the bound plus the margin on this clock (waited out if need
        be). The agent confirms its primary only in rounds that renewed the lease, and stops
        its writable node within the bound of the last confirmation, which was before the
        renewal this leader read. None, with the node perhaps still running, when the lease
        was renewed since (the agent reaches NATS: it answers stop requests) or cannot be read.
        A lease that expired since was not renewed either."""
        if (wait := seen.at + self.quiet_for(seen) - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        try:
            now = await self.lease(node)
        except Exception:
            return None
        if now is not None and now.revision != seen.revision:
            return None
        return (
            f"its agent has not renewed its lease for {time.monotonic() - seen.at:.1f}s (its "
            f"bound is {seen.guard_seconds:g}s): it has stopped its node"
        )

    async def stop(self, node: str, epoch: int, reason: str) -> NodeStopped | None:
        """The agent's answer, or None if it gave none within the bound."""
        request = NodeStopRequested(
            cluster=self.cluster, node=node, source=self.source, epoch=epoch, reason=reason
        )
        answer = await self._ask(node, request, (NODE_STOPPED,), self.timeout)
        return answer if isinstance(answer, NodeStopped) else None

    async def start(self, node: str, epoch: int, reason: str) -> NodeStarted | None:
        """The agent's answer, or None if it gave none within the bound (a start that takes
        longer goes on; asked again meanwhile, the agent says it is busy)."""
        request = NodeStartRequested(
            cluster=self.cluster, node=node, source=self.source, epoch=epoch, reason=reason
        )
        answer = await self._ask(node, request, (NODE_STARTED,), self.timeout)
        return answer if isinstance(answer, NodeStarted) else None

    async def rejoin(
        self, node: str, epoch: int, upstream: str, conninfo: str, slot: str, reason: str
    ) -> NodeRejoined | NodeRejoinFailed | str:
        """The agent's answer (rejoined, or failed and why), or why there was none: the agent
        says `node.rejoin_started` within the stop's bound (no agent: no wait of an hour),
        then its outcome within `rejoin_timeout`."""
        order = NodeRejoinOrdered(
            cluster=self.cluster,
            node=node,
            source=self.source,
            epoch=epoch,
            upstream=upstream,
            conninfo=conninfo,
            slot=slot,
            reason=reason,
        )
        topics = (NODE_REJOIN_STARTED, NODE_REJOINED, NODE_REJOIN_FAILED)
        on = [t.subject(cluster=self.cluster, node=node) for t in topics]
        async with answers(self.nc, on, order.event_id) as got:
            await self.publish(order)
            for bound in (self.timeout, self.rejoin_timeout):
                try:
                    answer = await asyncio.wait_for(got.get(), bound)
                except TimeoutError:
                    return (
                        f"its agent did not take the rejoin within {bound:g}s"
                        if bound == self.timeout
                        else f"its agent did not finish the rejoin within {bound:g}s"
                    )
                if isinstance(answer, NodeRejoined | NodeRejoinFailed):
                    return answer
        return "its agent started the rejoin twice"  # a duplicate `node.rejoin_started`

    async def _ask(
        self, node: str, request: ClusterEvent, topics: Sequence[Topic], timeout: float
    ) -> Envelope | None:
        on = [t.subject(cluster=self.cluster, node=node) for t in topics]
        try:
            async with asyncio.timeout(timeout):
                async with answers(self.nc, on, request.event_id) as got:
                    await self.publish(request)
                    return await got.get()
        except TimeoutError:
            return None
