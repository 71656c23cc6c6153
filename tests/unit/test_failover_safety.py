"""Failover safety in the decision: quorum is a majority of the configured monitors, not
acting is said, and a resumed failover fences the old primary first."""

from __future__ import annotations

from dataclasses import replace

from lifeboat.common.decision import Publish
from lifeboat.common.events import FailoverHeld, PhaseTiming
from lifeboat.failover.commands import Fence, Promote, WriteTopology
from lifeboat.failover.decide import Policy, decide
from tests.unit.test_failover_decide import AFTER, OP, down, observe, primary, rep, standby

THREE = Policy(monitors=3)


def held(decision: object) -> list[FailoverHeld]:
    commands = getattr(decision, "commands", ())
    return [
        c.event for c in commands if isinstance(c, Publish) and isinstance(c.event, FailoverHeld)
    ]


def test_one_of_three_configured_monitors_cannot_fail_the_primary_alone() -> None:
    """The two others are silent (cut off, or dead): one monitor is a minority."""
    decision = decide(
        observe(down("node1", "m1"), standby("node2"), standby("node3"), policy=THREE)
    )
    assert not any(isinstance(c, (Promote, WriteTopology, Fence)) for c in decision.commands)
    (event,) = held(decision)
    assert event.reason == "1 of 3 monitors see node1 down (1 reporting): no majority, keeping it"


def test_two_of_three_configured_monitors_fail_the_primary() -> None:
    decision = decide(
        observe(
            down("node1", "m1"),
            down("node1", "m2"),
            standby("node2"),
            standby("node3"),
            policy=THREE,
        )
    )
    assert Promote("node2", 5) in decision.commands


def test_more_monitors_reporting_than_configured_never_lower_the_bar() -> None:
    """A restarted monitor reports under a new id next to its stale self: 1 of 2 is no majority."""
    decision = decide(
        observe(
            down("node1", "m1"),
            primary("m1-restarted"),
            standby("node2"),
            standby("node3"),
            policy=Policy(monitors=1),
        )
    )
    assert not any(isinstance(c, Promote) for c in decision.commands)


def test_no_fresh_report_is_said_in_a_held_event() -> None:
    """Monitors cut off from NATS: nothing happens, and a held event says why."""
    stale = rep("node1", reachable=False, consecutive_failures=9, age=10)
    decision = decide(observe(stale, policy=THREE))
    assert not any(isinstance(c, (Promote, WriteTopology, Fence)) for c in decision.commands)
    (event,) = held(decision)
    assert event.reason == "no monitor reported on node1 in the last 3s"
    assert event.primary == "node1"


def test_the_held_event_is_the_same_event_when_re_decided() -> None:
    """Re-deciding publishes the same id, so JetStream stores one per duplicate window."""
    obs = observe(down("node1", "m1"), standby("node2"), policy=THREE)
    later = replace(obs, source=obs.source.model_copy(update={"instance": "other"}))
    assert held(decide(obs))[0].event_id == held(decide(later))[0].event_id


def test_a_resumed_failover_whose_fence_was_recorded_only_promotes() -> None:
    fenced = OP.model_copy(update={"phases": (PhaseTiming(phase="fence", seconds=0.2),)})
    topology = AFTER.model_copy(update={"operation": fenced})
    decision = decide(observe(down("node1"), standby("node2"), standby("node3"), topology=topology))
    assert decision.commands == (Promote("node2", 5),)


def test_a_resumed_switchover_does_not_fence_the_handed_over_primary() -> None:
    """Its old primary stopped cleanly and may be rejoining already: killing it would undo it."""
    handed = OP.model_copy(update={"phases": (PhaseTiming(phase="handover", seconds=0.4),)})
    topology = AFTER.model_copy(update={"operation": handed})
    decision = decide(
        observe(standby("node1"), standby("node2"), standby("node3"), topology=topology)
    )
    assert not any(isinstance(c, Fence) for c in decision.commands)
