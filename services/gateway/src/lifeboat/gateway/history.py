"""Failover and switchover history, read back from the event stream."""

from __future__ import annotations

import json
from typing import Any

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from lifeboat.common import subjects

HISTORY_TOPICS = (
    subjects.FAILOVER_STARTED,
    subjects.FAILOVER_COMPLETED,
    subjects.FAILOVER_FAILED,
    subjects.FAILOVER_HELD,
    subjects.SWITCHOVER_COMPLETED,
    subjects.SWITCHOVER_FAILED,
    subjects.NODE_FENCED,
    subjects.NODE_REJOINED,
)


async def read_history(js: JetStreamContext, cluster: str, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` decisions about `cluster`, oldest first."""
    config = ConsumerConfig(
        filter_subjects=[t.pattern(cluster=cluster) for t in HISTORY_TOPICS],
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30,
        mem_storage=True,
    )
    info = await js.add_consumer(subjects.STREAM_NAME, config)
    events: list[dict[str, Any]] = []
    try:
        pending, fetched = info.num_pending or 0, 0
        sub = await js.pull_subscribe_bind(info.name, stream=subjects.STREAM_NAME)
        while fetched < pending:
            try:
                batch = await sub.fetch(min(256, pending - fetched), timeout=2)
            except NatsTimeoutError:
                break
            fetched += len(batch)
            events = (events + [json.loads(m.data) for m in batch])[-limit:]
        await sub.unsubscribe()
    finally:
        await js.delete_consumer(subjects.STREAM_NAME, info.name)
    return events
