"""A restarted agent counts its bound from its predecessor's last confirmation (recorded in
the data directory), not from its own start: the failover leader, which sees only the
agent's lease, assumes the bound runs on across restarts."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from lifeboat.agent.agent import START_GRACE_SECONDS, Agent
from lifeboat.agent.node import last_confirmation, record_confirmation
from lifeboat.agent.settings import AgentSettings
from lifeboat.common.events import Source
from lifeboat.pg.datadir import DataDir
from lifeboat.pg.osuser import OsUser

BOUND = 5.0


async def _nowhere(event: object) -> None:
    raise AssertionError("nothing is published here")


def agent_on(path: Path) -> Agent:
    settings = AgentSettings(
        agent_node="node1", agent_data_dir=path, agent_self_fence_seconds=BOUND
    )
    data = DataDir(path, OsUser.current(), Path("/nonexistent"))
    return Agent(
        settings, data, Source(service="agent", instance="t"), _nowhere, httpx.AsyncClient()
    )


def test_a_first_start_counts_as_the_last_confirmation(tmp_path: Path) -> None:
    before = time.monotonic()
    agent = agent_on(tmp_path)
    assert before <= agent.confirmed_at <= time.monotonic()


@pytest.mark.parametrize(
    ("ago", "left"),
    [
        (1.0, BOUND - 1.0),  # restarted within the bound: the rest of it, not a new one
        (60.0, START_GRACE_SECONDS),  # down past it: only the grace to connect and confirm
        (-30.0, BOUND),  # the wall clock went back: as a first start
    ],
)
def test_a_restarted_agent_counts_from_its_predecessors_confirmation(
    tmp_path: Path, ago: float, left: float
) -> None:
    record_confirmation(DataDir(tmp_path, OsUser.current(), Path("/x")), time.time() - ago)
    agent = agent_on(tmp_path)
    assert agent.deadline - time.monotonic() == pytest.approx(left, abs=0.2)


def test_a_torn_or_missing_record_reads_as_none(tmp_path: Path) -> None:
    data = DataDir(tmp_path, OsUser.current(), Path("/x"))
    assert last_confirmation(data) is None
    (tmp_path / "lifeboat.agent-confirmed").write_text("17")
    assert last_confirmation(data) == 17.0
    (tmp_path / "lifeboat.agent-confirmed").write_text("")
    assert last_confirmation(data) is None
