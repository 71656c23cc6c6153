"""The leader's wait for a requested stop and the agent's escalation agree: a frozen node,
which takes no signal but SIGKILL, is stopped and answered inside the leader's wait, so its
fence is confirmed in the round that asked for it."""

from __future__ import annotations

from pathlib import Path

from lifeboat.agent.settings import AgentSettings
from lifeboat.failover.settings import FailoverSettings


def test_a_requested_stop_escalates_to_sigkill_inside_the_leaders_wait() -> None:
    agent = AgentSettings(agent_node="node1", agent_data_dir=Path("/nonexistent"))
    leader = FailoverSettings()
    step = agent.agent_requested_stop_timeout_seconds
    # The topology read, then fast, immediate and SIGKILL, each waited on for one step.
    worst = agent.agent_nats_timeout_seconds + 3 * step
    assert worst < leader.agent_stop_answer_seconds
    # The self-fence keeps the longer steps: nobody waits on its answer.
    assert step < agent.agent_stop_timeout_seconds
