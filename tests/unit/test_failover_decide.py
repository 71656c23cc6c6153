"""The failover decision, exhaustively, with plain data: no servers, no clock."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lifeboat.common.clusters import ClusterSpec, NodeSpec
from lifeboat.common.decision import Publish
from lifeboat.common.events import (
    FailoverCompleted,
    FailoverFailed,
    FailoverHeld,
    FailoverKind,
    FailoverRequested,
    FailoverStarted,
    NodeHealth,
    NodeRejoinRequested,
    ReplicaState,
    Role,
    Source,
    SwitchoverFailed,
    SwitchoverRequested,
    SyncChanged,
)
from lifeboat.common.lsn import lsn_to_int
from lifeboat.common.state import Operation, Topology
from lifeboat.failover.commands import (
    CreateTopology,
    Detach,
    Fence,
    Handover,
    Promote,
    Rejoin,
    Repoint,
    SetSynchronous,
    WriteTopology,
)
from lifeboat.failover.decide import BACK_SECONDS, Observation, Policy, decide
from lifeboat.failover.sync_names import format_sync_names, parse_sync_names

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
ME = Source(service="failover", instance="f-1")
CLUSTER = ClusterSpec(
    name="main",
    nodes=(
        NodeSpec(name="node1", host="h1", priority=100),
        NodeSpec(name="node2", host="h2", priority=90),
        NodeSpec(name="node3", host="h3", priority=80),
    ),
)
SYNC_ALL = ("node2", "node3")
TOPO = Topology(
    cluster="main",
    primary="node1",
    epoch=4,
    members={"node1": Role.PRIMARY, "node2": Role.STANDBY, "node3": Role.STANDBY},
    synchronous=SYNC_ALL,
    updated_at=NOW - timedelta(minutes=5),
)


def rep(node: str, monitor: str = "m1", *, age: float = 0.5, **kw: Any) -> NodeHealth:
    base: dict[str, Any] = {
        "cluster": "main",
        "node": node,
        "source": Source(service="monitor", instance=monitor),
        "occurred_at": NOW - timedelta(seconds=age),
        "reachable": True,
    }
    return NodeHealth.model_validate({**base, **kw})


def primary(monitor: str = "m1", sync: str = 'ANY 1 ("node2", "node3")', **kw: Any) -> NodeHealth:
    replicas = kw.pop(
        "replicas",
        [
            ReplicaState(name="node2", state="streaming", sync_state="quorum"),
            ReplicaState(name="node3", state="streaming", sync_state="quorum"),
        ],
    )
    fields: dict[str, Any] = {
        "role": "primary",
        "writable": True,
        "current_lsn": "0/5000000",
        "synchronous_standby_names": sync,
        "replicas": replicas,
    }
    return rep("node1", monitor, **{**fields, **kw})


def standby(node: str, lsn: str = "0/5000000", monitor: str = "m1", **kw: Any) -> NodeHealth:
    kw.setdefault("upstream", "node1")
    kw.setdefault("configured_upstream", "node1")
    kw.setdefault("wal_receiver", "streaming")
    return rep(node, monitor, role="standby", writable=False, receive_lsn=lsn, replay_lsn=lsn, **kw)


def down(node: str, monitor: str = "m1", failures: int = 3) -> NodeHealth:
    return rep(node, monitor, reachable=False, consecutive_failures=failures, error="refused")


def observe(
    *reports: NodeHealth,
    topology: Topology | None = TOPO,
    policy: Policy | None = None,
    last_primary_lsn: dict[str, int] | None = None,
    cluster: ClusterSpec = CLUSTER,
) -> Observation:
    return Observation(
        now=NOW,
        cluster=cluster,
        topology=topology,
        reports=reports,
        policy=policy or Policy(),
        source=ME,
        last_primary_lsn={"node1": lsn_to_int("0/5000000")}
        if last_primary_lsn is None
        else last_primary_lsn,
    )


def kinds(decision: Any) -> list[str]:
    return [type(c).__name__ for c in decision.commands]


def promotions(decision: Any) -> list[tuple[str, int]]:
    return [(c.node, c.epoch) for c in decision.commands if isinstance(c, Promote)]


def published(decision: Any, kind: type) -> list[Any]:
    return [
        c.event for c in decision.commands if isinstance(c, Publish) and isinstance(c.event, kind)
    ]


HEALTHY = (primary(), standby("node2"), standby("node3"))


def test_healthy_cluster_needs_nothing() -> None:
    decision = decide(observe(*HEALTHY))
    assert decision.commands == ()
    assert decision.reason == "node1 is healthy"


def test_first_topology_comes_from_the_one_writable_primary() -> None:
    decision = decide(observe(*HEALTHY, topology=None))
    (create,) = decision.commands
    assert isinstance(create, CreateTopology)
    assert create.topology.primary == "node1"
    assert create.topology.epoch == 0


def test_no_topology_is_made_from_two_writable_primaries() -> None:
    decision = decide(
        observe(primary(), rep("node2", role="primary", writable=True), topology=None)
    )
    assert decision.commands == ()
    assert "2 writable primaries" in decision.reason


def test_primary_lost_promotes_the_most_advanced_synchronous_standby() -> None:
    decision = decide(
        observe(down("node1"), standby("node2", "0/4FFFF00"), standby("node3", "0/5000000"))
    )
    assert kinds(decision) == ["WriteTopology", "Publish", "Fence", "Detach", "Promote", "Repoint"]
    write = decision.commands[0]
    assert isinstance(write, WriteTopology)
    assert write.topology.primary == "node3"
    assert write.topology.epoch == 5
    assert write.topology.operation is not None
    assert write.topology.operation.kind is FailoverKind.AUTOMATIC
    assert decision.commands[2] == Fence(
        "node1", 5, "node1 unreachable for 3 probes by 1 of 1 monitors: node3 takes over"
    )
    assert decision.commands[3] == Detach("node2", 5, "node1")  # before the promotion (guarantee 2)
    # promoted only if, read after the fence, it has all node2 has (guarantee 2)
    assert decision.commands[4] == Promote("node3", 5, peers=("node2",), old_primary="node1")
    assert decision.commands[5] == Repoint("node2", "node3", 5)
    (started,) = published(decision, FailoverStarted)
    assert started.candidate == "node3"
    assert started.epoch == 5
    assert "unreachable for 3 probes by 1 of 1 monitors" in started.reason


def test_equal_positions_fall_back_to_priority() -> None:
    decision = decide(observe(down("node1"), standby("node2"), standby("node3")))
    assert ("node2", 5) in promotions(decision)


@pytest.mark.parametrize(
    ("reports", "expected_reason"),
    [
        ((down("node1", failures=2), standby("node2"), standby("node3")), "node1 is healthy"),
        # one of two monitors sees it down: no majority
        (
            (down("node1", "m1"), primary("m2"), standby("node2"), standby("node3")),
            "1 of 2 monitors see node1 down (2 reporting): no majority, keeping it",
        ),
        # every report is stale: the monitors cannot reach NATS, nobody acts
        (
            (rep("node1", reachable=False, consecutive_failures=9, age=10),),
            "no monitor reported on node1 in the last 3s",
        ),
    ],
)
def test_no_failover_without_a_fresh_majority(
    reports: tuple[NodeHealth, ...], expected_reason: str
) -> None:
    decision = decide(observe(*reports))
    assert decision.reason == expected_reason
    assert not any(isinstance(c, (Promote, WriteTopology, Fence)) for c in decision.commands)


def test_partition_is_said_in_a_held_event() -> None:
    decision = decide(observe(down("node1", "m1"), primary("m2"), standby("node2")))
    (held,) = published(decision, FailoverHeld)
    assert held.primary == "node1"
    assert "no majority" in held.reason


def test_two_of_three_monitors_are_a_majority() -> None:
    decision = decide(
        observe(
            down("node1", "m1"),
            down("node1", "m2"),
            primary("m3"),
            standby("node2"),
            standby("node3"),
        )
    )
    assert ("node2", 5) in promotions(decision)


def test_a_dead_monitor_does_not_block_the_live_one() -> None:
    stale = rep("node1", "m2", role="primary", writable=True, age=30)
    decision = decide(observe(down("node1", "m1"), stale, standby("node2"), standby("node3")))
    assert ("node2", 5) in promotions(decision)


@pytest.mark.parametrize(
    ("reports", "cluster", "topology", "why"),
    [
        # the only other standby is far behind
        (
            (down("node1"), standby("node2", "0/1000000"), down("node3")),
            CLUSTER,
            TOPO.model_copy(update={"synchronous": ("node2",)}),
            "node2: 67108864 bytes behind, more than maximum_lag_on_failover (1048576)",
        ),
        # a nofailover standby is never chosen
        (
            (down("node1"), standby("node2"), down("node3")),
            CLUSTER.model_copy(
                update={
                    "nodes": (
                        CLUSTER.nodes[0],
                        CLUSTER.nodes[1].model_copy(update={"tags": frozenset({"nofailover"})}),
                        CLUSTER.nodes[2],
                    )
                }
            ),
            TOPO.model_copy(update={"synchronous": ("node2",)}),
            "node2: tagged nofailover",
        ),
        # a synchronous standby that cannot be asked might hold the only copy of a commit
        (
            (down("node1"), standby("node2"), down("node3")),
            CLUSTER,
            TOPO,
            "node3: synchronous standby unreachable",
        ),
    ],
)
def test_refusals_say_exactly_why(
    reports: tuple[NodeHealth, ...], cluster: ClusterSpec, topology: Topology, why: str
) -> None:
    decision = decide(observe(*reports, cluster=cluster, topology=topology))
    assert not any(isinstance(c, Promote) for c in decision.commands)
    (failed,) = published(decision, FailoverFailed)
    assert why in failed.reason
    assert failed.kind is FailoverKind.AUTOMATIC


def test_synchronous_mode_passes_over_an_asynchronous_standby() -> None:
    # node2 is as far ahead and preferred by priority, but asynchronous: it may miss
    # acknowledged commits, so the synchronous node3 is promoted instead
    topology = TOPO.model_copy(update={"synchronous": ("node3",)})
    decision = decide(observe(down("node1"), standby("node2"), standby("node3"), topology=topology))
    assert kinds(decision) == ["WriteTopology", "Publish", "Fence", "Detach", "Promote", "Repoint"]
    write = decision.commands[0]
    assert isinstance(write, WriteTopology)
    assert write.topology.primary == "node3"
    assert decision.commands[4] == Promote("node3", 5, old_primary="node1")
    assert decision.commands[5] == Repoint("node2", "node3", 5)
    assert published(decision, FailoverFailed) == []


def test_async_mode_may_promote_any_healthy_standby() -> None:
    decision = decide(
        observe(
            down("node1"), standby("node2"), down("node3"), policy=Policy(synchronous_mode="off")
        )
    )
    assert ("node2", 5) in promotions(decision)


def test_lag_is_measured_against_the_last_primary_position() -> None:
    reports = (down("node1"), standby("node2", "0/4000000"), standby("node3", "0/4000000"))
    near = decide(observe(*reports, last_primary_lsn={"node1": lsn_to_int("0/4080000")}))
    assert any(isinstance(c, Promote) for c in near.commands)
    far = decide(observe(*reports, last_primary_lsn={"node1": lsn_to_int("0/5000000")}))
    assert not any(isinstance(c, Promote) for c in far.commands)


OP = Operation(
    kind=FailoverKind.AUTOMATIC,
    old_primary="node1",
    new_primary="node2",
    reason="node1 unreachable",
    started_at=NOW - timedelta(seconds=2),
    synchronous=SYNC_ALL,
)
AFTER = TOPO.promoted("node2", OP, at=NOW - timedelta(seconds=1))


def test_an_interrupted_failover_is_finished_not_restarted() -> None:
    # the new primary is still a standby: the promotion did not happen yet
    decision = decide(observe(down("node1"), standby("node2"), standby("node3"), topology=AFTER))
    # ... and whoever resumes it fences the old primary again first (issue 7, guarantee 6)
    assert decision.commands == (
        Fence("node1", 5, "automatic: node2 takes over"),
        Detach("node3", 5, "node1"),
        Promote("node2", 5, peers=("node3",), old_primary="node1"),
    )
    # promoted, node3 still points at node1
    decision = decide(
        observe(
            down("node1"),
            rep("node2", role="primary", writable=True),
            standby("node3"),
            topology=AFTER,
        )
    )
    assert decision.commands == (Repoint("node3", "node2", 5),)


def test_a_converged_failover_is_recorded_complete() -> None:
    converged = observe(
        down("node1"),
        rep("node2", role="primary", writable=True),
        standby("node3", upstream="node2", configured_upstream="node2"),
        topology=AFTER,
    )
    decision = decide(converged)
    # The event before the write that ends the operation: a leader that dies between them
    # leaves the operation for the next one to finish, and its event with it.
    assert kinds(decision) == ["Publish", "WriteTopology"]
    write = decision.commands[1]
    assert isinstance(write, WriteTopology)
    assert write.topology.operation is None
    assert write.topology.epoch == 5
    (done,) = published(decision, FailoverCompleted)
    assert (done.old_primary, done.new_primary, done.epoch) == ("node1", "node2", 5)
    assert done.total_seconds == pytest.approx(2.0)
    # Whoever finishes it later says the same event (its timings differ), which the
    # stream's duplicate window stores once.
    assert AFTER.operation is not None
    earlier = AFTER.operation.model_copy(
        update={"started_at": AFTER.operation.started_at - timedelta(seconds=7)}
    )
    resumed = AFTER.model_copy(update={"operation": earlier})
    later = decide(dataclasses.replace(converged, topology=resumed))
    (again,) = published(later, FailoverCompleted)
    assert again.total_seconds != done.total_seconds
    assert again.event_id == done.event_id


def test_the_old_primary_coming_back_writable_is_fenced_at_once() -> None:
    decision = decide(
        observe(
            primary(),
            rep("node2", role="primary", writable=True),
            standby("node3", upstream="node2", configured_upstream="node2"),
            topology=AFTER,
        )
    )
    fence = decision.commands[0]
    assert fence == Fence("node1", 5, "node1 accepts writes but the primary at epoch 5 is node2")


def test_a_report_from_before_the_epoch_changed_fences_nobody() -> None:
    decision = decide(
        observe(
            primary(age=1.5),  # taken before node2 took over
            rep("node2", role="primary", writable=True),
            standby("node3", upstream="node2", configured_upstream="node2"),
            topology=AFTER,
        )
    )
    assert not any(isinstance(c, Fence) for c in decision.commands)


def test_a_fenced_read_only_old_primary_is_left_alone() -> None:
    decision = decide(
        observe(
            rep("node1", role="primary", writable=False),
            rep("node2", role="primary", writable=True),
            standby("node3", upstream="node2", configured_upstream="node2"),
            topology=AFTER.model_copy(update={"operation": None}),
        )
    )
    assert not any(isinstance(c, Fence) for c in decision.commands)


def test_new_primary_dying_mid_failover_starts_another_under_a_new_epoch() -> None:
    decision = decide(
        observe(
            down("node1"),
            down("node2"),
            standby("node3"),
            topology=AFTER,
            policy=Policy(synchronous_mode="off"),
        )
    )
    assert ("node3", 6) in promotions(decision)


def test_a_lost_standby_is_no_failover() -> None:
    decision = decide(observe(primary(), standby("node2"), down("node3")))
    assert not any(isinstance(c, (Promote, Fence)) for c in decision.commands)


@pytest.mark.parametrize(
    ("streaming", "actual", "topo_sync", "mode", "expected"),
    [
        (["node2", "node3"], 'ANY 1 ("node2", "node3")', SYNC_ALL, "on", []),
        # a standby stopped streaming: PostgreSQL stops waiting for it first; the record
        # keeps it (it may hold a commit only it acknowledged) until a later report
        (["node2"], 'ANY 1 ("node2", "node3")', SYNC_ALL, "on", ["SetSynchronous", "Publish"]),
        # ... which shows PostgreSQL narrowed and node2 caught up: the record follows
        (["node2"], 'ANY 1 ("node2")', SYNC_ALL, "on", ["WriteTopology", "Publish"]),
        # a standby is back: recorded first (Patroni's invariant for ANY 1), then waited for
        (
            ["node2", "node3"],
            'ANY 1 ("node2")',
            ("node2",),
            "on",
            ["WriteTopology", "SetSynchronous", "Publish"],
        ),
        # none left: degrade to async, with an event; the record empties first (a commit
        # acknowledged once PostgreSQL stops waiting is on no standby: promote nobody)
        ([], 'ANY 1 ("node2")', ("node2",), "on", ["WriteTopology", "SetSynchronous", "Publish"]),
        ([], "", ("node2",), "on", ["WriteTopology", "Publish"]),
        # none left, strict: keep waiting
        ([], 'ANY 1 ("node2")', ("node2",), "strict", []),
        (["node2"], "", (), "off", []),
    ],
)
def test_synchronous_standby_set_follows_healthy_standbys(
    streaming: list[str],
    actual: str,
    topo_sync: tuple[str, ...],
    mode: str,
    expected: list[str],
) -> None:
    replicas = [
        ReplicaState(name=n, state="streaming", sync_state="quorum", flush_lsn="0/5000000")
        for n in streaming
    ]
    topo = TOPO.model_copy(update={"synchronous": topo_sync})
    decision = decide(
        observe(
            primary(sync=actual, replicas=replicas),
            standby("node2"),
            standby("node3"),
            topology=topo,
            policy=Policy(synchronous_mode=mode),  # type: ignore[arg-type]
        )
    )
    assert kinds(decision) == expected
    if expected:
        sets = [c for c in decision.commands if isinstance(c, SetSynchronous)]
        assert not sets or sets[0].standbys == tuple(streaming)
        (event,) = published(decision, SyncChanged)
        assert event.degraded == (not streaming and mode == "on")


def test_a_synchronous_set_lost_and_found_again_is_said_each_time() -> None:
    """The same change decided on another report is another event: a standby that drops
    and comes back within two minutes was said once (one id), the history hid the flap."""

    def degrade() -> Any:
        decision = decide(
            observe(
                primary(sync='ANY 1 ("node2")', replicas=[]),
                standby("node2"),
                standby("node3"),
                topology=TOPO.model_copy(update={"synchronous": ("node2",)}),
            )
        )
        (event,) = published(decision, SyncChanged)
        return event

    first, again = degrade(), degrade()
    assert first.degraded
    assert again.degraded
    assert first.event_id != again.event_id


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("", ()),
        ('ANY 1 ("node2", "node3")', ("node2", "node3")),
        ("ANY 1 (b,a)", ("a", "b")),
        ('FIRST 1 ("we""ird")', ('we"ird',)),
        ("*", ()),
    ],
)
def test_parse_sync_names(value: str, names: tuple[str, ...]) -> None:
    assert parse_sync_names(value) == names


def ask(kind: str, target: str | None, reason: str = "planned maintenance") -> Any:
    model = {"failover": FailoverRequested, "switchover": SwitchoverRequested}[kind]
    return model(
        cluster="main",
        source=Source(service="gateway", instance="g"),
        target=target,
        reason=reason,
        requested_by="alice",
    )


LOCAL = CLUSTER.model_copy(
    update={
        "nodes": tuple(
            n.model_copy(update={"data_dir": Path(f"/data/{n.name}")}) for n in CLUSTER.nodes
        )
    }
)


@pytest.mark.parametrize(
    ("kind", "target", "reports", "topology", "why"),
    [
        ("switchover", "node9", HEALTHY, TOPO, "no node named 'node9' in cluster main"),
        ("failover", "node9", HEALTHY, TOPO, "no node named 'node9' in cluster main"),
        ("switchover", "node1", HEALTHY, TOPO, "node1 is already the primary"),
        ("failover", "node1", HEALTHY, TOPO, "node1 is already the primary"),
        ("switchover", "node2", HEALTHY, AFTER, "a automatic to node2 is under way"),
        (
            "switchover",
            "node2",
            # suspect, not failed (one of two monitors): a failed one is failed over first
            (down("node1", "m1"), primary("m2"), standby("node2"), standby("node3")),
            TOPO,
            "a switchover needs a healthy primary",
        ),
        (
            "switchover",
            "node2",
            (primary(), down("node2"), standby("node3")),
            TOPO,
            "node2: unreachable",
        ),
        (
            "switchover",
            "node3",
            (primary(), standby("node2"), standby("node3", "0/1000000")),
            TOPO,
            "node3: 67108864 bytes behind",
        ),
        (
            "failover",
            "node3",
            (primary(), standby("node2"), standby("node3", "0/1000000")),
            TOPO,
            "node3: 67108864 bytes behind",
        ),
    ],
)
def test_operator_requests_are_refused_with_the_reason(
    kind: str, target: str, reports: tuple[NodeHealth, ...], topology: Topology, why: str
) -> None:
    obs = observe(*reports, topology=topology)
    decision = decide(dataclasses.replace(obs, request=ask(kind, target)))
    assert not any(isinstance(c, (Promote, Handover, WriteTopology)) for c in decision.commands)
    failed = published(decision, SwitchoverFailed if kind == "switchover" else FailoverFailed)
    assert len(failed) == 1
    assert why in failed[0].reason
    assert failed[0].target == target


def test_switchover_hands_over_then_promotes_repoints_and_rejoins_the_old_primary() -> None:
    obs = observe(*HEALTHY, cluster=LOCAL)
    decision = decide(dataclasses.replace(obs, request=ask("switchover", "node3")))
    assert kinds(decision) == [
        "Handover",
        "Detach",
        "WriteTopology",
        "Publish",
        "Promote",
        "Repoint",
        "Rejoin",
    ]
    assert decision.commands[0] == Handover("node1", "node3", 4)  # under the old epoch
    # ... and so is the detach of the other standby: the old primary may run on (read-only,
    # until its agent stops it), and WAL it writes then must not reach node2, which is to
    # follow node3.
    assert decision.commands[1] == Detach("node2", 4, "node1")
    write = decision.commands[2]
    assert isinstance(write, WriteTopology)
    assert write.topology.primary == "node3"
    assert write.topology.operation is not None
    assert write.topology.operation.kind is FailoverKind.SWITCHOVER
    assert "alice" in write.topology.operation.reason
    assert decision.commands[4:] == (
        # node3 has what node2 has before it is promoted (node2 can follow it); a node2 that
        # does not answer is passed over: node3 replayed every acknowledged commit
        Promote("node3", 5, ("node2",), peers_optional=True),
        Repoint("node2", "node3", 5),
        Rejoin("node1", "node3", 5),
    )


def test_switchover_without_a_target_picks_the_best_standby() -> None:
    decision = decide(dataclasses.replace(observe(*HEALTHY), request=ask("switchover", None)))
    assert ("node2", 5) in promotions(decision)
    # node1 is not local: its agent is ordered to rejoin it.
    assert decision.commands[-1] == Rejoin("node1", "node2", 5)


def test_manual_failover_promotes_the_named_standby_at_once() -> None:
    decision = decide(dataclasses.replace(observe(*HEALTHY), request=ask("failover", "node3")))
    assert kinds(decision) == ["WriteTopology", "Publish", "Fence", "Detach", "Promote", "Repoint"]
    assert ("node3", 5) in promotions(decision)


def test_a_primary_left_read_only_takes_writes_again() -> None:
    decision = decide(observe(primary(writable=False), standby("node2"), standby("node3")))
    # Its commits wait for the recorded set from the first: reset to none (as the fence and
    # a failed handover leave it), one acknowledged before the next round set it again would
    # be on no standby while the record names one as holding them all.
    assert decision.commands == (Promote("node1", 4, synchronous=TOPO.synchronous),)
    assert TOPO.synchronous


def rejoin_request(node: str) -> NodeRejoinRequested:
    return NodeRejoinRequested(cluster="main", node=node, source=ME, requested_by="drill")


@pytest.mark.parametrize(
    ("node", "cluster", "reports", "why"),
    [
        ("node9", LOCAL, HEALTHY, "no node named 'node9'"),
        ("node1", LOCAL, HEALTHY, "node1 is the primary"),
        ("node2", LOCAL, HEALTHY, "it already streams from node1"),
    ],
)
def test_rejoin_refusals(
    node: str, cluster: ClusterSpec, reports: tuple[NodeHealth, ...], why: str
) -> None:
    obs = observe(*reports, cluster=cluster)
    decision = decide(dataclasses.replace(obs, request=rejoin_request(node)))
    (failed,) = published(decision, FailoverFailed)
    assert why in failed.reason


@pytest.mark.parametrize("cluster", [LOCAL, CLUSTER], ids=["here", "by its agent"])
def test_rejoin_of_a_fenced_old_primary(cluster: ClusterSpec) -> None:
    obs = observe(
        down("node1"),
        rep("node2", role="primary", writable=True),
        standby("node3", upstream="node2", configured_upstream="node2"),
        topology=AFTER.model_copy(update={"operation": None}),
        cluster=cluster,
    )
    decision = decide(dataclasses.replace(obs, request=rejoin_request("node1")))
    assert decision.commands == (Rejoin("node1", "node2", 5),)


@pytest.mark.parametrize("promoted", [True, False], ids=["promoted", "reports lag"])
def test_the_old_primary_is_rejoined_while_its_operation_converges(promoted: bool) -> None:
    """`lifeboat rejoin node1` right after the promotion (the monitors' reports may not show
    it yet): the operation itself rejoins its fenced old primary onto the candidate, so an
    operator's rejoin of it is not refused; node3, detached by the operation, would be."""
    candidate = rep("node2", role="primary", writable=True) if promoted else standby("node2")
    obs = observe(
        down("node1"),
        candidate,
        standby("node3", configured_upstream=None),
        topology=AFTER,
        cluster=CLUSTER,
    )
    decision = decide(dataclasses.replace(obs, request=rejoin_request("node1")))
    assert decision.commands == (Rejoin("node1", "node2", 5),)


