"""The kill-primary drill on docker-compose.yml's topology (`lifeboat.devstack.composed`).

A writer on a client host writes increasing ids through the multi-host DSN; the primary's
container is killed (every process on its host, as `docker kill`); the drill waits for a
standby to take writes, checks that every acknowledged id is on it and that no two nodes
were writable at once (sampled every 0.2 s), then starts the killed container again and
waits for it to come up read-only and stream from the new primary. The test runs it once
(`tests/integration/test_compose_topology.py`), `bench/failover.py --compose` many times on
one stack, each run killing whichever node is primary then.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import nats
import psycopg

from lifeboat.common.kv import TopologyStore
from lifeboat.common.state import Topology
from lifeboat.devstack.composed import ComposeStack, compose_stack
from lifeboat.devstack.drill import TABLE
from lifeboat.devstack.hostdrill import until
from lifeboat.devstack.hoststack import WRITABLE
from lifeboat.devstack.hostwriter import read_acked
from lifeboat.devstack.launch import module_argv
from lifeboat.devstack.procs import ManagedProcess

CONTAINERS = {"node1": "pg-node1", "node2": "pg-node2", "node3": "pg-node3"}
CLIENT = "client"
NATS = ("nats-1", "nats-2", "nats-3")


class DrillError(RuntimeError):
    """A stage of the drill did not happen in time; the message says which."""


def dsn(stack: ComposeStack, node: str, **extra: str) -> str:
    """The superuser's DSN to `node`, its password from the compose secret file."""
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
    """Its rows, [] for a statement without any, None when the node does not answer."""
    try:
        with psycopg.connect(dsn(stack, node), autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []
    except psycopg.Error:
        return None


def writable(stack: ComposeStack, node: str) -> bool:
    rows = query(stack, node, WRITABLE)
    return bool(rows and rows[0][0])


class Writability:
    """Which nodes take writes, sampled every 0.2 s: two at once is split brain."""

    def __init__(self, stack: ComposeStack) -> None:
        self.stack = stack
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.most = max(self.most, sum(writable(self.stack, n) for n in CONTAINERS))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


async def _within(check: Any, timeout: float, what: str, stack: ComposeStack) -> float:
    """Seconds until `check` held; DrillError after `timeout`."""
    started = time.monotonic()
    at = await until(check, timeout, interval=0.2)
    if at is None:
        raise DrillError(f"{what}: not within {timeout:g}s\n{stack.tail()}")
    return at - started


class ComposeDrill:
    def __init__(self, stack: ComposeStack, store: TopologyStore, out_dir: Path) -> None:
        self.stack = stack
        self.store = store
        self.out_dir = out_dir

    async def topology(self) -> Topology | None:
        found = await self.store.get("main")
        return None if found is None else found.value

    async def settled(self, timeout: float = 90) -> Topology:
        """One primary, both standbys in its synchronous set."""

        async def ready() -> bool:
            t = await self.topology()
            return t is not None and t.primary is not None and len(t.synchronous) == 2

        await _within(ready, timeout, "one primary with both standbys synchronous", self.stack)
        t = await self.topology()
        assert t is not None
        return t

    def _writer(self, out: Path, start_id: int) -> ManagedProcess:
        hosts = ",".join(self.stack.address(c) for c in CONTAINERS.values())
        one = dsn(self.stack, "node1", target_session_attrs="read-write")
        multi = one.replace(f"host={self.stack.address('pg-node1')}", f"host={hosts}").replace(
            "port=5432", "port=5432,5432,5432"
        )
        return ManagedProcess(
            "writer",
            self.stack.net.hosts[CLIENT].command(
                module_argv("lifeboat.devstack.hostwriter", str(out), str(start_id))
            ),
            env={
                **self.stack.environment(self.stack.services["failover"]),
                "LIFEBOAT_WRITER_DSN": multi,
            },
            log_file=self.out_dir / f"writer-{start_id}.log",
        )

    async def kill_primary(self, start_id: int = 1) -> dict[str, Any]:
        """One run; its figures. Raises DrillError when a stage does not happen in time."""
        before = await self.settled()
        old = str(before.primary)
        query(self.stack, old, f"create table if not exists {TABLE} (id bigint primary key)")
        out = self.out_dir / f"acked-{start_id}.txt"
        writer = self._writer(out, start_id)
        watch = Writability(self.stack)
        writer.start()
        try:
            await _within(lambda: len(read_acked(out)) > 50, 30, "the first writes", self.stack)
            killed = time.monotonic()
            self.stack.kill(CONTAINERS[old])

            async def promoted() -> bool:
                t = await self.topology()
                return t is not None and t.primary not in (None, old)

            await _within(promoted, 90, "a standby promoted", self.stack)
            after = await self.topology()
            assert after is not None
            new = str(after.primary)
            await _within(lambda: writable(self.stack, new), 30, f"{new} writable", self.stack)
            rto = time.monotonic() - killed
            count = len(read_acked(out))
            await _within(lambda: len(read_acked(out)) > count + 50, 30, "writes", self.stack)
        finally:
            writer.stop()
        acked = [i for i, _, _ in read_acked(out)]
        rows = query(self.stack, new, f"select id from {TABLE} where id >= {start_id}") or []
        lost = set(acked) - {int(str(r[0])) for r in rows}
        # The container restarted (restart: unless-stopped): read-only from its first moment,
        # as the topology names another node, then rejoined by the leader.
        restarted = time.monotonic()
        self.stack.start(CONTAINERS[old])

        def follows() -> bool:
            rows = query(
                self.stack,
                new,
                "select 1 from pg_stat_replication "
                f"where application_name = '{old}' and state = 'streaming'",
            )
            return bool(rows)

        await _within(follows, 150, f"{old} streaming from {new}", self.stack)
        streaming = time.monotonic() - restarted
        old_writable = writable(self.stack, old)
        watch.stop()
        return {
            "old_primary": old,
            "new_primary": new,
            "rto_seconds": round(rto, 3),
            "acknowledged": len(acked),
            "acknowledged_lost": len(lost),
            "split_brain": watch.most > 1 or old_writable,
            "restarted_to_streaming_seconds": round(streaming, 3),
        }


def summarize(runs: list[dict[str, Any]], errors: list[str]) -> dict[str, Any]:
    def median(key: str) -> float | None:
        values = [r[key] for r in runs]
        return round(statistics.median(values), 3) if values else None

    return {
        "runs": len(runs),
        "rto_median_s": median("rto_seconds"),
        "rto_max_s": max((r["rto_seconds"] for r in runs), default=None),
        "restarted_to_streaming_median_s": median("restarted_to_streaming_seconds"),
        "acknowledged": sum(r["acknowledged"] for r in runs),
        "lost_total": sum(r["acknowledged_lost"] for r in runs),
        "split_brain_runs": sum(1 for r in runs if r["split_brain"]),
        "errors": errors,
    }


async def drill_on_compose(base: Path, runs: int, on_run: Any = None) -> dict[str, Any]:
    """`runs` runs on one compose topology under `base`, each killing the primary of then."""
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    with compose_stack(base / "compose", extra_hosts=(CLIENT,)) as stack:
        servers = [f"nats://{stack.address(n)}:4222" for n in NATS]
        nc = await nats.connect(servers=servers, max_reconnect_attempts=-1)
        try:
            drill = ComposeDrill(stack, await TopologyStore.open(nc.jetstream()), base)
            for i in range(runs):
                try:
                    result = await drill.kill_primary(1 + i * 1_000_000)
                except DrillError as exc:
                    errors.append(str(exc)[:300])
                    break  # the stack is in no state to go on
                results.append(result)
                if on_run is not None:
                    on_run(result)
                await asyncio.sleep(2)
        finally:
            await nc.close()
    return {
        "scenario": "compose-kill-primary",
        "runs": results,
        "summary": summarize(results, errors),
    }
