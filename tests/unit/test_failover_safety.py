"""Failover safety in the decision: quorum is a majority of the configured monitors, not
acting is said, and a resumed failover fences the old primary first."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID, uuid4

import pytest

from lifeboat.common.clusters import ClusterSpec
from lifeboat.common.decision import Publish, stamped
from lifeboat.common.events import (
    FailoverCompleted,
    FailoverFailed,
    FailoverHeld,
    FailoverKind,
    FailoverRequested,
    FailoverStarted,
    MaintenanceState,
    NodeHealth,
    NodeRejoinRequested,
    PhaseTiming,
    ReplicaState,
    SwitchoverFailed,
    SwitchoverRequested,
    SyncChanged,
)
from lifeboat.common.runtime import ServiceRuntime
from lifeboat.common.state import Topology
from lifeboat.failover.commands import (
    Decision,
    Detach,
    Fence,
    Promote,
    Rejoin,
    Repoint,
    StartReadOnly,
    WriteTopology,
)
from lifeboat.failover.decide import Policy, decide
from lifeboat.failover.service import ClusterLoop, _sync_change, run_forever
from lifeboat.failover.settings import FailoverSettings
from tests.unit.test_failover_decide import (
    AFTER,
    CLUSTER,
    HEALTHY,
    LOCAL,
    ME,
    NOW,
    OP,
    TOPO,
    down,
    observe,
    primary,
    promotions,
    published,
    rep,
    standby,
)

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
    assert ("node2", 5) in promotions(decision)


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
    assert decision.commands == (
        Detach("node3", 5, "node1"),
        Promote("node2", 5, peers=("node3",), old_primary="node1"),
    )


def test_a_resumed_switchover_does_not_fence_the_handed_over_primary() -> None:
    """Its old primary stopped cleanly and may be rejoining already: killing it would undo it."""
    handed = OP.model_copy(update={"phases": (PhaseTiming(phase="handover", seconds=0.4),)})
    topology = AFTER.model_copy(update={"operation": handed})
    decision = decide(
        observe(standby("node1"), standby("node2"), standby("node3"), topology=topology)
    )
    assert not any(isinstance(c, Fence) for c in decision.commands)


# --- guarantee 3: the synchronous set is never silently lost -------------------------------


def test_a_second_failure_during_the_operation_is_not_treated_as_asynchronous() -> None:
    """node2 was chosen and died before it took writes: node3 may lack commits only node2
    had, so nobody is promoted (before, the new epoch's empty set meant "asynchronous")."""
    decision = decide(observe(down("node1"), down("node2"), standby("node3"), topology=AFTER))
    assert promotions(decision) == []
    (refused,) = [
        c.event
        for c in decision.commands
        if isinstance(c, Publish) and isinstance(c.event, FailoverFailed)
    ]
    assert "synchronous set is empty" in refused.reason


def test_the_operation_keeps_the_synchronous_set_it_started_with() -> None:
    decision = decide(observe(down("node1"), standby("node2"), standby("node3")))
    write = decision.commands[0]
    assert isinstance(write, WriteTopology)
    assert write.topology.synchronous == ()  # nobody holds the new primary's commits yet
    assert write.topology.operation is not None
    assert write.topology.operation.synchronous == ("node2", "node3")


def test_strict_mode_makes_the_new_primary_wait_for_a_standby_from_its_first_commit() -> None:
    decision = decide(
        observe(
            down("node1"),
            standby("node2"),
            standby("node3"),
            policy=Policy(synchronous_mode="strict"),
        )
    )
    (promote,) = [c for c in decision.commands if isinstance(c, Promote)]
    assert promote.node == "node2"
    assert promote.synchronous == ("node1", "node3")


def test_a_standby_leaves_the_record_only_after_postgres_stops_waiting_and_another_caught_up() -> (
    None
):
    """node3 stopped streaming; it may hold a commit it alone acknowledged. PostgreSQL stops
    waiting for it first; the record keeps it until node2 has everything written."""
    behind = [ReplicaState(name="node2", state="streaming", sync_state="quorum", flush_lsn="0/4F")]
    narrowed = primary(sync='ANY 1 ("node2")', replicas=behind)
    decision = decide(observe(narrowed, standby("node2"), standby("node3")))
    assert not any(isinstance(c, WriteTopology) for c in decision.commands)
    assert "catch up" in decision.reason
    caught = [
        ReplicaState(name="node2", state="streaming", sync_state="quorum", flush_lsn="0/5000000")
    ]
    decision = decide(
        observe(
            primary(sync='ANY 1 ("node2")', replicas=caught), standby("node2"), standby("node3")
        )
    )
    (write,) = [c for c in decision.commands if isinstance(c, WriteTopology)]
    assert write.topology.synchronous == ("node2",)


def test_an_empty_record_is_filled_only_once_postgres_waits_for_the_standbys() -> None:
    after = TOPO.model_copy(update={"synchronous": ()})
    decision = decide(observe(primary(sync=""), standby("node2"), standby("node3"), topology=after))
    assert [type(c).__name__ for c in decision.commands] == ["SetSynchronous", "Publish"]


# --- guarantee 4: never promote a standby that may lack acknowledged commits ---------------

EMPTY = TOPO.model_copy(update={"synchronous": ()})


def test_a_degraded_cluster_promotes_nobody_automatically() -> None:
    """Commits stopped waiting for a standby (mode on, degraded): any standby may lack some."""
    decision = decide(observe(down("node1"), standby("node2"), standby("node3"), topology=EMPTY))
    assert promotions(decision) == []


def manual(**kw: object) -> FailoverRequested:
    return FailoverRequested(cluster="main", source=ME, reason="dc1 lost", requested_by="ops", **kw)


def test_a_forced_failover_accepts_the_stated_loss_and_records_positions() -> None:
    obs = observe(down("node1"), standby("node2", "0/4F00000"), standby("node3"), topology=EMPTY)
    decision = decide(
        replace(obs, request=manual(target="node2", force=True, data_loss_budget_bytes=2 << 20))
    )
    assert promotions(decision) == [("node2", 5)]
    (started,) = [
        c.event
        for c in decision.commands
        if isinstance(c, Publish) and isinstance(c.event, FailoverStarted)
    ]
    assert started.data_loss_budget_bytes == 2 << 20
    assert started.positions == {"node2": "0/4F00000", "node3": "0/5000000"}
    (promote,) = [c for c in decision.commands if isinstance(c, Promote)]
    assert promote.peers == ()  # the loss is accepted: it is not held to its peers


def test_a_forced_failover_beyond_its_budget_is_refused() -> None:
    obs = observe(down("node1"), standby("node2", "0/4000000"), standby("node3"), topology=EMPTY)
    decision = decide(
        replace(obs, request=manual(target="node2", force=True, data_loss_budget_bytes=1024))
    )
    assert promotions(decision) == []
    assert "accepted data-loss budget (1024)" in decision.reason


def test_force_without_a_budget_is_refused() -> None:
    obs = observe(down("node1"), standby("node2"), standby("node3"), topology=EMPTY)
    decision = decide(replace(obs, request=manual(target="node2", force=True)))
    assert promotions(decision) == []
    assert "force needs data_loss_budget_bytes" in decision.reason


def test_a_manual_failover_to_a_target_that_does_not_stream_is_refused() -> None:
    obs = observe(primary(), standby("node2", wal_receiver="stopped"), standby("node3"))
    decision = decide(replace(obs, request=manual(target="node2")))
    assert promotions(decision) == []
    assert "node2 does not stream from node1" in decision.reason


def test_a_manual_failover_whose_target_never_catches_up_is_undone() -> None:
    op = OP.model_copy(
        update={"kind": FailoverKind.MANUAL, "started_at": NOW - timedelta(seconds=40)}
    )
    op = op.model_copy(update={"phases": (PhaseTiming(phase="fence", seconds=0.1),)})
    topology = AFTER.model_copy(update={"operation": op})
    fenced = rep("node1", role="primary", writable=False, current_lsn="0/6000000")
    detached = standby("node3", configured_upstream=None)  # for the promotion that never came
    decision = decide(observe(fenced, standby("node2"), detached, topology=topology))
    write = decision.commands[0]
    assert isinstance(write, WriteTopology)
    assert (write.topology.primary, write.topology.epoch) == ("node1", 6)
    assert ("node1", 6) in promotions(decision)
    assert "node2 did not catch up with node1" in decision.reason
    # The detached standby follows the primary again; the target never stopped following it.
    assert [c for c in decision.commands if isinstance(c, Repoint)] == [
        Repoint("node3", "node1", 6)
    ]


def _manual_stuck(**op_fields: object) -> Topology:
    """A manual failover to node2 (epoch 5) begun 40 s ago, node1 fenced."""
    op = OP.model_copy(
        update={
            "kind": FailoverKind.MANUAL,
            "started_at": NOW - timedelta(seconds=40),
            "phases": (PhaseTiming(phase="fence", seconds=0.1),),
            **op_fields,
        }
    )
    return AFTER.model_copy(update={"operation": op})


# node2, the target, lost its stream behind node1; node3, which acknowledged the rest, is down.
BEHIND = standby("node2", "0/4000000", wal_receiver=None)


def test_a_manual_failover_nobody_can_finish_starts_the_stopped_old_primary_again() -> None:
    """Stopped by the fence (or by its agent once the topology named node2), node1 holds every
    commit it acknowledged and nobody else can take them over: left stopped, the cluster had
    no primary until an operator acted (the old main promoted node2 again, refused, for ever)."""
    decision = decide(observe(down("node1"), BEHIND, down("node3"), topology=_manual_stuck()))
    assert decision.commands[0] == StartReadOnly(
        "node1",
        5,
        "manual: node2 did not catch up with node1 within 30s and node1 is stopped: starting "
        "node1 again read-only, to give it its writes back",
    )
    assert promotions(decision) == []
    assert not any(isinstance(c, WriteTopology) for c in decision.commands)
    (event,) = held(decision)
    assert "node1 is stopped: starting node1 again read-only" in event.reason


def test_a_paused_cluster_does_not_have_the_stopped_old_primary_started_again() -> None:
    """Paused, an operator may have stopped node1 on purpose: held, saying so, nothing started."""
    pause = MaintenanceState(cluster="main", paused=True, reason="disk swap", requested_by="ops")
    obs = observe(down("node1"), BEHIND, down("node3"), topology=_manual_stuck())
    decision = decide(replace(obs, paused=pause))
    assert not any(isinstance(c, (StartReadOnly, Promote)) for c in decision.commands)
    (event,) = held(decision)
    assert event.reason.endswith(
        "node1 is stopped, but automatic failover is paused (by ops: disk swap): not starting node1"
    )


def test_a_forced_manual_failover_does_not_start_the_old_primary_again() -> None:
    """The operator accepted a loss to be rid of node1: node2 is promoted as asked."""
    topology = _manual_stuck(data_loss_budget_bytes=1 << 30)
    decision = decide(observe(down("node1"), BEHIND, down("node3"), topology=topology))
    assert not any(isinstance(c, StartReadOnly) for c in decision.commands)
    assert ("node2", 5) in promotions(decision)


def test_the_old_primary_started_again_read_only_takes_its_writes_back_under_a_new_epoch() -> None:
    """Started read-only, it reports the most WAL: its writes back under epoch 6, promoted only
    if it still has every standby's WAL (peers), the fork of its timeline recorded first."""
    back = standby("node1", "0/6000000", configured_upstream=None, wal_receiver=None, timeline=1)
    decision = decide(observe(back, BEHIND, down("node3"), topology=_manual_stuck()))
    write = decision.commands[0]
    assert isinstance(write, WriteTopology)
    assert (write.topology.primary, write.topology.epoch) == ("node1", 6)
    assert write.topology.operation is None
    assert (write.topology.timeline, write.topology.forked_from) == (None, 1)
    (promote,) = [c for c in decision.commands if isinstance(c, Promote)]
    assert (promote.node, promote.epoch, promote.peers) == ("node1", 6, ("node2",))
    assert "node2 did not catch up with node1" in decision.reason


@pytest.mark.parametrize(
    ("node1", "node2"),
    [
        # A standby reports more WAL than it.
        ({"lsn": "0/3000000"}, {}),
        # Less than it last reported writing as primary (0/5000000): not the data it wrote.
        ({"lsn": "0/4800000"}, {"lsn": "0/4000000"}),
        # node2 is on a newer timeline: it was promoted meanwhile (and is back in recovery),
        # and what it committed there is on no other node.
        ({"lsn": "0/6000000"}, {"lsn": "0/4000000", "timeline": 2}),
    ],
    ids=["behind a standby", "behind its last report", "another timeline since"],
)
def test_the_old_primary_started_again_is_given_its_writes_back_only_with_everything(
    node1: dict[str, Any], node2: dict[str, Any]
) -> None:
    back = standby("node1", configured_upstream=None, wal_receiver=None, timeline=1, **node1)
    target = standby("node2", wal_receiver=None, **{"lsn": "0/4000000", "timeline": 1, **node2})
    topology = _manual_stuck().model_copy(update={"forked_from": 1})
    decision = decide(observe(back, target, down("node3"), topology=topology))
    assert ("node1", 6) not in promotions(decision)
    assert not any(isinstance(c, StartReadOnly) for c in decision.commands)
    # (node2 back in recovery on its own timeline is promoted again, as before.)
    assert not [
        c for c in decision.commands if isinstance(c, WriteTopology) and c.topology.epoch > 5
    ]


def test_a_stopped_old_primary_is_not_started_again_once_a_timeline_forked() -> None:
    """node2 reports timeline 2: it was promoted at this epoch (then crashed back into
    recovery); node1's start and undo would drop what it committed."""
    target = standby("node2", "0/4000000", wal_receiver=None, timeline=2)
    topology = _manual_stuck().model_copy(update={"forked_from": 1})
    decision = decide(observe(down("node1"), target, down("node3"), topology=topology))
    assert not any(isinstance(c, StartReadOnly) for c in decision.commands)


def test_the_old_primary_given_its_writes_back_waits_for_a_standby_in_strict_mode() -> None:
    back = standby("node1", "0/6000000", configured_upstream=None, wal_receiver=None)
    policy = Policy(synchronous_mode="strict")
    decision = decide(observe(back, BEHIND, down("node3"), topology=_manual_stuck(), policy=policy))
    (promote,) = [c for c in decision.commands if isinstance(c, Promote)]
    assert (promote.node, promote.synchronous) == ("node1", ("node2", "node3"))


def test_a_rejoin_of_a_manual_failovers_old_primary_waits_for_the_target_to_take_writes() -> None:
    """Rewound or cloned onto a target still catching up, node1 would lose what only it has."""
    obs = observe(down("node1"), BEHIND, standby("node3"), topology=_manual_stuck())
    request = NodeRejoinRequested(cluster="main", node="node1", source=ME)
    decision = decide(replace(obs, request=request))
    assert not any(isinstance(c, Rejoin) for c in decision.commands)
    (failed,) = published(decision, FailoverFailed)
    assert "manual to node2 is under way and node2 takes no writes yet" in failed.reason


@pytest.mark.parametrize(
    ("cluster", "reports", "fences"),
    [
        # Still running: fenced over SQL, it streams on to the target (which may lag behind
        # another standby) until the promotion; a local one is stopped after it.
        (LOCAL, HEALTHY, [("node1", True, "before"), ("node1", False, "after")]),
        (CLUSTER, HEALTHY, [("node1", True, "before")]),  # remote: the SQL fence is all
        # Gone: nothing to stream from; a local one is killed at once, as automatically.
        (LOCAL, (down("node1"), standby("node2"), standby("node3")), [("node1", False, "before")]),
    ],
)
def test_a_manual_failover_keeps_a_live_primary_streaming_until_the_target_is_promoted(
    cluster: ClusterSpec, reports: tuple[NodeHealth, ...], fences: list[tuple[str, bool, str]]
) -> None:
    """Matrix scenario 2: killed at once, a live primary could no longer send a lagging
    target what node2 acknowledged, and the failover was stuck with nobody writable."""
    decision = decide(replace(observe(*reports, cluster=cluster), request=manual(target="node3")))
    commands = decision.commands
    at = next(i for i, c in enumerate(commands) if isinstance(c, Promote))
    found = [
        (c.node, c.keep_running, "before" if i < at else "after")
        for i, c in enumerate(commands)
        if isinstance(c, Fence)
    ]
    assert found == fences
    assert promotions(decision) == [("node3", 5)]


# --- guarantee 2: the candidate is chosen from positions read after the fence --------------


def test_a_resumed_promotion_never_moves_to_another_candidate_at_the_same_epoch() -> None:
    """The candidate's latest report may predate its promotion (monitors probe each second,
    decisions run twice a second): choosing another at the same epoch could promote a second
    primary. The same candidate is promoted again (idempotent); the executor checks it
    against its peers' positions read after the fence, and holds if it is behind."""
    fenced = OP.model_copy(update={"phases": (PhaseTiming(phase="fence", seconds=0.2),)})
    topology = AFTER.model_copy(update={"operation": fenced})
    decision = decide(
        observe(
            down("node1"),
            standby("node2", "0/5000000", configured_upstream=None),
            standby("node3", "0/5000100", configured_upstream=None),
            topology=topology,
        )
    )
    assert not any(isinstance(c, WriteTopology) for c in decision.commands)
    (promote,) = [c for c in decision.commands if isinstance(c, Promote)]
    assert (promote.node, promote.epoch) == ("node2", 5)
    assert promote.peers == ("node3",)


@pytest.mark.parametrize(
    ("node2", "node3", "promoted"),
    [
        # node2 lost its stream (the old primary died, or it was detached) and node3 holds
        # more: node2 can never catch up, so node3 is chosen under a new epoch.
        ({"wal_receiver": None}, {}, ("node3", 6)),
        # It still streams: it can catch up, the same candidate is retried.
        ({}, {}, ("node2", 5)),
        # node3 has no more than node2: nothing to catch up with.
        ({"wal_receiver": None}, {"lsn": "0/5000000"}, ("node2", 5)),
        # node3's report predates the operation: it says nothing about now.
        ({"wal_receiver": None}, {"age": 3}, ("node2", 5)),
    ],
)
def test_a_candidate_that_can_never_catch_up_is_replaced_under_a_new_epoch(
    node2: dict[str, Any], node3: dict[str, Any], promoted: tuple[str, int]
) -> None:
    """Matrix 3 in the drill: node1's reports showed node2 ahead when node1 died, but node3
    alone had the last acknowledged commits; the executor rightly refused node2 each round,
    and the failover held for ever with node3 ready."""
    fenced = OP.model_copy(update={"phases": (PhaseTiming(phase="fence", seconds=0.2),)})
    topology = AFTER.model_copy(update={"operation": fenced})
    node3 = {"lsn": "0/5000100", **node3}
    decision = decide(
        observe(
            down("node1"),
            standby("node2", "0/5000000", configured_upstream=None, **node2),
            standby("node3", configured_upstream=None, **node3),
            topology=topology,
        )
    )
    assert promotions(decision) == [promoted]
    if promoted[1] == 6:
        (write,) = [c for c in decision.commands if isinstance(c, WriteTopology)]
        assert write.topology.operation is not None
        assert write.topology.operation.synchronous == ("node2", "node3")  # the set kept
        fences = [c.node for c in decision.commands if isinstance(c, Fence)]
        assert fences == ["node2"]  # the passed-over candidate, before the promotion


# --- guarantee 9: positions after restarts -------------------------------------------------


def test_restarted_standbys_are_judged_by_what_they_have() -> None:
    """No received position (walreceiver not started) or one rounded down to a segment:
    what they replayed, they have."""
    decision = decide(
        observe(
            down("node1"),
            rep("node2", role="standby", writable=False, receive_lsn=None, replay_lsn="0/5000000"),
            rep(
                "node3",
                role="standby",
                writable=False,
                receive_lsn="0/3000000",
                replay_lsn="0/5000000",
            ),
        )
    )
    assert promotions(decision) == [("node2", 5)]


@pytest.mark.parametrize(
    ("topology", "policy", "promoted"),
    [
        # Not recorded as synchronous (mode off): on an older timeline it did not follow a
        # promotion; what it has is not the history the cluster went on with.
        (EMPTY, Policy(synchronous_mode="off"), ("node3", 5)),
        # Recorded as synchronous: it streamed from node1 at this epoch, so it is on node1's
        # timeline; its report (no walreceiver: its last restartpoint's timeline) lags.
        # Seen in the stream-drop-kill drill: the failover held for ever, node2 ready.
        (TOPO, Policy(), ("node2", 5)),
    ],
)
def test_a_standby_on_an_older_timeline_is_a_candidate_only_if_recorded_synchronous(
    topology: Topology, policy: Policy, promoted: tuple[str, int]
) -> None:
    reports = (
        down("node1"),
        standby("node2", "0/5000100", timeline=1, wal_receiver=None),
        standby("node3", timeline=2),
    )
    decision = decide(observe(*reports, topology=topology, policy=policy))
    assert promotions(decision) == [promoted]


def test_a_dead_primary_goes_before_a_queued_switchover() -> None:
    """A burst of operator requests must not starve the automatic failover (guarantee 10)."""
    switchover = SwitchoverRequested(
        cluster="main", source=ME, target="node3", reason="maintenance", requested_by="ops"
    )
    obs = replace(observe(down("node1"), standby("node2"), standby("node3")), request=switchover)
    decision = decide(obs)
    assert any(isinstance(c, Promote) for c in decision.commands) or any(
        isinstance(c, WriteTopology) and c.topology.primary != "node1" for c in decision.commands
    )
    events = [c.event for c in decision.commands if isinstance(c, Publish)]
    refused = [e for e in events if isinstance(e, SwitchoverFailed)]
    assert len(refused) == 1
    assert "automatic failover goes first" in refused[0].reason


# --- the way out, and resuming with a dead candidate -----------------------------------


def test_a_forced_failover_accepts_an_unconfirmed_fence() -> None:
    """A remote primary that is gone for good can never be confirmed fenced: only an
    operator's forced failover, with a stated data-loss budget, goes ahead without it."""
    obs = observe(down("node1"), standby("node2"), standby("node3"), topology=EMPTY)
    decision = decide(replace(obs, request=manual(force=True, data_loss_budget_bytes=1 << 20)))
    (fence,) = [c for c in decision.commands if isinstance(c, Fence)]
    assert (fence.node, fence.accepted) == ("node1", True)
    automatic = decide(observe(down("node1"), standby("node2"), standby("node3")))
    assert all(not c.accepted for c in automatic.commands if isinstance(c, Fence))


def test_a_resumed_forced_failover_still_accepts_the_unconfirmed_fence() -> None:
    """The leader that started it died before its fence was recorded: the next one fences
    again, accepting what the operator accepted — or it would hold for ever on that fence."""
    forced = OP.model_copy(update={"data_loss_budget_bytes": 1 << 20})
    topology = AFTER.model_copy(update={"operation": forced})
    decision = decide(observe(down("node1"), standby("node2"), standby("node3"), topology=topology))
    (fence,) = [c for c in decision.commands if isinstance(c, Fence)]
    assert (fence.node, fence.accepted) == ("node1", True)
    unforced = decide(observe(down("node1"), standby("node2"), standby("node3"), topology=AFTER))
    assert all(not c.accepted for c in unforced.commands if isinstance(c, Fence))


def test_an_old_primary_left_running_is_stopped_once_the_target_is_promoted() -> None:
    """A manual failover leaves a local old primary running, fenced over SQL, until its
    target is promoted: whoever finishes the operation stops it, whatever happened to the
    decision that was to."""
    promoted = rep("node2", role="primary", writable=True, current_lsn="0/5000100")
    still = rep("node1", role="primary", writable=False, current_lsn="0/5000000")
    obs = observe(still, promoted, standby("node3", upstream="node2", configured_upstream="node2"),
                  topology=AFTER, cluster=LOCAL)  # fmt: skip
    (stop,) = decide(obs).commands
    assert isinstance(stop, Fence)
    assert (stop.node, stop.epoch, stop.keep_running) == ("node1", AFTER.epoch, False)
    # remote: only its agent can stop it; the SQL fence holds it meanwhile
    remote = decide(replace(obs, cluster=CLUSTER))
    assert not any(isinstance(c, Fence) for c in remote.commands)


def test_a_forced_failover_supersedes_a_stuck_operation() -> None:
    """Unforced requests are refused while an operation is under way; a forced one is the
    operator's way out of one that cannot finish, and fences its old primary too."""
    stuck = replace(
        observe(down("node1"), standby("node2"), standby("node3"), topology=AFTER),
        request=manual(target="node3", force=True, data_loss_budget_bytes=1 << 20),
    )
    decision = decide(stuck)
    fences = [c for c in decision.commands if isinstance(c, Fence)]
    assert [(f.node, f.accepted) for f in fences] == [("node1", True), ("node2", True)]
    assert promotions(decision) == [("node3", 6)]
    refused = decide(replace(stuck, request=manual(target="node3")))
    assert promotions(refused) == []


def test_a_dead_candidate_does_not_leave_the_original_primary_unfenced() -> None:
    """The instance that started the failover died before fencing node1, and node2, the
    candidate, died too: node1 is fenced before anyone else is promoted."""
    decision = decide(observe(down("node1"), down("node2"), standby("node3"), topology=AFTER))
    assert isinstance(decision.commands[0], Fence)
    assert decision.commands[0].node == "node1"


def test_paused_no_automatic_failover_and_the_hold_says_who_paused() -> None:
    pause = MaintenanceState(
        cluster="main", paused=True, reason="kernel upgrade", requested_by="ops"
    )
    obs = replace(observe(down("node1"), standby("node2"), standby("node3")), paused=pause)
    decision = decide(obs)
    assert not any(isinstance(c, (Promote, WriteTopology, Fence)) for c in decision.commands)
    (event,) = held(decision)
    assert "paused (by ops: kernel upgrade)" in event.reason
    manual_one = decide(replace(obs, request=manual(target="node2")))
    assert any(isinstance(c, Promote) for c in manual_one.commands)  # operators still act


def test_the_primarys_timeline_is_recorded_once_seen_at_the_epoch() -> None:
    decision = decide(observe(primary(timeline=3), standby("node2"), standby("node3")))
    (write,) = decision.commands
    assert isinstance(write, WriteTopology)
    assert write.topology.timeline == 3
    assert write.topology.model_copy(update={"timeline": None}) == TOPO
    recorded = TOPO.model_copy(update={"timeline": 3})
    again = decide(
        observe(primary(timeline=3), standby("node2"), standby("node3"), topology=recorded)
    )
    assert not any(isinstance(c, WriteTopology) for c in again.commands)
    assert TOPO.promoted("node2").timeline is None  # the new primary's is not known yet


def held_untouched(decision: Decision) -> FailoverHeld:
    """The one hold said, with no node fenced, promoted or detached and nothing written."""
    assert not any(
        isinstance(c, (Fence, Promote, WriteTopology, Detach)) for c in decision.commands
    )
    (event,) = held(decision)
    return event


def test_a_topology_older_than_the_nodes_timelines_is_not_acted_on() -> None:
    """The KV store came back from before a failover: it names node1 (dead) primary on
    timeline 3, while node2 took over on timeline 4 and node3 follows it. Failing over from
    node1 again, or fencing node2 as a second primary, would act on a past that is gone."""
    old = TOPO.model_copy(update={"timeline": 3})
    reports = ROLLED_BACK
    event = held_untouched(decide(observe(*reports, topology=old)))
    assert event.reason.startswith("node2 (timeline 4), node3 (timeline 4) ahead of the topology")
    assert "older than the cluster" in event.reason
    # An operator who checked moves on with a forced failover to the node holding it all:
    # it is recorded under a new epoch, nobody is promoted or fenced, and the operation ends.
    forced = manual(target="node2", force=True, data_loss_budget_bytes=0)
    moved = decide(replace(observe(*reports, topology=old), request=forced))
    (write,) = moved.commands
    assert isinstance(write, WriteTopology)
    assert (write.topology.primary, write.topology.epoch, write.topology.timeline) == (
        "node2",
        5,
        4,
    )
    done = decide(observe(*reports, topology=write.topology))
    assert published(done, FailoverCompleted)
    assert not promotions(done)
    # ... and never a node that is not the newest writable primary
    wrong = decide(replace(observe(*reports, topology=old), request=manual(
        target="node3", force=True, data_loss_budget_bytes=0)))  # fmt: skip
    (refused,) = published(wrong, FailoverFailed)
    assert "not the writable primary on its newest timeline" in refused.reason


def test_a_topology_rolled_back_to_before_its_timeline_was_recorded_is_not_acted_on() -> None:
    """A failover's first write remembers the timeline its promotion forks from, so a store
    rolled back to before the epoch's first healthy round (which records the new timeline)
    is still found out: node2 was promoted at the next epoch from timeline 3 (so onto 4), then the
    cluster failed over again onto 5, and the store lost both later records."""
    failover = decide(observe(down("node1"), standby("node2"), standby("node3"),
        topology=TOPO.model_copy(update={"timeline": 3})))  # fmt: skip
    (first, *_) = [c for c in failover.commands if isinstance(c, WriteTopology)]
    assert (first.topology.epoch, first.topology.timeline, first.topology.forked_from) == (
        TOPO.epoch + 1,
        None,
        3,
    )
    rolled_back = first.topology.model_copy(
        update={"operation": None, "updated_at": NOW - timedelta(seconds=5)}
    )
    later = (
        down("node1"),
        standby("node2", upstream="node3", configured_upstream="node3", timeline=5),
        rep("node3", role="primary", writable=True, current_lsn="0/7000000", timeline=5),
    )
    event = held_untouched(decide(observe(*later, topology=rolled_back)))
    assert event.reason.startswith("node2 (timeline 5), node3 (timeline 5) ahead of the topology")
    assert "forked timeline 4 at the latest" in event.reason
    # The same record is current while its primary is on the timeline it forked: recorded.
    current = (
        down("node1"),
        rep("node2", role="primary", writable=True, current_lsn="0/7000000", timeline=4),
        standby("node3", upstream="node2", configured_upstream="node2", timeline=4),
    )
    steady = decide(observe(*current, topology=rolled_back))
    assert not held(steady)
    (write,) = [c for c in steady.commands if isinstance(c, WriteTopology)]
    assert write.topology.timeline == 4


ROLLED_BACK = (
    down("node1"),
    rep("node2", role="primary", writable=True, current_lsn="0/6000000", timeline=4),
    standby("node3", upstream="node2", configured_upstream="node2", timeline=4),
)


def test_out_of_an_old_topology_a_forced_failover_must_name_its_node() -> None:
    old = TOPO.model_copy(update={"timeline": 3})
    blind = manual(force=True, data_loss_budget_bytes=0)  # no target: it would pick node3
    decision = decide(replace(observe(*ROLLED_BACK, topology=old), request=blind))
    assert not any(isinstance(c, (Promote, WriteTopology, Fence)) for c in decision.commands)
    (refused,) = published(decision, FailoverFailed)
    assert "names its node" in refused.reason


def test_requests_met_by_an_old_topology_are_answered() -> None:
    old = TOPO.model_copy(update={"timeline": 3})
    ask = SwitchoverRequested(
        cluster="main", source=ME, target="node3", requested_by="ops", reason="planned"
    )
    decision = decide(replace(observe(*ROLLED_BACK, topology=old), request=ask))
    assert held(decision)
    (refused,) = published(decision, SwitchoverFailed)
    assert "older than the cluster" in refused.reason


def test_a_node_promoted_beside_a_writable_primary_is_fenced_not_held() -> None:
    """A restore into a node (or a stray `pg_ctl promote`) puts node3 on a newer timeline
    while the topology's primary still takes writes: that is a second primary, not an old
    topology. The primary's own newer timeline is recorded."""
    recorded = TOPO.model_copy(update={"timeline": 3})
    reports = (
        primary(timeline=3),
        standby("node2", timeline=3),
        rep("node3", role="primary", writable=True, current_lsn="0/9000000", timeline=5),
    )
    decision = decide(observe(*reports, topology=recorded))
    assert not held(decision)
    assert [c.node for c in decision.commands if isinstance(c, Fence)] == ["node3"]
    newer = decide(
        observe(primary(timeline=4), standby("node2"), standby("node3"), topology=recorded)
    )
    (write,) = [c for c in newer.commands if isinstance(c, WriteTopology)]
    assert write.topology.timeline == 4


# --- repeated answers: said once a while, but every request gets its own ------------------


def test_repeated_refusals_are_said_once_a_while_and_every_request_is_answered() -> None:
    """Matrix 4 and 8: an operation stuck on a dead candidate refused a switchover twice a
    second (switchover.failed was not rate-limited); an identical refusal of another
    request is still that request's answer."""
    loop = ClusterLoop(CLUSTER, FailoverSettings(), cast(ServiceRuntime, None))
    first, second = uuid4(), uuid4()

    def refusal(model: type[FailoverFailed | SwitchoverFailed], correlation: UUID | None) -> bool:
        event = model(
            cluster="main",
            source=ME,
            correlation_id=correlation,
            kind=FailoverKind.SWITCHOVER,
            reason="no standby can be promoted",
        )
        return loop._to_send(Publish(event)) is not None

    sent = [
        refusal(SwitchoverFailed, None),
        refusal(SwitchoverFailed, None),  # the same, re-decided: not again
        refusal(SwitchoverFailed, first),
        refusal(SwitchoverFailed, second),  # another request's answer
        refusal(FailoverFailed, None),
        refusal(FailoverFailed, None),
    ]
    assert sent == [True, False, True, True, True, False]


def test_a_hold_said_again_is_stored_again() -> None:
    """The same hold said again after the repeat interval has an id of its own: under the
    first one's id the stream's duplicate window (2 min) dropped every repeat of a hold that
    lasted, and the history showed it once."""
    loop = ClusterLoop(CLUSTER, FailoverSettings(), cast(ServiceRuntime, None))
    hold = FailoverHeld(cluster="main", source=ME, epoch=3, primary="node1", reason="no majority")

    def send(at: datetime) -> Any:
        return loop._to_send(Publish(stamped(hold, at)))

    start = datetime(2026, 12, 2, 7, 0, tzinfo=UTC)
    first = send(start)
    assert send(start + timedelta(seconds=1)) is None  # re-decided: not again yet
    loop._recent_events.clear()  # the repeat interval has passed
    again = send(start + timedelta(seconds=31))
    assert first is not None
    assert again is not None
    assert first.event.event_id != again.event.event_id
    loop._recent_events.clear()
    # another instance saying the same hold in the same window: one id, stored once
    assert send(start + timedelta(seconds=1)).event.event_id == first.event.event_id


async def test_a_cluster_busy_with_a_long_action_holds_up_no_other_cluster() -> None:
    """Each cluster decides in a task of its own: a handover waiting on one cluster's old
    primary (up to 50 s) held up every other cluster's decisions, a failover among them."""

    class Busy:
        cluster = CLUSTER

        async def tick(self) -> None:
            await asyncio.sleep(60)  # a handover's clean stop

    class Other:
        cluster = CLUSTER.model_copy(update={"name": "other"})
        ticks = 0

        async def tick(self) -> None:
            self.ticks += 1

    other = Other()
    deciding = asyncio.create_task(run_forever(cast(list[ClusterLoop], [Busy(), other]), 0.01))
    try:
        await asyncio.sleep(0.3)
    finally:
        deciding.cancel()
    assert other.ticks >= 5


def test_a_candidate_back_in_recovery_is_promoted_again_with_its_fork_recorded_first() -> None:
    """node2, promoted from timeline 3 onto 4 at this epoch, crashed and came back read-only
    before its timeline was recorded: promoted again it forks 5. The record says so first,
    or a second crash would leave nodes on 5, past what the record allows, and hold the
    cluster for good."""
    after = TOPO.model_copy(update={"timeline": 3}).promoted("node2", OP, at=NOW)
    assert after.forked_from == 3
    back = (down("node1"), standby("node2", timeline=4), standby("node3", timeline=4))
    decision = decide(observe(*back, topology=after))
    writes = [c for c in decision.commands if isinstance(c, WriteTopology)]
    assert [w.topology.forked_from for w in writes] == [4]
    (promote,) = [c for c in decision.commands if isinstance(c, Promote)]
    assert decision.commands.index(writes[0]) < decision.commands.index(promote)
    # the same on the next round, once written: no write again
    again = decide(observe(*back, topology=writes[0].topology))
    assert not [c for c in again.commands if isinstance(c, WriteTopology)]
    assert [c.node for c in again.commands if isinstance(c, Promote)] == ["node2"]


def test_a_change_of_the_synchronous_set_is_said_once_until_another_is_said() -> None:
    """Decided again on each new report until one shows PostgreSQL's new setting, and again
    when the record follows, the same change is said once; a flap back and forth is said at
    every turn."""
    loop = ClusterLoop(CLUSTER, FailoverSettings(), cast(ServiceRuntime, None))

    def change(standbys: tuple[str, ...]) -> SyncChanged:
        return SyncChanged(
            cluster="main", source=ME, epoch=4, primary="node1", standbys=standbys, reason="r"
        )

    assert loop._say_now(change(("node2",))) is not None
    loop._sync_said = _sync_change(change(("node2",)))  # published
    assert loop._say_now(change(("node2",))) is None
    assert loop._say_now(change(("node2", "node3"))) is not None
