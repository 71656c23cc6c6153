from __future__ import annotations

from pathlib import Path

from pydantic import Field, PositiveFloat, PositiveInt, model_validator
from pydantic_settings import SettingsConfigDict

from lifeboat.common.settings import ReplicationSettings, ServiceSettings
from lifeboat.common.subjects import Name


class AgentSettings(ServiceSettings, ReplicationSettings):
    model_config = SettingsConfigDict(env_prefix="LIFEBOAT_", extra="ignore", frozen=True)

    http_port: int = Field(default=8105, ge=0, le=65535)
    """Port of the health endpoint and of `/agent/view`, which the other nodes' agents ask
    while NATS is unreachable (failsafe); set `LIFEBOAT_HTTP_HOST` to an address they reach."""
    agent_cluster: Name = "main"
    """The cluster this agent's node belongs to (its topology key in KV)."""
    agent_node: Name
    """This agent's node, as the cluster file and the topology name it."""
    agent_data_dir: Path
    """The node's data directory on this host."""
    pg_os_user: str | None = None
    """Who runs `pg_ctl` and `pg_controldata` when the agent runs as root (`postgres`, else
    `nobody`, by default)."""
    pg_bindir: Path | None = None
    """Where the PostgreSQL server binaries are, if not found by themselves."""
    agent_self_fence_seconds: PositiveFloat = 5.0
    """The bound T: a writable node is stopped at most this long after the agent last
    confirmed that the topology names it primary (or, in failsafe, that every standby's agent
    still follows it). The failover leader must wait at least this long, plus a margin, after
    writing a new epoch before it relies on the old primary having stopped."""
    agent_check_seconds: PositiveFloat = 0.5
    """How often the topology and the node's state are read."""
    agent_nats_timeout_seconds: PositiveFloat = 1.0
    """Deadline of one topology read from KV."""
    agent_peers: dict[Name, str] = Field(default_factory=dict)
    """Failsafe: every other node's agent, as JSON `{"node2": "http://host:port"}`. While NATS
    is unreachable a primary keeps serving only while every member of the cluster answers
    from its agent that it is a standby; with no peers it fences itself after T."""
    agent_peer_timeout_seconds: PositiveFloat = 1.0
    """Deadline of one question to another node's agent."""
    agent_stop_timeout_seconds: PositiveFloat = 5.0
    """How long a fast stop (`pg_ctl stop -m fast`) may take before an immediate one, and that
    one before SIGKILL."""
    agent_requested_stop_timeout_seconds: PositiveFloat = 2.0
    """The same steps' bound when the failover leader asked for the stop (`node.stop_requested`):
    the three steps and the topology read must end inside the leader's wait for the answer
    (its `LIFEBOAT_AGENT_STOP_ANSWER_SECONDS`, 8 s), or a frozen node, stopped only by SIGKILL,
    is answered too late and costs the failover another decision round."""
    agent_lease_ttl_seconds: PositiveInt = 30
    """How long the agent's lease (`agent-<cluster>-<node>` in `lifeboat_leases`, renewed in
    every round that reaches NATS) outlives its last renewal: a lease gone guards nothing,
    so an agent stopped for good stops counting as its node's fence."""
    agent_watchdog: bool = True
    """Start the watchdog (`lifeboat.agent.watchdog`, a process of its own beside the agent):
    each confirmation of a writable node arms it with the agent's deadline, and it SIGKILLs
    that postmaster 0.5 s after the deadline should the agent not have confirmed it again or
    stopped it — an agent killed, frozen or stopped while its node is primary leaves no
    primary running unguarded past the bound the failover leader relies on. The cost: a
    primary whose agent stays down longer than the bound is stopped."""
    agent_first_primary: bool = False
    """`python -m lifeboat.agent.boot` only: this node may create the cluster (initdb) when
    its data directory is empty, no topology exists and no other node runs at all. Set it
    on one node; every other empty node is cloned from the primary."""
    agent_boot_timeout_seconds: PositiveFloat = 300
    """`python -m lifeboat.agent.boot` only: how long an empty node waits for a primary to
    clone (or the topology) before it exits non-zero, for its container to be restarted."""
    agent_restore_from: list[str] = Field(default_factory=lambda: ["127.0.0.1", "localhost"])
    """The hosts a restore into this node may be copied from (`node.restore_ordered`): the
    backup service's `LIFEBOAT_RESTORE_SERVE_HOST`, as JSON (`["backup"]`). The agent
    connects there with the replication user's password, so only to hosts named here."""
    agent_outbox_size: PositiveInt = 1000
    """Events kept while NATS is unreachable, sent once it is back."""

    @model_validator(mode="after")
    def _bounded(self) -> AgentSettings:
        bound = self.agent_self_fence_seconds
        for name in ("agent_check_seconds", "agent_nats_timeout_seconds"):
            if getattr(self, name) >= bound:
                raise ValueError(f"{name} must be shorter than agent_self_fence_seconds")
        if self.agent_lease_ttl_seconds <= bound:
            raise ValueError("agent_lease_ttl_seconds must be longer than agent_self_fence_seconds")
        return self
