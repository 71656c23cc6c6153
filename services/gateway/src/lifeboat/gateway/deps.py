"""What the routes share, as FastAPI dependencies: the gateway's state (settings, runtime,
the book of monitor reports) and the cluster and node named in the path, or a 404."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from lifeboat.common.clusters import ClusterSpec
from lifeboat.common.kv import TopologyStore
from lifeboat.common.reports import ReportBook
from lifeboat.common.runtime import ServiceRuntime
from lifeboat.common.state import Topology
from lifeboat.gateway.settings import GatewaySettings


@dataclass(frozen=True)
class Gateway:
    """One per app: built by `app.build_app`, kept on `app.state.gateway`."""

    settings: GatewaySettings
    runtime: ServiceRuntime
    reports: ReportBook

    def attach(self, app: FastAPI) -> None:
        app.state.gateway = self

    @property
    def js(self) -> Any:  # nats.js.JetStreamContext, once connected
        return self.runtime.broker.config.connection_state.stream

    async def topology(self, cluster: str) -> Topology | None:
        found = await (await TopologyStore.open(self.js)).get(cluster)
        return None if found is None else found.value


def gateway(request: Request) -> Gateway:
    return cast(Gateway, request.app.state.gateway)


GatewayDep = Annotated[Gateway, Depends(gateway)]


def cluster_spec(cluster: str, gw: GatewayDep) -> ClusterSpec:
    """The cluster named in the path, or 404 naming the known ones."""
    clusters = gw.settings.clusters
    try:
        return clusters.cluster(cluster)
    except KeyError:
        known = ", ".join(c.name for c in clusters.clusters)
        raise HTTPException(404, f"no cluster named {cluster!r} (known: {known})") from None


ClusterDep = Annotated[ClusterSpec, Depends(cluster_spec)]


def require_node(spec: ClusterSpec, node: str) -> str:
    """`node` if the cluster has it, else 404 naming the known ones."""
    if node not in {n.name for n in spec.nodes}:
        known = ", ".join(n.name for n in spec.nodes)
        raise HTTPException(404, f"cluster {spec.name} has no node {node!r} (known: {known})")
    return node


def node_name(node: str, spec: ClusterDep) -> str:
    """The node named in the path, checked against the cluster in the path."""
    return require_node(spec, node)


NodeDep = Annotated[str, Depends(node_name)]


def respond(body: BaseModel, status_code: int = 200) -> JSONResponse:
    """`body` as JSON with a status code of the endpoint's choosing (e.g. 503, 409); the
    route declares each code's model in its `responses`."""
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code)
