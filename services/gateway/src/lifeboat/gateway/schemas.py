"""What the REST API takes and answers: one pydantic model per body, so its OpenAPI schema
says what each endpoint returns, and the client (`client.py`) parses the same models.

Events in answers (history, operation outcomes) are the contract's own models from
`lifeboat.common.events`, told apart by their `type` field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from lifeboat.common.breakers import BreakerSnapshot
from lifeboat.common.clusters import NodeSpec
from lifeboat.common.events import (
    BackupCompleted,
    BackupDeleted,
    BackupDeleteRefused,
    BackupFailed,
    BackupKind,
    BackupVerified,
    FailoverCompleted,
    FailoverFailed,
    FailoverHeld,
    FailoverStarted,
    FileReferencesChecked,
    FileRestored,
    FileStatus,
    FileSynced,
    FileSyncFailed,
    FileSyncPaused,
    FileVerified,
    NodeFenced,
    NodeHealth,
    NodeRejoined,
    RestoreCompleted,
    RestoreFailed,
    Role,
    SwitchoverCompleted,
    SwitchoverFailed,
)
from lifeboat.common.health import BreakerReport, HealthReport, Liveness, Readiness
from lifeboat.common.state import Topology
from lifeboat.common.subjects import Name

__all__ = [
    "AllBreakers",
    "BackupCreate",
    "BackupDetail",
    "BackupList",
    "BackupSummary",
    "BackupVerification",
    "BreakerReport",
    "ClusterStatus",
    "ClusterSummary",
    "ErrorDetail",
    "Exposure",
    "FileCheckBody",
    "FileRestoreBody",
    "FileSetNode",
    "FileSetView",
    "FileSyncBody",
    "FilesView",
    "HealthReport",
    "HistoryEntry",
    "HistoryEvent",
    "HistoryPage",
    "InstanceSeen",
    "Liveness",
    "MaintenanceView",
    "NodeHealthSummary",
    "NodeStatus",
    "OperationDone",
    "OperationPending",
    "OperationProgress",
    "OperationRefused",
    "OperationRequest",
    "OperationResult",
    "OperationView",
    "PauseRequest",
    "PrimaryCheck",
    "Readiness",
    "RejoinRequest",
    "ReplicaCheck",
    "RestoreBody",
    "Sla",
    "WaitBody",
    "WalView",
    "WhoAmI",
]


EventJson = dict[str, Any]
"""An event as published: its `type` says which model of the contract it is."""


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- requests --------------------------------------------------------------------------------


WaitSeconds = Annotated[
    float,
    Field(ge=0, le=30, description="how long to wait for a refusal (409) before answering 202"),
]


class WaitBody(_Body):
    """What every command's body may say: how long to wait for a refusal."""

    wait_seconds: WaitSeconds = 1.0


class OperationRequest(WaitBody):
    """Body of `POST /clusters/{cluster}/failover` and `/switchover`. Who asked is the
    token's name, never a field of the body."""

    target: Name | None = Field(default=None, description="node to promote; best if omitted")
    reason: str = Field(min_length=1, max_length=500, examples=["planned maintenance"])


class FailoverBody(OperationRequest):
    """Body of `POST /clusters/{cluster}/failover`: `force` promotes even when the best
    standby is further behind than the failover service allows, up to
    `data_loss_budget_bytes` (the service's own budget if omitted)."""

    force: bool = Field(default=False, description="fail over even if writes may be lost")
    data_loss_budget_bytes: int | None = Field(
        default=None, ge=0, description="with force: at most this much WAL may be lost"
    )


class RejoinRequest(WaitBody):
    """Body of `POST /clusters/{cluster}/nodes/{node}/rejoin`."""


class BackupCreate(WaitBody):
    """Body of `POST /clusters/{cluster}/backups`."""

    kind: BackupKind = Field(default=BackupKind.PHYSICAL, description="what to take")
    reason: str = Field(default="on demand", min_length=1, max_length=500)
    database: Name | None = Field(default=None, description="logical: this database")
    all_databases: bool = Field(default=False, description="logical: every database + globals")
    node: Name | None = Field(default=None, description="take it from this node")
    verify: bool | None = Field(
        default=None, description="test-restore it afterwards (the service's setting if null)"
    )


