"""A restore into a node on another host: the backup service restores the backup beside
itself, serves the recovered copy, and the node's agent copies it in (`node.restore_ordered`).

No S3 credential or backup key reaches the node's host, and the agent needs nothing it does
not have already: pg_basebackup and the replication user's password, which the copy has as
the backed-up cluster had it. The agent says `node.restore_started` within `answer_timeout`
(no agent: no wait of an hour), then its outcome within `timeout`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from uuid import UUID

from nats.aio.client import Client as NatsClient

from lifeboat.common.bus import answers
from lifeboat.common.events import (
    ClusterEvent,
    NodeRestored,
    NodeRestoreFailed,
    NodeRestoreOrdered,
    Source,
)
from lifeboat.common.subjects import NODE_RESTORE_FAILED, NODE_RESTORE_STARTED, NODE_RESTORED


class AgentRestoreFailed(RuntimeError):
    pass


@dataclass
class AgentRestore:
    nc: NatsClient
    publish: Callable[[ClusterEvent], Awaitable[None]]
    source: Source
    serve_host: str  # where the restored copy listens, an address the nodes reach
    answer_timeout: float = 10.0
    timeout: float = 3600.0  # for the agent's copy; its swap and start get `swap_timeout` more
    swap_timeout: float = 300.0

    async def copy_in(
        self, cluster: str, node: str, restore_id: str, port: int, correlation: UUID
    ) -> NodeRestored:
        """The agent's `node.restored`; raises with its reason, or why it gave none."""
        order = NodeRestoreOrdered(
            cluster=cluster,
            node=node,
            source=self.source,
            correlation_id=correlation,
            restore_id=restore_id,
            host=self.serve_host,
            port=port,
            copy_seconds=self.timeout,
        )
        topics = (NODE_RESTORE_STARTED, NODE_RESTORED, NODE_RESTORE_FAILED)
        on = [t.subject(cluster=cluster, node=node) for t in topics]
        async with answers(self.nc, on, order.event_id) as got:
            await self.publish(order)
            for bound in (self.answer_timeout, self.timeout + self.swap_timeout):
                try:
                    answer = await asyncio.wait_for(got.get(), bound)
                except TimeoutError:
                    took = "take" if bound == self.answer_timeout else "finish"
                    raise AgentRestoreFailed(
                        f"{node}'s agent did not {took} the restore within {bound:g}s"
                        + (" (does an agent run beside it?)" if took == "take" else "")
                    ) from None
                if isinstance(answer, NodeRestored):
                    return answer
                if isinstance(answer, NodeRestoreFailed):
                    raise AgentRestoreFailed(f"{node}'s agent: {answer.reason}")
        raise AgentRestoreFailed(f"{node}'s agent started the restore twice")
