"""The gateway's FastAPI app: the REST API's routers (`routes/`) wired to one runtime.

`build_app(settings)` makes the runtime (NATS, health checks, breakers, metrics), the
projection every read is answered from, the token book, the notifier, and the app; the
lifespan connects to NATS, starts the projection and is ready once the history is replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response

from lifeboat.common.metrics import CONTENT_TYPE
from lifeboat.common.runtime import ServiceRuntime
from lifeboat.gateway import problems
from lifeboat.gateway.auth import Reader, TokenBook
from lifeboat.gateway.checks import (
    instances_check,
    postgres_node_check,
    projection_check,
    service_check,
)
from lifeboat.gateway.deps import Gateway, GatewayDep
from lifeboat.gateway.fastpath import ClusterStatusFastPath
from lifeboat.gateway.metrics import HttpLatency, ProjectionCollector
from lifeboat.gateway.notifier import Notifier
from lifeboat.gateway.projection import Projection
from lifeboat.gateway.routes import (
    backups,
    clusters,
    events,
    exposure,
    files,
    health,
    history,
    maintenance,
    operations,
)
from lifeboat.gateway.schemas import WhoAmI
from lifeboat.gateway.settings import GatewaySettings
from lifeboat.objstore.health import s3_check

log = logging.getLogger(__name__)
SERVICE = "gateway"
# How old a monitor's report may be for the role checks to believe it.
REPORT_MAX_AGE_SECONDS = 5.0
# How long readiness waits for the history to be replayed before serving anyway.
CATCH_UP_SECONDS = 30.0


def build_runtime(settings: GatewaySettings, projection: Projection) -> ServiceRuntime:
    """The runtime with every dependency the gateway reports on; ready once NATS is."""
    runtime = ServiceRuntime(SERVICE, settings, ready_on=("nats",))
    runtime.health.add("s3", s3_check(settings, runtime.breakers))
    for cluster in settings.clusters.clusters:
        for node in cluster.nodes:
            runtime.health.add(
                f"postgres:{cluster.name}/{node.name}",
                postgres_node_check(cluster, node, settings, runtime.breakers),
            )
    for name, url in sorted(settings.service_urls.items()):
        runtime.health.add(
            f"service:{name}",
            service_check(name, url, settings.service_timeout_seconds, runtime.breakers),
        )
    runtime.health.add("instances", instances_check(projection, sorted(settings.service_urls)))
    runtime.health.add("projection", projection_check(projection))
    return runtime


def build_app(settings: GatewaySettings) -> FastAPI:
    projection = Projection(
        heartbeat_buffer=settings.heartbeat_buffer,
        report_max_age=REPORT_MAX_AGE_SECONDS,
        reference_sets=frozenset(
            (c.name, fs.name)
            for c in settings.clusters.clusters
            for fs in c.filesets
            if fs.reference_query
        ),
    )
    runtime = build_runtime(settings, projection)
    runtime.metrics.registry.register(ProjectionCollector(projection, lambda: settings.clusters))
    tokens = TokenBook.from_settings(settings)
    notifier = Notifier(settings.webhooks)
    if notifier.sinks:
        projection.listen(notifier.offer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.connect()
        await runtime.broker.start()
        await projection.start(runtime.broker.config.connection_state.stream)
        notifier.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(projection.caught_up.wait(), CATCH_UP_SECONDS)
        runtime.mark_ready()
        runtime.start_heartbeats()
        log.info(
            "serving: %d events replayed, %d token(s), reads %s",
            projection.applied["events"],
            len(tokens),
            "need a token" if settings.reads_need_token() else "open",
        )
        try:
            yield
        finally:
            runtime.mark_ready(False)
            await runtime.stop_heartbeats()
            await notifier.stop()
            await projection.stop()
            await runtime.broker.stop()

    app = FastAPI(
        title="Lifeboat",
        description="High availability and disaster recovery for PostgreSQL clusters. "
        "Send `Authorization: Bearer <token>`; errors are application/problem+json.",
        version="0.2.0",
        lifespan=lifespan,
    )
    problems.install(app)
    Gateway(settings=settings, runtime=runtime, projection=projection, tokens=tokens).attach(app)
    app.state.notifier = notifier
    routers = (health, clusters, history, operations, maintenance, exposure, events)
    for module in (*routers, backups, files):
        app.include_router(module.router)

    @app.get(
        "/metrics",
        tags=["metrics"],
        response_class=Response,
        responses=problems.responses(401, 403),
    )
    async def metrics(gw: GatewayDep, _: Reader) -> Response:
        """Prometheus metrics: nodes, lag, failovers, backups, WAL archive, breakers, HTTP."""
        return Response(await gw.runtime.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/auth/whoami", tags=["auth"], responses=problems.responses(401, 403))
    async def whoami(who: Reader) -> WhoAmI:
        """Who the token says you are (anonymous when reads are open and none was sent)."""
        role = who.role.name.lower()
        assert role in ("read", "operate", "admin")
        return WhoAmI(name=who.name, role=role, authenticated=who.authenticated)

    app.add_middleware(ClusterStatusFastPath, gateway=lambda: app.state.gateway)
    app.add_middleware(HttpLatency, registry=runtime.metrics.registry)
    return app