@pytest.mark.parametrize(
    ("topology", "epoch", "why"),
    [
        # Mid-failover node3 is detached on purpose and node2 not yet promoted: a rejoin
        # (its agent asks once it follows nobody for 10 s) would tear down a member the
        # operation may still need.
        (AFTER, None, "a automatic to node2 is under way and node2 takes no writes yet"),
        (AFTER.model_copy(update={"operation": None}), 4, "asked under epoch 4"),
    ],
    ids=["during an operation", "under an older epoch"],
)
def test_a_rejoin_asked_at_the_wrong_time_is_refused(
    topology: Topology, epoch: int | None, why: str
) -> None:
    obs = observe(
        down("node1"),
        standby("node2"),
        standby("node3", configured_upstream=None),
        topology=topology,
        cluster=CLUSTER,
    )
    request = rejoin_request("node3").model_copy(update={"epoch": epoch})
    decision = decide(dataclasses.replace(obs, request=request))
    assert not [c for c in decision.commands if isinstance(c, Rejoin)]
    (failed,) = published(decision, FailoverFailed)
    assert why in failed.reason


def test_a_primary_missing_from_the_cluster_file_is_not_acted_on() -> None:
    topo = TOPO.model_copy(update={"primary": "node7"})
    decision = decide(observe(*HEALTHY, topology=topo))
    assert decision.commands == ()
    assert "not in the cluster file" in decision.reason


