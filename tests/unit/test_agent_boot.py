"""A node's start on a host of its own (lifeboat.agent.boot.plan), with plain data."""

from __future__ import annotations

import pytest

from lifeboat.agent.boot import Clone, Init, Observation, Plan, Start, Wait, plan
from lifeboat.common.state import Topology

NAMED = Topology(cluster="main", primary="node1", epoch=3)
MOVED = NAMED.promoted("node2")
NOBODY = Topology(cluster="main", primary=None, epoch=4)


def seen(
    *,
    initialized: bool = False,
    topology: Topology | None = None,
    error: str | None = None,
    first: bool = False,
    writable: tuple[str, ...] = (),
    running: tuple[str, ...] = (),
) -> Observation:
    return Observation("node1", initialized, topology, error, first, writable, running)


CASES: list[tuple[str, Observation, type[Plan], str]] = [
    # A restart starts what is there; standby.signal, not the plan, keeps it read-only.
    ("restart", seen(initialized=True, topology=MOVED), Start, "exists"),
    ("restart without NATS", seen(initialized=True, error="gone"), Start, "exists"),
    ("the first start of the first primary", seen(first=True), Init, "first primary"),
    ("a standby before any primary", seen(), Wait, "waiting for the first primary"),
    ("a standby once node2 takes writes", seen(writable=("node2",)), Clone, "node2"),
    # A lost volume of the first primary must not make a second, empty cluster.
    (
        "the first primary, someone else writable",
        seen(first=True, writable=("node3",)),
        Clone,
        "node3",
    ),
    (
        "the first primary after a failover",
        seen(first=True, topology=MOVED),
        Clone,
        "node2 primary",
    ),
    ("two writable nodes", seen(writable=("node2", "node3")), Wait, "all take writes"),
    # Its NATS store lost too, the others read-only (standby.signal): the cluster exists,
    # and an initdb would be a second, empty one that the failover would record.
    (
        "the first primary, NATS lost, the others read-only",
        seen(first=True, running=("node2", "node3")),
        Wait,
        "the cluster exists",
    ),
    ("no topology read", seen(first=True, error="no servers"), Wait, "cannot be read"),
    ("named primary, empty", seen(first=True, topology=NAMED), Wait, "fail over"),
    ("no primary named", seen(topology=NOBODY), Wait, "names no primary"),
]


@pytest.mark.parametrize(("name", "observation", "kind", "says"), CASES, ids=[c[0] for c in CASES])
def test_plan(name: str, observation: Observation, kind: type[Plan], says: str) -> None:
    chosen = plan(observation)
    assert isinstance(chosen, kind), chosen
    assert says in chosen.reason


def test_a_clone_follows_the_topology_over_a_writable_node() -> None:
    """The topology decides; a node that takes writes against it is being fenced."""
    chosen = plan(seen(topology=MOVED, writable=("node3",)))
    assert chosen == Clone("node2", chosen.reason)
