"""The gateway's read model: what the API answers from, kept current by watching NATS.

- the topology of every cluster and its maintenance state: KV watches (`lifeboat_topology`,
  `lifeboat_maintenance`), so a failover's new primary is seen the moment it is written;
- the history: one ordered consumer on `LIFEBOAT_EVENTS` from its first message, once at
  start, then live; each event kept with its stream sequence, so history pages by sequence
  (a cursor) and filters by kind and time without asking NATS anything per request;
- heartbeats: one ordered consumer on `LIFEBOAT_HEARTBEATS` from a little before start,
  feeding the book of monitor reports and a bounded buffer of recent heartbeats;
- the backup catalogue and the WAL archive's status: a KV watch of `lifeboat_backups` (the
  backup service mirrors its S3 catalogue there; the gateway never reads S3);
- file sets: the newest `file.status` heartbeat per set and node;
- operations (failover, switchover, rejoin; backup, restore, verify and delete of a backup;
  sync, check and restore of a file set) from their request events and the answers that carry
  their id as `correlation_id` (older backup services: as `request_id`); answers without one
  (an older failover service or filesync) are matched to the oldest open operation they can
  answer, so any gateway instance, or a restarted one, knows them;
- live readers (SSE, the notifier, metrics) subscribe to what is applied.

Everything is applied in one task per source on the event loop: no locks.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from uuid import UUID

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from lifeboat.common import subjects
from lifeboat.common.events import (
    BackupCompleted,
    BackupDeleted,
    BackupDeleteRefused,
    BackupDeleteRequested,
    BackupFailed,
    BackupProgress,
    BackupRequested,
    BackupStarted,
    BackupVerified,
    BackupVerifyRequested,
    Envelope,
    FailoverCompleted,
    FailoverFailed,
    FailoverKind,
    FailoverRequested,
    FailoverStarted,
    FileCheckRequested,
    FileReferencesChecked,
    FileRestored,
    FileRestoreRequested,
    FileStatus,
    FileSynced,
    FileSyncFailed,
    FileSyncPaused,
    FileSyncRequested,
    FileVerified,
    MaintenanceState,
    NodeHealth,
    NodeRejoined,
    NodeRejoinRequested,
    RestoreCompleted,
    RestoreFailed,
    RestoreRequested,
    RestoreStarted,
    ServiceHeartbeat,
    SwitchoverCompleted,
    SwitchoverFailed,
    SwitchoverRequested,
    UndecodableEventError,
    WalStatus,
    decode_event,
)
from lifeboat.common.kv import TOPOLOGY_BUCKET, open_bucket
from lifeboat.common.reports import ReportBook
from lifeboat.common.state import Topology
from lifeboat.gateway.rewind import stream_rewound
from lifeboat.gateway.schemas import OperationKindName

log = logging.getLogger(__name__)

StreamKind = Literal["events", "heartbeats"]
_STREAMS: dict[StreamKind, tuple[str, tuple[str, ...]]] = {
    "events": (subjects.STREAM_NAME, tuple(subjects.STREAM_SUBJECTS)),
    "heartbeats": (subjects.HEARTBEAT_STREAM_NAME, tuple(subjects.HEARTBEAT_STREAM_SUBJECTS)),
}
OperationKind = OperationKindName
REQUESTS: dict[type[Envelope], OperationKind] = {
    FailoverRequested: "failover",
    SwitchoverRequested: "switchover",
    NodeRejoinRequested: "rejoin",
    BackupRequested: "backup",
    RestoreRequested: "restore",
    BackupVerifyRequested: "backup_verify",
    BackupDeleteRequested: "backup_delete",
    FileSyncRequested: "file_sync",
    FileCheckRequested: "file_check",
    FileRestoreRequested: "file_restore",
}
# Answers of the backup service: they carry the request's id as `request_id`, and answer
# nothing else.
BACKUP_ANSWERS = (
    BackupStarted,
    BackupCompleted,
    BackupFailed,
    BackupVerified,
    BackupDeleted,
    BackupDeleteRefused,
    RestoreStarted,
    RestoreCompleted,
    RestoreFailed,
)
FAILOVER_ANSWERS = (
    FailoverStarted,
    FailoverCompleted,
    FailoverFailed,
    SwitchoverCompleted,
    SwitchoverFailed,
    NodeRejoined,
)
# Answers of filesync: no id; matched by cluster, file set and time.
FILE_ANSWERS = (
    FileSynced,
    FileSyncFailed,
    FileSyncPaused,
    FileVerified,
    FileReferencesChecked,
    FileRestored,
)
# Which request a `file.sync_failed` answers, by the prefix of its reason.
_FAILED_PREFIX: dict[str, OperationKind] = {
    "check: ": "file_check",
    "reference query: ": "file_check",
    "restore: ": "file_restore",
}
OperationStateName = Literal["pending", "running", "completed", "failed", "refused"]
TERMINAL = frozenset({"completed", "failed", "refused"})


@dataclass(frozen=True)
class Stored:
    """One event as it sits in its stream."""

    stream: StreamKind
    seq: int
    subject: str
    event: Envelope

    @property
    def event_id(self) -> UUID:
        return self.event.event_id


@dataclass
class Operation:
    id: UUID
    kind: OperationKind
    cluster: str
    requested_by: str
    requested_at: datetime
    target: str | None = None
    reason: str = ""
    state: OperationStateName = "pending"
    outcome: Envelope | None = None
    events: list[Envelope] = field(default_factory=list)
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    fileset: str | None = None
    # A file check closes on `file.references_checked` when the set has a reference query.
    references: bool = False
    progress: BackupProgress | None = None  # a backup's latest `backup.progress`

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    @property
    def refusal_reason(self) -> str | None:
        out = self.outcome
        if self.state not in ("failed", "refused"):
            return None
        if isinstance(out, BackupVerified):
            return out.detail
        if isinstance(out, FileStatus):
            return f"{out.state}: {out.detail}" if out.detail else out.state
        reason = getattr(out, "reason", None)
        return reason if isinstance(reason, str) else None


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: `*` one token, `>` the rest (at least one token)."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def stream_of(pattern: str) -> StreamKind:
    """Which stream holds the subjects `pattern` names (heartbeat topics, or the history)."""
    for topic in subjects.ALL_TOPICS:
        if topic.heartbeat and (pattern.startswith(topic.name + ".") or pattern == topic.name):
            return "heartbeats"
    return "events"


Listener = Callable[[Stored], None]
T = TypeVar("T")


def _stopped_at(entry: dict[str, Any]) -> datetime:
    try:
        return datetime.fromisoformat(str(entry.get("stopped_at")))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


class Projection:
    def __init__(
        self,
        *,
        heartbeat_buffer: int = 20000,
        report_max_age: float = 5.0,
        reference_sets: frozenset[tuple[str, str]] = frozenset(),
    ) -> None:
        """`reference_sets`: the (cluster, file set)s with a reference query, whose check
        ends with `file.references_checked`."""
        self.reference_sets = reference_sets
        self.topologies: dict[str, Topology] = {}
        self.topology_seen_at: dict[str, float] = {}  # monotonic, for the projection lag
        self.maintenance: dict[str, MaintenanceState] = {}
        # The catalogue (`subjects.BACKUPS_BUCKET`): cluster -> what the backup service
        # lists; (cluster, file set) -> that set's files snapshots. Each newest first.
        self.backups: dict[str, list[dict[str, Any]]] = {}
        self.file_backups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.wal: dict[str, WalStatus] = {}  # cluster: the mirrored wal.status
        self.file_status: dict[tuple[str, str, str], FileStatus] = {}  # (cluster, set, node)
        self.reports = ReportBook(max_age_seconds=report_max_age)
        self.events: list[Stored] = []  # the history, by sequence
        self._events_seq: list[int] = []
        self.heartbeats: deque[Stored] = deque(maxlen=heartbeat_buffer)
        self.operations: dict[UUID, Operation] = {}
        self.instances: dict[tuple[str, str], datetime] = {}  # (service, instance): last seen
        self.beats: dict[tuple[str, str], ServiceHeartbeat] = {}  # (service, instance): newest
        self.latest: dict[tuple[str, str, str], Envelope] = {}  # (type, cluster, key): newest
        self.lag_seconds: dict[StreamKind, float] = {"events": 0.0, "heartbeats": 0.0}
        self.applied: dict[StreamKind, int] = {"events": 0, "heartbeats": 0}
        self.caught_up = asyncio.Event()
        # Bumped by every change: answers computed from the projection may be reused while
        # it stays the same (see `cached`).
        self.version = 0
        self._cache: dict[object, tuple[int, float, object]] = {}
        self._listeners: list[Listener] = []
        self._op_changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: dict[StreamKind, Any] = {}
        self._generation: dict[StreamKind, int] = {"events": 0, "heartbeats": 0}
        self._history_end = 0  # the events stream's last sequence at start
        self._watchers: list[Any] = []

    # --- feeding ----------------------------------------------------------------------------

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every event applied from now on; returns the unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def apply(self, stored: Stored) -> None:
        """Take one event in (in stream order per stream; repeats are ignored)."""
        event = stored.event
        self.version += 1
        if stored.stream == "events":
            if self._events_seq and stored.seq <= self._events_seq[-1]:
                return
            self.events.append(stored)
            self._events_seq.append(stored.seq)
            self._operation(event)
        else:
            if self.heartbeats and stored.seq <= self.heartbeats[-1].seq:
                return
            self.heartbeats.append(stored)
            if isinstance(event, NodeHealth):
                self.reports.add(event)
            elif isinstance(event, ServiceHeartbeat):
                self.beats[(event.service, event.source.instance)] = event
            elif isinstance(event, FileStatus):
                self.file_status[(event.cluster, event.fileset, event.node)] = event
                self._operation(event)
            elif isinstance(event, BackupProgress):
                self._progress(event)
        self.applied[stored.stream] += 1
        self.instances[(event.source.service, event.source.instance)] = event.occurred_at
        cluster = getattr(event, "cluster", "")
        key = getattr(event, "node", None) or getattr(event, "fileset", None) or ""
        self.latest[(event.type, cluster, "")] = event
        if key:
            self.latest[(event.type, cluster, key)] = event
        self.lag_seconds[stored.stream] = max(
            0.0, (datetime.now(UTC) - event.occurred_at).total_seconds()
        )
        for listener in list(self._listeners):
            try:
                listener(stored)
            except Exception:  # a broken reader must not stop the projection
                log.exception("a projection listener failed")

    def set_topology(self, cluster: str, topology: Topology | None) -> None:
        self.version += 1
        if topology is None:
            self.topologies.pop(cluster, None)
        else:
            self.topologies[cluster] = topology
        self.topology_seen_at[cluster] = time.monotonic()

    def set_backups(
        self, cluster: str, backups: list[dict[str, Any]] | None, fileset: str | None = None
    ) -> None:
        self.version += 1
        if fileset is not None:
            if backups is None:
                self.file_backups.pop((cluster, fileset), None)
            else:
                self.file_backups[(cluster, fileset)] = backups
        elif backups is None:
            self.backups.pop(cluster, None)
        else:
            self.backups[cluster] = backups

    def catalogued(self, cluster: str) -> bool:
        """Whether any catalogue of the cluster was mirrored (its database or files kinds)."""
        return cluster in self.backups or any(c == cluster for c, _ in self.file_backups)

    def listed(self, cluster: str) -> list[dict[str, Any]]:
        """Every listed backup of the cluster, the database kinds and files snapshots, newest
        first."""
        found = list(self.backups.get(cluster, []))
        for (c, _), entries in self.file_backups.items():
            if c == cluster:
                found += entries
        return sorted(found, key=_stopped_at, reverse=True)

    def set_wal(self, cluster: str, status: WalStatus | None) -> None:
        self.version += 1
        if status is None:
            self.wal.pop(cluster, None)
        else:
            self.wal[cluster] = status

    def set_maintenance(self, cluster: str, state: MaintenanceState | None) -> None:
        self.version += 1
        if state is None:
            self.maintenance.pop(cluster, None)
        else:
            self.maintenance[cluster] = state

    def cached(self, key: object, max_age: float, compute: Callable[[], T]) -> T:
        """`compute()`, reused while nothing changed and for at most `max_age` seconds (what
        depends on the clock, e.g. a report's freshness, is at most that much late)."""
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] == self.version and now - hit[1] < max_age:
            return hit[2]  # type: ignore[return-value]
        value = compute()
        self._cache[key] = (self.version, now, value)
        return value

    # --- operations ---------------------------------------------------------------------------

    def open_operation(self, request: Envelope) -> Operation:
        """Record a request as an operation (its id: the correlation id, else the event's)."""
        op_id = request.correlation_id or request.event_id
        found = self.operations.get(op_id)
        if found is not None:
            return found
        kind = REQUESTS[type(request)]
        op = Operation(
            id=op_id,
            kind=kind,
            cluster=getattr(request, "cluster", ""),
            requested_by=getattr(request, "requested_by", "unknown"),
            requested_at=request.occurred_at,
            target=_target(request),
            reason=getattr(request, "reason", None) or "",
            fileset=getattr(request, "fileset", None),
        )
        if isinstance(request, FileCheckRequested):
            op.references = request.references and (
                (request.cluster, request.fileset) in self.reference_sets
            )
        self.operations[op_id] = op
        self._notify_operations()
        return op

    def _answers(self, op: Operation, event: Envelope) -> bool:
        """Whether `event`, which names no operation, answers `op`."""
        if op.done or getattr(event, "cluster", None) != op.cluster:
            return False
        if event.occurred_at < op.requested_at:
            return False
        if op.kind == "rejoin":
            return (isinstance(event, NodeRejoined) and event.node == op.target) or (
                isinstance(event, FailoverFailed) and event.target == op.target
            )
        if op.kind == "switchover":
            return isinstance(event, SwitchoverCompleted | SwitchoverFailed) or (
                isinstance(event, FailoverStarted) and event.kind is FailoverKind.SWITCHOVER
            )
        if op.kind == "failover":
            return (
                isinstance(event, FailoverStarted | FailoverCompleted | FailoverFailed)
                and event.kind is FailoverKind.MANUAL
            )
        if getattr(event, "fileset", None) != op.fileset:
            return False
        return _file_kind(event) == op.kind

    def _operation(self, event: Envelope) -> None:
        if type(event) in REQUESTS:
            self.open_operation(event)
            return
        if isinstance(event, BACKUP_ANSWERS):
            # Only the request it names: a scheduled backup answers no operation.
            rid = event.correlation_id or event.request_id
            op = self.operations.get(rid) if rid is not None else None
            if op is None:
                return
            if op.done:
                op.events.append(event)  # e.g. the verification after a backup
                self._notify_operations()
                return
        elif isinstance(event, FAILOVER_ANSWERS):
            op = self.operations.get(event.correlation_id) if event.correlation_id else None
            if op is None or op.done:
                op = next((o for o in self.operations.values() if self._answers(o, event)), None)
        elif isinstance(event, (*FILE_ANSWERS, FileStatus)):
            if event.correlation_id is not None:  # it says which request it answers
                op = self.operations.get(event.correlation_id)
                if op is None or op.done:
                    return
            else:  # an older filesync: the oldest open operation it can answer
                op = next((o for o in self.operations.values() if self._answers(o, event)), None)
        else:
            return
        if op is None:
            return
        state = _state_after(op, event)
        if state is None:
            return
        if not isinstance(event, FileStatus):
            op.events.append(event)
        op.updated_at = datetime.now(UTC)
        op.state = state
        if state in TERMINAL:
            op.outcome = event
        self._notify_operations()

    def _progress(self, event: BackupProgress) -> None:
        rid = event.correlation_id or event.request_id
        op = self.operations.get(rid) if rid is not None else None
        if op is not None and op.kind == "backup":
            op.progress = event
            if op.state == "pending":
                op.state = "running"
            op.updated_at = datetime.now(UTC)

    def _notify_operations(self) -> None:
        async def notify() -> None:
            async with self._op_changed:
                self._op_changed.notify_all()

        with contextlib.suppress(RuntimeError):  # no running loop (plain unit tests)
            asyncio.get_running_loop().create_task(notify())

    async def wait_known(self, op_id: UUID, timeout: float) -> None:
        """Until the operation is known here (its request applied), or `timeout`."""
        deadline = time.monotonic() + timeout
        async with self._op_changed:
            while op_id not in self.operations:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._op_changed.wait(), left)

    async def wait_operation(self, op_id: UUID, timeout: float) -> Operation | None:
        """The operation once it is done, or as it is after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        async with self._op_changed:
            while True:
                op = self.operations.get(op_id)
                left = deadline - time.monotonic()
                if (op is not None and op.done) or left <= 0:
                    return op
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._op_changed.wait(), left)

    # --- reading ------------------------------------------------------------------------------

    def history(
        self,
        cluster: str | None = None,
        *,
        types: frozenset[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before: int | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[Stored]:
        """Up to `limit` events, oldest first: the newest before sequence `before` (or the
        oldest after `after`), of these types, in [since, until)."""

        def wanted(s: Stored) -> bool:
            e = s.event
            return (
                (cluster is None or getattr(e, "cluster", None) == cluster)
                and (types is None or e.type in types)
                and (since is None or e.occurred_at >= since)
                and (until is None or e.occurred_at < until)
            )

        out: list[Stored] = []
        if after is not None:
            start = bisect.bisect_right(self._events_seq, after)
            for s in self.events[start:]:
                if wanted(s):
                    out.append(s)
                    if len(out) >= limit:
                        break
            return out
        end = len(self.events) if before is None else bisect.bisect_left(self._events_seq, before)
        for s in reversed(self.events[:end]):
            if since is not None and s.event.occurred_at < since:
                break
            if wanted(s):
                out.append(s)
                if len(out) >= limit:
                    break
        out.reverse()
        return out

    def buffered(self, stream: StreamKind, after: int) -> Iterator[Stored]:
        """What is kept of `stream` after sequence `after`, oldest first."""
        if stream == "events":
            start = bisect.bisect_right(self._events_seq, after)
            yield from self.events[start:]
        else:
            for s in list(self.heartbeats):
                if s.seq > after:
                    yield s

    def last_seq(self, stream: StreamKind) -> int:
        if stream == "events":
            return self._events_seq[-1] if self._events_seq else 0
        return self.heartbeats[-1].seq if self.heartbeats else 0

    def newest(self, type_: str, cluster: str, key: str = "") -> Envelope | None:
        return self.latest.get((type_, cluster, key))

    def newest_of(self, type_: str, cluster: str) -> dict[str, Envelope]:
        """The newest event of a type per node or file set in a cluster."""
        return {
            k[2]: e for k, e in self.latest.items() if k[0] == type_ and k[1] == cluster and k[2]
        }

    # --- running against NATS -----------------------------------------------------------------

    async def start(
        self,
        js: JetStreamContext,
        *,
        heartbeat_backfill_seconds: float = 30,
        rewind_check_seconds: float = 2.0,
    ) -> None:
        """Watch KV and both streams; `caught_up` is set once the history is replayed.
        Every `rewind_check_seconds` each stream is checked for having gone back (see
        `lifeboat.gateway.rewind`): what it no longer holds is dropped and it is followed
        again from there."""
        info = await js.stream_info(subjects.STREAM_NAME)
        self._history_end = info.state.last_seq
        if self._history_end == 0:
            self.caught_up.set()
        await self._follow(js, "events", None)
        backfill = datetime.fromtimestamp(time.time() - heartbeat_backfill_seconds, UTC)
        await self._follow(
            js,
            "heartbeats",
            await first_seq_since(js, subjects.HEARTBEAT_STREAM_NAME, backfill),
        )
        self._tasks.append(asyncio.create_task(self._check_rewinds(js, rewind_check_seconds)))
        topology = await open_bucket(js, TOPOLOGY_BUCKET, history=16)
        maintenance = await open_bucket(js, subjects.MAINTENANCE_BUCKET)
        backups = await open_bucket(js, subjects.BACKUPS_BUCKET)
        # `*`: the clusters' records, not the agents' `<cluster>.seen.<node>` (kv.TopologyStore).
        self._tasks.append(asyncio.create_task(self._watch(topology, self._on_topology, "*")))
        self._tasks.append(asyncio.create_task(self._watch(maintenance, self._on_maintenance)))
        self._tasks.append(asyncio.create_task(self._watch(backups, self._on_backups)))

    async def _follow(self, js: JetStreamContext, kind: StreamKind, start: int | None) -> None:
        """One ordered consumer on `kind`'s stream: from its start (None) or sequence
        `start`. It replaces the one before, whose late deliveries are then ignored."""
        self._generation[kind] += 1
        generation = self._generation[kind]
        old = self._subs.pop(kind, None)
        if old is not None:
            with contextlib.suppress(Exception):
                await old.unsubscribe()

        async def on_msg(msg: Msg) -> None:
            if self._generation[kind] != generation:
                return
            stored = _decode(msg, kind)
            if stored is not None:
                self.apply(stored)
            if kind == "events" and msg.metadata.sequence.stream >= self._history_end:
                self.caught_up.set()

        stream, filters = _STREAMS[kind]
        self._subs[kind] = await js.subscribe(
            "",
            stream=stream,
            cb=on_msg,
            ordered_consumer=True,
            config=ConsumerConfig(
                filter_subjects=list(filters),
                deliver_policy=(
                    DeliverPolicy.ALL if start is None else DeliverPolicy.BY_START_SEQUENCE
                ),
                opt_start_seq=start,
            ),
            pending_msgs_limit=1_000_000,
        )

    async def _check_rewinds(self, js: JetStreamContext, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            for kind in _STREAMS:
                try:
                    async with asyncio.timeout(every + 10):
                        agreed = await stream_rewound(js, _STREAMS[kind][0], self._held(kind))
                        if agreed is not None:
                            dropped = self.rewound(kind, agreed)
                            log.warning(
                                "the %s stream went back to sequence %d (a NATS store restored "
                                "or rolled back): %d event(s) it no longer holds dropped, "
                                "following it again from there",
                                kind,
                                agreed,
                                dropped,
                            )
                            await self._follow(js, kind, agreed + 1)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # NATS away: the next round asks again
                    log.debug("rewind check of %s: %s", kind, exc)

    def _held(self, kind: StreamKind) -> Sequence[Stored]:
        return self.events if kind == "events" else self.heartbeats

    def rewound(self, kind: StreamKind, agreed: int) -> int:
        """Drop what is held of `kind` after sequence `agreed` (the stream no longer has it);
        returns how many."""
        self.version += 1
        if kind == "events":
            keep = bisect.bisect_right(self._events_seq, agreed)
            dropped = len(self.events) - keep
            del self.events[keep:]
            del self._events_seq[keep:]
            return dropped
        dropped = 0
        while self.heartbeats and self.heartbeats[-1].seq > agreed:
            self.heartbeats.pop()
            dropped += 1
        return dropped

    def _on_topology(self, key: str, value: bytes | None) -> None:
        self.set_topology(key, None if value is None else Topology.model_validate_json(value))

    def _on_backups(self, key: str, value: bytes | None) -> None:
        if key.endswith(".wal"):
            cluster = key.removesuffix(".wal")
            self.set_wal(cluster, None if value is None else WalStatus.model_validate_json(value))
            return
        cluster, _, fileset = key.partition(".files.")
        if value is None:
            self.set_backups(cluster, None, fileset or None)
            return
        listed = json.loads(value).get("backups")
        if not isinstance(listed, list):
            raise ValueError("no list of backups")
        entries = [b for b in listed if isinstance(b, dict) and "backup_id" in b]
        self.set_backups(cluster, entries, fileset or None)

    def _on_maintenance(self, key: str, value: bytes | None) -> None:
        state = None if value is None else MaintenanceState.model_validate_json(value)
        self.set_maintenance(key, state)

    async def _watch(
        self, kv: KeyValue, apply: Callable[[str, bytes | None], None], keys: str = ">"
    ) -> None:
        while True:
            try:
                watcher = await kv.watch(keys)
                self._watchers.append(watcher)
                async for entry in watcher:
                    if entry is None:
                        continue  # the end of the initial values
                    deleted = entry.operation in ("DEL", "PURGE")
                    try:
                        apply(entry.key, None if deleted else entry.value)
                    except ValueError as exc:
                        log.warning("ignored KV %s: %s", entry.key, exc)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("KV watch failed (%s); watching again", exc)
                await asyncio.sleep(1)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for sub in self._subs.values():
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._tasks.clear()
        self._subs.clear()


async def first_seq_since(js: JetStreamContext, stream: str, since: datetime) -> int:
    """The first sequence of `stream` stored at or after `since` (the next one, if none is):
    a binary search on the stored messages' times.

    Why not a consumer by start time: when every NATS server restarts, nats-py recreates an
    ordered consumer from the sequence it had reached but keeps the start time beside it,
    and the server refuses the pair for ever (err 10094) — the gateway then never heard a
    heartbeat again. A consumer started by sequence is recreated by sequence."""
    state = (await js.stream_info(stream)).state
    lo, hi = max(1, state.first_seq), state.last_seq
    while lo <= hi:
        mid = (lo + hi) // 2
        try:
            stored = await js.get_msg(stream, seq=mid)
        except NotFoundError:  # gone since (aged out): what follows is newer
            lo = mid + 1
            continue
        if stored.time is not None and stored.time >= since:
            hi = mid - 1
        else:
            lo = mid + 1
    return lo


def _target(request: Envelope) -> str | None:
    """What a request acts on, as its operation shows it."""
    if isinstance(request, BackupRequested):
        return request.kind.value
    if isinstance(request, RestoreRequested):
        return request.node or "new"
    for name in ("target", "node", "backup_id", "fileset"):
        value = getattr(request, name, None)
        if value is not None:
            return str(value)
    return None


def _file_kind(event: Envelope) -> OperationKind | None:
    """Which kind of file set operation an answer of filesync closes or reports on."""
    if isinstance(event, FileSynced | FileSyncPaused | FileStatus):
        return "file_sync"
    if isinstance(event, FileVerified | FileReferencesChecked):
        return "file_check"
    if isinstance(event, FileRestored):
        return "file_restore"
    if isinstance(event, FileSyncFailed):
        for prefix, kind in _FAILED_PREFIX.items():
            if event.reason.startswith(prefix):
                return kind
        return None if event.reason.startswith("snapshot: ") else "file_sync"
    return None


def _state_after(op: Operation, event: Envelope) -> OperationStateName | None:
    """The operation's state once `event` answered it; None: it does not change it."""
    failed: OperationStateName = "failed" if op.state == "running" else "refused"
    match event:
        case FailoverStarted() | BackupStarted() | RestoreStarted():
            return "running"
        case FailoverFailed() | SwitchoverFailed() | BackupDeleteRefused():
            return failed
        case BackupFailed() | RestoreFailed():
            return failed  # refused when it never started (no source, a bad target, busy)
        case FileSyncFailed() | FileSyncPaused():
            return "failed"
        case BackupVerified():
            if op.kind != "backup_verify":
                return None
            return "completed" if event.ok else "failed"
        case FileStatus():
            # A sync asked of a paused (or failing) set answers only in its heartbeat.
            return "failed" if event.state in ("paused", "failed") else None
        case FileVerified():
            return "running" if op.references else "completed"
        case _:
            return "completed"


def _decode(msg: Msg, stream: StreamKind) -> Stored | None:
    try:
        event = decode_event(msg.data)
    except UndecodableEventError as exc:
        log.warning("projection: skipped a message on %s: %s", msg.subject, exc)
        return None
    return Stored(stream, msg.metadata.sequence.stream, msg.subject, event)
