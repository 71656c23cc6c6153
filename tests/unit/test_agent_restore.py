"""Whether the agent starts a node it restored: only the primary the topology names (or any,
before there is a topology); any other would be a primary beside the cluster's."""

from __future__ import annotations

import pytest

from lifeboat.agent.restore import starts_restored
from lifeboat.common.events import Role
from lifeboat.common.state import Topology

TOPOLOGY = Topology(
    cluster="main",
    primary="node1",
    epoch=4,
    members={"node1": Role.PRIMARY, "node2": Role.STANDBY},
)


@pytest.mark.parametrize(
    ("node", "topology", "error", "started", "said"),
    [
        ("node1", TOPOLOGY, None, True, "named primary at epoch 4"),
        ("node2", TOPOLOGY, None, False, "names node1 primary at epoch 4"),
        ("node2", None, None, True, "no topology yet"),
        ("node1", TOPOLOGY, "timeout", False, "cannot be read (timeout)"),
    ],
)
def test_only_the_named_primary_is_started_on_restored_data(
    node: str, topology: Topology | None, error: str | None, started: bool, said: str
) -> None:
    start, detail = starts_restored(node, topology, error)
    assert start is started
    assert said in detail