def back(lsn: str = "0/5000000", probes: int = 1, **kw: Any) -> NodeHealth:
    """node1 started again in recovery (its agent left standby.signal), streaming nothing."""
    return rep(
        "node1", role="standby", writable=False, consecutive_read_only=probes, replay_lsn=lsn, **kw
    )


def test_a_primary_started_again_read_only_takes_writes_again_rather_than_failing_over() -> None:
    # Many read-only probes already: the leader may have waited out an old lease meanwhile.
    restarted = back(probes=40)
    decision = decide(observe(restarted, standby("node2"), standby("node3", "0/4F00000")))
    assert kinds(decision) == ["WriteTopology", "Promote", "Publish"]
    written, promote = decision.commands[0], decision.commands[1]
    assert isinstance(promote, Promote)
    assert isinstance(written, WriteTopology)
    # Checked again at the promotion: nobody it is promoted over has WAL it lacks.
    assert (promote.node, promote.epoch, promote.peers) == ("node1", 4, ("node2", "node3"))
    # Its promotion forks a timeline, recorded once it shows: not the one before it.
    assert (written.topology.epoch, written.topology.timeline) == (4, None)
    (held,) = published(decision, FailoverHeld)
    assert "started again read-only at 0/5000000 with every standby's WAL" in held.reason


