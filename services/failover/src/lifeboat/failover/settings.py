from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from pydantic_settings import SettingsConfigDict

from lifeboat.common.settings import ServiceSettings


class FailoverSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LIFEBOAT_", extra="ignore", frozen=True)

    http_port: int = Field(default=8102, ge=0, le=65535)
    """Port of the health endpoint."""
    loop_interval_seconds: PositiveFloat = 0.5
    """How often the leader observes and decides."""
    lease_ttl_seconds: PositiveInt = 3
    """The failover lease's time to live; renewed every third of it."""
    failure_threshold: PositiveInt = 3
    """Failed probes in a row, by a majority of monitors, that fail a primary."""
    monitors: PositiveInt = 1
    """How many monitors are deployed: a majority of these, not of those that happen to be
    reporting, must see the primary down before it is failed over."""
    report_max_age_seconds: PositiveFloat = 3.0
    """A monitor's report counts while younger than this."""
    maximum_lag_on_failover: PositiveInt = 1024 * 1024
    """Bytes a standby may be behind the primary's last position and still be promoted."""
    synchronous_mode: Literal["off", "on", "strict"] = "on"
    """on: only synchronous standbys are promoted, and with none healthy commits stop
    waiting (with an event); strict: commits wait until a standby is back; off: async."""
    action_timeout_seconds: PositiveFloat = 2.0
    """Deadline of one SQL action on a node."""
    step_down_after: PositiveInt = 3
    """A leader whose actions failed this many rounds in a row on nodes the monitors reach
    (it reaches NATS, not PostgreSQL) gives the lease up."""
    step_down_seconds: PositiveFloat = 10.0
    """... and does not take it again for this long, so another instance can act."""
    repeat_event_after_seconds: PositiveFloat = 30.0
    """The same refusal or hold is published again only after this long."""
    agent_self_fence_seconds: NonNegativeFloat = 5.0
    """The node agents' bound T (the same variable they read): a forced failover that could
    not confirm the old primary fenced waits T, plus `self_fence_margin_seconds`, after the
    new epoch is written before it promotes anyone, so the old primary's agent has stopped
    it. 0 where no agent runs."""
    self_fence_margin_seconds: NonNegativeFloat = 1.0
    """Added to that wait: the hosts' clock rates, scheduling, the stop's signal."""
    agent_stop_answer_seconds: PositiveFloat = 8.0
    """How long the leader waits for a node's agent to answer a stop request (the fence of
    another host's node it cannot fence over SQL): a fast stop, else an immediate one, else
    SIGKILL, each step bounded by the agent's `LIFEBOAT_AGENT_REQUESTED_STOP_TIMEOUT_SECONDS`."""
    agent_rejoin_answer_seconds: PositiveFloat = 3600.0
    """How long the leader waits for a node's agent to rejoin its node (another host's node):
    pg_rewind takes seconds, a fresh clone of the whole database as long as copying it. The
    rejoin runs beside the decision loop, so the wait holds up nothing else."""
    pg_os_user: str | None = None
    """Who runs pg_ctl and pg_rewind on local nodes when the service runs as root."""
    pg_bindir: Path | None = None
    """Where the PostgreSQL server binaries are, if not found by themselves."""