class RestoreBody(WaitBody):
    """Body of `POST /clusters/{cluster}/restores`: into a new data directory (and port), or
    with `node` and `confirm` into that node, replacing its data."""

    backup_id: str | None = Field(default=None, description="the newest fitting one if null")
    target_time: AwareDatetime | None = Field(default=None, description="recover to this time")
    target_lsn: str | None = Field(
        default=None, pattern=r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$", examples=["0/3000060"]
    )
    data_dir: str | None = Field(default=None, description="new: an absolute, empty directory")
    port: int | None = Field(default=None, ge=1, le=65535, description="new: a free one if null")
    node: Name | None = Field(default=None, description="replace this node's data")
    confirm: bool = Field(default=False, description="required with node")


class FileSyncBody(WaitBody):
    """Body of `POST /clusters/{cluster}/files/{set}/sync`."""

    confirm_deletions: bool = Field(
        default=False, description="let this pass delete more than the mass-deletion guard allows"
    )


class FileCheckBody(WaitBody):
    """Body of `POST /clusters/{cluster}/files/{set}/check`."""

    references: bool = Field(default=True, description="also run the set's reference query")


class FileRestoreBody(WaitBody):
    """Body of `POST /clusters/{cluster}/files/{set}/restore`: into `destination` (absolute),
    or over the set's root in place with `confirm`."""

    destination: str | None = Field(default=None, description="absolute; the set's root if null")
    snapshot_id: str | None = Field(default=None, description="as of that snapshot; now if null")
    node: Name | None = Field(default=None, description="the copy to restore from/into")
    confirm: bool = Field(default=False, description="required to replace the live files")


class PauseRequest(_Body):
    """Body of `POST /clusters/{cluster}/pause` and `/resume`."""

    reason: str = Field(default="maintenance", min_length=1, max_length=500)


# --- answers ---------------------------------------------------------------------------------


class ErrorDetail(_Body):
    """Any 4xx the gateway raises itself (e.g. 404 for an unknown cluster or node)."""

    detail: str


class MaintenanceView(_Body):
    cluster: str
    paused: bool
    reason: str
    requested_by: str
    since: AwareDatetime | None


class ClusterSummary(_Body):
    """One entry of `GET /clusters`."""

    name: str
    primary: str | None
    epoch: int | None
    paused: bool = False


class NodeHealthSummary(_Body):
    """The latest fresh monitor report on a node, the fields an operator reads."""

    reachable: bool
    role: Role
    writable: bool | None
    timeline: int | None
    upstream: str | None
    wal_receiver: str | None
    lag_bytes: int | None
    lag_seconds: float | None
    occurred_at: AwareDatetime

    @classmethod
    def of(cls, report: NodeHealth) -> NodeHealthSummary:
        return cls.model_validate(report.model_dump(include=set(cls.model_fields)))


class NodeStatus(_Body):
    name: str
    host: str
    port: int
    priority: int
    tags: list[str]
    location: str
    health: NodeHealthSummary | None = Field(
        description="the latest fresh report of any monitor; null when none is fresh"
    )

    @classmethod
    def of(cls, node: NodeSpec, report: NodeHealth | None) -> NodeStatus:
        return cls(
            name=node.name,
            host=node.host,
            port=node.port,
            priority=node.priority,
            tags=sorted(node.tags),
            location=node.location,
            health=None if report is None else NodeHealthSummary.of(report),
        )


class ClusterStatus(_Body):
    """`GET /clusters/{cluster}`: topology (null before the failover service wrote one)."""

    name: str
    dsn: str = Field(description="the libpq multi-host URI applications use")
    topology: Topology | None
    nodes: list[NodeStatus]
    paused: bool = Field(default=False, description="automatic failover is switched off")
    maintenance: MaintenanceView | None = None
    last_failover: EventJson | None = Field(
        default=None, description="the newest failover.completed or switchover.completed"
    )


class PrimaryCheck(_Body):
    """`GET .../primary`: 200 when true, 503 when false, same body."""

    node: str
    primary: bool


class ReplicaCheck(_Body):
    """`GET .../replica`: 200 when true, 503 when false, same body."""

    node: str
    replica: bool


HistoryEvent = Annotated[
    FailoverStarted
    | FailoverCompleted
    | FailoverFailed
    | FailoverHeld
    | SwitchoverCompleted
    | SwitchoverFailed
    | NodeFenced
    | NodeRejoined,
    Field(discriminator="type"),
]
"""An entry of `GET /clusters/{cluster}/history`: one of the decisions it lists."""

