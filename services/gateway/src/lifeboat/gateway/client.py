"""A typed client of the gateway's REST API: every call returns the models in `schemas.py`.

    with GatewayClient("http://127.0.0.1:8000", token="...") as gw:
        report = gw.health()                  # HealthReport, healthy or not
        status = gw.cluster("main")           # ClusterStatus
        result = gw.operate("switchover", "main", reason="patching", target="node2")
        if isinstance(result, OperationRefused):
            print(result.reason)

Answers the API gives on purpose (a 503 health report, a 503 role check, a 202 or 409
operation) are returned as their models; anything else it refuses (401, 403, 404, 422: RFC 9457
problems) raises `GatewayError` with the problem. Transport failures raise httpx's
`httpx.HTTPError` as they are. Without a `token`, the CLI's (`LIFEBOAT_TOKEN`,
`LIFEBOAT_TOKEN_FILE`, the local stack's) is used when there is one.

`operate()` and `rejoin()` follow the operation to its end (`submit()` and `operation()` do
it step by step): a command answers 202 with an operation id, then `GET /operations/{id}
?wait=...` long-polls until it is done. The backup and file set commands (`create_backup`,
`delete_backup`, `verify_backup`, `restore`, `file_command`) answer the same way; `follow()`
takes them to their end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Literal, TypeVar
from uuid import UUID

import httpx
from pydantic import BaseModel, TypeAdapter

from lifeboat.gateway.schemas import (
    AllBreakers,
    BackupDetail,
    BackupList,
    BackupSummary,
    BreakerReport,
    ClusterStatus,
    ClusterSummary,
    Exposure,
    FilesView,
    HealthReport,
    HistoryEvent,
    HistoryPage,
    InstanceSeen,
    Liveness,
    MaintenanceView,
    OperationDone,
    OperationPending,
    OperationRefused,
    OperationResult,
    OperationView,
    PrimaryCheck,
    Readiness,
    ReplicaCheck,
    Sla,
    WalView,
    WhoAmI,
)

# The models it returns, importable from here by whoever uses the client.
__all__ = [
    "AllBreakers",
    "BackupDetail",
    "BackupList",
    "BackupSummary",
    "BreakerReport",
    "ClusterStatus",
    "ClusterSummary",
    "Exposure",
    "FilesView",
    "GatewayClient",
    "GatewayError",
    "HealthReport",
    "HistoryEvent",
    "HistoryPage",
    "InstanceSeen",
    "Liveness",
    "MaintenanceView",
    "OperationDone",
    "OperationPending",
    "OperationRefused",
    "OperationResult",
    "OperationView",
    "PrimaryCheck",
    "Readiness",
    "ReplicaCheck",
    "Sla",
    "WalView",
    "WhoAmI",
]

M = TypeVar("M", bound=BaseModel)

_CLUSTERS = TypeAdapter(list[ClusterSummary])
_INSTANCES = TypeAdapter(list[InstanceSeen])
_OPERATIONS = TypeAdapter(list[OperationView])


class GatewayError(Exception):
    """The gateway answered with an error status (e.g. 404, 422); `body` is what it said."""

    def __init__(self, status_code: int, body: Any) -> None:
        detail = body.get("detail") if isinstance(body, dict) else None
        title = body.get("title") if isinstance(body, dict) else None
        super().__init__(f"{status_code} {title or 'error'}: {detail or body}")
        self.status_code = status_code
        self.body = body
        self.detail = str(detail or body)


class GatewayClient:
    """Synchronous; `timeout` for reads, `operation_timeout` for operations that wait for
    the failover service's answer (up to their `wait_seconds`)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        operation_timeout: float = 600.0,
        http: httpx.Client | None = None,
    ) -> None:
        """`http`: an httpx client of one's own (e.g. FastAPI's TestClient) instead."""
        self.base_url = base_url.rstrip("/")
        self.operation_timeout = operation_timeout
        if token is None:
            from lifeboat.gateway.settings import CliSettings

            token = CliSettings().resolve_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout)
        self._http.headers.update(headers)

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

    def circuit_breakers(self) -> AllBreakers:
        return self._get(AllBreakers, "/health/circuit-breakers")

    def instances(self) -> list[InstanceSeen]:
        return _INSTANCES.validate_python(self._json(self._http.get("/health/instances")))

    def whoami(self) -> WhoAmI:
        return self._get(WhoAmI, "/auth/whoami")

    def metrics(self) -> str:
        resp = self._http.get("/metrics")
        self._json(resp, parse=False)
        return resp.text

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

    def history(
        self,
        cluster: str,
        limit: int = 100,
        *,
        before: int | None = None,
        kinds: list[str] | None = None,
        all_kinds: bool = False,
    ) -> HistoryPage:
        params: dict[str, Any] = {"limit": limit, "all_kinds": all_kinds}
        if before is not None:
            params["before"] = before
        if kinds:
            params["kind"] = kinds
        return self._get(HistoryPage, f"/clusters/{cluster}/history", params=params)

    def exposure(self, cluster: str) -> Exposure:
        return self._get(Exposure, f"/clusters/{cluster}/exposure")

    def sla(self, cluster: str, days: float = 30) -> Sla:
        return self._get(Sla, f"/clusters/{cluster}/sla", params={"days": days})

    def maintenance(self, cluster: str) -> MaintenanceView:
        return self._get(MaintenanceView, f"/clusters/{cluster}/maintenance")

    def pause(self, cluster: str, reason: str = "maintenance") -> MaintenanceView:
        resp = self._http.post(f"/clusters/{cluster}/pause", json={"reason": reason})
        return MaintenanceView.model_validate(self._json(resp))

    def resume(self, cluster: str, reason: str = "resumed") -> MaintenanceView:
        resp = self._http.post(f"/clusters/{cluster}/resume", json={"reason": reason})
        return MaintenanceView.model_validate(self._json(resp))

    def events(
        self, subject: str = ">", since: str | int | None = None
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """Live events as (stream sequence, event), resumed after `since` if given."""
        params: dict[str, Any] = {"subject": subject}
        if since is not None:
            params["since"] = str(since)
        with self._http.stream("GET", "/events", params=params, timeout=None) as resp:
            if resp.status_code != 200:
                resp.read()
                self._json(resp)
            seq, data = 0, []
            for line in resp.iter_lines():
                if line.startswith("id:"):
                    seq = int(line[3:].strip())
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    yield seq, json.loads("\n".join(data))
                    data = []

    # --- operations -----------------------------------------------------------------------

    def submit(
        self,
        operation: Literal["failover", "switchover"],
        cluster: str,
        *,
        reason: str,
        target: str | None = None,
        wait_seconds: float | None = None,
        force: bool | None = None,
        data_loss_budget_bytes: int | None = None,
    ) -> OperationView | OperationRefused:
        """Ask for it: the accepted operation (202), or its refusal (409). `force` and
        `data_loss_budget_bytes` are a failover's."""
        body = _without_none(
            {
                "target": target,
                "reason": reason,
                "wait_seconds": wait_seconds,
                "force": force,
                "data_loss_budget_bytes": data_loss_budget_bytes,
            }
        )
        return self._command(f"/clusters/{cluster}/{operation}", body)

    def submit_rejoin(
        self, cluster: str, node: str, *, wait_seconds: float | None = None
    ) -> OperationView | OperationRefused:
        body = _without_none({"wait_seconds": wait_seconds})
        return self._command(f"/clusters/{cluster}/nodes/{node}/rejoin", body)

    # --- backups, restores, WAL ------------------------------------------------------------

    def create_backup(
        self,
        cluster: str,
        kind: str = "physical",
        *,
        reason: str | None = None,
        node: str | None = None,
        verify: bool | None = None,
        database: str | None = None,
        all_databases: bool | None = None,
        wait_seconds: float | None = None,
    ) -> OperationView | OperationRefused:
        """Take a backup now (physical, logical, files or full)."""
        body = _without_none(
            {
                "kind": kind,
                "reason": reason,
                "node": node,
                "verify": verify,
                "database": database,
                "all_databases": all_databases,
                "wait_seconds": wait_seconds,
            }
        )
        return self._command(f"/clusters/{cluster}/backups", body)

    def backups(
        self, cluster: str, *, kind: str | None = None, status: str | None = None
    ) -> BackupList:
        """The listed backups, newest first."""
        params = _without_none({"kind": kind, "status": status})
        return self._get(BackupList, f"/clusters/{cluster}/backups", params=params)

    def backup(self, cluster: str, backup_id: str) -> BackupDetail:
        return self._get(BackupDetail, f"/clusters/{cluster}/backups/{backup_id}")

    def delete_backup(
        self,
        cluster: str,
        backup_id: str,
        *,
        force: bool = False,
        wait_seconds: float | None = None,
    ) -> OperationView | OperationRefused:
        """Delete it; refused (409) for the last good backup without `force`."""
        params = _without_none({"force": force, "wait_seconds": wait_seconds})
        path = f"/clusters/{cluster}/backups/{backup_id}"
        return self._command(path, None, method="DELETE", params=params)

    def verify_backup(
        self, cluster: str, backup_id: str, *, wait_seconds: float | None = None
    ) -> OperationView | OperationRefused:
        body = _without_none({"wait_seconds": wait_seconds})
        return self._command(f"/clusters/{cluster}/backups/{backup_id}/verify", body)

    def restore(
        self,
        cluster: str,
        *,
        backup_id: str | None = None,
        target_time: str | None = None,
        target_lsn: str | None = None,
        data_dir: str | None = None,
        port: int | None = None,
        node: str | None = None,
        confirm: bool = False,
        wait_seconds: float | None = None,
    ) -> OperationView | OperationRefused:
        """Restore into a new data directory (or, with `node` and `confirm`, into a node)."""
        body = _without_none(
            {
                "backup_id": backup_id,
                "target_time": target_time,
                "target_lsn": target_lsn,
                "data_dir": data_dir,
                "port": port,
                "node": node,
                "confirm": confirm or None,
                "wait_seconds": wait_seconds,
            }
        )
        return self._command(f"/clusters/{cluster}/restores", body)

    def wal(self, cluster: str) -> WalView:
        return self._get(WalView, f"/clusters/{cluster}/wal")

    # --- file sets -------------------------------------------------------------------------

    def files(self, cluster: str) -> FilesView:
        return self._get(FilesView, f"/clusters/{cluster}/files")

    def file_command(
        self,
        cluster: str,
        fileset: str,
        action: Literal["sync", "check", "restore"],
        **body: Any,
    ) -> OperationView | OperationRefused:
        """`sync` (confirm_deletions), `check` (references), `restore` (destination,
        snapshot_id, node, confirm); None fields are left out."""
        return self._command(f"/clusters/{cluster}/files/{fileset}/{action}", _without_none(body))

    def operation(self, operation_id: UUID | str, wait: float = 0) -> OperationView:
        """The operation now, or once done if within `wait` seconds."""
        return self._get(
            OperationView,
            f"/operations/{operation_id}",
            params={"wait": wait},
            timeout=wait + 30,
        )

    def operations(self, limit: int = 50) -> list[OperationView]:
        resp = self._http.get("/operations", params={"limit": limit})
        return _OPERATIONS.validate_python(self._json(resp))

    def follow(
        self,
        view: OperationView,
        *,
        timeout: float | None = None,
        on_update: Callable[[OperationView], None] | None = None,
        poll: float = 30.0,
    ) -> OperationView:
        """Long-poll `view`'s operation until it is done or `timeout` (operation_timeout),
        at least every `poll` seconds (to show progress, say)."""
        deadline = time.monotonic() + (self.operation_timeout if timeout is None else timeout)
        while not view.done:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            view = self.operation(view.id, wait=min(poll, left))
            if on_update is not None:
                on_update(view)
        return view

    def operate(
        self,
        operation: Literal["failover", "switchover"],
        cluster: str,
        *,
        reason: str,
        target: str | None = None,
        requested_by: str | None = None,
        wait_seconds: float | None = None,
    ) -> OperationResult:
        """A failover (promote `target`, or the best standby, now, fencing the primary) or a
        switchover (hand over without losing a write), followed to its end: done, refused,
        or still pending after `operation_timeout`. (`requested_by` is ignored: the gateway
        records the token's name.)"""
        answer = self.submit(
            operation, cluster, reason=reason, target=target, wait_seconds=wait_seconds
        )
        return self._result(answer)

    def rejoin(
        self,
        cluster: str,
        node: str,
        *,
        requested_by: str | None = None,
        wait_seconds: float | None = None,
    ) -> OperationResult:
        """Turn `node` back into a standby of the primary, followed to its end."""
        return self._result(self.submit_rejoin(cluster, node, wait_seconds=wait_seconds))

    # --- plumbing -------------------------------------------------------------------------

    def _result(self, answer: OperationView | OperationRefused) -> OperationResult:
        if isinstance(answer, OperationRefused):
            return answer
        return result_of(self.follow(answer))

    def _command(
        self,
        path: str,
        body: dict[str, Any] | None,
        *,
        method: str = "POST",
        params: dict[str, Any] | None = None,
    ) -> OperationView | OperationRefused:
        resp = self._http.request(method, path, json=body, params=params, timeout=60)
        problem = _body(resp) if resp.status_code == 409 else None
        if isinstance(problem, dict) and isinstance(problem.get("operation"), dict):
            view = OperationView.model_validate(problem["operation"])
            refused = result_of(view)
            if isinstance(refused, OperationRefused):
                return refused
        return OperationView.model_validate(self._json(resp, ok=(202,)))

    def _get(
        self,
        model: type[M],
        path: str,
        *,
        ok: tuple[int, ...] = (200,),
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> M:
        kwargs: dict[str, Any] = {"params": params}
        if timeout is not None:
            kwargs["timeout"] = timeout
        return model.model_validate(self._json(self._http.get(path, **kwargs), ok=ok))

    @staticmethod
    def _json(resp: httpx.Response, *, ok: tuple[int, ...] = (200,), parse: bool = True) -> Any:
        if resp.status_code not in ok:
            raise GatewayError(resp.status_code, _body(resp))
        return resp.json() if parse else None


def result_of(view: OperationView) -> OperationResult:
    """An operation as the old one-call answer: done, refused (or failed), or pending."""
    if view.state == "completed" and view.outcome is not None:
        return OperationDone.model_validate({"event": view.outcome})
    if view.state in ("refused", "failed") and view.outcome is not None:
        return OperationRefused.model_validate(
            {"reason": view.outcome_reason or "refused", "event": view.outcome}
        )
    return OperationPending(request_id=view.id, message=f"{view.state}: follow {view.location}")


def _without_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _body(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text
