"""When a leader is cut off from PostgreSQL (guarantee 7): its actions fail on nodes the
monitors reach. Plain data in, the verdict out."""

from __future__ import annotations

import pytest

from lifeboat.common.decision import Outcome, Publish, Refused
from lifeboat.common.events import FailoverHeld, Source
from lifeboat.failover.commands import Command, Fence, Promote, SetSynchronous, WriteTopology
from lifeboat.failover.cutoff import failed_on_reachable
from lifeboat.failover.nodes import CandidateBehindError
from tests.unit.test_failover_decide import TOPO

HELD = FailoverHeld(
    cluster="main", source=Source(service="failover", instance="f"), primary=None, reason="x"
)
SYNC = SetSynchronous("node1", ("node2",), 4)
ALL = frozenset({"node1", "node2", "node3"})


def failed(command: Command, error: Exception | None = None) -> Outcome[Command]:
    return Outcome(command, False, 0.1, "password authentication failed", error or OSError())


def worked(command: Command) -> Outcome[Command]:
    return Outcome(command, True, 0.1, "done")


@pytest.mark.parametrize(
    ("outcomes", "reachable", "expected"),
    [
        ([], ALL, None),  # nothing tried
        ([worked(WriteTopology(TOPO)), worked(Publish(HELD))], ALL, None),  # KV, events only
        ([failed(SYNC)], ALL, ("node1",)),  # the monitors reach node1; the leader does not
        ([failed(SYNC)], frozenset({"node2"}), None),  # node1 is down for everyone
        ([failed(Fence("node1", 4, "x")), worked(Promote("node2", 5))], ALL, None),
        ([failed(Promote("node2", 5), CandidateBehindError("behind"))], ALL, None),  # an answer
        ([failed(Fence("node1", 3, "x"), Refused("stale epoch"))], ALL, None),  # a guard's no
    ],
)
def test_a_leader_is_cut_off_only_when_it_fails_where_the_monitors_succeed(
    outcomes: list[Outcome[Command]], reachable: frozenset[str], expected: tuple[str, ...] | None
) -> None:
    assert failed_on_reachable(outcomes, reachable) == expected
