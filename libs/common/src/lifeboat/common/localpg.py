"""PostgreSQL nodes whose data directory is on this host: binaries, OS user, processes.

The local stack, the test fixtures and the failover service (fencing, rejoining) share them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OsUser:
    """The account a child runs as; PostgreSQL refuses to run as root."""

    name: str
    uid: int
    gid: int

    @classmethod
    def current(cls) -> OsUser:
        return cls(pwd.getpwuid(os.getuid()).pw_name, os.getuid(), os.getgid())

    @classmethod
    def for_postgres(cls, preferred: str | None = None) -> OsUser:
        if os.getuid() != 0:
            return cls.current()
        for name in (preferred, "postgres", "nobody"):
            if not name:
                continue
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)
        raise RuntimeError("running as root and found no unprivileged user to run PostgreSQL")

    @property
    def is_current(self) -> bool:
        return self.uid == os.getuid()

    @property
    def switch_uid(self) -> int | None:
        """For Popen(user=...): None when the child runs as us."""
        return None if self.is_current else self.uid

    @property
    def switch_gid(self) -> int | None:
        return None if self.is_current else self.gid

    @property
    def switch_groups(self) -> list[int] | None:
        return None if self.is_current else []

    def own(self, *paths: Path) -> None:
        """Give `paths` (recursively) to this user; a no-op when it is us."""
        if self.is_current:
            return
        for path in paths:
            os.chown(path, self.uid, self.gid)
            for root, dirs, files in os.walk(path):
                for name in dirs + files:
                    os.chown(os.path.join(root, name), self.uid, self.gid, follow_symlinks=False)


class PostgresNotFoundError(RuntimeError):
    pass


def find_bindir() -> Path:
    """Where initdb, pg_ctl, pg_basebackup and pg_rewind live."""
    if env := os.environ.get("LIFEBOAT_PG_BINDIR"):
        return Path(env)
    if initdb := shutil.which("initdb"):
        return Path(os.path.realpath(initdb)).parent
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    raise PostgresNotFoundError(
        "PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) were not found. Install "
        "them, e.g. `apt-get install postgresql` on Debian/Ubuntu or `brew install postgresql` "
        "on macOS, or point LIFEBOAT_PG_BINDIR at their directory."
    )


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


def run(
    argv: Sequence[str],
    *,
    user: OsUser | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    input_text: str | None = None,
) -> str:
    """Run a command to completion; raise with its output when it fails."""
    result = subprocess.run(
        list(argv),
        env=env,
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        user=user.switch_uid if user else None,
        group=user.switch_gid if user else None,
        extra_groups=user.switch_groups if user else None,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{Path(argv[0]).name} failed ({result.returncode}): "
            f"{(result.stderr or result.stdout).strip()}"
        )
    return str(result.stdout)


def signal_postgres(data_dir: Path, sig: signal.Signals) -> bool:
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
