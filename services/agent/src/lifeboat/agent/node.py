"""The node beside the agent: its state as its own files say, and stopping it.

The state comes from the data directory, not from SQL: it needs no password and answers
when PostgreSQL refuses connections or is frozen. `pg_control` (through `pg_controldata`)
says whether the node is in production; the postmaster's status line in `postmaster.pid`
says whether it lets clients in yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lifeboat.common.events import Role
from lifeboat.pg.datadir import DataDir
from lifeboat.pg.tools import ToolError

_STATE_LINE = "Database cluster state:"
# The one state a node takes writes in; the startup process writes it before the end of
# recovery lets the first write in.
_PRODUCTION = "in production"
_STANDBY_STATES = frozenset({"in archive recovery", "shut down in recovery"})
# postmaster.pid's eighth line. While "starting" no client is let in, whatever pg_control
# says: a node just started shows the state it stopped in ("shut down"), and a fresh base
# backup the primary's ("in production"), until its recovery begins.
_PM_STATUS_LINE = 7
_STARTING = "starting"


@dataclass(frozen=True)
class NodeState:
    running: bool
    # pg_control's "Database cluster state" (e.g. "in production"); None if unreadable.
    cluster_state: str | None
    error: str | None = None
    # The postmaster's status ("starting", "standby", "ready", "stopping"), if it gives one.
    pm_status: str | None = None

    @property
    def writable(self) -> bool:
        """Running in production and letting clients in; a state pg_control does not give
        counts as writable, as nothing shows it cannot commit."""
        return (
            self.running
            and self.pm_status != _STARTING
            and self.cluster_state in (None, _PRODUCTION)
        )

    @property
    def role(self) -> Role:
        if self.writable:
            return Role.PRIMARY
        if self.running and self.cluster_state in _STANDBY_STATES:
            return Role.STANDBY
        return Role.UNKNOWN

    def describe(self) -> str:
        if not self.running:
            return "not running"
        state = self.cluster_state or f"state unreadable ({self.error})"
        return f"{state}, {self.pm_status}" if self.pm_status else state


def pm_status(data: DataDir) -> str | None:
    try:
        lines = (data.path / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    return lines[_PM_STATUS_LINE].strip() or None if len(lines) > _PM_STATUS_LINE else None


def read_state(data: DataDir, timeout: float = 5.0) -> NodeState:
    # The status first, pg_control after: a node starts with the status "starting" and
    # writes its recovery state to pg_control before it lets anyone in, so a status past
    # "starting" read first is never paired with a pg_control from before recovery began.
    running = data.running()
    status = pm_status(data)
    try:
        out = data.pg("pg_controldata", str(data.path), timeout=timeout)
    except ToolError as exc:
        return NodeState(running, None, str(exc), status)
    for line in out.splitlines():
        if line.startswith(_STATE_LINE):
            state = line.split(":", 1)[1].strip()
            # A node that stopped between the reads is stopped.
            return NodeState(running and data.running(), state, pm_status=status)
    return NodeState(running, None, "pg_controldata shows no cluster state", status)


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
