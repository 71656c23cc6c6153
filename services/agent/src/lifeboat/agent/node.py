"""The node beside the agent: its state as its own files say, and stopping it.

The state comes from the data directory, not from SQL: it needs no password and answers
when PostgreSQL refuses connections or is frozen. `pg_control` (through `pg_controldata`)
says whether the node is in production; the postmaster's status line in `postmaster.pid`
says whether it lets clients in yet.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from lifeboat.common.events import Role
from lifeboat.pg.datadir import DataDir, frozen, postmaster_pid, process_tree
from lifeboat.pg.recovery import RESTORING_MARKER
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
# A hot standby's postmaster says "standby" until its recovery ends ("ready" after): with
# pg_control unreadable (a pg_controldata timeout under load, binaries being upgraded), it is
# what shows a standby cannot commit, rather than stopping it.
_HOT_STANDBY = "standby"


@dataclass(frozen=True)
class NodeState:
    running: bool
    # pg_control's "Database cluster state" (e.g. "in production"); None if unreadable.
    cluster_state: str | None
    error: str | None = None
    # The postmaster's status ("starting", "standby", "ready", "stopping"), if it gives one.
    pm_status: str | None = None
    pid: int | None = None  # the postmaster's, when running
    started: int | None = None  # and its start time (process_start)

    @property
    def process(self) -> tuple[int, int] | None:
        """Which postmaster runs (pid, start time), when one does."""
        return None if self.pid is None or self.started is None else (self.pid, self.started)

    @property
    def writable(self) -> bool:
        """Running in production and letting clients in; a state pg_control does not give
        counts as writable unless the postmaster says it is a hot standby, as nothing else
        shows it cannot commit."""
        if not self.running or self.pm_status == _STARTING:
            return False
        if self.cluster_state is None:
            return self.pm_status != _HOT_STANDBY
        # No status line yet: postmaster.pid was just made, and its postmaster lets nobody in
        # before it writes "starting". pg_control meanwhile shows the state it was copied in
        # (pg_rewind's copy of a running primary's says "in production"): the agent stopped
        # the node its own rejoin was starting as a standby.
        return self.cluster_state == _PRODUCTION and self.pm_status is not None

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


def pm_status(data_dir: Path) -> str | None:
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    return lines[_PM_STATUS_LINE].strip() or None if len(lines) > _PM_STATUS_LINE else None


def read_state(data: DataDir, timeout: float = 5.0) -> NodeState:
    # The status first, pg_control after: a node starts with the status "starting" and
    # writes its recovery state to pg_control before it lets anyone in, so a status past
    # "starting" read first is never paired with a pg_control from before recovery began.
    pid = postmaster(data.path)
    running = pid is not None
    started = None if pid is None else process_start(pid)
    status = pm_status(data.path)
    try:
        out = data.pg("pg_controldata", str(data.path), timeout=timeout)
    except ToolError as exc:
        return NodeState(running, None, str(exc), status, pid, started)
    for line in out.splitlines():
        if line.startswith(_STATE_LINE):
            state = line.split(":", 1)[1].strip()
            # A node that stopped (or started again) between the reads is stopped.
            if running and postmaster(data.path) == pid:
                return NodeState(True, state, pm_status=status, pid=pid, started=started)
            return NodeState(False, state, pm_status=status)
    return NodeState(running, None, "pg_controldata shows no cluster state", status, pid, started)


def arm(data: DataDir) -> bool:
    """Leave `standby.signal` in the data directory, so that whoever starts the node next (a
    reboot, a container restart, `pg_ctl start`, the postmaster after a crash) starts it in
    recovery, read-only, until the failover leader, which has read the topology name it
    primary, promotes it. PostgreSQL reads the file only when it starts, and removes it when
    it is promoted; the agent puts it back. Whether it was written now.

    Not while `recovery.signal` is there (a restore recovering to its target, which standby
    mode would turn into streaming from wherever primary_conninfo points) or a restore is
    swapping the directory in (its marker), nor into a data directory that is not one (yet)."""
    signal_file = data.path / "standby.signal"
    if (
        not data.initialized
        or signal_file.exists()
        or (data.path / "recovery.signal").exists()
        or (data.path / RESTORING_MARKER).exists()
    ):
        return False
    signal_file.touch()
    if (data.path / "recovery.signal").exists() or (data.path / RESTORING_MARKER).exists():
        # a restore began meanwhile
        signal_file.unlink(missing_ok=True)
        return False
    os.chown(signal_file, data.user.uid, data.user.gid)
    return True


# The wall-clock time of the agent's last confirmation, kept in the data directory (owned by
# PostgreSQL's account, so base backups can read it): a restarted agent counts from it, not
# from its own start, which the failover leader cannot see (it reads only the agent's lease).
CONFIRMED_FILE = "lifeboat.agent-confirmed"


def record_confirmation(data: DataDir, at_wall: float) -> None:
    """Written whole (a rename): a torn file would read as none."""
    final = data.path / CONFIRMED_FILE
    part = final.with_name(final.name + ".part")
    part.write_text(f"{at_wall:.3f}\n")
    os.chown(part, data.user.uid, data.user.gid)
    part.replace(final)


# A setting in a PostgreSQL configuration file: `name = 'value'` (quotes doubled inside),
# `=` optional, a comment after it.
_CONNINFO_LINE = re.compile(r"^\s*primary_conninfo\s*=?\s*'((?:[^']|'')*)'")


def configured_upstream(data_dir: Path) -> tuple[str, int] | None:
    """The host and port the node's primary_conninfo names in postgresql.auto.conf (where
    pg_basebackup -R, ALTER SYSTEM and a rejoin put it; the last setting wins), or None
    when it names none. One set in postgresql.conf instead is not seen."""
    try:
        lines = (data_dir / "postgresql.auto.conf").read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        if (m := _CONNINFO_LINE.match(line)) is not None:
            found = m.group(1).replace("''", "'")
    if not found:
        return None
    try:
        params = conninfo_to_dict(found)
    except psycopg.ProgrammingError:
        return None
    return str(params.get("host", "")), int(params.get("port") or 5432)


def exclusive_lock(path: Path) -> int | None:
    """`path` opened and locked (`flock`) for this process; None when another holds it.
    The lock goes with the process: nothing to clean up after a crash."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def lock_path(data: DataDir) -> Path:
    return data.path.parent / f".{data.path.name}.lifeboat-agent.lock"


