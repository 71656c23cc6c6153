"""What the routes share, as FastAPI dependencies: the gateway's state (settings, runtime,
the projection) and the cluster and node named in the path, or a 404 problem."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from lifeboat.common.clusters import ClusterSpec
from lifeboat.common.reports import ReportBook
from lifeboat.common.runtime import ServiceRuntime
from lifeboat.common.state import Topology
from lifeboat.gateway.auth import TokenBook
from lifeboat.gateway.problems import Problem
from lifeboat.gateway.projection import Projection
from lifeboat.gateway.settings import GatewaySettings


@dataclass(frozen=True)
class Gateway:
    """One per app: built by `app.build_app`, kept on `app.state.gateway`."""

    settings: GatewaySettings
    runtime: ServiceRuntime
    projection: Projection
    tokens: TokenBook

    def attach(self, app: FastAPI) -> None:
        app.state.gateway = self
        app.state.tokens = self.tokens

    @property
    def reports(self) -> ReportBook:
        return self.projection.reports

    @property
    def js(self) -> Any:  # nats.js.JetStreamContext, once connected
        return self.runtime.broker.config.connection_state.stream

    def topology(self, cluster: str) -> Topology | None:
        return self.projection.topologies.get(cluster)


async def gateway(request: Request) -> Gateway:
    return cast(Gateway, request.app.state.gateway)


GatewayDep = Annotated[Gateway, Depends(gateway)]


async def cluster_spec(cluster: str, gw: GatewayDep) -> ClusterSpec:
    """The cluster named in the path, or 404 naming the known ones."""
    return find_cluster(gw, cluster)


def find_cluster(gw: Gateway, cluster: str) -> ClusterSpec:
    clusters = gw.settings.clusters
    try:
        return clusters.cluster(cluster)
    except KeyError:
        known = ", ".join(c.name for c in clusters.clusters)
        raise Problem(
            404, "Not Found", f"no cluster named {cluster!r} (known: {known})", cluster=cluster
        ) from None


ClusterDep = Annotated[ClusterSpec, Depends(cluster_spec)]


def require_node(spec: ClusterSpec, node: str) -> str:
    """`node` if the cluster has it, else 404 naming the known ones."""
    if node not in {n.name for n in spec.nodes}:
        known = ", ".join(n.name for n in spec.nodes)
        raise Problem(
            404,
            "Not Found",
            f"cluster {spec.name} has no node {node!r} (known: {known})",
            cluster=spec.name,
            node=node,
        )
    return node


async def node_name(node: str, spec: ClusterDep) -> str:
    """The node named in the path, checked against the cluster in the path."""
    return require_node(spec, node)


NodeDep = Annotated[str, Depends(node_name)]


def respond(body: BaseModel, status_code: int = 200, **headers: str) -> JSONResponse:
    """`body` as JSON with a status code of the endpoint's choosing (e.g. 503, 202); the
    route declares each code's model in its `responses`."""
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)
