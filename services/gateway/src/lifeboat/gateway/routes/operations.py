"""Operator requests: failover, switchover, rejoin. Each publishes the request event, waits
up to `wait_seconds` for the failover service's answer and says what came back."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from lifeboat.common import subjects
from lifeboat.common.events import (
    Envelope,
    FailoverCompleted,
    FailoverFailed,
    FailoverKind,
    FailoverOutcome,
    FailoverRefusal,
    FailoverRequested,
    NodeRejoined,
    NodeRejoinRequested,
    SwitchoverCompleted,
    SwitchoverFailed,
    SwitchoverRequested,
)
from lifeboat.gateway.deps import (
    ClusterDep,
    Gateway,
    GatewayDep,
    NodeDep,
    require_node,
    respond,
)
from lifeboat.gateway.requests import request_and_wait
from lifeboat.gateway.schemas import (
    OPERATION_STATUS,
    ErrorDetail,
    OperationDone,
    OperationPending,
    OperationRefused,
    OperationRequest,
    OperationResult,
    RejoinRequest,
)

router = APIRouter(prefix="/clusters", tags=["operations"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": OperationPending, "description": "no answer within wait_seconds"},
    404: {"model": ErrorDetail, "description": "no such cluster or node"},
    409: {"model": OperationRefused, "description": "refused or failed, with the reason"},
}


def result(answer: Envelope | None, request_id: UUID) -> OperationResult:
    """The answer (or its absence) as the endpoint's body."""
    if answer is None:
        return OperationPending(request_id=request_id)
    if isinstance(answer, FailoverFailed | SwitchoverFailed):
        return OperationRefused(reason=answer.reason, event=answer)
    if isinstance(answer, FailoverCompleted | SwitchoverCompleted | NodeRejoined):
        return OperationDone(event=answer)
    raise TypeError(f"{answer.type} does not answer an operation")


def reply(body: OperationResult) -> JSONResponse:
    return respond(body, OPERATION_STATUS[type(body)])


async def _operate(
    gw: Gateway, cluster: str, body: OperationRequest, *, switchover: bool
) -> JSONResponse:
    model = SwitchoverRequested if switchover else FailoverRequested
    request = model(
        cluster=cluster,
        source=gw.runtime.source,
        target=body.target,
        reason=body.reason,
        requested_by=body.requested_by,
    )
    done, failed = (
        (subjects.SWITCHOVER_COMPLETED, subjects.SWITCHOVER_FAILED)
        if switchover
        else (subjects.FAILOVER_COMPLETED, subjects.FAILOVER_FAILED)
    )
    kind = FailoverKind.SWITCHOVER if switchover else FailoverKind.MANUAL

    def ours(event: Envelope) -> bool:  # not an automatic failover's outcome
        return isinstance(event, FailoverOutcome | FailoverRefusal) and event.kind is kind

    answer = await request_and_wait(
        gw.runtime.broker.connection,
        gw.runtime.publisher,
        request,
        {done: {"cluster": cluster}, failed: {"cluster": cluster}},
        body.wait_seconds,
        accept=ours,
    )
    return reply(result(answer, request.event_id))


@router.post("/{cluster}/failover", response_model=OperationDone, responses=RESPONSES)
async def failover(spec: ClusterDep, body: OperationRequest, gw: GatewayDep) -> JSONResponse:
    """Promote `target` (or the best standby) now, fencing the primary."""
    if body.target is not None:
        require_node(spec, body.target)
    return await _operate(gw, spec.name, body, switchover=False)


@router.post("/{cluster}/switchover", response_model=OperationDone, responses=RESPONSES)
async def switchover(spec: ClusterDep, body: OperationRequest, gw: GatewayDep) -> JSONResponse:
    """Hand the primary role over without losing a write; the old primary follows."""
    if body.target is not None:
        require_node(spec, body.target)
    return await _operate(gw, spec.name, body, switchover=True)


@router.post("/{cluster}/nodes/{node}/rejoin", response_model=OperationDone, responses=RESPONSES)
async def rejoin(
    spec: ClusterDep, node: NodeDep, body: RejoinRequest, gw: GatewayDep
) -> JSONResponse:
    """Turn a node (e.g. a fenced former primary) back into a standby of the primary."""
    request = NodeRejoinRequested(
        cluster=spec.name, node=node, source=gw.runtime.source, requested_by=body.requested_by
    )

    def about_node(event: Envelope) -> bool:
        return isinstance(event, NodeRejoined) or (
            isinstance(event, FailoverFailed) and event.target == node
        )

    answer = await request_and_wait(
        gw.runtime.broker.connection,
        gw.runtime.publisher,
        request,
        {
            subjects.NODE_REJOINED: {"cluster": spec.name, "node": node},
            subjects.FAILOVER_FAILED: {"cluster": spec.name},
        },
        body.wait_seconds,
        accept=about_node,
    )
    return reply(result(answer, request.event_id))
