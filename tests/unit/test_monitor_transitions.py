"""The monitor's transition rules, table-driven with plain data."""

from __future__ import annotations

import pytest

from lifeboat.common.events import LagLevel, Role
from lifeboat.monitor.transitions import (
    AdmissionChanged,
    CameUp,
    LagChanged,
    NodeState,
    Observed,
    RoleChanged,
    Thresholds,
    WentDown,
    lag_level,
    step,
)

T = Thresholds(failure_threshold=3, lag_warning_seconds=30, lag_critical_seconds=120)
UP_PRIMARY = Observed(reachable=True, role=Role.PRIMARY)
DOWN = Observed(reachable=False, error="connection refused")


def run(observations: list[Observed], state: NodeState | None = None) -> tuple[NodeState, list]:  # type: ignore[type-arg]
    state = state or NodeState()
    events = []
    for seen in observations:
        state, out = step(state, seen, T)
        events.extend(out)
    return state, events


@pytest.mark.parametrize(
    ("observations", "expected"),
    [
        ([UP_PRIMARY], []),
        ([UP_PRIMARY, DOWN, DOWN], []),  # two failures are not yet down
        ([UP_PRIMARY, DOWN, DOWN, DOWN], [WentDown("connection refused")]),
        ([UP_PRIMARY, DOWN, DOWN, DOWN, DOWN, DOWN], [WentDown("connection refused")]),  # once
        ([UP_PRIMARY, DOWN, DOWN, UP_PRIMARY, DOWN, DOWN], []),  # a success resets the count
        (
            [UP_PRIMARY, DOWN, DOWN, DOWN, UP_PRIMARY],
            [WentDown("connection refused"), CameUp(Role.PRIMARY)],
        ),
        (
            [Observed(True, Role.STANDBY), Observed(True, Role.PRIMARY)],
            [RoleChanged(Role.STANDBY, Role.PRIMARY)],
        ),
        # Back from down in a new role: one 'up' that carries the role, no separate change.
        (
            [Observed(True, Role.PRIMARY), DOWN, DOWN, DOWN, Observed(True, Role.STANDBY)],
            [WentDown("connection refused"), CameUp(Role.STANDBY)],
        ),
    ],
)
def test_down_up_and_role_changes(observations: list[Observed], expected: list[object]) -> None:
    assert run(observations)[1] == expected


def test_consecutive_failures_are_counted_and_reset() -> None:
    state, _ = run([DOWN, DOWN])
    assert state.consecutive_failures == 2
    state, _ = run([UP_PRIMARY], state)
    assert state.consecutive_failures == 0


@pytest.mark.parametrize(
    ("current", "lag", "expected"),
    [
        (LagLevel.OK, 0, LagLevel.OK),
        (LagLevel.OK, 29.9, LagLevel.OK),
        (LagLevel.OK, 30, LagLevel.WARNING),
        (LagLevel.OK, 500, LagLevel.CRITICAL),
        (LagLevel.WARNING, 25, LagLevel.WARNING),  # above 80 % of 30 s: stays
        (LagLevel.WARNING, 23.9, LagLevel.OK),
        (LagLevel.CRITICAL, 100, LagLevel.CRITICAL),  # above 96 s: stays
        (LagLevel.CRITICAL, 95, LagLevel.WARNING),
        (LagLevel.CRITICAL, 10, LagLevel.OK),
        (LagLevel.WARNING, 121, LagLevel.CRITICAL),
    ],
)
def test_lag_levels_with_hysteresis(current: LagLevel, lag: float, expected: LagLevel) -> None:
    assert lag_level(current, lag, T) is expected


def test_lag_events_only_on_level_changes() -> None:
    lagging = [Observed(True, Role.STANDBY, lag_seconds=s, lag_bytes=10) for s in (0, 40, 45, 26)]
    _, events = run([*lagging, Observed(True, Role.STANDBY, lag_seconds=1, lag_bytes=0)])
    assert events == [
        LagChanged(LagLevel.WARNING, 40, 10),
        LagChanged(LagLevel.OK, 1, 0),
    ]


def test_unknown_lag_keeps_the_level_and_a_primary_has_none() -> None:
    state, _ = run([Observed(True, Role.STANDBY, lag_seconds=200)])
    assert state.lag_level is LagLevel.CRITICAL
    state, events = run([Observed(True, Role.STANDBY, lag_seconds=None)], state)
    assert state.lag_level is LagLevel.CRITICAL
    assert events == []
    state, events = run([Observed(True, Role.PRIMARY)], state)
    assert state.lag_level is LagLevel.OK
    assert RoleChanged(Role.STANDBY, Role.PRIMARY) in events


def test_read_only_probes_are_counted_and_reset() -> None:
    state = NodeState()
    for _ in range(3):
        state, _ = step(state, Observed(True, Role.STANDBY, writable=False), Thresholds())
    assert state.consecutive_read_only == 3
    state, _ = step(state, Observed(True, Role.PRIMARY, writable=True), Thresholds())
    assert state.consecutive_read_only == 0


def test_a_refusal_of_new_connections_is_an_alert_once_and_never_down() -> None:
    full = Observed(True, Role.PRIMARY, refusing_connections="sorry, too many clients already")
    state, events = run([UP_PRIMARY, full, full, full, full, UP_PRIMARY])
    assert events == [
        AdmissionChanged("sorry, too many clients already"),
        AdmissionChanged(None),
    ]
    assert not state.down
    assert not state.refusing
