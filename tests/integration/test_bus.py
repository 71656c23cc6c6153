"""The event bus against a real nats-server: stream, publishing, durable consumers, dead letters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from lifeboat.common import subjects
from lifeboat.common.bus import MAX_DELIVER, ensure_stream, stream_config, subscribe
from lifeboat.common.events import BackupKind, BackupRequested, DeadLetter, Source
from lifeboat.common.runtime import ServiceRuntime
from lifeboat.common.settings import ServiceSettings

SRC = Source(service="test", instance="t-1")


async def started_runtime(
    nats_url: str, service: str, handler: Callable[[BackupRequested], object], cluster: str
) -> ServiceRuntime:
    runtime = ServiceRuntime(
        service, ServiceSettings(nats_url=nats_url, instance_id=f"{service}-1")
    )

    async def handle(event: BackupRequested) -> None:
        result = handler(event)
        if asyncio.iscoroutine(result):
            await result

    subscribe(
        runtime.broker,
        service=service,
        topic=subjects.BACKUP_REQUESTED,
        model=BackupRequested,
        handler=handle,
        cluster=cluster,
    )
    await runtime.connect()
    await runtime.broker.start()
    return runtime


class Collector:
    def __init__(self) -> None:
        self.items: list[Msg] = []
        self.event = asyncio.Event()

    async def add(self, msg: Msg) -> None:
        self.items.append(msg)
        self.event.set()

    async def wait_for(self, count: int, timeout: float = 10) -> list[Msg]:
        async def enough() -> None:
            while len(self.items) < count:
                self.event.clear()
                await self.event.wait()

        await asyncio.wait_for(enough(), timeout)
        return self.items


@pytest.fixture
async def dead_letters(nc: NatsClient) -> AsyncIterator[Collector]:
    collector = Collector()
    sub = await nc.subscribe(subjects.DEAD_LETTER.pattern(), cb=collector.add)
    yield collector
    await sub.unsubscribe()


async def test_stream_is_declared_idempotently_and_updated(nc: NatsClient) -> None:
    js = nc.jetstream()
    cfg = stream_config(max_age_seconds=3600, max_bytes=10**8, duplicate_window_seconds=60)
    first = await ensure_stream(js, cfg)
    again = await ensure_stream(js, cfg)
    assert first.config.subjects == again.config.subjects
    assert set(again.config.subjects or []) == set(subjects.STREAM_SUBJECTS)
    assert again.config.storage == "file"
    longer = stream_config(max_age_seconds=7200, max_bytes=10**8, duplicate_window_seconds=60)
    updated = await ensure_stream(js, longer)
    assert updated.config.max_age == 7200


async def test_publish_is_deduplicated_by_event_id(
    nats_url: str, nc: NatsClient, unique: str
) -> None:
    runtime = ServiceRuntime("dedup", ServiceSettings(nats_url=nats_url))
    await runtime.connect()
    try:
        event = BackupRequested(cluster=unique, source=SRC, reason="twice")
        await runtime.publisher.publish(event)
        await runtime.publisher.publish(event)  # a retry after a lost ack
        js = nc.jetstream()
        info = await js.stream_info(subjects.STREAM_NAME, subjects_filter=event.subject())
        assert info.state.subjects == {event.subject(): 1}
        stored = await js.get_last_msg(subjects.STREAM_NAME, event.subject())
        assert stored.headers is not None
        assert stored.headers["Nats-Msg-Id"] == str(event.event_id)
        assert json.loads(stored.data or b"")["reason"] == "twice"
    finally:
        await runtime.broker.stop()


async def test_consumer_gets_valid_events_and_dead_letters_bad_ones(
    nats_url: str, nc: NatsClient, dead_letters: Collector, unique: str
) -> None:
    received: list[BackupRequested] = []
    runtime = await started_runtime(nats_url, unique, received.append, unique)
    try:
        subject = subjects.BACKUP_REQUESTED.subject(cluster=unique)
        js = nc.jetstream()
        await js.publish(subject, b"this is not json")
        await js.publish(
            subject, json.dumps({"type": "backup.requested", "cluster": unique}).encode()
        )
        good = BackupRequested(cluster=unique, source=SRC, kind=BackupKind.PHYSICAL)
        await runtime.publisher.publish(good)

        letters = await dead_letters.wait_for(2)
        parsed = [DeadLetter.model_validate_json(m.data) for m in letters]
        assert {p.original_subject for p in parsed} == {subject}
        assert all(p.consumer == f"{unique}-backup-requested" for p in parsed)
        assert all(p.reason.startswith("payload does not validate") for p in parsed)
        assert any(p.payload == "this is not json" for p in parsed)
        assert any("source" in p.reason for p in parsed)  # names the missing field

        for _ in range(50):
            if received:
                break
            await asyncio.sleep(0.1)
        assert received == [good]  # the bad ones did not stop the consumer
    finally:
        await runtime.broker.stop()


async def test_a_handler_that_keeps_failing_is_dead_lettered_after_max_deliveries(
    nats_url: str, dead_letters: Collector, unique: str
) -> None:
    attempts: list[int] = []

    def explode(event: BackupRequested) -> None:
        attempts.append(1)
        raise RuntimeError("disk full")

    runtime = await started_runtime(nats_url, unique, explode, unique)
    try:
        await runtime.publisher.publish(BackupRequested(cluster=unique, source=SRC))
        letters = await dead_letters.wait_for(1, timeout=30)
        letter = DeadLetter.model_validate_json(letters[0].data)
        assert letter.reason == "handler failed: RuntimeError: disk full"
        assert letter.deliveries == MAX_DELIVER
        assert len(attempts) == MAX_DELIVER
    finally:
        await runtime.broker.stop()


async def test_durable_consumer_resumes_where_it_stopped(nats_url: str, unique: str) -> None:
    first: list[BackupRequested] = []
    runtime = await started_runtime(nats_url, unique, first.append, unique)
    before = BackupRequested(cluster=unique, source=SRC, reason="before restart")
    await runtime.publisher.publish(before)
    for _ in range(50):
        if first:
            break
        await asyncio.sleep(0.1)
    await runtime.broker.stop()
    assert first == [before]

    publisher = ServiceRuntime("pub", ServiceSettings(nats_url=nats_url))
    await publisher.connect()
    while_down = [
        BackupRequested(cluster=unique, source=SRC, reason=f"while down {i}") for i in range(3)
    ]
    for event in while_down:
        await publisher.publisher.publish(event)
    await publisher.broker.stop()

    second: list[BackupRequested] = []
    restarted = await started_runtime(nats_url, unique, second.append, unique)
    try:
        for _ in range(100):
            if len(second) >= 3:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # nothing more must arrive: `before` was acknowledged
        assert second == while_down
    finally:
        await restarted.broker.stop()
