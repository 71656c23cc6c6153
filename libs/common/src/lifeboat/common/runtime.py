"""What every Lifeboat service runs on: NATS connection, event stream, health, breakers, HTTP.

A service builds one `ServiceRuntime`, registers its consumers and health checks on it, and
hands `asgi_app()` to `serve()`. The HTTP side answers Kubernetes-style probes and the
gateway's aggregation: `/health/live`, `/health/ready`, `/health`, `/health/circuit-breakers`.
SIGTERM/SIGINT stop the HTTP server, drain in-flight messages and close NATS, then exit 0.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from contextlib import contextmanager

import uvicorn
from faststream.asgi import AsgiFastStream, AsgiResponse, AsyncAPIRoute, get
from faststream.asgi.response import JSONResponse
from faststream.asgi.types import ASGIApp
from faststream.nats import NatsBroker
from nats.errors import Error as NatsError
from nats.errors import NoServersError
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from lifeboat.common.breakers import Breakers
from lifeboat.common.bus import (
    EventPublisher,
    ensure_streams,
    heartbeat_stream_config,
    make_broker,
    stream_config,
    wait_for_leader,
)
from lifeboat.common.events import ServiceHeartbeat, Source
from lifeboat.common.health import (
    BreakerReport,
    Check,
    ComponentHealth,
    HealthRegistry,
    HealthReport,
    Liveness,
    Readiness,
    Status,
    component,
)
from lifeboat.common.kv import ensure_buckets
from lifeboat.common.log import configure_logging
from lifeboat.common.metrics import CONTENT_TYPE, ServiceMetrics
from lifeboat.common.settings import ServiceSettings
from lifeboat.common.subjects import HEARTBEAT_STREAM_NAME, STREAM_NAME

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]


class ServiceRuntime:
    def __init__(
        self,
        service: str,
        settings: ServiceSettings,
        *,
        ready_on: Collection[str] | None = None,
    ) -> None:
        """`ready_on`: the health checks readiness depends on (all of them unless given)."""
        self.service = service
        self.ready_on = ready_on
        self.settings = settings
        self.source = Source(service=service, instance=settings.instance_id)
        self.broker: NatsBroker = make_broker(
            settings.nats_url,
            f"lifeboat-{service}-{settings.instance_id}",
            graceful_timeout=settings.shutdown_grace_seconds,
        )
        self.publisher = EventPublisher(self.broker, self.source)
        self.breakers = Breakers(
            failure_threshold=settings.breaker_failure_threshold,
            reset_timeout=settings.breaker_reset_seconds,
        )
        self.health = HealthRegistry(service, settings.instance_id)
        self.metrics = ServiceMetrics(service, settings.instance_id, self.breakers)
        self.health.add("nats", self.check_nats)
        self._ready = False
        self._heartbeats: asyncio.Task[None] | None = None
        self._started = time.monotonic()

    async def connect(self, *, give_up_after: float = 60.0) -> None:
        """Connect to NATS (retrying while it starts) and declare the event stream."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((NoServersError, OSError, TimeoutError)),
            wait=wait_exponential(multiplier=0.2, max=3),
            stop=stop_after_delay(give_up_after),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        ):
            with attempt:
                await self.broker.connect()
        await self.declare(give_up_after=give_up_after)
        self.broker.context.set_global("lifeboat_source", self.source)
        log.info("connected to NATS at %s", self.settings.safe_nats_url())

    async def declare(self, *, give_up_after: float = 60.0) -> None:
        """The streams and KV buckets, once connected. A cluster that just formed (or is
        electing a leader) may time out or refuse a stream or bucket update for a while:
        declaring is retried like connecting."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((TimeoutError, NatsError)),
            wait=wait_exponential(multiplier=0.2, max=3),
            stop=stop_after_delay(give_up_after),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        ):
            with attempt:
                await self._declare()

    async def _declare(self) -> None:
        """The streams and KV buckets, at this deployment's replicas, each with a leader."""
        s = self.settings
        js = self.broker.config.connection_state.stream
        await ensure_streams(
            js,
            stream_config(
                max_age_seconds=s.events_max_age_seconds,
                max_bytes=s.events_max_bytes,
                duplicate_window_seconds=s.events_duplicate_window_seconds,
                replicas=s.nats_replicas,
            ),
            heartbeat_stream_config(
                max_age_seconds=s.heartbeats_max_age_seconds,
                max_bytes=s.heartbeats_max_bytes,
                replicas=s.nats_replicas,
            ),
        )
        streams = await ensure_buckets(js, replicas=s.nats_replicas)
        for stream in (STREAM_NAME, HEARTBEAT_STREAM_NAME, *streams):
            await wait_for_leader(js, stream)

    def mark_ready(self, ready: bool = True) -> None:
        self._ready = ready

    def start_heartbeats(self) -> None:
        """Publish `service.heartbeat` every `service_heartbeat_seconds` until stopped."""
        if self._heartbeats is None:
            self._heartbeats = asyncio.create_task(self._beat())

    async def stop_heartbeats(self) -> None:
        task, self._heartbeats = self._heartbeats, None
        if task is not None:
            task.cancel()
            # Bounded: a beat stuck in a health check (a thread waiting on S3) must not
            # hold up a clean stop.
            await asyncio.wait([task], timeout=2)

    async def _beat(self) -> None:
        try:
            version = importlib.metadata.version(f"lifeboat-{self.service}")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        interval = self.settings.service_heartbeat_seconds
        while True:
            try:
                ready = await self.readiness()
                breakers = {b.name: b.state.value for b in await self.breakers.snapshot()}
                await self.publisher.publish(
                    ServiceHeartbeat(
                        source=self.source,
                        service=self.service,
                        version=version,
                        ready=ready.ready,
                        message=ready.message,
                        uptime_seconds=self.liveness_seconds(),
                        interval_seconds=interval,
                        breakers=breakers,
                    )
                )
            except Exception as exc:  # NATS away: the next beat tries again
                log.debug("heartbeat not published: %s", exc)
            await asyncio.sleep(interval)

    def liveness_seconds(self) -> float:
        return round(time.monotonic() - self._started, 3)

    async def check_nats(self) -> ComponentHealth:
        conn = self.broker._connection  # None until connected
        if conn is None or not conn.is_connected:
            return component("nats", Status.UNHEALTHY, "not connected to NATS")
        async with self.breakers.guard("nats"):
            info = await self.broker.config.connection_state.stream.account_info()
        return component(
            "nats", Status.HEALTHY, "connected, JetStream available", streams=info.streams
        )

    # The four health answers, shared by `health_routes()` and any other HTTP face (the
    # gateway's FastAPI app): each model's `http_status` is the status code to answer with.

    def liveness(self) -> Liveness:
        return Liveness(service=self.service)

    async def readiness(self) -> Readiness:
        """Ready once started (until stopping) with no check in `ready_on` unhealthy."""
        report = await self.health.report(self.ready_on)
        failing = [c for c in report.components if c.status is Status.UNHEALTHY]
        ok = self._ready and not failing
        if not self._ready:
            message = "not started, or stopping"
        elif failing:
            message = "; ".join(f"{c.name}: {c.message}" for c in failing)
        else:
            message = "ready"
        return Readiness(ready=ok, status=report.status, service=self.service, message=message)

    async def health_report(self) -> HealthReport:
        return await self.health.report()

    async def breaker_report(self) -> BreakerReport:
        return BreakerReport(breakers=await self.breakers.snapshot())

    def asgi_app(
        self, *, on_startup: Sequence[Hook] = (), on_shutdown: Sequence[Hook] = ()
    ) -> AsgiFastStream:
        async def startup() -> None:
            await self.connect()
            for hook in on_startup:
                await hook()

        async def after_startup() -> None:
            self.mark_ready()
            self.start_heartbeats()

        async def shutdown() -> None:
            self.mark_ready(False)
            await self.stop_heartbeats()
            for hook in on_shutdown:
                await hook()
            log.info("stopped its work; closing NATS")

        return AsgiFastStream(
            self.broker,
            asgi_routes=self.health_routes(),
            on_startup=[startup],
            after_startup=[after_startup],
            on_shutdown=[shutdown],
            asyncapi_path=AsyncAPIRoute(
                "/docs/asyncapi", include_in_schema=False, try_it_out_path=None
            ),
            logger=logging.getLogger(f"lifeboat.{self.service}.bus"),
        )

    def health_routes(self) -> list[tuple[str, ASGIApp]]:
        @get(include_in_schema=False)
        async def live(scope: object) -> AsgiResponse:
            return JSONResponse(self.liveness().model_dump(mode="json"))

        @get(include_in_schema=False)
        async def ready(scope: object) -> AsgiResponse:
            answer = await self.readiness()
            return JSONResponse(answer.model_dump(mode="json"), answer.http_status)

        @get(include_in_schema=False)
        async def health(scope: object) -> AsgiResponse:
            report = await self.health_report()
            return JSONResponse(report.model_dump(mode="json"), report.http_status)

        @get(include_in_schema=False)
        async def breakers(scope: object) -> AsgiResponse:
            return JSONResponse((await self.breaker_report()).model_dump(mode="json"))

        @get(include_in_schema=False)
        async def metrics(scope: object) -> AsgiResponse:
            body = await self.metrics.render()
            return AsgiResponse(body, 200, headers={"content-type": CONTENT_TYPE})

        return [
            ("/metrics", metrics),
            ("/health/live", live),
            ("/health/ready", ready),
            ("/health/circuit-breakers", breakers),
            ("/health", health),
        ]


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, so a clean stop would
    look like death by signal; a Lifeboat service that stopped cleanly exits 0 instead."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def serve(app: object, settings: ServiceSettings, service: str, *, loop: str = "auto") -> None:
    """Run `app` under uvicorn until SIGTERM/SIGINT, with logs that name the service."""
    configure_logging(
        service, settings.instance_id, level=settings.log_level, fmt=settings.log_format
    )
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        lifespan="on",
        loop=loop,
    )
    server = _Server(config)
    server.run()
    if not server.started:
        raise SystemExit(3)  # startup failed; uvicorn has logged why


def cluster_file_check(settings: ServiceSettings) -> Check:
    """A health check that the cluster description loads and names at least one node."""

    async def check() -> ComponentHealth:
        clusters = settings.clusters  # raises ClusterFileError with the reason, shown as-is
        nodes = sum(len(c.nodes) for c in clusters.clusters)
        names = ", ".join(c.name for c in clusters.clusters)
        return component("clusters", Status.HEALTHY, f"{names}: {nodes} node(s)", nodes=nodes)

    return check
