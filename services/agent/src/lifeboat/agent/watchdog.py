"""The agent's watchdog: it stops the primary its agent can no longer vouch for.

The failover leader takes a cut-off primary as stopped once the agent's lease has gone
unrenewed for the agent's bound (plus a margin): it relies on the agent to stop the node by
then. An agent that dies, hangs or is stopped while its node is a confirmed primary breaks
that — nobody stops the node, and a second primary is promoted beside it. So each time the
agent confirms its primary it arms this watchdog with the deadline it keeps itself. The
watchdog is a process of its own, in a session of its own (a signal to the agent's process
group does not reach it). Once the deadline has passed by `GRACE_SECONDS` with the same
postmaster still running, it SIGKILLs it. A postmaster already shutting down while the agent
runs (the agent's own fast stop) gets the agent's stop timeout first, as the agent's own
escalation would; with the agent gone, a shutdown (a smart one lets sessions commit) buys
nothing. Patroni's watchdog resets the whole host; this one covers a dead or frozen agent,
not a frozen host (whose node commits nothing while it is frozen).

Its files live beside the data directory, not in it (`.<name>.lifeboat-watchdog/`): base
backups and pg_rewind copy a data directory's files to other nodes. The record names the
boot, the postmaster (its pid and start time: a pid is reused) and the deadline on that
boot's monotonic clock, so a node started again, another process or a rebooted host never
matches it. One watchdog per data directory (an exclusive `flock` on its lock file), started
by the agent when it arms one and none runs; it follows the agent the record names and exits
once that agent is gone and nothing it armed for runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import logging.handlers
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from lifeboat.agent.node import alive, exclusive_lock, kill, pm_status, postmaster, process_start

log = logging.getLogger(__name__)

GRACE_SECONDS = 0.5  # within the leader's 1 s margin beyond the bound
# How far a restarted agent's deadline may go past its predecessor's, for a postmaster the
# predecessor armed: with GRACE_SECONDS, still inside the leader's 1 s margin.
RESTART_SLACK_SECONDS = 0.4
POLL_SECONDS = 0.1
RESPAWN_SECONDS = 5.0  # a watchdog that keeps exiting is not started twice a second
_SHUTTING_DOWN = "stopping"


@dataclass(frozen=True)
class Armed:
    boot: str
    postmaster: int
    started: int  # the postmaster's start time (clock ticks after boot)
    deadline: float  # time.monotonic() of that boot
    stop_seconds: float  # the agent's fast-stop timeout
    agent: int


@dataclass(frozen=True)
class Killed:
    postmaster: int
    late_seconds: float  # past the deadline
    agent_gone: bool


Step = Literal["watch", "kill", "exit"]


def step(
    armed: Armed | None,
    *,
    boot: str,
    running: tuple[int, int] | None,
    status: str | None,
    agent_alive: bool,
    now: float,
) -> Step:
    """What to do now: `running` is the data directory's live postmaster (pid, start time),
    `status` its status line."""
    if armed is None or armed.boot != boot or running != (armed.postmaster, armed.started):
        return "watch" if agent_alive else "exit"  # nothing it armed for runs
    stopping = status == _SHUTTING_DOWN and agent_alive
    allowed = armed.stop_seconds if stopping else GRACE_SECONDS
    return "kill" if now > armed.deadline + allowed else "watch"


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def running(data_dir: Path) -> tuple[int, int] | None:
    pid = postmaster(data_dir)
    start = None if pid is None else process_start(pid)
    return None if pid is None or start is None else (pid, start)


@dataclass(frozen=True)
class Files:
    """The watchdog's files for one data directory."""

    home: Path

    @classmethod
    def beside(cls, data_dir: Path) -> Files:
        return cls(data_dir.parent / f".{data_dir.name}.lifeboat-watchdog")

    @property
    def armed(self) -> Path:
        return self.home / "armed.json"

    @property
    def killed(self) -> Path:
        return self.home / "killed.json"

    @property
    def lock(self) -> Path:
        return self.home / "lock"

    @property
    def log(self) -> Path:
        return self.home / "watchdog.log"


def _write(final: Path, record: dict[str, object]) -> None:
    """Written whole (a rename): a torn record would read as none."""
    part = final.with_name(final.name + ".part")
    part.write_text(json.dumps(record) + "\n")
    part.replace(final)


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_armed(files: Files) -> Armed | None:
    found = _read_json(files.armed)
    try:
        return None if found is None else Armed(**found)  # type: ignore[arg-type]
    except TypeError:
        return None


def _lock(files: Files) -> int | None:
    """The lock file opened and locked for this process; None when another holds it."""
    return exclusive_lock(files.lock)


