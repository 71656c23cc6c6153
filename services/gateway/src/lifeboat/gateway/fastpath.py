"""The hottest read, `GET /clusters/{cluster}` (dashboards, scripts, `lifeboat status
--watch`), answered below the framework: the same body, from the same projection cache, as
the route in `routes/clusters.py`, for the callers the route would let in. Anything else (an
unknown cluster, a refused token, any other path) goes on to FastAPI, which answers it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.types import ASGIApp, Receive, Scope, Send

from lifeboat.gateway import views
from lifeboat.gateway.auth import Role
from lifeboat.gateway.deps import Gateway

PREFIX = "/clusters/"


@dataclass(frozen=True)
class _Route:
    path: str = "/clusters/{cluster}"


ROUTE = _Route()


def render(gw: Gateway, cluster: str) -> bytes | None:
    """The body of `GET /clusters/{cluster}`, or None for an unknown cluster."""
    try:
        spec = gw.settings.clusters.cluster(cluster)
    except KeyError:
        return None

    def compute() -> bytes:
        status = views.cluster_status(gw.projection, spec, datetime.now(UTC))
        return status.model_dump_json().encode()

    # Reused while the projection is unchanged, for at most 50 ms (report freshness).
    return gw.projection.cached(("cluster", spec.name), 0.05, compute)


def may_read(gw: Gateway, scope: Scope) -> bool:
    """Whether the route would let this caller read (else FastAPI answers 401/403)."""
    header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
    if header is None:
        return not gw.settings.reads_need_token()
    scheme, _, token = header.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    principal = gw.tokens.check(token.strip())
    return principal is not None and principal.role >= Role.READ


class ClusterStatusFastPath:
    def __init__(self, app: ASGIApp, gateway: Callable[[], Gateway]) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and path.startswith(PREFIX)
            and "/" not in path[len(PREFIX) :]
            and not scope.get("query_string")
        ):
            gw = self.gateway()
            if may_read(gw, scope):
                body = render(gw, path[len(PREFIX) :])
                if body is not None:
                    scope["route"] = ROUTE  # for the latency histogram
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": [
                                (b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)
