"""What the gateway has heard from the monitors: the latest report of each on each node."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from lifeboat.common.events import NodeHealth, Role


class Observed:
    def __init__(self, max_age_seconds: float = 5.0) -> None:
        self.max_age_seconds = max_age_seconds
        self._reports: dict[tuple[str, str, str], NodeHealth] = {}

    def add(self, report: NodeHealth) -> None:
        key = (report.cluster, report.node, report.source.instance)
        known = self._reports.get(key)
        if known is None:
            self._forget_silent(report.occurred_at)
        if known is None or known.occurred_at <= report.occurred_at:
            self._reports[key] = report

    def _forget_silent(self, now: datetime) -> None:
        """Monitors come and go (a restart may bring a new instance id)."""
        horizon = now - timedelta(seconds=10 * self.max_age_seconds)
        self._reports = {k: r for k, r in self._reports.items() if r.occurred_at >= horizon}

    def latest(self, cluster: str, node: str) -> NodeHealth | None:
        """The freshest report on the node, if any monitor sent one recently."""
        now = datetime.now(UTC)
        fresh = [
            r
            for (c, n, _), r in self._reports.items()
            if c == cluster
            and n == node
            and (now - r.occurred_at).total_seconds() <= self.max_age_seconds
        ]
        return max(fresh, key=lambda r: r.occurred_at, default=None)

    def is_writable_primary(self, cluster: str, node: str) -> bool:
        report = self.latest(cluster, node)
        return bool(report and report.reachable and report.role is Role.PRIMARY and report.writable)

    def is_streaming_standby(self, cluster: str, node: str) -> bool:
        report = self.latest(cluster, node)
        return bool(
            report
            and report.reachable
            and report.role is Role.STANDBY
            and report.wal_receiver == "streaming"
        )