class Arming:
    """The agent's side: arms the record at each confirmation, keeps a watchdog running."""

    def __init__(self, data_dir: Path, stop_seconds: float, *, enabled: bool) -> None:
        self.data_dir = data_dir
        self.files = Files.beside(data_dir)
        self.stop_seconds = stop_seconds
        self.enabled = enabled
        self.boot = boot_id()
        self.armed_for: tuple[int, int] | None = None
        self.error: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._spawned_at = -RESPAWN_SECONDS

    def resume(self, deadline: float) -> float:
        """At the agent's start: a record its predecessor armed for the postmaster that runs
        is armed again with this agent's deadline (which counts from that predecessor's last
        confirmation), never more than RESTART_SLACK_SECONDS past the predecessor's: the
        leader counts its wait (the bound + 1 s) from the predecessor's last lease renewal,
        and the agent's grace to connect after a restart must not stretch it. The deadline
        the agent then keeps. Turned off, a predecessor's record is removed, or its watchdog
        would stop the node."""
        if not self.enabled:
            self.files.armed.unlink(missing_ok=True)
            return deadline
        armed, now = read_armed(self.files), running(self.data_dir)
        if (
            armed is not None
            and armed.boot == self.boot
            and now == (armed.postmaster, armed.started)
        ):
            deadline = min(deadline, armed.deadline + RESTART_SLACK_SECONDS)
            self.confirmed(now, writable=True, deadline=deadline)
        return deadline

    def confirmed(
        self, postmaster: tuple[int, int] | None, *, writable: bool, deadline: float
    ) -> None:
        """The agent confirmed its node until `deadline`: armed for a writable postmaster,
        and for one armed before that is not writable now (crash recovery: the same
        postmaster, which will take writes again)."""
        if not self.enabled or postmaster is None:
            return
        if not writable and postmaster != self.armed_for:
            return
        pid, started = postmaster
        armed = Armed(self.boot, pid, started, deadline, self.stop_seconds, os.getpid())
        try:
            self.files.home.mkdir(mode=0o700, exist_ok=True)
            _write(self.files.armed, asdict(armed))
            self._keep_running()
        except OSError as exc:
            if self.error is None:  # said once a streak
                log.error(
                    "the watchdog cannot be armed (%s): it stops the node at the deadline "
                    "it was last armed with",
                    exc,
                )
            self.error = str(exc)
            return
        self.armed_for, self.error = postmaster, None

    def take_killed(self) -> Killed | None:
        """What the watchdog killed since last asked, if anything (the record is removed)."""
        found = _read_json(self.files.killed)
        if found is None:
            return None
        self.files.killed.unlink(missing_ok=True)
        try:
            return Killed(**found)  # type: ignore[arg-type]
        except TypeError:
            return None

    def _keep_running(self) -> None:
        """Start a watchdog unless one runs: the one started last, or another that holds the
        lock (a predecessor's)."""
        if self._process is not None and self._process.poll() is None:
            return  # running, perhaps not yet holding the lock
        if time.monotonic() - self._spawned_at < RESPAWN_SECONDS:
            return
        held = _lock(self.files)
        if held is None:
            return
        os.close(held)  # ours released: the watchdog takes it
        if self._process is not None:
            log.warning(
                "the watchdog exited (code %s); starting it again", self._process.returncode
            )
        self._spawned_at = time.monotonic()
        with self.files.log.open("ab") as out:
            self._process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(self.data_dir), str(os.getpid())],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                # Its own log beside the record: the agent's output may be a pipe that would
                # be held open past the agent.
                stdout=out,
                stderr=out,
            )


def watch(data_dir: Path, agent: int) -> None:
    files, boot, killed, failed = Files.beside(data_dir), boot_id(), None, ""
    while True:
        try:
            armed = read_armed(files)
            if armed is not None and armed.boot == boot:
                agent = armed.agent  # a restarted agent arms it under its own pid
            now = running(data_dir)
            verdict = step(
                armed,
                boot=boot,
                running=now,
                status=pm_status(data_dir),
                agent_alive=alive(agent),
                now=time.monotonic(),
            )
            if verdict == "exit":
                log.info("agent %d gone and nothing armed runs: exiting", agent)
                return
            if verdict == "kill" and armed is not None and now is not None:
                kill(now[0])
                if now != killed:  # recorded once; killed again while it is not gone yet
                    killed = now
                    late = time.monotonic() - armed.deadline
                    record = Killed(now[0], round(late, 3), not alive(agent))
                    log.error(
                        "killed postmaster %d, %.2fs past the deadline: %s", now[0], late, record
                    )
                    _write(files.killed, asdict(record))
        except Exception as exc:  # never gone for an error: it is the last guard
            if repr(exc) != failed:  # said once while it lasts
                log.exception("watchdog round failed")
            failed = repr(exc)
        time.sleep(POLL_SECONDS)


def main() -> None:
    parser = argparse.ArgumentParser(description="the node agent's watchdog (started by it)")
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("agent", type=int, help="the agent's pid")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s watchdog[%(process)d] %(levelname)s %(message)s"
    )
    if _lock(Files.beside(args.data_dir)) is None:
        return  # another watchdog watches this directory (ours kept open: the lock held)
    log.info("watching %s for agent %d", args.data_dir, args.agent)
    with contextlib.suppress(KeyboardInterrupt):
        watch(args.data_dir, args.agent)


if __name__ == "__main__":
    main()
