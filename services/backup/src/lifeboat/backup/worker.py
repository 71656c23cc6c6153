"""Requests taken by exactly one of any number of workers, and never twice while it lives.

A durable pull consumer shared by every instance hands each request to one of them. JetStream's
AckWait is not a lease: a long backup would be redelivered to a second worker once it passed.
So while a request runs, the worker sends in-progress acks (each resets AckWait), and it holds
a KV lease per cluster and kind that it renews: at most one backup of a kind runs per cluster,
and a redelivery to another worker while the first lives finds the lease taken for the same
request and is put back. A worker that dies stops both; the request comes back after AckWait
and, the lease expired, another worker runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import FetchTimeoutError
from pydantic import ValidationError

from lifeboat.common.bus import MAX_DELIVER, consumer_name
from lifeboat.common.events import ClusterEvent
from lifeboat.common.kv import LeaseLostError, LeaseStore, Versioned
from lifeboat.common.state import Lease
from lifeboat.common.subjects import STREAM_NAME, Topic

log = logging.getLogger(__name__)

E = TypeVar("E", bound=ClusterEvent)


class Busy(RuntimeError):
    """The lease is held for this very request by a live worker: put the message back."""


class Held:
    """A renewed lease; `lost` is set if a renewal fails (another holder, or KV gone)."""

    def __init__(self, store: LeaseStore, lease: Versioned[Lease]) -> None:
        self.store = store
        self.lease = lease
        self.lost = asyncio.Event()
        self._task = asyncio.create_task(self._renew())

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self.lease.value.ttl_seconds / 3))
            try:
                self.lease = await self.store.renew(self.lease)
            except LeaseLostError:
                self.lost.set()
                return
            except Exception as exc:  # NATS hiccup: try again next round
                log.warning("lease renewal failed: %s", exc)

    async def release(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        with contextlib.suppress(Exception):
            await self.store.release(self.lease)


async def claim(
    store: LeaseStore, name: str, instance: str, request_id: str, ttl: int
) -> Held | str:
    """The lease for `request_id`, or the holder's description if another request has it;
    `Busy` if it is held for this same request (by a live worker)."""
    holder = f"{instance}|{request_id}"
    got = await store.acquire(name, holder, ttl)
    if got is not None:
        return Held(store, got)
    current = await store.current(name)
    if current is None:
        got = await store.acquire(name, holder, ttl)
        return Held(store, got) if got is not None else "someone (lease just taken)"
    held_by = current.value.holder
    if held_by.endswith(f"|{request_id}"):
        raise Busy(f"request {request_id} is running on {held_by.split('|')[0]}")
    return held_by.split("|")[0] + f" (request {held_by.split('|')[-1]})"


class WorkQueue(Generic[E]):
    def __init__(
        self,
        js: JetStreamContext,
        *,
        service: str,
        topic: Topic,
        model: type[E],
        handler: Callable[[E], Awaitable[None]],
        ack_wait: float,
        concurrency: int = 2,
        dead_letter: Callable[[Msg, str], Awaitable[None]] | None = None,
    ) -> None:
        self.js = js
        self.topic = topic
        self.model = model
        self.handler = handler
        self.ack_wait = ack_wait
        self.durable = consumer_name(service, topic)
        self.slots = asyncio.Semaphore(concurrency)
        self.dead_letter = dead_letter
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        sub = await self.js.pull_subscribe(
            self.topic.pattern(),
            durable=self.durable,
            stream=STREAM_NAME,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait,
                max_deliver=MAX_DELIVER * 4,
            ),
        )
        try:
            while True:
                await self.slots.acquire()
                try:
                    msgs = await sub.fetch(1, timeout=1.0)
                except (FetchTimeoutError, TimeoutError):
                    self.slots.release()
                    # nats-py may turn a cancellation inside fetch into a timeout: a stop
                    # must still stop the loop.
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise asyncio.CancelledError from None
                    continue
                except Exception as exc:
                    self.slots.release()
                    log.warning("%s: fetch failed: %s", self.durable, exc)
                    await asyncio.sleep(1.0)
                    continue
                for msg in msgs:
                    task = asyncio.create_task(self._process(msg))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            # Unsubscribed, or closing the connection drains this pull subscription and
            # waits out nats-py's 30 s drain timeout: a stop must take seconds.
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(max(0.5, self.ack_wait / 3))
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _process(self, msg: Msg) -> None:
        keeper = asyncio.create_task(self._keep_alive(msg))
        try:
            try:
                event = self.model.model_validate_json(msg.data)
            except ValidationError as exc:
                if self.dead_letter is not None:
                    await self.dead_letter(msg, f"payload does not validate: {exc}")
                await msg.term()
                return
            try:
                await self.handler(event)
            except Busy as exc:
                log.info("%s: %s; put back", self.durable, exc)
                await msg.nak(delay=self.ack_wait)
                return
            except Exception as exc:
                deliveries = msg.metadata.num_delivered or 1
                log.warning("%s: handler failed (%d): %s", self.durable, deliveries, exc)
                if deliveries >= MAX_DELIVER:
                    if self.dead_letter is not None:
                        await self.dead_letter(msg, f"handler failed: {type(exc).__name__}: {exc}")
                    await msg.term()
                else:
                    await msg.nak(delay=2.0 * deliveries)
                return
            await msg.ack()
        finally:
            keeper.cancel()
            self.slots.release()
