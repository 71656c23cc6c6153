"""ReportBook: the newest report per (cluster, node, monitor), fresh ones, silent monitors
forgotten; every case on a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lifeboat.common.events import NodeHealth, Role, Source
from lifeboat.common.reports import ReportBook

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def report(
    node: str = "node1",
    monitor: str = "m1",
    at: float = 0.0,
    *,
    cluster: str = "main",
    role: Role = Role.PRIMARY,
) -> NodeHealth:
    return NodeHealth(
        cluster=cluster,
        node=node,
        source=Source(service="monitor", instance=monitor),
        occurred_at=T0 + timedelta(seconds=at),
        reachable=True,
        role=role,
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_keeps_the_newest_report_of_each_monitor_and_node() -> None:
    book = ReportBook(max_age_seconds=3)
    assert book.add(report(at=1))
    assert book.add(report(at=2, role=Role.STANDBY))
    assert not book.add(report(at=1.5))  # late and older: never replaces a newer one
    assert book.add(report(at=2))  # same time: the later arrival wins
    assert book.add(report(monitor="m2", at=1))
    assert book.add(report(node="node2", at=1))
    assert book.add(report(cluster="other", at=1))
    assert len(book) == 4
    assert {(r.cluster, r.node, r.source.instance) for r in book.reports()} == {
        ("main", "node1", "m1"),
        ("main", "node1", "m2"),
        ("main", "node2", "m1"),
        ("other", "node1", "m1"),
    }


def test_fresh_is_bounded_by_max_age_and_filters_by_cluster_and_node() -> None:
    book = ReportBook(max_age_seconds=3)
    book.add(report(monitor="m1", at=0))
    book.add(report(monitor="m2", at=2))
    book.add(report(node="node2", at=2))
    book.add(report(cluster="other", at=2))
    assert len(book.fresh(at(3))) == 4  # exactly max_age old still counts
    assert {r.source.instance for r in book.fresh(at(3.5), node="node1", cluster="main")} == {"m2"}
    assert len(book.fresh(at(3.5), cluster="main")) == 2
    assert len(book.fresh(at(3.5), max_age=10)) == 4  # the caller's own bound
    assert book.fresh(at(10)) == ()
    assert len(book) == 4  # reading forgets nothing


def test_latest_is_the_newest_fresh_report_from_any_monitor() -> None:
    book = ReportBook(max_age_seconds=3)
    book.add(report(monitor="m1", at=1, role=Role.PRIMARY))
    book.add(report(monitor="m2", at=2, role=Role.STANDBY))
    latest = book.latest("main", "node1", at(3))
    assert latest is not None
    assert latest.source.instance == "m2"
    assert book.latest("main", "node1", at(5.5)) is None
    assert book.latest("main", "node2", at(3)) is None
    assert book.latest("other", "node1", at(3)) is None
    found = book.latest("main", "node1", at(5.5), max_age=5)
    assert found is not None
    assert found.source.instance == "m2"


def test_silent_monitors_are_forgotten_after_the_horizon() -> None:
    book = ReportBook(max_age_seconds=1, forget_after_seconds=5)
    book.add(report(monitor="old", at=0))
    book.add(report(monitor="live", at=4))
    book.forget_silent(at(5))
    assert len(book) == 2  # exactly at the horizon: kept
    book.forget_silent(at(6))
    assert [r.source.instance for r in book.reports()] == ["live"]


def test_a_new_monitor_reporting_forgets_the_silent_ones() -> None:
    """No timer needed: a restarted monitor (new instance id) clears out its old self."""
    book = ReportBook(max_age_seconds=1)  # forgets after 10 s by default
    book.add(report(monitor="monitor-1234", at=0))
    book.add(report(monitor="monitor-1234", at=3))
    book.add(report(monitor="monitor-5678", at=12))
    assert len(book) == 2  # the old one's last report is 9 s old: kept
    book.add(report(monitor="monitor-9999", at=14))
    assert {r.source.instance for r in book.reports()} == {"monitor-5678", "monitor-9999"}


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_age_seconds"):
        ReportBook(max_age_seconds=0)
    with pytest.raises(ValueError, match="forget_after_seconds"):
        ReportBook(max_age_seconds=3, forget_after_seconds=2)
    assert ReportBook(max_age_seconds=3).forget_after_seconds == 30