@pytest.mark.parametrize(
    ("restarted", "trying_for", "why"),
    [
        (back("0/4000000", probes=3, timeline=2), None, "a standby has WAL it lacks"),
        (back(probes=3, timeline=2), BACK_SECONDS + 1, "its promotion back kept failing"),
    ],
)
def test_a_primary_back_in_recovery_is_failed_over(
    restarted: NodeHealth, trying_for: float | None, why: str
) -> None:
    topo = TOPO.model_copy(update={"timeline": 2})
    obs = observe(
        restarted, standby("node2", timeline=2), standby("node3", timeline=2), topology=topo
    )
    if trying_for is not None:
        obs = dataclasses.replace(obs, promoting_back_since=NOW - timedelta(seconds=trying_for))
    decision = decide(obs)
    assert ("node2", 5) in promotions(decision), why
    assert "node1 in recovery for 3 probes by 1 of 1 monitors" in decision.reason


def test_a_restarted_primary_showing_the_timeline_before_its_last_promotion_is_taken_back() -> None:
    """pg_control keeps the last checkpoint's timeline; a promotion's checkpoint is spread
    over minutes, so a primary restarted soon after shows the timeline before."""
    topo = TOPO.model_copy(update={"timeline": 3})
    decision = decide(
        observe(back(probes=3, timeline=2), standby("node2"), standby("node3"), topology=topo)
    )
    assert promotions(decision) == [("node1", 4)]


