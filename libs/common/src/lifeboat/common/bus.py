"""The event bus: a FastStream NATS broker, the two event streams, publishing, consuming.

LIFEBOAT_EVENTS is the history (decisions and outcomes, kept for weeks); LIFEBOAT_HEARTBEATS
holds the high-volume reports for a short while, so that they can never evict the history.

Every event goes to JetStream with `Nats-Msg-Id` set to its event id, so a retried publish is
stored once. Consumers are durable pull consumers named after the service, so a restarted
service resumes where it stopped and several instances share the work. A message that does not
validate, or whose handler keeps failing, goes to `deadletter.<consumer>` with the reason and is
acknowledged: a bad message never crashes a consumer nor blocks the ones behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar
from uuid import UUID

from faststream import AckPolicy, BaseMiddleware
from faststream.message import StreamMessage
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamInfo
from nats.js.errors import BadRequestError, NotFoundError
from pydantic import ValidationError

from lifeboat.common.events import (
    DeadLetter,
    Envelope,
    Source,
    UndecodableEventError,
    decode_event,
)
from lifeboat.common.subjects import (
    HEARTBEAT_STREAM_NAME,
    HEARTBEAT_STREAM_SUBJECTS,
    STREAM_NAME,
    STREAM_SUBJECTS,
    Topic,
)

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Envelope)

MAX_DELIVER = 5
EVENTS_STREAM = JStream(STREAM_NAME, declare=False)


def _pull_timeouts_as_nats_timeouts() -> None:
    """nats-py's pull `fetch` can raise a bare `asyncio.TimeoutError` (its deadline spent
    between the no-wait probe and the lingering request) where it otherwise raises
    `nats.errors.TimeoutError`. FastStream's pull loop suppresses only the latter, so its
    supervisor logs a traceback and restarts the loop for what is just an empty fetch. Raise
    the one it expects."""
    pull = JetStreamContext.PullSubscription
    original = pull._fetch_n
    if getattr(original, "_lifeboat", False):
        return

    async def fetch_n(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await original(self, *args, **kwargs)
        except NatsTimeoutError:
            raise
        except TimeoutError as exc:
            raise NatsTimeoutError from exc

    fetch_n._lifeboat = True  # type: ignore[attr-defined]
    pull._fetch_n = fetch_n  # type: ignore[method-assign]


_pull_timeouts_as_nats_timeouts()


def make_broker(nats_url: str, client_name: str, *, graceful_timeout: float = 5.0) -> NatsBroker:
    """A broker of `nats_url`: one server, or a cluster's servers separated by commas (the
    client moves to another one when its server goes)."""
    return NatsBroker(
        [url.strip() for url in nats_url.split(",") if url.strip()],
        name=client_name,
        # A service outlives NATS restarts: it keeps reconnecting instead of giving up.
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=2,
        graceful_timeout=graceful_timeout,
        middlewares=[DeadLetterMiddleware],
        # Our handlers and format, not FastStream's own coloured one; per-message access
        # lines only at DEBUG.
        logger=logging.getLogger("lifeboat.bus"),
        log_level=logging.DEBUG,
    )


def stream_config(
    *,
    max_age_seconds: float,
    max_bytes: int,
    duplicate_window_seconds: float,
    replicas: int = 1,
) -> StreamConfig:
    """The history: failovers, fences, backups, restores, file sync; never heartbeats."""
    return StreamConfig(
        name=STREAM_NAME,
        description="Lifeboat's history: every decision and outcome (no heartbeats)",
        subjects=list(STREAM_SUBJECTS),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=max_age_seconds,
        max_bytes=max_bytes,
        duplicate_window=duplicate_window_seconds,
        num_replicas=replicas,
    )


def heartbeat_stream_config(
    *, max_age_seconds: float, max_bytes: int, replicas: int = 1
) -> StreamConfig:
    """node.health and wal.archived: what live readers need, dropped oldest first."""
    return StreamConfig(
        name=HEARTBEAT_STREAM_NAME,
        description="Lifeboat's heartbeats: node.health reports and per-segment WAL archiving",
        subjects=list(HEARTBEAT_STREAM_SUBJECTS),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=max_age_seconds,
        max_bytes=max_bytes,
        duplicate_window=min(120.0, max_age_seconds),
        num_replicas=replicas,
    )


async def ensure_streams(js: JetStreamContext, *configs: StreamConfig) -> list[StreamInfo]:
    """Bring every stream to its config, in order: the history first, as an older history
    stream captured `node.>` and must let go of `node.health` before the other takes it."""
    return [await ensure_stream(js, config) for config in configs]


async def wait_for_leader(js: JetStreamContext, stream: str, timeout: float = 15.0) -> None:
    """Until a replicated stream has elected its leader: a publish before that finds no
    responder. A single server's stream has no cluster info and is ready at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        info = await js.stream_info(stream)
        if info.cluster is None or info.cluster.leader or loop.time() > deadline:
            return
        await asyncio.sleep(0.1)


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> StreamInfo:
    """Create the stream, or bring an existing one to this config; safe to call any time."""
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            return await js.add_stream(config)
        except BadRequestError:
            pass  # another service created it between our two calls
    return await js.update_stream(config)


