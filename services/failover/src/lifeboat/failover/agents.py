"""Asking a node's agent to stop its node: the fence of a node the leader cannot stop itself
(no data directory here) and cannot fence over SQL (unreachable from here, frozen).

Services meet only on NATS: the request is a `node.stop_requested` event under the leader's
epoch, the answer the agent's `node.stopped`, matched by correlation id. The subscription is
on the server before the request is published, so a quick answer is not missed; no answer
within the bound is None, and the fence stays unconfirmed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient

from lifeboat.common.bus import answers
from lifeboat.common.events import ClusterEvent, NodeStopped, NodeStopRequested, Source
from lifeboat.common.subjects import NODE_STOPPED


@dataclass(frozen=True)
class AgentStops:
    nc: NatsClient
    publish: Callable[[ClusterEvent], Awaitable[None]]
    cluster: str
    source: Source
    timeout: float

    async def stop(self, node: str, epoch: int, reason: str) -> NodeStopped | None:
        """The agent's answer, or None if it gave none within the bound."""
        request = NodeStopRequested(
            cluster=self.cluster, node=node, source=self.source, epoch=epoch, reason=reason
        )
        subject = NODE_STOPPED.subject(cluster=self.cluster, node=node)
        try:
            async with asyncio.timeout(self.timeout):
                async with answers(self.nc, [subject], request.event_id) as got:
                    await self.publish(request)
                    while True:  # the subject carries nothing else; a model check all the same
                        answer = await got.get()
                        if isinstance(answer, NodeStopped):
                            return answer
        except TimeoutError:
            return None
