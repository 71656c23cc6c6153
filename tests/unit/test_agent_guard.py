"""The node agent's decision (lifeboat.agent.guard), with plain data."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lifeboat.agent.guard import Confirmed, Fence, Keep, Observation, PeerAnswer, judge, on_deadline
from lifeboat.agent.node import NodeState
from lifeboat.common.events import Role
from lifeboat.common.state import Topology

PRIMARY = NodeState(True, "in production", pm_status="ready")
STANDBY = NodeState(True, "in archive recovery")
STOPPED = NodeState(False, "shut down")
MEMBERS = {"node1": Role.PRIMARY, "node2": Role.STANDBY, "node3": Role.STANDBY}
NAMED = Topology(cluster="main", primary="node1", epoch=3, members=MEMBERS)
MOVED = NAMED.promoted("node2")
PEERS = {"node2": "http://h2:8105", "node3": "http://h3:8105"}


def seen(
    state: NodeState = PRIMARY,
    topology: Topology | None = NAMED,
    *,
    error: str | None = None,
    now: float = 100.0,
    confirmed_at: float = 99.0,
    answers: tuple[PeerAnswer, ...] | None = None,
    peers: dict[str, str] | None = None,
) -> Observation:
    return Observation(
        node="node1",
        now=now,
        state=state,
        topology=None if error else topology,
        read_error=error,
        read_at=now - 0.01,
        last_topology=NAMED,
        confirmed_at=confirmed_at,
        bound=5.0,
        peers=PEERS if peers is None else peers,
        answers=answers,
        asked_at=now - 0.005,
    )


def test_a_primary_the_topology_names_is_confirmed_as_of_the_reads_start() -> None:
    assert judge(seen()) == Confirmed(99.99, "named primary at epoch 3")


def test_a_writable_node_the_topology_does_not_name_is_fenced_at_once() -> None:
    verdict = judge(seen(topology=MOVED, confirmed_at=99.9))
    assert isinstance(verdict, Fence)
    assert "names node2 primary at epoch 4" in verdict.reason


@pytest.mark.parametrize("state", [STANDBY, STOPPED])
def test_a_node_that_cannot_commit_is_left_alone(state: NodeState) -> None:
    assert isinstance(judge(seen(state, MOVED)), Keep)
    assert isinstance(judge(seen(state, error="timeout", now=200)), Keep)


def test_a_node_starting_up_takes_no_write_yet() -> None:
    # pg_control shows the state it stopped in until recovery begins (a rejoin's start), a
    # fresh base backup the primary's; the postmaster lets nobody in while "starting".
    assert isinstance(judge(seen(NodeState(True, "shut down"), MOVED)), Keep)
    assert isinstance(judge(seen(NodeState(True, "in crash recovery"), MOVED)), Keep)
    copied = NodeState(True, "in production", pm_status="starting")
    assert isinstance(judge(seen(copied, MOVED)), Keep)
    # ... nor before it writes its status: a rejoin's start after pg_rewind copied the
    # primary's pg_control ("in production"), read in the first milliseconds
    assert isinstance(judge(seen(NodeState(True, "in production"), MOVED)), Keep)
    assert isinstance(
        judge(seen(NodeState(True, "in production", pm_status="ready"), MOVED)), Fence
    )


def test_an_unreadable_state_counts_as_writable() -> None:
    assert isinstance(judge(seen(NodeState(True, None, "permission denied"), MOVED)), Fence)
    ready = NodeState(True, None, "timeout", pm_status="ready")
    assert isinstance(judge(seen(ready, MOVED)), Fence)


def test_an_unreadable_state_of_a_hot_standby_is_no_reason_to_stop_it() -> None:
    """One pg_controldata failure (a timeout under load) must not stop a healthy standby:
    its postmaster says "standby" until its recovery ends."""
    standby = NodeState(True, None, "timeout", pm_status="standby")
    assert isinstance(judge(seen(standby, MOVED)), Keep)


def test_no_topology_yet_is_nobody_promoted() -> None:
    assert isinstance(judge(seen(topology=None)), Confirmed)


def test_without_nats_a_primary_serves_until_the_bound_then_is_fenced() -> None:
    keep = judge(seen(error="no answer", now=103.9, peers={}))
    assert isinstance(keep, Keep)
    fence = judge(seen(error="no answer", now=104.0, peers={}))
    assert isinstance(fence, Fence)
    assert "not confirmed primary for 5.0s" in fence.reason


FOLLOWING = (
    PeerAnswer("node2", writable=False, epoch=3, primary="node1"),
    PeerAnswer("node3", writable=False, epoch=None, primary=None),
)


def test_failsafe_every_member_answering_as_a_follower_confirms() -> None:
    verdict = judge(seen(error="no answer", now=110, answers=FOLLOWING))
    assert verdict == Confirmed(109.995, verdict.reason)
    assert "failsafe" in verdict.reason


def test_failsafe_one_member_silent_does_not_confirm_and_the_bound_fences() -> None:
    silent = (FOLLOWING[0], PeerAnswer("node3", error="ConnectTimeout"))
    assert isinstance(judge(seen(error="x", now=103, answers=silent)), Keep)
    fence = judge(seen(error="x", now=104, answers=silent))
    assert isinstance(fence, Fence)
    assert "node3's agent did not answer (ConnectTimeout)" in fence.reason


def test_failsafe_a_member_without_an_address_cannot_hold_it() -> None:
    verdict = judge(seen(error="x", now=104, answers=FOLLOWING[:1], peers={"node2": "u"}))
    assert isinstance(verdict, Fence)
    assert "no agent address for node3" in verdict.reason


@pytest.mark.parametrize(
    "answer",
    [
        PeerAnswer("node2", writable=True, epoch=3, primary="node1"),
        PeerAnswer("node2", writable=False, epoch=4, primary="node2"),
    ],
)
def test_failsafe_another_primary_fences_at_once(answer: PeerAnswer) -> None:
    verdict = judge(seen(error="x", now=100, answers=(answer, FOLLOWING[1])))
    assert isinstance(verdict, Fence)


def test_failsafe_an_older_view_of_another_primary_does_not_fence() -> None:
    older = PeerAnswer("node2", writable=False, epoch=2, primary="node2")
    assert isinstance(judge(seen(error="x", answers=(older, FOLLOWING[1]))), Confirmed)


def test_the_members_come_from_the_topology_last_read() -> None:
    two = replace(seen(error="x", answers=FOLLOWING[:1]), last_topology=None, peers={"node2": "u"})
    assert isinstance(judge(two), Confirmed)


def test_a_standby_the_leader_promoted_is_confirmed_by_the_read_that_names_it() -> None:
    # Its agent never confirmed it before (a standby): the deadline is long past.
    back = MOVED.promoted("node1")  # epoch 5: node1 promoted again after node2
    promoted = replace(seen(topology=back, confirmed_at=0.0), last_topology=MOVED)
    assert isinstance(judge(promoted), Confirmed)
    assert not on_deadline("node1", True, MOVED)
    assert on_deadline("node1", True, NAMED)
    assert on_deadline("node1", True, None)


def test_writable_against_the_topology_last_read_is_fenced_at_once_without_nats() -> None:
    stale = replace(seen(error="no answer", peers={}), last_topology=MOVED)
    verdict = judge(stale)
    assert isinstance(verdict, Fence)
    assert "the topology last read names node2 primary at epoch 4" in verdict.reason


def test_a_standby_promoted_since_its_last_read_is_kept_on_a_peers_newer_read() -> None:
    # Its last read (at 99.0) saw this postmaster in recovery under node2, epoch 4; node2's
    # agent has read node1 named primary at epoch 5 since: the leader wrote it, then
    # promoted node1, whose own first read after that failed.
    told = (PeerAnswer("node2", writable=False, epoch=5, primary="node1"),)
    promoted = replace(
        seen(error="no answer", confirmed_at=0.0, answers=told),
        last_topology=MOVED,
        standby_read_at=99.0,
    )
    verdict = judge(promoted)
    assert isinstance(verdict, Confirmed)
    assert verdict.at == 99.0  # the bound runs from its last read, when its lease was renewed
    assert "node2 read it named primary at epoch 5" in verdict.reason
    assert isinstance(judge(replace(promoted, now=104.0)), Fence)  # the bound from that read
    # Nobody read it named, or the newest read names another: fenced at once.
    newer = PeerAnswer("node3", writable=False, epoch=6, primary="node3")
    for answers in ((PeerAnswer("node2", writable=False, epoch=4, primary="node2"),), None):
        assert isinstance(judge(replace(promoted, answers=answers)), Fence)
    assert isinstance(judge(replace(promoted, answers=(*told, newer))), Fence)
    # A read that works and names another primary fences it at once.
    read = replace(promoted, topology=MOVED, read_error=None)
    assert isinstance(judge(read), Fence)
    # Not seen in recovery at its last read (started writable since): fenced at once.
    assert isinstance(judge(replace(promoted, standby_read_at=None)), Fence)


def test_failsafe_never_confirms_a_node_the_topology_last_read_did_not_name() -> None:
    silent = (PeerAnswer("node2", writable=False), PeerAnswer("node3", writable=False))
    stale = replace(seen(error="no answer", answers=silent), last_topology=MOVED)
    assert isinstance(judge(stale), Fence)


def test_a_record_gone_after_one_was_read_is_not_nobody_promoted_yet() -> None:
    gone = replace(seen(topology=None, confirmed_at=0.0), last_topology=MOVED)
    verdict = judge(gone)
    assert isinstance(verdict, Fence)  # writable against the record read before
    assert "the topology record is gone" in verdict.reason
    assert isinstance(judge(replace(gone, last_topology=NAMED)), Confirmed)


def test_a_topology_older_than_one_read_before_is_a_rolled_back_store_not_an_order() -> None:
    """node2, promoted at epoch 4, then NATS back on a store from before: epoch 3 names
    node1. Stopping node2 would leave no primary; the newer record read before stands."""
    promoted = replace(seen(topology=NAMED), node="node2", last_topology=MOVED)
    verdict = judge(promoted)
    assert isinstance(verdict, Confirmed)
    assert "named primary at epoch 4" in verdict.reason
    assert "went back to epoch 3" in verdict.reason
    # The old primary, were it writable, is still stopped by the newer record.
    old = replace(seen(topology=NAMED), last_topology=MOVED)
    assert isinstance(judge(old), Fence)
