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
    FailoverCompleted,
    FailoverFailed,
    FailoverHeld,
    FailoverStarted,
    NodeFenced,
    NodeHealth,
    NodeRejoined,
    Role,
    SwitchoverCompleted,
    SwitchoverFailed,
)
from lifeboat.common.health import BreakerReport, HealthReport, Liveness, Readiness
from lifeboat.common.state import Topology
from lifeboat.common.subjects import Name

__all__ = [
    "AllBreakers",
    "BreakerReport",
    "ClusterStatus",
    "ClusterSummary",
    "ErrorDetail",
    "Exposure",
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
    "OperationRefused",
    "OperationRequest",
    "OperationResult",
    "OperationView",
    "PauseRequest",
    "PrimaryCheck",
    "Readiness",
    "RejoinRequest",
    "ReplicaCheck",
    "Sla",
    "WhoAmI",
]


EventJson = dict[str, Any]
"""An event as published: its `type` says which model of the contract it is."""


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- requests --------------------------------------------------------------------------------


class OperationRequest(_Body):
    """Body of `POST /clusters/{cluster}/failover` and `/switchover`. Who asked is the
    token's name, never a field of the body."""

    target: Name | None = Field(default=None, description="node to promote; best if omitted")
    reason: str = Field(min_length=1, max_length=500, examples=["planned maintenance"])
    wait_seconds: float = Field(
        default=1.0,
        ge=0,
        le=30,
        description="how long to wait for a refusal (409) before answering 202",
    )


class RejoinRequest(_Body):
    """Body of `POST /clusters/{cluster}/nodes/{node}/rejoin`."""

    wait_seconds: float = Field(default=1.0, ge=0, le=30)


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
    FailoverCompleted | SwitchoverCompleted | NodeRejoined, Field(discriminator="type")
]
Refusal = Annotated[FailoverFailed | SwitchoverFailed, Field(discriminator="type")]


class OperationDone(_Body):
    """200: the operation finished; `event` is its completion event."""

    status: Literal["done"] = "done"
    event: Outcome


class OperationRefused(_Body):
    """409: the failover service refused (or failed) it; `reason` says why."""

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


class OperationView(_Body):
    """`GET /operations/{id}` (and the 202 of a command): what was asked, where it is."""

    id: UUID
    kind: Literal["failover", "switchover", "rejoin"]
    cluster: str
    target: str | None
    reason: str
    requested_by: str
    requested_at: AwareDatetime
    state: Literal["pending", "running", "completed", "failed", "refused"]
    done: bool
    outcome_reason: str | None = Field(description="why it was refused or failed")
    outcome: EventJson | None = Field(description="the completion or refusal event")
    events: list[EventJson] = Field(description="every answer event, oldest first")
    location: str


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
