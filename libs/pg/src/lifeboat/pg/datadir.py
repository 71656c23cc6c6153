"""A data directory on this host and the postmaster that runs it.

The local stack, the test fixtures and the node-local failover actions all start, stop, kill,
freeze and inspect nodes through this one type.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from lifeboat.pg.osuser import OsUser
from lifeboat.pg.tools import ToolError, run


def postmaster_pid(data_dir: Path) -> int | None:
    """The running postmaster's PID from postmaster.pid, or None."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by the postgres user
    return pid


def process_tree(root: int) -> list[int]:
    """`root` and its direct children: a postmaster and its backends."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == root:
                children.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return [root, *children]


def frozen(pid: int) -> bool:
    """Whether the process is stopped by a signal (SIGSTOP, a debugger): it takes no signal
    but SIGKILL until it is continued."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("T", "t")


def signal_postmaster(data_dir: Path, sig: signal.Signals) -> bool:
    """Send `sig` to the node's postmaster and every backend; False if it is not running.

    SIGKILL and SIGSTOP reach a frozen node too, which pg_ctl's own signals do not.
    """
    pid = postmaster_pid(data_dir)
    if pid is None:
        return False
    for p in process_tree(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)
    return True


@dataclass(frozen=True)
class DataDir:
    path: Path
    user: OsUser
    bindir: Path
    # A network namespace the node runs in (a test host); its tools are started inside it,
    # as root, then become `user` (`ip netns exec` needs root).
    netns: str | None = None

    @property
    def initialized(self) -> bool:
        return (self.path / "PG_VERSION").exists()

    def tool(self, name: str) -> str:
        return str(self.bindir / name)

    def pg(
        self, tool: str, *args: str, env: dict[str, str] | None = None, timeout: float = 90
    ) -> str:
        """Run one of the server binaries as the PostgreSQL user (inside its namespace)."""
        argv = [self.tool(tool), *args]
        if self.netns is None:
            return run(argv, user=self.user, env=env, timeout=timeout)
        inside = ["ip", "netns", "exec", self.netns]
        become = [f"--reuid={self.user.uid}", f"--regid={self.user.gid}", "--clear-groups"]
        return run([*inside, "setpriv", *become, *argv], env=env, timeout=timeout)

    def pid(self) -> int | None:
        return postmaster_pid(self.path)

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, log_file: Path, timeout: float = 60) -> None:
        if self.running():
            return
        self.pg(
            "pg_ctl",
            "-D",
            str(self.path),
            "-l",
            str(log_file),
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout + 10,
        )

    def stop(self, mode: str = "fast", timeout: float = 30) -> None:
        """Stop cleanly; if pg_ctl cannot, kill the postmaster and wait for it to be gone."""
        if not self.running():
            return
        try:
            self.pg(
                "pg_ctl",
                "-D",
                str(self.path),
                "-m",
                mode,
                "-w",
                "-t",
                str(int(timeout)),
                "stop",
                timeout=timeout + 10,
            )
        except ToolError:
            self.kill()

    def signal(self, sig: signal.Signals) -> bool:
        return signal_postmaster(self.path, sig)

    def kill(self, wait_seconds: float = 10) -> None:
        """SIGKILL the node and wait until its postmaster is gone: its lock files must be
        stale before a new one starts."""
        pid = self.pid()
        self.signal(signal.SIGKILL)
        deadline = time.monotonic() + wait_seconds
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def latest_checkpoint(self) -> str:
        """The latest checkpoint's location, from pg_controldata (a stopped node's last WAL)."""
        for line in self.pg("pg_controldata", str(self.path), timeout=30).splitlines():
            if line.startswith("Latest checkpoint location:"):
                return line.split(":", 1)[1].strip()
        raise ToolError("pg_controldata", 0, "shows no latest checkpoint location")
