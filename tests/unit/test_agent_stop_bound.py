"""The leader's wait for a requested stop and the agent's escalation agree: a frozen node,
which takes no signal but SIGKILL, is stopped and answered inside the leader's wait, so its
fence is confirmed in the round that asked for it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from lifeboat.agent.settings import AgentSettings
from lifeboat.failover.settings import FailoverSettings
from lifeboat.pg.datadir import frozen


def test_a_requested_stop_escalates_to_sigkill_inside_the_leaders_wait() -> None:
    agent = AgentSettings(agent_node="node1", agent_data_dir=Path("/nonexistent"))
    leader = FailoverSettings()
    step = agent.agent_requested_stop_timeout_seconds
    # The topology read, then fast, immediate and SIGKILL, each waited on for one step.
    worst = agent.agent_nats_timeout_seconds + 3 * step
    assert worst < leader.agent_stop_answer_seconds
    # The self-fence keeps the longer steps: nobody waits on its answer.
    assert step < agent.agent_stop_timeout_seconds


def test_a_stopped_process_is_seen_frozen() -> None:
    """A SIGSTOPped postmaster takes neither a fast nor an immediate stop: the agent kills it
    at once (it waited 2 x 2 s for stops it could not take, on top of the failover's RTO)."""
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert not frozen(proc.pid)
        os.kill(proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not frozen(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert frozen(proc.pid)
        os.kill(proc.pid, signal.SIGCONT)
    finally:
        proc.kill()
        proc.wait(5)
    assert not frozen(proc.pid)
