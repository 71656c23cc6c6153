"""What the REST API takes and answers: one pydantic model per body, so its OpenAPI schema
says what each endpoint returns, and the client (`client.py`) parses the same models.

Events in answers (history, operation outcomes) are the contract's own models from
`lifeboat.common.events`, told apart by their `type` field.
"""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

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
    "BreakerReport",
    "ClusterStatus",
    "ClusterSummary",
    "ErrorDetail",
    "HealthReport",
    "HistoryEvent",
    "Liveness",
    "NodeHealthSummary",
    "NodeStatus",
    "OperationDone",
    "OperationPending",
    "OperationRefused",
    "OperationRequest",
    "OperationResult",
    "PrimaryCheck",
    "Readiness",
    "RejoinRequest",
    "ReplicaCheck",
]


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- requests --------------------------------------------------------------------------------


class OperationRequest(_Body):
    """Body of `POST /clusters/{cluster}/failover` and `/switchover`."""

    target: Name | None = Field(default=None, description="node to promote; best if omitted")
    reason: str = Field(min_length=1, max_length=500, examples=["planned maintenance"])
    requested_by: str = Field(default="api", max_length=200)
    wait_seconds: float = Field(default=30, ge=0, le=300)


class RejoinRequest(_Body):
    """Body of `POST /clusters/{cluster}/nodes/{node}/rejoin`."""

    requested_by: str = Field(default="api", max_length=200)
    wait_seconds: float = Field(default=120, ge=0, le=900)


# --- answers ---------------------------------------------------------------------------------


class ErrorDetail(_Body):
    """Any 4xx the gateway raises itself (e.g. 404 for an unknown cluster or node)."""

    detail: str


class ClusterSummary(_Body):
    """One entry of `GET /clusters`."""

    name: str
    primary: str | None
    epoch: int | None


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
