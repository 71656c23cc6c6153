"""The gateway's `/metrics`: the system as Prometheus sees it, read from the projection at
scrape time (nothing is counted twice, a restarted gateway counts from the history), plus
the gateway's own HTTP latency. Registered on the runtime's `ServiceMetrics` registry, so
`/metrics` also carries the breakers every service exports."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lifeboat.common.clusters import ClustersFile
from lifeboat.common.events import (
    BackupCompleted,
    FailoverKind,
    FailoverOutcome,
    NodeFenced,
    Role,
    WalStatus,
)
from lifeboat.gateway.projection import Projection

# Every metric this module exports, for the alert rules' test.
NAMES = (
    "lifeboat_node_up",
    "lifeboat_node_role",
    "lifeboat_replication_lag_bytes",
    "lifeboat_replication_lag_seconds",
    "lifeboat_failovers_total",
    "lifeboat_failover_last_duration_seconds",
    "lifeboat_fences_total",
    "lifeboat_backup_last_success_age_seconds",
    "lifeboat_backup_last_size_bytes",
    "lifeboat_backup_last_duration_seconds",
    "lifeboat_wal_archive_lag_seconds",
    "lifeboat_wal_archive_lag_bytes",
    "lifeboat_filesync_last_sync_age_seconds",
    "lifeboat_cluster_paused",
    "lifeboat_event_consumer_lag_seconds",
    "lifeboat_events_applied_total",
    "lifeboat_operations",
    "lifeboat_http_request_duration_seconds",
)


class ProjectionCollector(Collector):
    def __init__(self, projection: Projection, clusters: Callable[[], ClustersFile]) -> None:
        self.p = projection
        self.clusters = clusters

    def collect(self) -> Iterator[Metric]:
        p, now = self.p, datetime.now(UTC)
        up = GaugeMetricFamily(
            "lifeboat_node_up",
            "1 when a fresh report finds the node reachable",
            labels=["cluster", "node"],
        )
        role = GaugeMetricFamily(
            "lifeboat_node_role",
            "1 for the node's current role",
            labels=["cluster", "node", "role"],
        )
        lag_b = GaugeMetricFamily(
            "lifeboat_replication_lag_bytes",
            "Standby lag behind its primary",
            labels=["cluster", "node"],
        )
        lag_s = GaugeMetricFamily(
            "lifeboat_replication_lag_seconds", "Standby replay lag", labels=["cluster", "node"]
        )
        paused = GaugeMetricFamily(
            "lifeboat_cluster_paused", "1 while automatic failover is off", labels=["cluster"]
        )
        for spec in self.clusters().clusters:
            state = p.maintenance.get(spec.name)
            paused.add_metric([spec.name], 1 if state and state.paused else 0)
            for node in spec.nodes:
                report = p.reports.latest(spec.name, node.name, now)
                labels = [spec.name, node.name]
                up.add_metric(labels, 1 if report and report.reachable else 0)
                r = report.role if report else Role.UNKNOWN
                for name in Role:
                    role.add_metric([*labels, name.value], 1 if r is name else 0)
                if report and report.lag_bytes is not None:
                    lag_b.add_metric(labels, report.lag_bytes)
                if report and report.lag_seconds is not None:
                    lag_s.add_metric(labels, report.lag_seconds)
        yield from (up, role, lag_b, lag_s, paused)

        # Every configured cluster's counters from 0: Prometheus' increase() cannot see the
        # first failover or fence of a series that appears at 1.
        configured = [spec.name for spec in self.clusters().clusters]
        failovers: Counter[tuple[str, str]] = Counter(
            {(cluster, kind.value): 0 for cluster in configured for kind in FailoverKind}
        )
        fences: Counter[str] = Counter(dict.fromkeys(configured, 0))
        last_duration: dict[str, float] = {}
        for stored in p.events:
            e = stored.event
            if isinstance(e, FailoverOutcome):
                failovers[(e.cluster, e.kind.value)] += 1
                last_duration[e.cluster] = e.total_seconds
            elif isinstance(e, NodeFenced):
                fences[e.cluster] += 1
        total = CounterMetricFamily(
            "lifeboat_failovers", "Failovers and switchovers completed", labels=["cluster", "kind"]
        )
        for (cluster, kind), n in sorted(failovers.items()):
            total.add_metric([cluster, kind], n)
        duration = GaugeMetricFamily(
            "lifeboat_failover_last_duration_seconds",
            "Duration of the last failover or switchover",
            labels=["cluster"],
        )
        for cluster, seconds in sorted(last_duration.items()):
            duration.add_metric([cluster], seconds)
        fenced = CounterMetricFamily("lifeboat_fences", "Nodes fenced", labels=["cluster"])
        for cluster, n in sorted(fences.items()):
            fenced.add_metric([cluster], n)
        yield from (total, duration, fenced)

        age = GaugeMetricFamily(
            "lifeboat_backup_last_success_age_seconds",
            "Seconds since the last completed backup",
            labels=["cluster", "kind"],
        )
        size = GaugeMetricFamily(
            "lifeboat_backup_last_size_bytes", "Size of the last backup", labels=["cluster", "kind"]
        )
        took = GaugeMetricFamily(
            "lifeboat_backup_last_duration_seconds",
            "Duration of the last backup",
            labels=["cluster", "kind"],
        )
        newest: dict[tuple[str, str], BackupCompleted] = {}
        for stored in p.events:
            if isinstance(stored.event, BackupCompleted):
                newest[(stored.event.cluster, stored.event.kind.value)] = stored.event
        for (cluster, kind), b in sorted(newest.items()):
            age.add_metric([cluster, kind], (now - b.occurred_at).total_seconds())
            size.add_metric([cluster, kind], b.size_bytes)
            took.add_metric([cluster, kind], b.duration_seconds)
        yield from (age, size, took)

        wal_s = GaugeMetricFamily(
            "lifeboat_wal_archive_lag_seconds",
            "Age of the oldest WAL not yet in S3 (the RPO from the archive)",
            labels=["cluster"],
        )
        wal_b = GaugeMetricFamily(
            "lifeboat_wal_archive_lag_bytes", "WAL not yet in S3", labels=["cluster"]
        )
        files = GaugeMetricFamily(
            "lifeboat_filesync_last_sync_age_seconds",
            "Seconds since a file set was last synced",
            labels=["cluster", "fileset"],
        )
        for spec in self.clusters().clusters:
            wal = p.newest("wal.status", spec.name)
            if isinstance(wal, WalStatus):
                if wal.lag_seconds is not None:
                    wal_s.add_metric([spec.name], wal.lag_seconds)
                if wal.lag_bytes is not None:
                    wal_b.add_metric([spec.name], wal.lag_bytes)
            for fileset, e in sorted(p.newest_of("file.synced", spec.name).items()):
                files.add_metric([spec.name, fileset], (now - e.occurred_at).total_seconds())
        yield from (wal_s, wal_b, files)

        lag = GaugeMetricFamily(
            "lifeboat_event_consumer_lag_seconds",
            "Age of the last event the gateway's projection applied, per stream",
            labels=["stream"],
        )
        applied = CounterMetricFamily(
            "lifeboat_events_applied", "Events the projection applied", labels=["stream"]
        )
        for stream, seconds in p.lag_seconds.items():
            lag.add_metric([stream], seconds)
            applied.add_metric([stream], p.applied[stream])
        ops = GaugeMetricFamily(
            "lifeboat_operations", "Operations by state", labels=["kind", "state"]
        )
        states: Counter[tuple[str, str]] = Counter((o.kind, o.state) for o in p.operations.values())
        for (op_kind, op_state), n in sorted(states.items()):
            ops.add_metric([op_kind, op_state], n)
        yield from (lag, applied, ops)


class HttpLatency:
    """ASGI middleware timing every request by route template (not the raw path)."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.histogram = Histogram(
            "lifeboat_http_request_duration_seconds",
            "Gateway HTTP request latency",
            ["method", "route", "status"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            if path != "/events":  # a stream: its duration is the subscription's
                elapsed = time.perf_counter() - started
                self.histogram.labels(scope["method"], path, str(status)).observe(elapsed)