Outcome = Annotated[
    FailoverCompleted
    | SwitchoverCompleted
    | NodeRejoined
    | BackupCompleted
    | BackupVerified
    | BackupDeleted
    | RestoreCompleted
    | FileSynced
    | FileVerified
    | FileReferencesChecked
    | FileRestored,
    Field(discriminator="type"),
]
Refusal = Annotated[
    FailoverFailed
    | SwitchoverFailed
    | BackupFailed
    | BackupVerified
    | BackupDeleteRefused
    | RestoreFailed
    | FileSyncFailed
    | FileSyncPaused
    | FileStatus,
    Field(discriminator="type"),
]


class OperationDone(_Body):
    """200: the operation finished; `event` is its completion event."""

    status: Literal["done"] = "done"
    event: Outcome


class OperationRefused(_Body):
    """409: the answering service refused (or failed) it; `reason` says why."""

    status: Literal["refused"] = "refused"
    reason: str
    event: Refusal


class OperationPending(_Body):
    """202: no answer within `wait_seconds`; the outcome will be in the history."""

    status: Literal["pending"] = "pending"
    request_id: UUID
    message: str = "no answer yet: follow it in GET /clusters/{cluster}/history"


OperationResult = OperationDone | OperationRefused | OperationPending

OPERATION_STATUS: dict[type[OperationResult], int] = {
    OperationDone: 200,
    OperationPending: 202,
    OperationRefused: 409,
}


# --- operations you can follow ----------------------------------------------------------------


class OperationProgress(_Body):
    """A running backup's latest `backup.progress`."""

    backup_id: str
    raw_bytes: int
    stored_bytes: int
    seconds: float
    mb_per_s: float


OperationKindName = Literal[
    "failover",
    "switchover",
    "rejoin",
    "backup",
    "restore",
    "backup_verify",
    "backup_delete",
    "file_sync",
    "file_check",
    "file_restore",
]


class OperationView(_Body):
    """`GET /operations/{id}` (and the 202 of a command): what was asked, where it is."""

    id: UUID
    kind: OperationKindName
    cluster: str
    target: str | None = Field(
        description="what it acts on: node, backup kind or id, restore target, file set"
    )
    reason: str
    requested_by: str
    requested_at: AwareDatetime
    state: Literal["pending", "running", "completed", "failed", "refused"]
    done: bool
    outcome_reason: str | None = Field(description="why it was refused or failed")
    outcome: EventJson | None = Field(description="the completion or refusal event")
    events: list[EventJson] = Field(description="every answer event, oldest first")
    location: str
    fileset: str | None = None
    progress: OperationProgress | None = Field(
        default=None, description="a backup's bytes so far (from backup.progress)"
    )


# --- history ----------------------------------------------------------------------------------


class HistoryEntry(_Body):
    seq: int = Field(description="the event's sequence in LIFEBOAT_EVENTS: the cursor")
    subject: str
    event: EventJson


class HistoryPage(_Body):
    """`GET /clusters/{cluster}/history`: oldest first; `next_before` pages further back."""

    events: list[HistoryEntry]
    next_before: int | None = Field(description="pass as `before` for the page before this")
    last_seq: int = Field(description="the newest sequence the gateway has seen")


# --- maintenance, exposure, SLA ---------------------------------------------------------------


class StandbyExposure(_Body):
    node: str
    streaming: bool
    synchronous: bool
    lag_bytes: int | None
    lag_seconds: float | None


class Exposure(_Body):
    """`GET /clusters/{cluster}/exposure`: what would be lost if the primary's host vanished now."""

    cluster: str
    primary: str | None
    paused: bool
    synchronous_mode: bool = Field(description="a synchronous standby streams: no commit lost")
    rpo_bytes: int | None = Field(description="least data lost by the best standby (0 if sync)")
    rpo_seconds: float | None
    standbys: list[StandbyExposure]
    wal_archive_lag_seconds: float | None = Field(description="the RPO from the WAL archive")
    wal_archive_lag_bytes: int | None
    last_backup_id: str | None
    last_backup_age_seconds: float | None
    last_verified_backup_id: str | None
    last_verified_backup_age_seconds: float | None
    restore_seconds: float | None = Field(description="measured restore time: the RTO from backup")
    file_sync_age_seconds: dict[str, float] = Field(description="per file set")


class FailoverRecord(_Body):
    type: str
    kind: str
    occurred_at: AwareDatetime
    old_primary: str | None
    new_primary: str
    rto_seconds: float


class Sla(_Body):
    """`GET /clusters/{cluster}/sla?days=30`, from the history."""

    cluster: str
    days: float
    window_start: AwareDatetime
    availability: float = Field(description="1 - time without a writable primary / window")
    downtime_seconds: float
    failovers: list[FailoverRecord]
    backups_completed: int
    backups_failed: int
    backup_success_rate: float | None
    verifications: int
    verification_success_rate: float | None


