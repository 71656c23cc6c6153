"""Operator requests: publish one, then wait a while for the failover service's answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from lifeboat.common.bus import EventPublisher
from lifeboat.common.events import ClusterEvent
from lifeboat.common.subjects import Topic


async def request_and_wait(
    nc: NatsClient,
    publisher: EventPublisher,
    request: ClusterEvent,
    answers: dict[Topic, dict[str, str]],
    timeout: float,
    accept: Callable[[dict[str, Any]], bool] = lambda _: True,
) -> dict[str, Any] | None:
    """Publish `request`; return the first answer event, or None if none came in time.

    `answers` maps each topic that may answer to its subject parameters; the subscription is
    made before publishing, so a fast answer is never missed.
    """
    got: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def on_answer(msg: Msg) -> None:
        event = json.loads(msg.data)
        if got.done() or datetime.fromisoformat(event["occurred_at"]) < request.occurred_at:
            return
        if accept(event):
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