def agent_lock(data: DataDir) -> int | None:
    """One agent per data directory: the lock beside it, or None while another agent
    process holds it. Where nothing can be written beside it, no lock (-1)."""
    try:
        return exclusive_lock(lock_path(data))
    except OSError:
        return -1


def agent_identity(data: DataDir) -> tuple[Path, str]:
    """Which agent guards this data directory, for its lease: a random id kept beside the
    directory (not in it: base backups and pg_rewind copy what is in it to other nodes),
    made on first use; the file and the id. An agent restarted, or its container made again
    with the volume kept, has the same; a second agent configured under the same node name
    on another host or data directory has another, and cannot take the lease the first
    renews. A clone of the host or volume copies it (claim.py tells the two apart by the
    process). A file that cannot be read is left as it is, and the host's name and the
    directory's path stand in; so they do where none can be written."""
    path = data.path.parent / f".{data.path.name}.lifeboat-agent-id"
    fallback = f"{socket.gethostname()}:{data.path}"
    try:
        if found := path.read_text().strip():
            return path, found
    except FileNotFoundError:
        pass
    except OSError:
        return path, fallback
    identity = secrets.token_hex(8)
    part = path.with_name(f"{path.name}.{identity}")
    try:
        # Made whole and synced before it is put in place; linked only while there is
        # none, so two agents starting on one directory agree on the first.
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, f"{identity}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if path.exists():  # empty: a write torn by a crash
            os.replace(part, path)
        else:
            os.link(part, path)
        _sync_directory(path.parent)
    except FileExistsError:
        with contextlib.suppress(OSError):
            return path, path.read_text().strip() or fallback
        return path, fallback
    except OSError:
        return path, fallback
    finally:
        part.unlink(missing_ok=True)
    return path, identity


def _sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def last_confirmation(data: DataDir) -> float | None:
    """The wall-clock time recorded, or None when there is none (a first start)."""
    try:
        return float((data.path / CONFIRMED_FILE).read_text())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    """Whether process `pid` runs. A zombie does not: a postmaster that has exited (killed,
    say, by the failover) may wait a while for whoever adopted it to reap it, its pid file
    still in place."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def process_start(pid: int) -> int | None:
    """When `pid` started (clock ticks after boot): with the pid, which process it is."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def postmaster(data_dir: Path) -> int | None:
    """The node's running postmaster, if any."""
    pid = postmaster_pid(data_dir)
    return pid if pid is not None and alive(pid) else None


def _exited(pid: int, timeout: float) -> bool:
    """Whether process `pid` is gone within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop(data: DataDir, fast_timeout: float) -> str:
    """Stop the node: `pg_ctl stop -m fast` (every session ended at once, the shutdown
    checkpoint streamed to the standbys), after `fast_timeout` an immediate stop, then
    SIGKILL; what it took. A frozen postmaster (SIGSTOP) is killed at once: it would take
    neither stop, and waiting on them would only delay the failover.

    It waits on the postmaster it found, not on the pid file as `pg_ctl -w` does: a node
    started again meanwhile writes the file anew, and is left to the next round to judge
    rather than stopped by escalation. "stopped (fast)" says that it is stopped since the
    fast stop was asked for, not who stopped it (the failover may have killed it meanwhile).
    """
    pid = postmaster(data.path)
    if pid is None:
        return "not running"
    for mode in () if frozen(pid) else ("fast", "immediate"):
        if (now := postmaster(data.path)) != pid:
            return "stopped" + (f"; started again since (postmaster {now})" if now else "")
        with contextlib.suppress(ToolError):  # it may have exited between the two reads
            data.pg("pg_ctl", "-D", str(data.path), "-m", mode, "-W", "stop", timeout=10)
        if _exited(pid, fast_timeout):
            again = postmaster(data.path)
            return f"stopped ({mode})" + (
                f"; started again since (postmaster {again})" if again else ""
            )
    kill(pid)  # a frozen node takes no other signal
    return "stopped (SIGKILL)" if _exited(pid, fast_timeout) else "still running after SIGKILL"


def kill(postmaster_pid: int) -> None:
    """SIGKILL a postmaster and its backends: no commit after it, frozen or not."""
    for p in process_tree(postmaster_pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
