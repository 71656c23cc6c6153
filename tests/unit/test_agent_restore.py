"""Whether the agent starts a node it restored: only the primary the topology names (or any,
before there is a topology); any other would be a primary beside the cluster's."""

from __future__ import annotations

import pytest

from lifeboat.agent.restore import starts_restored
from lifeboat.common.events import FailoverKind, Role
from lifeboat.common.state import Operation, Topology

TOPOLOGY = Topology(
    cluster="main",
    primary="node1",
    epoch=4,
    members={"node1": Role.PRIMARY, "node2": Role.STANDBY},
)

# node1 still named while a failover away from it is under way
BUSY = TOPOLOGY.model_copy(update={"operation": Operation(kind=FailoverKind.AUTOMATIC,
    old_primary="node1", new_primary="node2", reason="node1 down")})  # fmt: skip


@pytest.mark.parametrize(
    ("node", "topology", "error", "started", "said"),
    [
        ("node1", TOPOLOGY, None, True, "named primary at epoch 4"),
        ("node2", TOPOLOGY, None, False, "names node1 primary at epoch 4"),
        ("node2", None, None, True, "no topology yet"),
        ("node1", TOPOLOGY, "timeout", False, "cannot be read (timeout)"),
        ("node1", BUSY, None, False, "making node2 primary under way"),
    ],
)
def test_only_the_named_primary_is_started_on_restored_data(
    node: str, topology: Topology | None, error: str | None, started: bool, said: str
) -> None:
    start, detail = starts_restored(node, topology, error)
    assert start is started
    assert said in detail
