"""`make up` end to end: the whole stack from one command, its lock, Ctrl-C, and reuse of data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from lifeboat.devstack.procs import wait_until
from lifeboat.devstack.throwaway import UpStack, up_stack_env
from tests.endpoints import answers_ok

pytestmark = pytest.mark.stack


@pytest.fixture
def stack_dir(workdir: Path) -> Path:
    """A clone in a home of mode 0700, as root's is on Debian: PostgreSQL's user cannot
    enter it, so its data must go elsewhere (a newcomer's first `make up`)."""
    home = workdir / f"home-{time.monotonic_ns()}"
    home.mkdir(mode=0o700)
    return home / "lifeboat" / ".lifeboat"


@pytest.fixture
def stack(stack_dir: Path, workdir: Path) -> Iterator[UpStack]:
    env = up_stack_env(stack_dir)
    env["LIFEBOAT_PG_DATA_ROOT"] = str(workdir / f"pg-root-{time.monotonic_ns()}")
    s = UpStack(stack_dir, stack_dir.parent.with_suffix(".log"), env=env)
    yield s
    s.stop()  # when the test failed before Ctrl-C: clean up like it would


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)


def _writes(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            conn.execute("insert into kept values ('written after the restart')")
    except psycopg.OperationalError:
        return False
    return True


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def test_make_up_runs_the_whole_stack_and_ctrl_c_leaves_nothing(
    stack: UpStack, stack_dir: Path
) -> None:
    started = time.monotonic()
    stack.start()
    # Seconds on an idle machine; the bound leaves room for a busy CI host.
    report = stack.wait_healthy(timeout=150)
    assert time.monotonic() - started < 150
    components = {c["name"]: c for c in report["components"]}
    assert components["nats"]["status"] == "healthy"
    assert components["s3"]["status"] == "healthy"
    roles = [c["details"]["role"] for n, c in components.items() if n.startswith("postgres:")]
    assert sorted(roles) == ["primary", "standby", "standby"]
    for name in ("monitor", "failover", "backup", "filesync"):
        assert components[f"service:{name}"]["status"] == "healthy"

    wait_until(lambda: "Lifeboat is up." in stack.output(), timeout=10, what="the banner")
    out = stack.output()
    assert stack.gateway in out
    assert "target_session_attrs=read-write" in out
    assert f"nats://127.0.0.1:{stack.env['LIFEBOAT_NATS_PORT']}" in out

    # The clone's home is closed to PostgreSQL's user: its data went where it can go.
    if os.getuid() == 0:
        assert "is closed to" in out
        assert (stack_dir / "pg").is_symlink()
    # The libpq multi-host DSN from the banner connects as printed (user and password file
    # in it) and reaches the writable node; no password is printed.
    password = (stack_dir / "secrets" / "pg_password").read_text().strip()
    assert password not in out
    dsn = out.split("PostgreSQL  ", 1)[1].split()[0]
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        conn.execute("create table kept (v text)")
        conn.execute("insert into kept values ('survives a restart')")

    # A second `make up` on the same data refuses clearly and touches nothing.
    second = subprocess.run(
        [sys.executable, "-m", "lifeboat.devstack", "up"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == 2
    assert "already running" in second.stderr
    assert stack.health() is not None

    children = json.loads((stack_dir / "children.json").read_text())
    postmasters = [
        int(p.read_text().split()[0]) for p in stack_dir.glob("pg/*/data/postmaster.pid")
    ]
    # 3 nats, s3, 3 node agents, 3 monitors, 2 filesyncs, the 3 other services
    assert len(children) == 15
    assert len(postmasters) == 3

    # The stack's file set: a file put in node1's directory reaches node2's through S3.
    (stack_dir / "files" / "node1" / "hello.txt").write_text("beside the database")
    copy = stack_dir / "files" / "node2" / "hello.txt"
    wait_until(copy.exists, timeout=30, what="the file on the pull node")
    assert copy.read_text() == "beside the database"

    # A service that dies is reported loudly and restarted.
    monitor_port = stack.env["LIFEBOAT_MONITOR_PORT"]
    victim = next(pid for pid in children if b"lifeboat.monitor" in _cmdline(pid))
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: "restarted monitor-1" in stack.output(), timeout=30, what="the restart")
    assert "!!! monitor-1 exited" in stack.output()
    wait_until(
        lambda: answers_ok(f"http://127.0.0.1:{monitor_port}/health/ready"),
        timeout=30,
        what="the restarted monitor",
    )
    children = json.loads((stack_dir / "children.json").read_text())

    assert stack.interrupt() == 0
    leftovers = [pid for pid in children + postmasters if _running(pid)]
    assert leftovers == [], f"processes left behind: {leftovers}"
    assert "stopped; data kept" in stack.output()
    assert (stack_dir / "pg" / "node1" / "data" / "PG_VERSION").exists()

    # Every node's agent left standby.signal: no start makes a node writable on its own.
    assert all((d / "standby.signal").exists() for d in stack_dir.glob("pg/*/data"))

    # The next `make up` reuses the data. The primary starts read-only like the others; the
    # failover leader, which reads the topology name it, gives it its writes back.
    again = UpStack(stack_dir, stack_dir.with_suffix(".again.log"), env=stack.env)
    again.start()
    try:
        again.wait_healthy(timeout=150)
        wait_until(
            lambda: "started again read-only" in again.output(),
            timeout=60,
            what="the leader to take the restarted primary back",
        )
        wait_until(lambda: _writes(dsn), timeout=30, what="the restarted primary's writes")
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            rows = conn.execute("select v from kept order by v").fetchall()
        assert rows == [("survives a restart",), ("written after the restart",)]
        assert "creating PostgreSQL cluster" not in again.output()
    finally:
        assert again.interrupt() == 0