def test_a_restarted_primary_is_not_taken_back_while_a_synchronous_standby_cannot_be_asked() -> (
    None
):
    decision = decide(observe(back(probes=3), standby("node2"), down("node3")))
    assert ("node1", 4) not in promotions(decision)


def test_read_only_reports_from_before_a_primary_took_its_writes_back_do_not_fail_it() -> None:
    stale = [back(probes=40, age=1.0, monitor=m) for m in ("m2", "m3")]
    decision = decide(
        observe(
            primary("m1", age=0.2),
            *stale,
            standby("node2"),
            standby("node3"),
            policy=Policy(monitors=3),
        )
    )
    assert not promotions(decision)
    assert not any(isinstance(c, (Fence, Promote)) for c in decision.commands)


def test_read_only_reports_newer_than_a_writable_one_still_fail_the_primary() -> None:
    """The converse: in recovery after its writable report, and without WAL the standbys
    have (so not taken back), it is failed by the majority's newer reports."""
    older = primary("m1", age=2.0)
    newer = [back("0/4000000", probes=40, age=0.2, monitor=m) for m in ("m2", "m3")]
    decision = decide(
        observe(older, *newer, standby("node2"), standby("node3"), policy=Policy(monitors=3))
    )
    assert ("node2", 5) in promotions(decision)
    assert "in recovery for 3 probes by 2 of 3 monitors" in decision.reason


def test_a_primary_given_its_writes_back_is_tried_again_within_the_bound() -> None:
    obs = observe(back(probes=20), standby("node2"), standby("node3"))
    obs = dataclasses.replace(obs, promoting_back_since=NOW - timedelta(seconds=BACK_SECONDS - 1))
    assert promotions(decide(obs)) == [("node1", 4)]


def test_reports_from_before_the_promotion_do_not_fail_the_new_primary() -> None:
    done = AFTER.model_copy(update={"operation": None})
    stale = [
        rep("node2", m, role="standby", writable=False, consecutive_read_only=9, age=1.5)
        for m in ("m2", "m3")
    ]
    decision = decide(
        observe(
            down("node1"),
            rep("node2", "m1", role="primary", writable=True),
            *stale,
            standby("node3", upstream="node2", configured_upstream="node2"),
            topology=done,
        )
    )
    assert not any(isinstance(c, (Promote, WriteTopology)) for c in decision.commands)


@pytest.mark.parametrize("names", [(), ("node2",), ("node2", "node3"), ('we"ird', "x-y")])
def test_sync_names_read_back_what_is_written(names: tuple[str, ...]) -> None:
    assert parse_sync_names(format_sync_names(names)) == tuple(sorted(names))
