"""Alerts that leave NATS: chosen events delivered to webhooks, plain JSON or Slack-compatible.

The projection hands every applied event to `Notifier.offer`, which never blocks and never
raises: it picks the webhooks that want the event (its type, a lag level at or above the
webhook's, or a `node.health` lag at or above its `lag_seconds`), drops what was already
sent (the same event id) or is still in its cooldown (the same type, cluster, node and level
within `cooldown_seconds`), and queues the rest. One worker per webhook posts them, retrying
with exponential backoff (tenacity) on transport errors and 5xx; a full queue drops the
alert and counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from lifeboat.common.events import Envelope, NodeHealth, NodeLag
from lifeboat.common.redact import redact
from lifeboat.gateway.projection import Stored
from lifeboat.gateway.settings import Webhook

log = logging.getLogger(__name__)
_LEVELS = {"ok": 0, "warning": 1, "critical": 2}


class DeliveryError(Exception):
    """The receiver answered 5xx (or 429): worth another try."""


@dataclass(frozen=True)
class Alert:
    key: tuple[str, ...]
    title: str
    event: Envelope


def summary(event: Envelope) -> str:
    """One line a person reads first."""
    cluster = getattr(event, "cluster", "")
    node = getattr(event, "node", None)
    where = f"{cluster}/{node}" if node else cluster
    if isinstance(event, NodeHealth):
        return (
            f"{where}: replication lag {event.lag_seconds or 0:.0f}s ({event.lag_bytes or 0} bytes)"
        )
    if isinstance(event, NodeLag):
        return f"{where}: replication lag {event.level.value} ({event.lag_seconds or 0:.0f}s)"
    detail = (
        getattr(event, "reason", None)
        or getattr(event, "new_primary", None)
        or getattr(event, "backup_id", None)
        or ""
    )
    return f"{event.type} {where}: {detail}".rstrip(": ")


def payload(hook: Webhook, alert: Alert) -> dict[str, Any]:
    event = alert.event.model_dump(mode="json")
    if hook.format == "slack":
        return {
            "text": f":rotating_light: Lifeboat: {alert.title}",
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": f"*{alert.title}*"}},
                {
                    "type": "context",
                    "elements": [
                        {
                            "type": "mrkdwn",
                            "text": f"`{alert.event.type}` at {event['occurred_at']}",
                        }
                    ],
                },
            ],
        }
    return {"alert": alert.title, "type": alert.event.type, "event": event}


class _Sink:
    def __init__(self, hook: Webhook, client: httpx.AsyncClient, queue_size: int) -> None:
        self.hook = hook
        self.client = client
        self.queue: asyncio.Queue[Alert] = asyncio.Queue(queue_size)
        self.sent_ids: OrderedDict[str, None] = OrderedDict()
        self.last_sent: dict[tuple[str, ...], float] = {}
        self.delivered = 0
        self.dropped = 0
        self.failed = 0

    def wants(self, event: Envelope) -> str | None:
        """The alert's level when this webhook wants `event`, else None."""
        hook = self.hook
        if event.type not in hook.events:
            return None
        if isinstance(event, NodeLag):
            level = event.level.value
            return level if _LEVELS[level] >= _LEVELS[hook.min_lag_level] else None
        if isinstance(event, NodeHealth):
            lag = event.lag_seconds
            if hook.lag_seconds is None or lag is None or lag < hook.lag_seconds:
                return None
            return "lag"
        return "event"

    def offer(self, event: Envelope, now: float) -> bool:
        level = self.wants(event)
        if level is None:
            return False
        event_id = str(event.event_id)
        if event_id in self.sent_ids:
            return False
        key = (event.type, getattr(event, "cluster", ""), getattr(event, "node", "") or "", level)
        last = self.last_sent.get(key)
        if last is not None and now - last < self.hook.cooldown_seconds:
            return False
        try:
            self.queue.put_nowait(Alert(key, summary(event), event))
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        self.last_sent[key] = now
        self.sent_ids[event_id] = None
        while len(self.sent_ids) > 10000:
            self.sent_ids.popitem(last=False)
        return True

    async def run(self) -> None:
        while True:
            alert = await self.queue.get()
            try:
                await self._deliver(alert)
                self.delivered += 1
            except Exception as exc:
                self.failed += 1
                log.warning(
                    "webhook %s: gave up on %s: %s", redact(self.hook.url), alert.title, exc
                )

    async def _deliver(self, alert: Alert) -> None:
        body = payload(self.hook, alert)
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((httpx.TransportError, DeliveryError)),
            wait=wait_exponential(multiplier=0.2, max=10),
            stop=stop_after_attempt(self.hook.attempts),
            reraise=True,
        ):
            with attempt:
                resp = await self.client.post(
                    self.hook.url, json=body, timeout=self.hook.timeout_seconds
                )
                if resp.status_code >= 500 or resp.status_code == 429:
                    raise DeliveryError(f"answered {resp.status_code}")
                if resp.status_code >= 400:
                    log.warning(
                        "webhook %s refused an alert: %s", redact(self.hook.url), resp.status_code
                    )


class Notifier:
    def __init__(self, hooks: tuple[Webhook, ...], *, queue_size: int = 1000) -> None:
        self.client = httpx.AsyncClient()
        self.sinks = [_Sink(h, self.client, queue_size) for h in hooks]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(s.run()) for s in self.sinks]

    def offer(self, stored: Stored) -> None:
        """Never blocks, never raises: queue what the webhooks want."""
        now = time.monotonic()
        for sink in self.sinks:
            try:
                sink.offer(stored.event, now)
            except Exception:
                log.exception("notifier: could not queue an alert")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.client.aclose()
