"""The gateway's FastAPI app: the REST API's routers (`routes/`) wired to one runtime.

`build_app(settings)` makes the runtime (NATS, health checks, breakers), the book of monitor
reports the role checks read, and the app that serves them; the lifespan connects to NATS
and starts the listener before the first request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from lifeboat.common import subjects
from lifeboat.common.bus import listen
from lifeboat.common.events import NodeHealth
from lifeboat.common.reports import ReportBook
from lifeboat.common.runtime import ServiceRuntime
from lifeboat.gateway.checks import postgres_node_check, service_check
from lifeboat.gateway.deps import Gateway
from lifeboat.gateway.routes import clusters, health, history, operations
from lifeboat.gateway.settings import GatewaySettings
from lifeboat.objstore.health import s3_check

SERVICE = "gateway"
# How old a monitor's report may be for the role checks to believe it.
REPORT_MAX_AGE_SECONDS = 5.0


def build_runtime(settings: GatewaySettings) -> ServiceRuntime:
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
    return runtime


def build_app(settings: GatewaySettings) -> FastAPI:
    runtime = build_runtime(settings)
    reports = ReportBook(max_age_seconds=REPORT_MAX_AGE_SECONDS)

    @listen(runtime.broker, subjects.NODE_HEALTH, title="gateway-node-health")
    async def on_health(report: NodeHealth) -> None:
        reports.add(report)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.connect()
        await runtime.broker.start()
        runtime.mark_ready()
        try:
            yield
        finally:
            runtime.mark_ready(False)
            await runtime.broker.stop()

    app = FastAPI(
        title="Lifeboat",
        description="High availability and disaster recovery for PostgreSQL clusters",
        version="0.1.0",
        lifespan=lifespan,
    )
    Gateway(settings=settings, runtime=runtime, reports=reports).attach(app)
    for router in (health.router, clusters.router, history.router, operations.router):
        app.include_router(router)
    return app
