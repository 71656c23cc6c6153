"""Pydantic models of every event, sharing one envelope.

An event's `type` is its topic name, so `nats stream view` shows what a payload is without
headers, and `subject()` derives the concrete subject from the event's own fields.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal
from uuid import UUID, uuid4

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    ValidationError,
)

from lifeboat.common import subjects as s
from lifeboat.common.subjects import Name, Topic


def utcnow() -> datetime:
    return datetime.now(UTC)


class Source(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    service: Name
    instance: str = Field(min_length=1, max_length=200)


class Envelope(BaseModel):
    """Fields every event carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    topic: ClassVar[Topic]

    event_id: UUID = Field(default_factory=uuid4)
    type: str
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    source: Source
    # The operation (the gateway's operation id) this event belongs to; answers copy it from
    # the request they answer.
    correlation_id: UUID | None = None

    def subject(self) -> str:
        return self.topic.subject(**{p: str(getattr(self, p)) for p in self.topic.params})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "topic" in cls.__dict__:
            EVENT_TYPES[cls.topic.name] = cls


EVENT_TYPES: dict[str, type[Envelope]] = {}


class UndecodableEventError(ValueError):
    """A message that is not one of the contract's events."""


def decode_event(data: bytes) -> Envelope:
    """The event model `data` is (picked from `EVENT_TYPES` by its `type`), validated."""
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise UndecodableEventError(f"not JSON: {exc}") from None
    kind = raw.get("type") if isinstance(raw, dict) else None
    model = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise UndecodableEventError(f"no event type {kind!r}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise UndecodableEventError(f"invalid {kind}: {exc.error_count()} error(s)") from exc


class ClusterEvent(Envelope):
    cluster: Name
    # The fencing token: the cluster epoch the publisher acted under, where that matters.
    epoch: NonNegativeInt | None = None


class Role(StrEnum):
    PRIMARY = "primary"
    STANDBY = "standby"
    UNKNOWN = "unknown"


class FailoverKind(StrEnum):
    AUTOMATIC = "automatic"
    MANUAL = "manual"
    SWITCHOVER = "switchover"


class BackupKind(StrEnum):
    LOGICAL = "logical"  # pg_dump
    PHYSICAL = "physical"  # pg_basebackup
    FILES = "files"  # a snapshot of the application's files (filesync)
    FULL = "full"  # a physical backup and a files snapshot taken, and restored, together


class LagLevel(StrEnum):
    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"


# --- nodes -------------------------------------------------------------------------------


class NodeEvent(ClusterEvent):
    node: Name


class ReplicaState(BaseModel):
    """One standby as its primary sees it (pg_stat_replication)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str  # the standby's application_name, which Lifeboat sets to its node name
    state: str
    sync_state: str
    flush_lsn: str | None = None
    replay_lsn: str | None = None
    replay_lag_seconds: NonNegativeFloat | None = None


class NodeHealth(NodeEvent):
    topic = s.NODE_HEALTH
    type: Literal["node.health"] = "node.health"
    monitor_location: str = "default"
    reachable: bool
    # Failed probes in a row by this monitor, this one included; 0 when reachable.
    consecutive_failures: NonNegativeInt = 0
    # Probes in a row that found it answering but refusing writes (a standby, or read-only).
    consecutive_read_only: NonNegativeInt = 0
    latency_ms: NonNegativeFloat | None = None
    role: Role = Role.UNKNOWN
    writable: bool | None = None
    timeline: NonNegativeInt | None = None
    current_lsn: str | None = None  # primary: pg_current_wal_lsn()
    receive_lsn: str | None = None  # standby: last WAL received and flushed
    replay_lsn: str | None = None
    upstream: str | None = None  # standby: the node (or host:port) it streams from now
    configured_upstream: str | None = None  # standby: the node its primary_conninfo names
    wal_receiver: str | None = None  # standby: 'streaming' when healthy
    lag_bytes: NonNegativeInt | None = None
    lag_seconds: NonNegativeFloat | None = None
    synchronous_standby_names: str | None = None  # primary
    replicas: tuple[ReplicaState, ...] = ()  # primary
    slots: dict[str, bool] = Field(default_factory=dict)  # slot name -> active
    error: str | None = None
    # The node answered a new connection with a refusal (too many clients, authentication)
    # while the monitor's open connection still works: clients are locked out.
    refusing_connections: str | None = None


class NodeDown(NodeEvent):
    topic = s.NODE_DOWN
    type: Literal["node.down"] = "node.down"
    reason: str


class NodeUp(NodeEvent):
    topic = s.NODE_UP
    type: Literal["node.up"] = "node.up"
    role: Role


class NodeRoleChanged(NodeEvent):
    topic = s.NODE_ROLE_CHANGED
    type: Literal["node.role_changed"] = "node.role_changed"
    previous: Role
    current: Role


class NodeAdmissionChanged(NodeEvent):
    """An alert, not a failure: the node answers, so failing it over would not let clients in
    sooner than fixing what refuses them (`max_connections`, `pg_hba.conf`, a password)."""

    topic = s.NODE_ADMISSION_CHANGED
    type: Literal["node.admission_changed"] = "node.admission_changed"
    accepting: bool
    reason: str | None = None  # the node's own refusal, while it refuses


class NodeLag(NodeEvent):
    topic = s.NODE_LAG
    type: Literal["node.lag"] = "node.lag"
    level: LagLevel
    lag_seconds: NonNegativeFloat | None = None
    lag_bytes: NonNegativeInt | None = None


class NodeFenced(NodeEvent):
    topic = s.NODE_FENCED
    type: Literal["node.fenced"] = "node.fenced"
    reason: str


class NodeSelfFenced(NodeEvent):
    """From the node's own agent (`epoch` and `primary`: the topology it last read)."""

    topic = s.NODE_SELF_FENCED
    type: Literal["node.self_fenced"] = "node.self_fenced"
    reason: str
    action: str  # what stopping it took: a fast stop, else immediate, else SIGKILL
    primary: Name | None = None
    # Since the agent last confirmed the node as primary, and the bound it keeps to.
    unconfirmed_seconds: NonNegativeFloat
    bound_seconds: NonNegativeFloat


class NodeStopRequested(NodeEvent):
    """From the failover leader, under `epoch` (required): the agent stops its node only if
    the topology it reads is at that epoch and names another node primary."""

    topic = s.NODE_STOP_REQUESTED
    type: Literal["node.stop_requested"] = "node.stop_requested"
    reason: str


class NodeStopped(NodeEvent):
    """The agent's answer (`correlation_id`: the request's event id). `stopped`: its node's
    postmaster no longer runs; a start since comes up read-only (see the agent's standby.signal)."""

    topic = s.NODE_STOPPED
    type: Literal["node.stopped"] = "node.stopped"
    stopped: bool
    action: str  # what stopping it took, or why the agent refused
    reason: str


class NodeStartRequested(NodeEvent):
    """From the failover leader, under `epoch` (required): the agent starts its stopped node,
    in recovery (read-only, `standby.signal`), only while the topology is at that epoch and
    names another node primary — the leader gives it its writes back under a later epoch."""

    topic = s.NODE_START_REQUESTED
    type: Literal["node.start_requested"] = "node.start_requested"
    reason: str


class NodeStarted(NodeEvent):
    """The agent's answer (`correlation_id`: the request's event id). `started`: its node's
    postmaster runs, read-only."""

    topic = s.NODE_STARTED
    type: Literal["node.started"] = "node.started"
    started: bool
    action: str  # what starting it took, or why the agent refused
    reason: str


class NodeRejoinRequested(NodeEvent):
    topic = s.NODE_REJOIN_REQUESTED
    type: Literal["node.rejoin_requested"] = "node.rejoin_requested"
    requested_by: str = "unknown"
    # Why, when a node's agent asks: its node started as a standby of no primary.
    reason: str | None = None


class NodeRejoinOrdered(NodeEvent):
    """From the failover leader, under `epoch` (required), to the node's agent: rewind the
    node onto `upstream` (else clone it afresh), stream from it through `slot`. The agent
    obeys only while the topology is at that epoch and names `upstream` primary. It answers
    `node.rejoin_started` at once, then `node.rejoined` or `node.rejoin_failed`, each with
    `correlation_id` set to this event's id.
    `conninfo` is the standby's primary_conninfo: user, host, port, passfile — never a
    password (the leader refuses to send one)."""

    topic = s.NODE_REJOIN_ORDERED
    type: Literal["node.rejoin_ordered"] = "node.rejoin_ordered"
    upstream: Name
    conninfo: str
    slot: str
    reason: str


class NodeRejoinStarted(NodeEvent):
    topic = s.NODE_REJOIN_STARTED
    type: Literal["node.rejoin_started"] = "node.rejoin_started"
    upstream: Name


class NodeRejoinFailed(NodeEvent):
    topic = s.NODE_REJOIN_FAILED
    type: Literal["node.rejoin_failed"] = "node.rejoin_failed"
    upstream: Name
    reason: str


class NodeRejoined(NodeEvent):
    topic = s.NODE_REJOINED
    type: Literal["node.rejoined"] = "node.rejoined"
    method: Literal["pg_rewind", "pg_basebackup"]
    upstream: Name
    seconds: NonNegativeFloat = 0


class NodeRestoreOrdered(NodeEvent):
    """From the backup service to the node's agent: the restored database `restore_id`
    runs at `host`:`port` (recovered, read-only to everyone but a base backup); copy it
    beside the node's data directory with pg_basebackup as the replication user within
    `copy_seconds` (the backup service serves it no longer), then swap it in (the node's own
    directory kept aside) and start it. The agent refuses while its node is writable. It
    answers `node.restore_started` at once, then `node.restored` or `node.restore_failed`,
    each with `correlation_id` set to this event's id."""

    topic = s.NODE_RESTORE_ORDERED
    type: Literal["node.restore_ordered"] = "node.restore_ordered"
    restore_id: str
    host: str
    port: int = Field(ge=1, le=65535)
    copy_seconds: PositiveFloat = 3600


class NodeRestoreStarted(NodeEvent):
    topic = s.NODE_RESTORE_STARTED
    type: Literal["node.restore_started"] = "node.restore_started"
    restore_id: str


class NodeRestored(NodeEvent):
    topic = s.NODE_RESTORED
    type: Literal["node.restored"] = "node.restored"
    restore_id: str
    data_dir: str
    kept: str  # where the node's own data directory was put aside
    started: bool  # False: left stopped, as `detail` says why
    detail: str
    seconds: NonNegativeFloat = 0


class NodeRestoreFailed(NodeEvent):
    topic = s.NODE_RESTORE_FAILED
    type: Literal["node.restore_failed"] = "node.restore_failed"
    restore_id: str
    reason: str


# --- failover and switchover ---------------------------------------------------------------


class PhaseTiming(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    phase: str
    seconds: NonNegativeFloat


class FailoverRequested(ClusterEvent):
    topic = s.FAILOVER_REQUESTED
    type: Literal["failover.requested"] = "failover.requested"
    target: Name | None = None
    reason: str = Field(min_length=1)
    requested_by: str = "unknown"
    # Promote a standby that may lack acknowledged commits, up to this many bytes behind the
    # primary's last known position: the operator accepts losing them. Without `force`,
    # nothing acknowledged may be lost and the budget is ignored.
    force: bool = False
    data_loss_budget_bytes: NonNegativeInt | None = None


class SwitchoverRequested(ClusterEvent):
    topic = s.SWITCHOVER_REQUESTED
    type: Literal["switchover.requested"] = "switchover.requested"
    target: Name | None = None
    reason: str = Field(min_length=1)
    requested_by: str = "unknown"


class FailoverStarted(ClusterEvent):
    topic = s.FAILOVER_STARTED
    type: Literal["failover.started"] = "failover.started"
    kind: FailoverKind
    old_primary: Name | None
    candidate: Name
    reason: str
    # Each answering node's WAL position as last reported (the primary's current LSN, a
    # standby's received or replayed one), and the loss a forced failover accepted.
    positions: dict[Name, str] = Field(default_factory=dict)
    data_loss_budget_bytes: NonNegativeInt | None = None


class FailoverOutcome(ClusterEvent):
    kind: FailoverKind
    old_primary: Name | None
    new_primary: Name
    reason: str
    phases: tuple[PhaseTiming, ...] = ()
    total_seconds: NonNegativeFloat


class FailoverCompleted(FailoverOutcome):
    topic = s.FAILOVER_COMPLETED
    type: Literal["failover.completed"] = "failover.completed"


class SwitchoverCompleted(FailoverOutcome):
    topic = s.SWITCHOVER_COMPLETED
    type: Literal["switchover.completed"] = "switchover.completed"


class FailoverRefusal(ClusterEvent):
    kind: FailoverKind
    target: Name | None = None
    reason: str


class FailoverFailed(FailoverRefusal):
    topic = s.FAILOVER_FAILED
    type: Literal["failover.failed"] = "failover.failed"


class SwitchoverFailed(FailoverRefusal):
    topic = s.SWITCHOVER_FAILED
    type: Literal["switchover.failed"] = "switchover.failed"


class FailoverHeld(ClusterEvent):
    topic = s.FAILOVER_HELD
    type: Literal["failover.held"] = "failover.held"
    primary: Name | None
    reason: str


class SyncChanged(ClusterEvent):
    topic = s.SYNC_CHANGED
    type: Literal["failover.sync_changed"] = "failover.sync_changed"
    primary: Name
    standbys: tuple[Name, ...]
    degraded: bool = False  # no healthy standby: commits no longer wait for one
    reason: str


# --- backups, WAL and restores -------------------------------------------------------------


class BackupRequested(ClusterEvent):
    topic = s.BACKUP_REQUESTED
    type: Literal["backup.requested"] = "backup.requested"
    kind: BackupKind = BackupKind.LOGICAL
    reason: str = "on demand"
    requested_by: str = "unknown"
    # This event's id is the request's id: every event about the backup carries it.
    database: str | None = None  # logical: the database to dump (the cluster's by default)
    all_databases: bool = False  # logical: every database, and the globals
    node: Name | None = None  # take it from this node, not the one Lifeboat would choose
    verify: bool | None = None  # test-restore it afterwards (the service's setting if None)
    scheduled_for: AwareDatetime | None = None  # set by the schedule: the slot it fills


class BackupStarted(ClusterEvent):
    topic = s.BACKUP_STARTED
    type: Literal["backup.started"] = "backup.started"
    backup_id: str
    kind: BackupKind
    node: Name
    request_id: UUID | None = None
    source_role: Role = Role.UNKNOWN
    source_reason: str = ""


class BackupCompleted(ClusterEvent):
    topic = s.BACKUP_COMPLETED
    type: Literal["backup.completed"] = "backup.completed"
    backup_id: str
    kind: BackupKind
    node: Name
    size_bytes: NonNegativeInt
    duration_seconds: NonNegativeFloat
    manifest_key: str
    sha256: str
    # The manifest's summary; size_bytes is what is stored (compressed, encrypted).
    request_id: UUID | None = None
    raw_bytes: NonNegativeInt = 0
    source_role: Role = Role.UNKNOWN
    timeline: NonNegativeInt | None = None
    start_lsn: str | None = None
    stop_lsn: str | None = None
    objects: NonNegativeInt = 1
    encrypted: bool = False


class BackupFailed(ClusterEvent):
    topic = s.BACKUP_FAILED
    type: Literal["backup.failed"] = "backup.failed"
    backup_id: str | None = None
    kind: BackupKind
    reason: str
    request_id: UUID | None = None
    node: Name | None = None


class BackupVerified(ClusterEvent):
    topic = s.BACKUP_VERIFIED
    type: Literal["backup.verified"] = "backup.verified"
    backup_id: str
    ok: bool
    detail: str
    request_id: UUID | None = None
    restore_seconds: NonNegativeFloat | None = None  # measured: download, recover, open
    check_seconds: NonNegativeFloat | None = None  # pg_amcheck and row counts
    tables_checked: NonNegativeInt = 0


class BackupExpired(ClusterEvent):
    topic = s.BACKUP_EXPIRED
    type: Literal["backup.expired"] = "backup.expired"
    backup_id: str
    reason: str
    kind: BackupKind | None = None


class WalArchived(ClusterEvent):
    topic = s.WAL_ARCHIVED
    type: Literal["wal.archived"] = "wal.archived"
    segment: str
    timeline: NonNegativeInt
    size_bytes: NonNegativeInt
    stored_bytes: NonNegativeInt | None = None
    sha256: str | None = None
    # Seconds from the segment's completion on this host to its upload.
    seconds: NonNegativeFloat | None = None


class RestoreRequested(ClusterEvent):
    topic = s.RESTORE_REQUESTED
    type: Literal["restore.requested"] = "restore.requested"
    # Without a backup id the service picks the base backup (and WAL) a target time or LSN
    # needs; without either it restores the newest backup to its end.
    backup_id: str | None = None
    target: str = "new"  # "new": a new data directory and port; "node": an existing node
    requested_by: str = "unknown"
    target_time: AwareDatetime | None = None
    target_lsn: str | None = None
    data_dir: str | None = None  # target "new": where (a fresh directory by default)
    port: int | None = Field(default=None, ge=1, le=65535)  # target "new": a free one if None
    node: Name | None = None  # target "node": the node whose data directory is replaced
    confirm: bool = False  # target "node": required, as the node's data is replaced


class RestoreStarted(ClusterEvent):
    topic = s.RESTORE_STARTED
    type: Literal["restore.started"] = "restore.started"
    restore_id: str
    backup_id: str
    target: str
    request_id: UUID | None = None


class RestoreCompleted(ClusterEvent):
    topic = s.RESTORE_COMPLETED
    type: Literal["restore.completed"] = "restore.completed"
    restore_id: str
    backup_id: str
    target: str
    duration_seconds: NonNegativeFloat
    request_id: UUID | None = None
    data_dir: str | None = None
    port: int | None = None
    wal_segments: NonNegativeInt = 0  # archived segments fetched for recovery
    recovered_to: str | None = None  # the target reached, as asked
    files: dict[Name, str] = {}  # a `full` backup: each file set and where it was restored


class RestoreFailed(ClusterEvent):
    topic = s.RESTORE_FAILED
    type: Literal["restore.failed"] = "restore.failed"
    restore_id: str | None = None
    backup_id: str | None = None
    reason: str
    request_id: UUID | None = None


class BackupProgress(ClusterEvent):
    topic = s.BACKUP_PROGRESS
    type: Literal["backup.progress"] = "backup.progress"
    backup_id: str
    kind: BackupKind
    request_id: UUID | None = None
    raw_bytes: NonNegativeInt
    stored_bytes: NonNegativeInt
    seconds: NonNegativeFloat
    mb_per_s: NonNegativeFloat


class BackupVerifyRequested(ClusterEvent):
    topic = s.BACKUP_VERIFY_REQUESTED
    type: Literal["backup.verify_requested"] = "backup.verify_requested"
    backup_id: str | None = None  # the newest backup if None
    requested_by: str = "unknown"


class BackupDeleteRequested(ClusterEvent):
    topic = s.BACKUP_DELETE_REQUESTED
    type: Literal["backup.delete_requested"] = "backup.delete_requested"
    backup_id: str
    force: bool = False  # delete even the last good backup
    requested_by: str = "unknown"


class BackupDeleted(ClusterEvent):
    topic = s.BACKUP_DELETED
    type: Literal["backup.deleted"] = "backup.deleted"
    backup_id: str
    kind: BackupKind
    request_id: UUID | None = None
    forced: bool = False
    objects: NonNegativeInt = 0


class BackupDeleteRefused(ClusterEvent):
    topic = s.BACKUP_DELETE_REFUSED
    type: Literal["backup.delete_refused"] = "backup.delete_refused"
    backup_id: str
    reason: str
    request_id: UUID | None = None


class WalState(StrEnum):
    STREAMING = "streaming"  # receiving from the primary, uploading as segments complete
    CATCHING_UP = "catching_up"  # S3 was unreachable: segments wait on disk
    SPOOL_FULL = "spool_full"  # the local spool reached its bound: receiving paused
    NO_PRIMARY = "no_primary"  # no writable node found
    STOPPED = "stopped"


class WalStatus(ClusterEvent):
    topic = s.WAL_STATUS
    type: Literal["wal.status"] = "wal.status"
    state: WalState
    primary: Name | None = None
    timeline: NonNegativeInt | None = None
    primary_lsn: str | None = None
    archived_lsn: str | None = None  # everything before it is in S3
    last_segment: str | None = None
    lag_bytes: NonNegativeInt | None = None
    lag_seconds: NonNegativeFloat | None = None  # age of the oldest WAL not yet in S3: the RPO
    spool_bytes: NonNegativeInt = 0
    error: str | None = None


class WalSourceChanged(ClusterEvent):
    topic = s.WAL_SOURCE_CHANGED
    type: Literal["wal.source_changed"] = "wal.source_changed"
    previous: Name | None = None
    primary: Name
    timeline: NonNegativeInt | None = None
    slot: str
    reason: str


class WalSlotLimited(ClusterEvent):
    topic = s.WAL_SLOT_LIMITED
    type: Literal["wal.slot_limited"] = "wal.slot_limited"
    node: Name
    slot: str
    wal_status: str  # pg_replication_slots.wal_status: unreserved or lost
    safe_wal_size: int | None = None
    reason: str


# --- application files ---------------------------------------------------------------------


class FileSetEvent(ClusterEvent):
    fileset: Name


class FileSyncRequested(FileSetEvent):
    topic = s.FILE_SYNC_REQUESTED
    type: Literal["file.sync_requested"] = "file.sync_requested"
    requested_by: str = "unknown"
    # Let this pass delete more than the mass-deletion guard allows (it paused the set).
    confirm_deletions: bool = False


class FileSynced(FileSetEvent):
    topic = s.FILE_SYNCED
    type: Literal["file.synced"] = "file.synced"
    files_copied: NonNegativeInt
    files_unchanged: NonNegativeInt
    files_deleted: NonNegativeInt = 0
    bytes_copied: NonNegativeInt
    duration_seconds: NonNegativeFloat
    # Files that could not be read (left as S3 has them) and symlinks (never followed).
    files_unreadable: NonNegativeInt = 0
    files_skipped: NonNegativeInt = 0
    problems: tuple[str, ...] = ()  # the first few, "path: reason"


class FileSyncFailed(FileSetEvent):
    topic = s.FILE_SYNC_FAILED
    type: Literal["file.sync_failed"] = "file.sync_failed"
    reason: str


class FileVerified(FileSetEvent):
    topic = s.FILE_VERIFIED
    type: Literal["file.verified"] = "file.verified"
    matching: NonNegativeInt
    differences: tuple[str, ...] = ()  # the first few, "path: what differs"
    missing_remote: NonNegativeInt = 0  # on disk, not in S3
    missing_local: NonNegativeInt = 0  # in S3, not on disk
    differing: NonNegativeInt = 0  # on both sides, different content
    objects_missing: NonNegativeInt = 0  # named by the manifest, absent from the bucket


class FileRestoreRequested(FileSetEvent):
    topic = s.FILE_RESTORE_REQUESTED
    type: Literal["file.restore_requested"] = "file.restore_requested"
    destination: str | None = None
    requested_by: str = "unknown"
    snapshot_id: str | None = None  # the set as of that snapshot; as it is now if None
    # No destination: onto the set's root on `node`, which needs `confirm`.
    node: Name | None = None
    confirm: bool = False


class FileRestored(FileSetEvent):
    topic = s.FILE_RESTORED
    type: Literal["file.restored"] = "file.restored"
    destination: str
    files_restored: NonNegativeInt
    bytes_restored: NonNegativeInt
    snapshot_id: str | None = None
    refused: tuple[str, ...] = ()  # paths that would have escaped the destination


class FileSyncPaused(FileSetEvent):
    """An alert: the set stopped syncing until the cause is fixed or deletions confirmed."""

    topic = s.FILE_SYNC_PAUSED
    type: Literal["file.sync_paused"] = "file.sync_paused"
    reason: str
    files_missing: NonNegativeInt = 0
    files_total: NonNegativeInt = 0


class FileStatus(FileSetEvent):
    topic = s.FILE_STATUS
    type: Literal["file.status"] = "file.status"
    node: Name
    mode: Literal["mirror", "pull"]
    state: Literal["syncing", "in_sync", "paused", "failed"]
    files: NonNegativeInt
    bytes: NonNegativeInt
    pending: NonNegativeInt = 0  # changes seen, not yet in S3 (or on disk, for pull)
    pass_seconds: NonNegativeFloat = 0
    generation: NonNegativeInt = 0  # of the manifest
    detail: str = ""


class FileCheckRequested(FileSetEvent):
    topic = s.FILE_CHECK_REQUESTED
    type: Literal["file.check_requested"] = "file.check_requested"
    requested_by: str = "unknown"
    references: bool = True  # also run the set's reference query, when it has one


class FileReferencesChecked(FileSetEvent):
    topic = s.FILE_REFERENCES_CHECKED
    type: Literal["file.references_checked"] = "file.references_checked"
    referenced: NonNegativeInt
    files: NonNegativeInt
    missing: NonNegativeInt  # rows name them, the set has no such file
    orphans: NonNegativeInt  # files no row names
    missing_sample: tuple[str, ...] = ()
    orphan_sample: tuple[str, ...] = ()


class FileSnapshotTaken(FileSetEvent):
    topic = s.FILE_SNAPSHOT_TAKEN
    type: Literal["file.snapshot_taken"] = "file.snapshot_taken"
    snapshot_id: str
    files: NonNegativeInt
    bytes: NonNegativeInt
    manifest_key: str
    expires_at: AwareDatetime | None = None
    request_id: UUID | None = None
    taken_at: AwareDatetime | None = None  # the moment the snapshot is of


class FileSnapshotRequested(ClusterEvent):
    """Sent by the backup service once a `full` backup's base backup has ended, so the files
    are of a moment the database can be recovered to; each set's mirror answers with
    `file.snapshot_taken` (or `file.sync_failed`) carrying this event's `correlation_id`."""

    topic = s.FILE_SNAPSHOT_REQUESTED
    type: Literal["file.snapshot_requested"] = "file.snapshot_requested"
    request_id: UUID  # the backup request whose files half this is
    filesets: tuple[Name, ...] = ()  # every set of the cluster if empty


# --- maintenance ---------------------------------------------------------------------------


class MaintenanceState(BaseModel):
    """KV `lifeboat_maintenance`/<cluster>: while `paused`, no automatic failover."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster: Name
    paused: bool
    reason: str = ""
    requested_by: str = "unknown"
    since: AwareDatetime = Field(default_factory=utcnow)


class MaintenancePaused(ClusterEvent):
    topic = s.MAINTENANCE_PAUSED
    type: Literal["maintenance.paused"] = "maintenance.paused"
    reason: str = Field(min_length=1)
    requested_by: str = "unknown"


class MaintenanceResumed(ClusterEvent):
    topic = s.MAINTENANCE_RESUMED
    type: Literal["maintenance.resumed"] = "maintenance.resumed"
    reason: str = "resumed"
    requested_by: str = "unknown"


# --- service instances -----------------------------------------------------------------------


class ServiceHeartbeat(Envelope):
    """Every few seconds from every running service instance (`source` says which)."""

    topic = s.SERVICE_HEARTBEAT
    type: Literal["service.heartbeat"] = "service.heartbeat"
    service: Name
    version: str = "unknown"
    ready: bool
    message: str = ""
    uptime_seconds: NonNegativeFloat = 0
    interval_seconds: NonNegativeFloat = 5
    breakers: dict[str, str] = Field(default_factory=dict)  # name -> closed/open/half-open


# --- dead letters ---------------------------------------------------------------------------


class DeadLetter(Envelope):
    """A message a consumer could not process, kept whole with the reason."""

    topic = s.DEAD_LETTER
    type: Literal["deadletter"] = "deadletter"
    consumer: Name
    original_subject: str
    reason: str
    payload: str
    headers: dict[str, str] = Field(default_factory=dict)
    deliveries: NonNegativeInt = 1
