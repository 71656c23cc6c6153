"""Faults injected into local PostgreSQL nodes, shared by the drills (`drill.py`, the
benchmark) and the fault-matrix tests, so both exercise exactly the same fault.

A node is named by its data directory (signals reach the postmaster and every backend, also
when frozen) or by a DSN to it (SQL: which walreceiver runs, breaking its stream while the
node stays reachable).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from lifeboat.pg.datadir import signal_postmaster


def signal_node(data_dir: Path, sig: signal.Signals) -> None:
    """`sig` to the node's postmaster and every backend; RuntimeError when it is not running."""
    if not signal_postmaster(data_dir, sig):
        raise RuntimeError(f"no postmaster runs in {data_dir}")


def walreceiver_pid(dsn: str) -> int | None:
    """The PID of the standby's walreceiver, None when it runs none."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
        row = conn.execute("select pid from pg_stat_wal_receiver").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def signal_walreceiver(dsn: str, sig: signal.Signals) -> None:
    """`sig` to the standby's walreceiver only: SIGSTOP makes it lag (it stops receiving and
    acknowledging WAL) while the node answers queries; SIGCONT lets it catch up."""
    pid = walreceiver_pid(dsn)
    if pid is None:
        raise RuntimeError("the node runs no walreceiver")
    os.kill(pid, sig)


def drop_stream(dsn: str) -> None:
    """Break the standby's stream while it stays reachable: an empty `primary_conninfo`
    makes PostgreSQL stop its walreceiver (and start none) on reload."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
        conn.execute("alter system set primary_conninfo = ''")
        conn.execute("select pg_reload_conf()")


def bulk_write(dsn: str, mebibytes: int) -> None:
    """One commit of about `mebibytes` MiB of WAL: a standby that stalls meanwhile is then
    further behind than the kernel's socket buffers can hide (they would hand it the WAL
    on resuming even from a primary that died)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
        conn.execute("create table if not exists lifeboat_filler (pad text)")
        conn.execute(
            "insert into lifeboat_filler select repeat(md5(random()::text), 32)"
            " from generate_series(1, %s)",
            (mebibytes * 1024,),
        )


@contextlib.contextmanager
def starved(data_dir: Path, running: float = 0.01, stopped: float = 0.09) -> Iterator[None]:
    """The node's CPU starved while inside: its processes run `running` seconds out of
    every `running + stopped` (SIGCONT / SIGSTOP, as a throttled cgroup or an overloaded
    host does), so it answers, slowly. It runs freely again on the way out."""
    stop = threading.Event()

    def cycle() -> None:
        while not stop.is_set():
            signal_postmaster(data_dir, signal.SIGSTOP)
            if stop.wait(stopped):
                break
            signal_postmaster(data_dir, signal.SIGCONT)
            stop.wait(running)

    thread = threading.Thread(target=cycle, daemon=True, name="starve")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        signal_postmaster(data_dir, signal.SIGCONT)


def wait_stopped(data_dir: Path, timeout: float) -> bool:
    """Until no postmaster runs in `data_dir` (a clean shutdown finished); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not (data_dir / "postmaster.pid").exists():
            return True
        time.sleep(0.005)
    return False
