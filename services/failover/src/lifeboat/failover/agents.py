"""Asking a node's agent to act on its node, for the nodes whose data directory is on
another host: stop it (the fence of a node the leader cannot fence over SQL: unreachable
from here, frozen), and rejoin it as a standby of the new primary (pg_rewind, else a clone).

Services meet only on NATS: the requests are events under the leader's epoch, the answers
the agent's events, matched by correlation id (`bus.answers`: subscribed before the request
is published, so a quick answer is not missed). No answer within the bound is None: the
fence stays unconfirmed, the rejoin failed.
"""

from __future__ import annotations

import asyncio
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
    NodeStopped,
    NodeStopRequested,
    Source,
)
from lifeboat.common.subjects import (
    NODE_REJOIN_FAILED,
    NODE_REJOIN_STARTED,
    NODE_REJOINED,
    NODE_STOPPED,
    Topic,
)


@dataclass(frozen=True)
class Agents:
    nc: NatsClient
    publish: Callable[[ClusterEvent], Awaitable[None]]
    cluster: str
    source: Source
    timeout: float  # a stop's answer
    rejoin_timeout: float  # a rejoin's: a clone of the whole database may take that long

    async def stop(self, node: str, epoch: int, reason: str) -> NodeStopped | None:
        """The agent's answer, or None if it gave none within the bound."""
        request = NodeStopRequested(
            cluster=self.cluster, node=node, source=self.source, epoch=epoch, reason=reason
        )
        answer = await self._ask(node, request, (NODE_STOPPED,), self.timeout)
        return answer if isinstance(answer, NodeStopped) else None

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
