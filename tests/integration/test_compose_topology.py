"""docker-compose.yml, run: the process topology the file describes, started from the file
itself (`lifeboat.devstack.composed`: each service on a test host of its name, with the
file's commands, environment and dependency order), then the kill-primary drill on it.

There is no Docker engine here; this is what proves that the compose file deploys what the
README says — three clustered NATS servers, S3, three PostgreSQL nodes each made and guarded
by its own agent, monitors, failover, backup, filesync and the gateway — and that a killed
primary's container is replaced by a standby without losing an acknowledged write, then
comes back read-only and rejoins.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import nats
import psycopg
import pytest

from lifeboat.common.kv import TopologyStore
from lifeboat.common.state import Topology
from lifeboat.devstack import netns
from lifeboat.devstack.composed import ComposeStack, compose_stack
from lifeboat.devstack.drill import TABLE
from lifeboat.devstack.hostwriter import read_acked
from lifeboat.devstack.launch import module_argv
from lifeboat.devstack.procs import ManagedProcess

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))

CONTAINERS = {"node1": "pg-node1", "node2": "pg-node2", "node3": "pg-node3"}
_WRITABLE = (
    "select not pg_is_in_recovery() and current_setting('default_transaction_read_only') = 'off'"
)


def dsn(stack: ComposeStack, node: str, **extra: str) -> str:
    env = stack.environment(stack.services[CONTAINERS[node]])
    params = {
        "host": stack.address(CONTAINERS[node]),
        "port": "5432",
        "user": "postgres",
        "password": Path(env["LIFEBOAT_PG_PASSWORD_FILE"]).read_text().strip(),
        "dbname": "app",
        "connect_timeout": "2",
        **extra,
    }
    return " ".join(f"{k}={v}" for k, v in params.items())


def query(stack: ComposeStack, node: str, statement: str) -> list[tuple[object, ...]] | None:
    try:
        with psycopg.connect(dsn(stack, node), autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []
    except psycopg.Error:
        return None


def writable(stack: ComposeStack, node: str) -> bool:
    rows = query(stack, node, _WRITABLE)
    return bool(rows and rows[0][0])


class Writability:
    """Which nodes take writes, sampled every 0.2 s: two at once is split brain."""

    def __init__(self, stack: ComposeStack) -> None:
        self.stack = stack
        self.most = 0
        self.seen: dict[str, bool] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.seen = {n: writable(self.stack, n) for n in CONTAINERS}
            self.most = max(self.most, sum(self.seen.values()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


async def until(check: Callable[[], object], timeout: float, what: str, detail: str = "") -> float:
    """Seconds until `check` (plain or async) held; fails after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    pytest.fail(f"{what}: not within {timeout:g}s\n{detail}")


async def test_the_compose_file_deploys_and_a_killed_primary_container_fails_over(
    workdir: Path,
) -> None:
    with compose_stack(workdir / "compose", extra_hosts=("client",)) as stack:
        servers = [f"nats://{stack.address(n)}:4222" for n in ("nats-1", "nats-2", "nats-3")]
        nc = await nats.connect(servers=servers, max_reconnect_attempts=-1)
        try:
            store = await TopologyStore.open(nc.jetstream())
            topology: Topology | None = None

            async def current() -> Topology | None:
                nonlocal topology
                found = await store.get("main")
                topology = None if found is None else found.value
                return topology

            async def settled() -> bool:
                t = await current()
                return t is not None and t.primary == "node1" and len(t.synchronous) == 2

            await until(settled, 90, "node1 primary with both standbys synchronous", stack.tail())
            assert query(stack, "node1", f"create table {TABLE} (id bigint primary key)") == []

            out = workdir / "compose-acked.txt"
            hosts = ",".join(stack.address(c) for c in CONTAINERS.values())
            writer = ManagedProcess(
                "writer",
                stack.net.hosts["client"].command(
                    module_argv("lifeboat.devstack.hostwriter", str(out), "1")
                ),
                env={
                    **stack.environment(stack.services["failover"]),
                    "LIFEBOAT_WRITER_DSN": dsn(stack, "node1", target_session_attrs="read-write")
                    .replace(f"host={stack.address('pg-node1')}", f"host={hosts}")
                    .replace("port=5432", "port=5432,5432,5432"),
                },
                log_file=workdir / "compose-writer.log",
            )
            watch = Writability(stack)
            writer.start()
            try:
                await until(lambda: len(read_acked(out)) > 50, 30, "the writer's first writes")
                stack.kill("pg-node1")  # docker kill: PostgreSQL, its agent, its watchdog

                async def promoted() -> bool:
                    t = await current()
                    return t is not None and t.primary in ("node2", "node3")

                rto = await until(promoted, 90, "a standby promoted", stack.tail())
                assert topology is not None
                new = str(topology.primary)
                # RTO: from the kill until the new primary takes writes.
                rto += await until(lambda: writable(stack, new), 30, f"{new} taking writes")
                before = len(read_acked(out))
                await until(lambda: len(read_acked(out)) > before + 50, 30, "writes on " + new)
            finally:
                writer.stop()
            acked = [i for i, _, _ in read_acked(out)]
            rows = query(stack, new, f"select id from {TABLE}") or []
            lost = set(acked) - {int(str(r[0])) for r in rows}
            assert acked
            assert not lost, f"{len(lost)} of {len(acked)} acknowledged writes lost"
            assert rto < 60, rto

            # The container restarted (restart: unless-stopped): read-only from its first
            # moment, as the topology names another node, and rejoined by the leader.
            stack.start("pg-node1")

            def follows() -> bool:
                rows = query(
                    stack,
                    new,
                    "select 1 from pg_stat_replication "
                    "where application_name = 'node1' and state = 'streaming'",
                )
                return bool(rows)

            rejoined = await until(follows, 150, f"node1 streaming from {new}", stack.tail())
            assert not writable(stack, "node1")
            watch.stop()
            assert watch.most <= 1, "two nodes took writes at once"
            # The figures, for `pytest -s` (docs/operations.md quotes them).
            figures = {"rto_seconds": round(rto, 2), "acknowledged": len(acked), "lost": 0}
            print(json.dumps({**figures, "restarted_to_streaming_seconds": round(rejoined, 2)}))
        finally:
            await nc.close()
