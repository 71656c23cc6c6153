"""Operator requests: publish one, then wait a while for the failover service's answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from lifeboat.common.bus import EventPublisher
from lifeboat.common.events import ClusterEvent, Envelope
from lifeboat.common.subjects import Topic
from lifeboat.gateway.decode import UndecodableEventError, decode_event

log = logging.getLogger(__name__)


async def request_and_wait(
    nc: NatsClient,
    publisher: EventPublisher,
    request: ClusterEvent,
    answers: Mapping[Topic, Mapping[str, str]],
    timeout: float,
    accept: Callable[[Envelope], bool] = lambda _: True,
) -> Envelope | None:
    """Publish `request`; return the first answer event, or None if none came in time.

    `answers` maps each topic that may answer to its subject parameters; the subscription is
    made before publishing, so a fast answer is never missed. Events older than the request
    and those `accept` turns down are not answers.
    """
    got: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()

    async def on_answer(msg: Msg) -> None:
        if got.done():
            return
        try:
            event = decode_event(msg.data)
        except UndecodableEventError as exc:
            log.warning("ignored a message on %s: %s", msg.subject, exc)
            return
        if event.occurred_at >= request.occurred_at and accept(event):
            got.set_result(event)

    subs = [await nc.subscribe(t.subject(**params), cb=on_answer) for t, params in answers.items()]
    try:
        await publisher.publish(request)
        return await asyncio.wait_for(got, timeout)
    except TimeoutError:
        return None
    finally:
        for sub in subs:
            await sub.unsubscribe()
