"""The failover decision is a pure function: the same observation, the same decision.

A replacement leader re-deciding a step must publish events with the same ids (so that
JetStream's de-duplication drops the repeat) and write the same topology.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from lifeboat.common.decision import Publish
from lifeboat.common.events import FailoverRequested, Source
from lifeboat.failover.decide import Observation, decide
from tests.unit.test_failover_decide import (
    NOW,
    OP,
    TOPO,
    down,
    observe,
    primary,
    standby,
)

OTHER_LEADER = Source(service="failover", instance="failover-2")


def cases() -> dict[str, Observation]:
    healthy = (primary(), standby("node2"), standby("node3"))
    failed = (down("node1"), standby("node2"), standby("node3", lsn="0/4000000"))
    request = FailoverRequested(
        cluster="main", source=OTHER_LEADER, target="node2", reason="test", requested_by="t"
    )
    return {
        "bootstrap": observe(*healthy, topology=None),
        "healthy": observe(*healthy),
        "suspect": observe(down("node1", "m1"), primary("m2"), standby("node2"), standby("node3")),
        "failover": observe(*failed),
        "resumed": observe(
            down("node1"), standby("node2"), topology=TOPO.promoted("node2", OP, at=NOW)
        ),
        "request": replace(observe(*healthy), request=request),
        "sync-change": observe(primary(sync=""), standby("node2"), standby("node3")),
    }


@pytest.mark.parametrize("case", sorted(cases()))
def test_deciding_twice_gives_the_same_decision(case: str) -> None:
    obs = cases()[case]
    assert decide(obs) == decide(obs)


@pytest.mark.parametrize("case", sorted(cases()))
def test_another_leader_publishes_the_same_event_ids(case: str) -> None:
    """Event ids depend on what the event says, not on which instance decides."""
    obs = cases()[case]
    mine = [c.event for c in decide(obs).commands if isinstance(c, Publish)]
    theirs = [
        c.event
        for c in decide(replace(obs, source=OTHER_LEADER)).commands
        if isinstance(c, Publish)
    ]
    assert [e.event_id for e in mine] == [e.event_id for e in theirs]
    assert all(e.occurred_at == obs.now for e in mine)


def test_failover_started_has_one_id_per_epoch_and_candidate() -> None:
    """Re-deciding a failover a moment later is the same step: the same `failover.started`."""
    obs = cases()["failover"]
    later = replace(obs, now=obs.now + timedelta(milliseconds=400))
    first = [c.event for c in decide(obs).commands if isinstance(c, Publish)]
    again = [c.event for c in decide(later).commands if isinstance(c, Publish)]
    assert first
    assert [e.type for e in first] == [e.type for e in again]
    started = [e for e in first if e.type == "failover.started"]
    assert started, [e.type for e in first]
    assert started[0].event_id == next(e for e in again if e.type == "failover.started").event_id
