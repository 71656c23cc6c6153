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
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient

from lifeboat.common import subjects
from lifeboat.common.bus import answers
from lifeboat.common.events import ClusterEvent, FileSetEvent, FileSyncFailed


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
        got: dict[str, ClusterEvent] = {}
        failed: dict[str, str] = {}
        topics = [topic.pattern(cluster=cluster) for topic in (answer, subjects.FILE_SYNC_FAILED)]
        async with answers(self.nc, topics, requests[0].correlation_id) as events:
            for request in requests:
                await self.publish(request)
            deadline = time.monotonic() + timeout
            while not failed and not set(got) >= expect:
                try:
                    event = await asyncio.wait_for(events.get(), deadline - time.monotonic())
                except TimeoutError:
                    missing = ", ".join(sorted(expect - set(got)))
                    raise FilesUnanswered(
                        f"no {answer.name} from file set(s) {missing} within {timeout:g}s "
                        "(is filesync running on their mirror's node?)"
                    ) from None
                if isinstance(event, FileSyncFailed):
                    if event.fileset in expect or key is not by_fileset:
                        failed[event.fileset] = event.reason
                elif isinstance(event, ClusterEvent) and (name := key(event)) in expect:
                    got[name] = event
        if failed:
            why = "; ".join(f"{name}: {reason}" for name, reason in sorted(failed.items()))
            raise FilesUnanswered(f"file set(s) failed: {why}")
        return got
