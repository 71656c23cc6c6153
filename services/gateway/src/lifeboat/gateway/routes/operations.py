"""Commands you can follow: failover, switchover, rejoin (and, through `command`, the backup
and file set commands of `backups` and `files`). Each publishes its request event (its id is
the operation id, and travels as `correlation_id`) and answers 202 with the operation and its
`Location`, or 409 with the answering service's reason when it refuses within `wait_seconds`.
`GET /operations/{id}?wait=30` long-polls for the outcome."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from lifeboat.common.clusters import ClusterSpec
from lifeboat.common.events import (
    ClusterEvent,
    FailoverRequested,
    NodeRejoinRequested,
    SwitchoverRequested,
)
from lifeboat.gateway import views
from lifeboat.gateway.auth import Operator, Principal, Reader
from lifeboat.gateway.deps import ClusterDep, Gateway, GatewayDep, NodeDep, require_node, respond
from lifeboat.gateway.problems import Problem, responses
from lifeboat.gateway.schemas import FailoverBody, OperationRequest, OperationView, RejoinRequest

router = APIRouter(tags=["operations"])

COMMAND = {
    202: {"model": OperationView, "description": "accepted: follow it at its Location"},
    **responses(401, 403, 404, 409, 422),
}


async def start(gw: Gateway, request: ClusterEvent, wait_seconds: float) -> JSONResponse:
    """Publish `request` as a new operation; 202, or 409 if refused within `wait_seconds`."""
    op = gw.projection.open_operation(request)
    await gw.runtime.publisher.publish(request)
    done = await gw.projection.wait_operation(op.id, wait_seconds) or op
    view = views.operation_view(done)
    if done.state == "refused":
        raise Problem(
            409,
            "Conflict",
            done.refusal_reason or "refused",
            type_="https://lifeboat.dev/problems/refused",
            operation=view.model_dump(mode="json"),
            reason=done.refusal_reason,
        )
    return respond(view, 202, Location=view.location)


async def command(
    gw: Gateway,
    who: Principal,
    spec: ClusterSpec,
    event: type[ClusterEvent],
    wait_seconds: float,
    **fields: Any,
) -> JSONResponse:
    """Ask for `event` as a new operation: its id is the operation id and travels as its
    `correlation_id`; who asked is the token's name."""
    op_id = uuid4()
    common: dict[str, Any] = {
        "event_id": op_id,
        "correlation_id": op_id,
        "cluster": spec.name,
        "source": gw.runtime.source,
        "requested_by": who.name,
    }
    request = event(**common, **fields)
    return await start(gw, request, wait_seconds)


@router.post("/clusters/{cluster}/failover", status_code=202, responses=COMMAND)
async def failover(
    who: Operator, spec: ClusterDep, body: FailoverBody, gw: GatewayDep
) -> JSONResponse:
    """Promote `target` (or the best standby) now, fencing the primary; `force` even when it
    may lose writes (up to `data_loss_budget_bytes`)."""
    if body.target is not None:
        require_node(spec, body.target)
    return await command(
        gw,
        who,
        spec,
        FailoverRequested,
        body.wait_seconds,
        target=body.target,
        reason=body.reason,
        force=body.force,
        data_loss_budget_bytes=body.data_loss_budget_bytes,
    )


@router.post("/clusters/{cluster}/switchover", status_code=202, responses=COMMAND)
async def switchover(
    who: Operator, spec: ClusterDep, body: OperationRequest, gw: GatewayDep
) -> JSONResponse:
    """Hand the primary role over without losing a write; the old primary follows."""
    if body.target is not None:
        require_node(spec, body.target)
    fields = {"target": body.target, "reason": body.reason}
    return await command(gw, who, spec, SwitchoverRequested, body.wait_seconds, **fields)


@router.post("/clusters/{cluster}/nodes/{node}/rejoin", status_code=202, responses=COMMAND)
async def rejoin(
    who: Operator,
    spec: ClusterDep,
    node: NodeDep,
    gw: GatewayDep,
    body: RejoinRequest | None = None,
) -> JSONResponse:
    """Turn a node (e.g. a fenced former primary) back into a standby of the primary."""
    wait = (body or RejoinRequest()).wait_seconds
    return await command(gw, who, spec, NodeRejoinRequested, wait, node=node)


@router.get("/operations/{operation_id}", responses=responses(401, 403, 404, 422))
async def operation(
    _: Reader,
    operation_id: UUID,
    gw: GatewayDep,
    wait: float = Query(0, ge=0, le=60, description="seconds to wait for it to finish"),
) -> OperationView:
    """The operation's state and outcome; with `wait`, answers once it is done (or then)."""
    if operation_id not in gw.projection.operations:
        # Just asked through another worker: its request event is on its way here.
        await gw.projection.wait_known(operation_id, 2.0)
    if operation_id not in gw.projection.operations:
        raise Problem(404, "Not Found", f"no operation {operation_id}")
    op = await gw.projection.wait_operation(operation_id, wait)
    assert op is not None
    return views.operation_view(op)


@router.get("/operations", responses=responses(401, 403))
async def operations(
    gw: GatewayDep, _: Reader, limit: int = Query(50, ge=1, le=1000)
) -> list[OperationView]:
    """The newest operations, newest first."""
    ops = sorted(gw.projection.operations.values(), key=lambda o: o.requested_at, reverse=True)
    return [views.operation_view(o) for o in ops[:limit]]
