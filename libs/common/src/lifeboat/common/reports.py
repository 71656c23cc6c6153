"""The latest report of each monitor on each node, and which of them are fresh.

Every monitor publishes one `NodeHealth` per node per probe round. Whoever acts on them (the
failover service deciding, the gateway answering role checks) needs only the newest report of
each monitor about each node, and only the reports recent enough to trust. A `ReportBook`
keeps exactly that:

- `add(report)` keeps it when it is the newest from that monitor instance about that node
  (reports may arrive out of order; an older one never replaces a newer one);
- monitors come and go (a restarted monitor may have a new instance id), so reports older
  than `forget_after_seconds` are dropped: by `forget_silent(now)`, and whenever a monitor
  instance not seen before reports (with that report's time as now), so the book stays
  bounded without a timer;
- `fresh(now, max_age)` and `latest(cluster, node, now, max_age)` read it. Every accessor
  takes `now` explicitly, so the book is a plain value to test with a fixed clock.

    book = ReportBook(max_age_seconds=3)
    book.add(report)
    book.latest("main", "node1", now)         # the freshest report on node1, or None
    book.fresh(now, cluster="main")           # every monitor's fresh report on every node
"""

from __future__ import annotations

from datetime import datetime, timedelta

from lifeboat.common.events import NodeHealth

# (cluster, node, monitor instance)
ReportKey = tuple[str, str, str]


class ReportBook:
    """The newest `NodeHealth` of each (cluster, node, monitor instance)."""

    def __init__(
        self, max_age_seconds: float = 3.0, forget_after_seconds: float | None = None
    ) -> None:
        """`max_age_seconds`: how old a report may be and still count as fresh (the default
        of the accessors). `forget_after_seconds`: when a silent monitor's reports are
        dropped; ten times `max_age_seconds` unless given."""
        if max_age_seconds <= 0:
            raise ValueError("max_age_seconds must be positive")
        self.max_age_seconds = max_age_seconds
        self.forget_after_seconds = (
            10 * max_age_seconds if forget_after_seconds is None else forget_after_seconds
        )
        if self.forget_after_seconds < max_age_seconds:
            raise ValueError("forget_after_seconds must be at least max_age_seconds")
        self._reports: dict[ReportKey, NodeHealth] = {}

    @staticmethod
    def key(report: NodeHealth) -> ReportKey:
        return (report.cluster, report.node, report.source.instance)

    def add(self, report: NodeHealth) -> bool:
        """Keep `report` if it is the newest of its monitor about its node; True if kept."""
        key = self.key(report)
        known = self._reports.get(key)
        if known is None:
            self.forget_silent(report.occurred_at)
        elif known.occurred_at > report.occurred_at:
            return False
        self._reports[key] = report
        return True

    def forget_silent(self, now: datetime) -> None:
        """Drop every report older than `forget_after_seconds` at `now`."""
        horizon = now - timedelta(seconds=self.forget_after_seconds)
        self._reports = {k: r for k, r in self._reports.items() if r.occurred_at >= horizon}

    def reports(self) -> tuple[NodeHealth, ...]:
        """Every report kept, fresh or not (one per monitor and node)."""
        return tuple(self._reports.values())

    def fresh(
        self,
        now: datetime,
        max_age: float | None = None,
        *,
        cluster: str | None = None,
        node: str | None = None,
    ) -> tuple[NodeHealth, ...]:
        """The kept reports at most `max_age` seconds old at `now` (the book's `max_age_seconds`
        unless given), optionally only those about `cluster` and `node`."""
        limit = self.max_age_seconds if max_age is None else max_age
        return tuple(
            r
            for (c, n, _), r in self._reports.items()
            if (cluster is None or c == cluster)
            and (node is None or n == node)
            and (now - r.occurred_at).total_seconds() <= limit
        )

    def latest(
        self, cluster: str, node: str, now: datetime, max_age: float | None = None
    ) -> NodeHealth | None:
        """The newest fresh report on `node` from any monitor, or None if none is fresh."""
        found = self.fresh(now, max_age, cluster=cluster, node=node)
        return max(found, key=lambda r: r.occurred_at, default=None)

    def __len__(self) -> int:
        return len(self._reports)