def encode(event: Envelope) -> tuple[bytes, dict[str, str]]:
    return event.model_dump_json().encode(), {
        "Nats-Msg-Id": str(event.event_id),
        "content-type": "application/json",
    }


class EventPublisher:
    """Publishes events to JetStream under the service's own `Source`."""

    def __init__(self, broker: NatsBroker, source: Source, *, timeout: float = 5.0) -> None:
        self.broker = broker
        self.source = source
        self.timeout = timeout

    async def publish(self, event: Envelope) -> None:
        body, headers = encode(event)
        await self.broker.publish(
            body, event.subject(), headers=headers, stream=event.topic.stream, timeout=self.timeout
        )


@contextlib.asynccontextmanager
async def answers(
    nc: NatsClient, subjects: Sequence[str], correlation: UUID | None
) -> AsyncIterator[asyncio.Queue[Envelope]]:
    """The events on `subjects` that answer the request `correlation` names, as they come.

    Publish the request inside the block: the subscriptions are on the server (flushed) before
    it, so an answer quicker than the publish's own return is not missed — the trap of
    subscribing after asking. An answer that does not decode answers nobody: logged, dropped.
    """
    got: asyncio.Queue[Envelope] = asyncio.Queue()

    async def on(msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except UndecodableEventError as exc:
            log.warning("an undecodable answer on %s: %s", msg.subject, exc)
            return
        if event.correlation_id == correlation:
            got.put_nowait(event)

    subs = [await nc.subscribe(subject, cb=on) for subject in subjects]
    try:
        await nc.flush(timeout=5)
        yield got
    finally:
        for sub in subs:
            with contextlib.suppress(Exception):  # a closed connection has none left to end
                await sub.unsubscribe()


def consumer_name(service: str, topic: Topic) -> str:
    return f"{service}-{topic.name.replace('.', '-')}"


def subscribe(
    broker: NatsBroker,
    *,
    service: str,
    topic: Topic,
    model: type[E],
    handler: Callable[[E], Awaitable[None]],
    **fixed: str,
) -> None:
    """Register a durable consumer of `topic` that hands validated `model`s to `handler`."""
    durable = consumer_name(service, topic)

    async def consume(event: E) -> None:
        await handler(event)

    # FastStream validates (and documents) the payload from the annotation.
    consume.__annotations__ = {"event": model, "return": None}
    consume.__name__ = durable.replace("-", "_")
    consume.__doc__ = handler.__doc__ or topic.description
    broker.subscriber(
        topic.pattern(**fixed),
        stream=EVENTS_STREAM,
        durable=durable,
        pull_sub=PullSub(batch_size=10, timeout=1.0),
        config=ConsumerConfig(max_deliver=MAX_DELIVER, ack_wait=60),
        # A failed handler is retried (nak) until DeadLetterMiddleware takes the last delivery.
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title=durable,
        description=topic.description,
    )(consume)


def _dead_letter_reason(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}" for e in exc.errors()
        )
        return f"payload does not validate: {problems}"
    return f"handler failed: {type(exc).__name__}: {exc}"


class DeadLetterMiddleware(BaseMiddleware):
    """Routes poison messages to `deadletter.<consumer>` instead of crashing or looping."""

    async def consume_scope(
        self, call_next: Callable[[StreamMessage[Any]], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        try:
            return await call_next(msg)
        except Exception as exc:
            raw = msg.raw_message
            metadata = getattr(raw, "metadata", None)
            deliveries = getattr(metadata, "num_delivered", 1) or 1
            consumer = getattr(metadata, "consumer", None) or "unknown"
            final = isinstance(exc, ValidationError) or deliveries >= MAX_DELIVER
            if not final:
                raise  # nack: JetStream redelivers until MAX_DELIVER
            await self._dead_letter(msg, consumer, exc, deliveries)
            return None

    async def _dead_letter(
        self, msg: StreamMessage[Any], consumer: str, exc: Exception, deliveries: int
    ) -> None:
        broker: NatsBroker = self.context.get("broker")
        source = self.context.get("lifeboat_source") or Source(service="unknown", instance="-")
        letter = DeadLetter(
            source=source,
            consumer=consumer,
            original_subject=msg.raw_message.subject,
            reason=_dead_letter_reason(exc),
            payload=bytes(msg.body).decode("utf-8", errors="replace"),
            headers={k: str(v) for k, v in (msg.headers or {}).items()},
            deliveries=deliveries,
        )
        log.warning("dead-lettered %s: %s", letter.original_subject, letter.reason)
        await EventPublisher(broker, source).publish(letter)


def listen(
    broker: NatsBroker, topic: Topic, *, title: str
) -> Callable[[Callable[..., Awaitable[None]]], object]:
    """A plain (non-durable) subscription: every instance gets every message, live.

    It never answers: these subjects are in the stream, and an answer would race the
    publisher's JetStream ack.
    """
    decorator: Callable[[Callable[..., Awaitable[None]]], object] = broker.subscriber(
        topic.pattern(), no_reply=True, title=title, description=topic.description
    )
    return decorator
