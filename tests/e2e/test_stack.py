"""`make up` end to end: the whole stack from one command, its lock, Ctrl-C, and reuse of data."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from lifeboat.devstack.procs import ManagedProcess, free_port, wait_until
from tests.endpoints import answers_ok

pytestmark = pytest.mark.stack


def _stack_env(stack_dir: Path) -> dict[str, str]:
    ports = {
        "LIFEBOAT_NATS_PORT": free_port(),
        "LIFEBOAT_NATS_MONITOR_PORT": free_port(),
        "LIFEBOAT_S3_PORT": free_port(below=22000),
        "LIFEBOAT_S3_MASTER_PORT": free_port(below=22000),
        "LIFEBOAT_S3_VOLUME_PORT": free_port(below=22000),
        "LIFEBOAT_S3_FILER_PORT": free_port(below=22000),
        "LIFEBOAT_GATEWAY_PORT": free_port(),
        "LIFEBOAT_MONITOR_PORT": free_port(),
        "LIFEBOAT_FAILOVER_PORT": free_port(),
        "LIFEBOAT_BACKUP_PORT": free_port(),
        "LIFEBOAT_FILESYNC_PORT": free_port(),
    }
    base = free_port(below=29000)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("LIFEBOAT_")},
        **{k: str(v) for k, v in ports.items()},
        "LIFEBOAT_PG_BASE_PORT": str(base),
        "LIFEBOAT_STACK_DIR": str(stack_dir),
    }


class Stack:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc = ManagedProcess(
            "stack", [sys.executable, "-m", "lifeboat.devstack", "up"], env=env, log_file=log
        )
        self.gateway = f"http://127.0.0.1:{env['LIFEBOAT_GATEWAY_PORT']}"

    def start(self) -> None:
        self.proc.start()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def health(self) -> dict[str, object] | None:
        try:
            return httpx.get(f"{self.gateway}/health", timeout=5).json()  # type: ignore[no-any-return]
        except (httpx.HTTPError, ValueError):
            return None

    def wait_healthy(self, timeout: float) -> dict[str, object]:
        found: dict[str, object] = {}

        def healthy() -> bool:
            if not self.proc.alive():
                raise AssertionError(f"make up exited:\n{self.output()[-4000:]}")
            found.update(self.health() or {})
            return found.get("status") == "healthy"

        wait_until(healthy, timeout=timeout, what="the stack to be healthy", interval=1)
        return found

    def interrupt(self) -> int:
        """Ctrl-C in a terminal: SIGINT to the foreground process."""
        assert self.proc.proc is not None
        self.proc.proc.send_signal(signal.SIGINT)
        return self.proc.proc.wait(timeout=90)


@pytest.fixture
def stack_dir(workdir: Path) -> Path:
    return workdir / f"stack-{time.monotonic_ns()}"


@pytest.fixture
def stack(stack_dir: Path) -> Iterator[Stack]:
    s = Stack(_stack_env(stack_dir), stack_dir.with_suffix(".log"))
    yield s
    if s.proc.alive():  # the test failed before Ctrl-C: clean up like it would
        s.proc.signal(signal.SIGINT)
        s.proc.stop(timeout=60)
    _stop_leftover_postgres(stack_dir)


def _stop_leftover_postgres(stack_dir: Path) -> None:
    for pidfile in stack_dir.glob("pg/*/data/postmaster.pid"):
        pid = int(pidfile.read_text().split()[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


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


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def test_make_up_runs_the_whole_stack_and_ctrl_c_leaves_nothing(
    stack: Stack, stack_dir: Path
) -> None:
    started = time.monotonic()
    stack.start()
    report = stack.wait_healthy(timeout=90)
    assert time.monotonic() - started < 90
    components = {c["name"]: c for c in report["components"]}  # type: ignore[attr-defined]
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

    # The libpq multi-host DSN from the banner reaches the writable node.
    password = (stack_dir / "secrets" / "pg_password").read_text().strip()
    dsn = out.split("PostgreSQL  ", 1)[1].split()[0]
    with psycopg.connect(dsn, user="postgres", password=password, connect_timeout=5) as conn:
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
    assert len(children) == 7  # nats, s3 and the five services
    assert len(postmasters) == 3

    # A service that dies is reported loudly and restarted.
    monitor_port = stack.env["LIFEBOAT_MONITOR_PORT"]
    victim = next(pid for pid in children if b"lifeboat.monitor" in _cmdline(pid))
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: "restarted monitor" in stack.output(), timeout=30, what="the restart")
    assert "!!! monitor exited" in stack.output()
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

    # The next `make up` reuses the data.
    again = Stack(stack.env, stack_dir.with_suffix(".again.log"))
    again.start()
    try:
        again.wait_healthy(timeout=90)
        with psycopg.connect(dsn, user="postgres", password=password, connect_timeout=5) as conn:
            rows = conn.execute("select v from kept").fetchall()
        assert rows == [("survives a restart",)]
        assert "creating PostgreSQL cluster" not in again.output()
    finally:
        assert again.interrupt() == 0
