"""Asking a node's agent to stop its node: the fence of a node the leader cannot stop itself
(no data directory here) and cannot fence over SQL (unreachable from here, frozen).

Services meet only on NATS: the request is a `node.stop_requested` event under the leader's
epoch, the answer the agent's `node.stopped`, matched by correlation id. The subscription is
on the server before the request is published, so a quick answer is not missed; no answer
within the bound is None, and the fence stays unconfirmed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from lifeboat.common.events import (
    ClusterEvent,
    NodeStopped,
    NodeStopRequested,
    Source,
    UndecodableEventError,
    decode_event,
)
from lifeboat.common.subjects import NODE_STOPPED

log = logging.getLogger(__name__)


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
        answered: asyncio.Future[NodeStopped] = asyncio.get_running_loop().create_future()

        async def on(msg: Msg) -> None:
            try:
                event = decode_event(msg.data)
            except UndecodableEventError as exc:
                log.warning("an undecodable answer on %s: %s", msg.subject, exc)
                return
            if (
                isinstance(event, NodeStopped)
                and event.correlation_id == request.event_id
                and not answered.done()
            ):
                answered.set_result(event)

        sub = await self.nc.subscribe(NODE_STOPPED.subject(cluster=self.cluster, node=node), cb=on)
        try:
            async with asyncio.timeout(self.timeout):
                await self.nc.flush()
                await self.publish(request)
                return await answered
        except TimeoutError:
            return None
        finally:
            await sub.unsubscribe()
