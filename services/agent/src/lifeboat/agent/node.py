"""The node beside the agent: its state as its own files say, and stopping it.

The state comes from `pg_control` (through `pg_controldata`), not from SQL: it needs no
password and answers when PostgreSQL refuses connections or is frozen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lifeboat.common.events import Role
from lifeboat.pg.datadir import DataDir
from lifeboat.pg.tools import ToolError

_STATE_LINE = "Database cluster state:"
# The one state a node takes writes in. The startup process writes it before the end of
# recovery lets the first write in; a node just started still shows the state it stopped in
# ("shut down") until recovery begins, and takes no write then.
_PRODUCTION = "in production"
_STANDBY_STATES = frozenset({"in archive recovery", "shut down in recovery"})


@dataclass(frozen=True)
class NodeState:
    running: bool
    # pg_control's "Database cluster state" (e.g. "in production"); None if unreadable.
    cluster_state: str | None
    error: str | None = None

    @property
    def writable(self) -> bool:
        """Running in production; a state pg_control does not give counts as writable, as
        nothing shows it cannot commit."""
        return self.running and self.cluster_state in (None, _PRODUCTION)

    @property
    def role(self) -> Role:
        if not self.running or self.cluster_state is None:
            return Role.UNKNOWN
        if self.cluster_state == _PRODUCTION:
            return Role.PRIMARY
        return Role.STANDBY if self.cluster_state in _STANDBY_STATES else Role.UNKNOWN

    def describe(self) -> str:
        if not self.running:
            return "not running"
        return self.cluster_state or f"running, state unreadable ({self.error})"


def read_state(data: DataDir, timeout: float = 5.0) -> NodeState:
    running = data.running()
    try:
        out = data.pg("pg_controldata", str(data.path), timeout=timeout)
    except ToolError as exc:
        return NodeState(running, None, str(exc))
    for line in out.splitlines():
        if line.startswith(_STATE_LINE):
            # A node that stopped between the two reads is stopped: read it again.
            return NodeState(running and data.running(), line.split(":", 1)[1].strip())
    return NodeState(running, None, "pg_controldata shows no cluster state")


def stop(data: DataDir, fast_timeout: float) -> str:
    """Stop the node: a fast shutdown (every session ended at once, the shutdown checkpoint
    streamed to the standbys), then an immediate one, then SIGKILL; what it took."""
    if not data.running():
        return "not running"
    seconds = str(max(1, math.ceil(fast_timeout)))
    try:
        data.pg(
            "pg_ctl",
            "-D",
            str(data.path),
            "-m",
            "fast",
            "-w",
            "-t",
            seconds,
            "stop",
            timeout=fast_timeout + 5,
        )
    except ToolError as exc:
        if data.running():
            data.stop("immediate", fast_timeout)  # SIGKILL if even that does not end it
            if data.running():
                return f"still running after a fast stop ({exc}), an immediate one and SIGKILL"
            return f"stopped (the fast stop failed: {exc}; immediate, else SIGKILL)"
    return "stopped (fast)"
