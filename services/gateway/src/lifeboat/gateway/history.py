"""Failover and switchover history, read back from the event stream."""

from __future__ import annotations

import logging

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from lifeboat.common import subjects
from lifeboat.common.events import Envelope
from lifeboat.gateway.decode import UndecodableEventError, decode_event

log = logging.getLogger(__name__)

# What `GET /clusters/{cluster}/history` lists; `schemas.HistoryEvent` is their models.
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
_HISTORY_TYPES = frozenset(t.name for t in HISTORY_TOPICS)


async def read_history(js: JetStreamContext, cluster: str, limit: int) -> list[Envelope]:
    """The newest `limit` decisions about `cluster`, oldest first.

    A message on those subjects that is not the event its subject promises is logged and
    left out, so one bad publish cannot break the history.
    """
    config = ConsumerConfig(
        filter_subjects=[t.pattern(cluster=cluster) for t in HISTORY_TOPICS],
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30,
        mem_storage=True,
    )
    info = await js.add_consumer(subjects.STREAM_NAME, config)
    events: list[Envelope] = []
    try:
        pending, fetched = info.num_pending or 0, 0
        sub = await js.pull_subscribe_bind(info.name, stream=subjects.STREAM_NAME)
        while fetched < pending:
            try:
                batch = await sub.fetch(min(256, pending - fetched), timeout=2)
            except NatsTimeoutError:
                break
            fetched += len(batch)
            for msg in batch:
                try:
                    event = decode_event(msg.data)
                except UndecodableEventError as exc:
                    log.warning("history: skipped a message on %s: %s", msg.subject, exc)
                    continue
                if event.type in _HISTORY_TYPES:
                    events.append(event)
            events = events[-limit:]
        await sub.unsubscribe()
    finally:
        await js.delete_consumer(subjects.STREAM_NAME, info.name)
    return events
