"""A forced failover's accepted, unconfirmed fence (executor): how long nobody is promoted,
and what `node.fenced` says, with and without an agent known to guard the old primary."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest

from lifeboat.common.events import ClusterEvent, NodeFenced, Source
from lifeboat.common.kv import TopologyStore, Versioned
from lifeboat.common.state import Topology
from lifeboat.failover.commands import Decision, Fence
from lifeboat.failover.executor import Executor
from lifeboat.failover.nodes import FenceUnconfirmedError, NodeActions

TOPOLOGY = Versioned(Topology(cluster="main", primary="node2", epoch=4), 7)


class Store:
    async def get(self, cluster: str) -> Versioned[Topology]:
        return TOPOLOGY


class Unconfirmed:
    def __init__(self, agent_quiet: float | None) -> None:
        self.agent_quiet = agent_quiet

    async def fence(self, name: str, **_: Any) -> str:
        raise FenceUnconfirmedError(f"{name}: not reachable over SQL", self.agent_quiet)


async def fenced_with(agent_quiet: float | None) -> tuple[str, float]:
    said: list[ClusterEvent] = []

    async def publish(event: ClusterEvent) -> None:
        said.append(event)

    async def leading() -> bool:
        return True

    executor = Executor(
        "main",
        cast(TopologyStore, Store()),
        cast(NodeActions, Unconfirmed(agent_quiet)),
        publish,
        leading,
        Source(service="failover", instance="f-1"),
        self_fence_wait=6.0,
    )
    before = time.monotonic()
    fence = Fence("node1", 4, "operator's forced failover", accepted=True)
    (outcome,) = await executor.run(Decision((fence,), "forced"), TOPOLOGY)
    assert outcome.ok
    (event,) = said
    assert isinstance(event, NodeFenced)
    return event.reason, executor._promote_after - before


@pytest.mark.parametrize(
    ("agent_quiet", "wait", "says"),
    [
        (8.0, 8.0, "nobody is promoted for 8s, for its node agent to stop it"),  # its lease's
        (3.0, 6.0, "nobody is promoted for 6s, for its node agent to stop it"),  # ours
        (None, 6.0, "no agent lease was seen for it, so nothing is known to stop it"),
    ],
)
async def test_a_forced_failover_waits_the_longer_bound_and_says_who_guards_the_old_primary(
    agent_quiet: float | None, wait: float, says: str
) -> None:
    reason, waited = await fenced_with(agent_quiet)
    assert says in reason
    assert wait <= waited < wait + 0.5
