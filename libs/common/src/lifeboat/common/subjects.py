"""The single source of truth for every NATS subject Lifeboat uses.

Subjects read the way users type them into `nats sub`: a domain, a verb, then the cluster
(and node or file set) the event is about, e.g. `node.health.main.node1`. Services never spell
subjects as literals; they ask a `Topic` for a concrete subject or a subscription pattern.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import StringConstraints

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
_NAME_RE = re.compile(NAME_PATTERN)

# A name that is safe as one subject token and as a KV key part: no dots, wildcards or spaces.
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]

# Two streams, so that heartbeats can never evict history. LIFEBOAT_EVENTS keeps the decisions
# and outcomes (failovers, fences, backups, restores, files) for weeks; LIFEBOAT_HEARTBEATS
# keeps the high-volume reports (node.health every second from every monitor about every node,
# one wal.archived per segment) only as long as live readers need them.
STREAM_NAME = "LIFEBOAT_EVENTS"
HEARTBEAT_STREAM_NAME = "LIFEBOAT_HEARTBEATS"


def check_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use 1-63 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return value


@dataclass(frozen=True)
class Topic:
    """A family of subjects: `name` followed by one token per parameter."""

    name: str
    params: tuple[str, ...]
    description: str
    # High-volume and short-lived: kept in the heartbeat stream, not in the history.
    heartbeat: bool = False

    @property
    def stream(self) -> str:
        return HEARTBEAT_STREAM_NAME if self.heartbeat else STREAM_NAME

    def subject(self, **values: str) -> str:
        if set(values) != set(self.params):
            raise ValueError(f"{self.name} needs exactly {self.params}, got {sorted(values)}")
        return ".".join([self.name, *(check_name(values[p]) for p in self.params)])

    def pattern(self, **fixed: str) -> str:
        """A subscription pattern; parameters not given become `*`."""
        unknown = set(fixed) - set(self.params)
        if unknown:
            raise ValueError(f"{self.name} has no parameter(s) {sorted(unknown)}")
        tokens = [check_name(fixed[p]) if p in fixed else "*" for p in self.params]
        return ".".join([self.name, *tokens])


_C = ("cluster",)
_CN = ("cluster", "node")
_CF = ("cluster", "fileset")

NODE_HEALTH = Topic("node.health", _CN, "One probe of one node by one monitor", heartbeat=True)
NODE_DOWN = Topic("node.down", _CN, "A node stopped answering probes")
NODE_UP = Topic("node.up", _CN, "A node answers probes again")
NODE_ROLE_CHANGED = Topic("node.role_changed", _CN, "A node's role changed (e.g. promoted)")
NODE_LAG = Topic("node.lag", _CN, "Replication lag crossed a warning/critical threshold")
NODE_ADMISSION_CHANGED = Topic(
    "node.admission_changed",
    _CN,
    "A node began (or stopped) refusing new connections while its open ones answer",
)
NODE_FENCED = Topic("node.fenced", _CN, "A node was fenced (read-only, sessions ended, stopped)")
NODE_SELF_FENCED = Topic(
    "node.self_fenced",
    _CN,
    "A node's agent stopped its node: writable while the topology did not name it primary, "
    "or not confirmed primary within the agent's bound",
)
NODE_STOP_REQUESTED = Topic(
    "node.stop_requested",
    _CN,
    "The failover leader asks a node's agent to stop its node: a fence it cannot confirm itself",
)
NODE_STOPPED = Topic(
    "node.stopped", _CN, "A node's agent answers a stop request: stopped, or refused and why"
)
NODE_START_REQUESTED = Topic(
    "node.start_requested",
    _CN,
    "The failover leader asks a node's agent to start its stopped node again, read-only: "
    "an old primary a manual failover stopped and nobody could take over from",
)
NODE_STARTED = Topic(
    "node.started", _CN, "A node's agent answers a start request: started, or refused and why"
)
NODE_REJOIN_REQUESTED = Topic(
    "node.rejoin_requested", _CN, "Ask to turn a node back into a standby of the primary"
)
NODE_REJOINED = Topic("node.rejoined", _CN, "A former primary rejoined as a standby")
NODE_REJOIN_ORDERED = Topic(
    "node.rejoin_ordered",
    _CN,
    "The failover leader asks a node's agent to rejoin its node (pg_rewind, else a fresh clone)",
)
NODE_REJOIN_STARTED = Topic(
    "node.rejoin_started", _CN, "A node's agent took the leader's rejoin order and began it"
)
NODE_REJOIN_FAILED = Topic(
    "node.rejoin_failed", _CN, "A node's agent could not rejoin its node, or refused, and why"
)
NODE_RESTORE_ORDERED = Topic(
    "node.restore_ordered",
    _CN,
    "The backup service asks a node's agent to copy a restored database into its node",
)
NODE_RESTORE_STARTED = Topic(
    "node.restore_started", _CN, "A node's agent took the backup service's restore order"
)
NODE_RESTORED = Topic(
    "node.restored", _CN, "A node's agent swapped a restored database into its node"
)
NODE_RESTORE_FAILED = Topic(
    "node.restore_failed", _CN, "A node's agent could not restore its node, or refused, and why"
)

FAILOVER_REQUESTED = Topic("failover.requested", _C, "Ask for a (manual) failover")
FAILOVER_STARTED = Topic("failover.started", _C, "A failover began under the lease")
FAILOVER_COMPLETED = Topic("failover.completed", _C, "A failover finished; timings per phase")
FAILOVER_FAILED = Topic("failover.failed", _C, "A failover was refused or failed, and why")
FAILOVER_HELD = Topic("failover.held", _C, "A failover was deliberately not started, and why")
SYNC_CHANGED = Topic(
    "failover.sync_changed", _C, "The synchronous standby set changed, or degraded to async"
)
SWITCHOVER_REQUESTED = Topic("switchover.requested", _C, "Ask for a planned switchover")
SWITCHOVER_COMPLETED = Topic("switchover.completed", _C, "A switchover finished")
SWITCHOVER_FAILED = Topic("switchover.failed", _C, "A switchover was refused or failed, and why")

BACKUP_REQUESTED = Topic("backup.requested", _C, "Ask for a backup")
BACKUP_STARTED = Topic("backup.started", _C, "A backup began")
BACKUP_COMPLETED = Topic("backup.completed", _C, "A backup is complete, checksummed, listed")
BACKUP_FAILED = Topic("backup.failed", _C, "A backup failed; nothing partial is listed")
BACKUP_VERIFIED = Topic("backup.verified", _C, "A backup was verified by a test restore")
BACKUP_EXPIRED = Topic("backup.expired", _C, "A backup was removed by the retention policy")
WAL_ARCHIVED = Topic("wal.archived", _C, "A WAL segment was archived to S3", heartbeat=True)
RESTORE_REQUESTED = Topic("restore.requested", _C, "Ask for a restore")
RESTORE_STARTED = Topic("restore.started", _C, "A restore began")
RESTORE_COMPLETED = Topic("restore.completed", _C, "A restore finished")
RESTORE_FAILED = Topic("restore.failed", _C, "A restore failed, and why")
BACKUP_PROGRESS = Topic(
    "backup.progress", _C, "A running backup's bytes so far and rate", heartbeat=True
)
BACKUP_VERIFY_REQUESTED = Topic(
    "backup.verify_requested", _C, "Ask for a backup to be verified by a test restore"
)
BACKUP_DELETE_REQUESTED = Topic("backup.delete_requested", _C, "Ask for a backup to be deleted")
BACKUP_DELETED = Topic("backup.deleted", _C, "A backup was deleted on request")
BACKUP_DELETE_REFUSED = Topic(
    "backup.delete_refused", _C, "A backup was not deleted (e.g. the last good one), and why"
)
WAL_STATUS = Topic(
    "wal.status", _C, "WAL archiving: source, position, lag behind the primary", heartbeat=True
)
WAL_SOURCE_CHANGED = Topic(
    "wal.source_changed", _C, "WAL archiving moved to another primary or timeline"
)
WAL_SLOT_LIMITED = Topic(
    "wal.slot_limited", _C, "The archiver's slot hit its size guard: WAL may go unarchived"
)

FILE_SYNC_REQUESTED = Topic("file.sync_requested", _CF, "Ask to sync a file set to S3")
FILE_SYNCED = Topic("file.synced", _CF, "A file set was synced to S3")
FILE_SYNC_FAILED = Topic("file.sync_failed", _CF, "A file set sync failed, and why")
FILE_VERIFIED = Topic("file.verified", _CF, "A file set was compared with its S3 copy")
FILE_RESTORE_REQUESTED = Topic("file.restore_requested", _CF, "Ask to restore a file set")
FILE_RESTORED = Topic("file.restored", _CF, "A file set was restored from S3")
FILE_SYNC_PAUSED = Topic(
    "file.sync_paused", _CF, "A file set paused (root gone, mass deletion): nothing deleted"
)
FILE_STATUS = Topic(
    "file.status", _CF, "A file set's latest pass: files, bytes, pending, state", heartbeat=True
)
FILE_CHECK_REQUESTED = Topic(
    "file.check_requested", _CF, "Ask to compare a file set with S3 and with its rows"
)
FILE_REFERENCES_CHECKED = Topic(
    "file.references_checked", _CF, "Rows and files compared: referenced files missing, orphans"
)
FILE_SNAPSHOT_TAKEN = Topic(
    "file.snapshot_taken", _CF, "An immutable snapshot of a file set (a `files` backup)"
)
FILE_SNAPSHOT_REQUESTED = Topic(
    "file.snapshot_requested",
    _C,
    "Ask every file set of a cluster for a snapshot now (the files half of a `full` backup)",
)

MAINTENANCE_PAUSED = Topic(
    "maintenance.paused", _C, "Automatic failover switched off for a cluster (manual still works)"
)
MAINTENANCE_RESUMED = Topic("maintenance.resumed", _C, "Automatic failover switched back on")

SERVICE_HEARTBEAT = Topic(
    "service.heartbeat",
    ("service",),
    "A service instance is alive: readiness, circuit breakers, version",
    heartbeat=True,
)

DEAD_LETTER = Topic("deadletter", ("consumer",), "A message a consumer could not process")

# KV bucket of each cluster's maintenance state (key: the cluster; value:
# `events.MaintenanceState`); the failover service reads it before failing over on its own.
MAINTENANCE_BUCKET = "lifeboat_maintenance"

# KV bucket of the backup catalogue, for readers that do not talk to S3 (the gateway): key
# `<cluster>` the backup service's listed backups, `<cluster>.wal` its latest `wal.status`,
# `<cluster>.files.<fileset>` that set's files snapshots as its mirror lists them; each list
# `{"backups": [...]}`, newest first.
BACKUPS_BUCKET = "lifeboat_backups"

ALL_TOPICS: tuple[Topic, ...] = tuple(v for v in list(globals().values()) if isinstance(v, Topic))

# Each stream captures its topics, one `<topic>.>` wildcard each: streams may not overlap.
STREAM_SUBJECTS: tuple[str, ...] = tuple(
    sorted(f"{t.name}.>" for t in ALL_TOPICS if t.stream == STREAM_NAME)
)
HEARTBEAT_STREAM_SUBJECTS: tuple[str, ...] = tuple(
    sorted(f"{t.name}.>" for t in ALL_TOPICS if t.stream == HEARTBEAT_STREAM_NAME)
)
