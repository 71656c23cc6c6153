"""Asking filesync and waiting, bounded, for its answers: the files half of a `full` backup
(a snapshot of every file set once the base backup has ended), of its restore and of its
verification.

Services meet only on NATS: the requests are events, and so are the answers, matched by the
requests' `correlation_id` and one per file set (or per snapshot, for a verification). The
subscription exists before the first request is published, so a quick answer is not missed;
a set that says `file.sync_failed` fails the whole ask at once with its reason, and one that
says nothing fails it at the deadline, naming the sets that did not answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from uuid import UUID

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from lifeboat.common import subjects
from lifeboat.common.events import (
    ClusterEvent,
    FileSetEvent,
    FileSyncFailed,
    UndecodableEventError,
    decode_event,
)

log = logging.getLogger(__name__)


def by_fileset(event: ClusterEvent) -> str | None:
    return event.fileset if isinstance(event, FileSetEvent) else None


class FilesUnanswered(RuntimeError):
    """A file set failed the request, or did not answer it in time."""


@dataclass
class Asker:
    nc: NatsClient
    publish: Callable[[ClusterEvent], Awaitable[None]]

    async def ask(
        self,
        requests: Sequence[ClusterEvent],
        answer: subjects.Topic,
        expect: frozenset[str],
        timeout: float,
        key: Callable[[ClusterEvent], str | None] = by_fileset,
    ) -> dict[str, ClusterEvent]:
        """Publish `requests` (one cluster, one correlation id) and return the `answer` event
        for each of `expect`, keyed by `key` (the file set, by default)."""
        cluster = requests[0].cluster
        correlation: UUID | None = requests[0].correlation_id
        got: dict[str, ClusterEvent] = {}
        failed: dict[str, str] = {}
        done = asyncio.Event()

        async def on(msg: Msg) -> None:
            try:
                event = decode_event(msg.data)
            except UndecodableEventError as exc:
                log.warning("an undecodable answer on %s: %s", msg.subject, exc)
                return
            if not isinstance(event, ClusterEvent) or event.correlation_id != correlation:
                return
            if isinstance(event, FileSyncFailed):
                if event.fileset in expect or key is not by_fileset:
                    failed[event.fileset] = event.reason
            else:
                name = key(event)
                if name not in expect:
                    return
                got[name] = event
            if failed or set(got) >= expect:
                done.set()

        subs = [
            await self.nc.subscribe(topic.pattern(cluster=cluster), cb=on)
            for topic in (answer, subjects.FILE_SYNC_FAILED)
        ]
        try:
            await self.nc.flush(timeout=5)  # the subscriptions are on the server
            for request in requests:
                await self.publish(request)
            try:
                await asyncio.wait_for(done.wait(), timeout)
            except TimeoutError:
                missing = ", ".join(sorted(expect - set(got)))
                raise FilesUnanswered(
                    f"no {answer.name} from file set(s) {missing} within {timeout:g}s "
                    "(is filesync running on their mirror's node?)"
                ) from None
        finally:
            for sub in subs:
                await sub.unsubscribe()
        if failed:
            why = "; ".join(f"{name}: {reason}" for name, reason in sorted(failed.items()))
            raise FilesUnanswered(f"file set(s) failed: {why}")
        return got
