"""A typed client of the gateway's REST API: every call returns the models in `schemas.py`.

    with GatewayClient("http://127.0.0.1:8000") as gw:
        report = gw.health()                  # HealthReport, healthy or not
        status = gw.cluster("main")           # ClusterStatus
        result = gw.operate("switchover", "main", reason="patching", target="node2")
        if isinstance(result, OperationRefused):
            print(result.reason)

Answers the API gives on purpose (a 503 health report, a 503 role check, a 202 or 409
operation) are returned as their models; anything else it refuses (404 unknown cluster or node,
422 invalid request) raises `GatewayError` with the body. Transport failures raise httpx's
`httpx.HTTPError` as they are.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from lifeboat.gateway.schemas import (
    OPERATION_STATUS,
    BreakerReport,
    ClusterStatus,
    ClusterSummary,
    HealthReport,
    HistoryEvent,
    Liveness,
    OperationDone,
    OperationPending,
    OperationRefused,
    OperationResult,
    PrimaryCheck,
    Readiness,
    ReplicaCheck,
)

# The models it returns, importable from here by whoever uses the client.
__all__ = [
    "BreakerReport",
    "ClusterStatus",
    "ClusterSummary",
    "GatewayClient",
    "GatewayError",
    "HealthReport",
    "HistoryEvent",
    "Liveness",
    "OperationDone",
    "OperationPending",
    "OperationRefused",
    "OperationResult",
    "PrimaryCheck",
    "Readiness",
    "ReplicaCheck",
]

M = TypeVar("M", bound=BaseModel)

_CLUSTERS = TypeAdapter(list[ClusterSummary])
_HISTORY = TypeAdapter(list[HistoryEvent])
_MODEL_BY_STATUS = {code: model for model, code in OPERATION_STATUS.items()}


class GatewayError(Exception):
    """The gateway answered with an error status (e.g. 404, 422); `body` is what it said."""

    def __init__(self, status_code: int, body: Any) -> None:
        detail = body.get("detail") if isinstance(body, dict) else None
        super().__init__(f"gateway answered {status_code}: {detail or body}")
        self.status_code = status_code
        self.body = body


class GatewayClient:
    """Synchronous; `timeout` for reads, `operation_timeout` for operations that wait for
    the failover service's answer (up to their `wait_seconds`)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        operation_timeout: float = 600.0,
        http: httpx.Client | None = None,
    ) -> None:
        """`http`: an httpx client of one's own (e.g. FastAPI's TestClient) instead."""
        self.base_url = base_url.rstrip("/")
        self.operation_timeout = operation_timeout
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- health ---------------------------------------------------------------------------

    def health(self) -> HealthReport:
        """Every dependency's health (the gateway answers 503 when one is unhealthy)."""
        return self._get(HealthReport, "/health", ok=(200, 503))

    def live(self) -> Liveness:
        return self._get(Liveness, "/health/live")

    def ready(self) -> Readiness:
        return self._get(Readiness, "/health/ready", ok=(200, 503))

    def circuit_breakers(self) -> BreakerReport:
        return self._get(BreakerReport, "/health/circuit-breakers")

    # --- clusters -------------------------------------------------------------------------

    def clusters(self) -> list[ClusterSummary]:
        return _CLUSTERS.validate_python(self._json(self._http.get("/clusters")))

    def cluster(self, cluster: str) -> ClusterStatus:
        return self._get(ClusterStatus, f"/clusters/{cluster}")

    def is_primary(self, cluster: str, node: str) -> PrimaryCheck:
        path = f"/clusters/{cluster}/nodes/{node}/primary"
        return self._get(PrimaryCheck, path, ok=(200, 503))

    def is_replica(self, cluster: str, node: str) -> ReplicaCheck:
        path = f"/clusters/{cluster}/nodes/{node}/replica"
        return self._get(ReplicaCheck, path, ok=(200, 503))

    def history(self, cluster: str, limit: int = 100) -> list[HistoryEvent]:
        resp = self._http.get(f"/clusters/{cluster}/history", params={"limit": limit})
        return _HISTORY.validate_python(self._json(resp))

    # --- operations -----------------------------------------------------------------------

    def operate(
        self,
        operation: Literal["failover", "switchover"],
        cluster: str,
        *,
        reason: str,
        target: str | None = None,
        requested_by: str = "api",
        wait_seconds: float | None = None,
    ) -> OperationResult:
        """A failover (promote `target`, or the best standby, now, fencing the primary) or a
        switchover (hand over without losing a write): done, refused, or still pending."""
        # The fields of `OperationRequest`; the gateway validates them (422 if invalid).
        fields = {"reason": reason, "requested_by": requested_by, "wait_seconds": wait_seconds}
        body = {"target": target, **_without_none(fields)}
        return self._operate(f"/clusters/{cluster}/{operation}", body)

    def rejoin(
        self,
        cluster: str,
        node: str,
        *,
        requested_by: str = "api",
        wait_seconds: float | None = None,
    ) -> OperationResult:
        """Turn `node` back into a standby of the primary."""
        body = _without_none({"requested_by": requested_by, "wait_seconds": wait_seconds})
        return self._operate(f"/clusters/{cluster}/nodes/{node}/rejoin", body)

    # --- plumbing -------------------------------------------------------------------------

    def _operate(self, path: str, body: dict[str, Any]) -> OperationResult:
        resp = self._http.post(path, json=body, timeout=self.operation_timeout)
        model = _MODEL_BY_STATUS.get(resp.status_code)
        if model is None:
            raise GatewayError(resp.status_code, _body(resp))
        return model.model_validate(resp.json())

    def _get(self, model: type[M], path: str, *, ok: tuple[int, ...] = (200,)) -> M:
        return model.model_validate(self._json(self._http.get(path), ok=ok))

    @staticmethod
    def _json(resp: httpx.Response, *, ok: tuple[int, ...] = (200,)) -> Any:
        if resp.status_code not in ok:
            raise GatewayError(resp.status_code, _body(resp))
        return resp.json()


def _without_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _body(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text