# --- backups, WAL, files ---------------------------------------------------------------------


class BackupVerification(_Body):
    ok: bool
    detail: str
    verified_at: AwareDatetime
    restore_seconds: float
    check_seconds: float = 0
    tables_checked: int = 0


class BackupSummary(_Body):
    """One listed backup (its manifest's main fields), from the catalogue the backup service
    mirrors into KV `lifeboat_backups`."""

    backup_id: str
    cluster: str
    kind: BackupKind
    status: Literal["verified", "unverified", "failed_verification"]
    request_id: UUID | None = None
    node: str | None = None
    source_role: str | None = None
    started_at: AwareDatetime
    stopped_at: AwareDatetime
    duration_seconds: float
    raw_bytes: int
    stored_bytes: int
    timeline: int | None = None
    start_lsn: str | None = None
    stop_lsn: str | None = None
    pg_version: str | None = None
    encrypted: bool = False
    databases: list[str] = Field(default_factory=list)
    components: list[str] = Field(default_factory=list)
    tables: int = 0
    verification: BackupVerification | None = None


class BackupDetail(BackupSummary):
    """`GET /clusters/{cluster}/backups/{id}`: the summary and the whole manifest."""

    manifest: dict[str, Any] = Field(description="the manifest as mirrored (no table counts)")


class BackupList(_Body):
    """`GET /clusters/{cluster}/backups`: newest first."""

    cluster: str
    mirrored: bool = Field(description="the backup service has mirrored a catalogue")
    backups: list[BackupSummary]


class WalView(_Body):
    """`GET /clusters/{cluster}/wal`: continuous archiving as the backup service last said."""

    cluster: str
    known: bool = Field(description="a wal.status has been seen")
    state: str | None = None
    primary: str | None = None
    timeline: int | None = None
    primary_lsn: str | None = None
    archived_lsn: str | None = Field(default=None, description="everything before it is in S3")
    last_segment: str | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = Field(default=None, description="the RPO from the archive")
    spool_bytes: int = 0
    error: str | None = None
    reported_at: AwareDatetime | None = None
    age_seconds: float | None = None


class FileSetNode(_Body):
    """One copy of a file set, from its newest `file.status` heartbeat."""

    node: str
    mode: Literal["mirror", "pull"]
    state: Literal["syncing", "in_sync", "paused", "failed"] | None = None
    files: int | None = None
    bytes: int | None = None
    pending: int | None = None
    detail: str = ""
    reported_at: AwareDatetime | None = None


class FileSetView(_Body):
    name: str
    nodes: list[FileSetNode]
    last_sync: EventJson | None = Field(default=None, description="the newest file.synced")
    last_sync_age_seconds: float | None = None
    last_failure: EventJson | None = Field(default=None, description="the newest sync_failed")
    pending: int = Field(default=0, description="changes seen, not yet copied (all copies)")
    paused: bool = False
    paused_reason: str | None = None
    last_check: EventJson | None = Field(default=None, description="the newest file.verified")
    last_references: EventJson | None = Field(
        default=None, description="the newest file.references_checked"
    )


class FilesView(_Body):
    """`GET /clusters/{cluster}/files`: every file set of the cluster file."""

    cluster: str
    filesets: list[FileSetView]


# --- every service instance ---------------------------------------------------------------------


class InstanceSeen(_Body):
    """A service instance: from its heartbeats when it sends them, else from its events."""

    service: str
    instance: str
    last_event_at: AwareDatetime
    seconds_ago: float
    heartbeat: bool = Field(default=False, description="a fresh service.heartbeat")
    ready: bool | None = None
    message: str = ""
    version: str | None = None
    uptime_seconds: float | None = None
    breakers: dict[str, str] = Field(default_factory=dict)


class ServiceBreakers(_Body):
    service: str
    reachable: bool
    breakers: list[BreakerSnapshot]
    error: str | None = None


class AllBreakers(_Body):
    """`GET /health/circuit-breakers`: the gateway's own and every service's."""

    breakers: list[BreakerSnapshot] = Field(description="the gateway's own")
    services: list[ServiceBreakers]
    instances: list[InstanceSeen] = Field(
        default_factory=list, description="every instance's breakers, from its heartbeats"
    )


class WhoAmI(_Body):
    name: str
    role: Literal["read", "operate", "admin"]
    authenticated: bool
