"""Issue 9's drills on test hosts (`hoststack`): partitions and host losses, measured.

A writer on the client's host (`hostwriter`) inserts increasing ids through the multi-host
DSN; a watch reads every node's writability every 0.1 s over its Unix socket, which no
partition reaches, so two writable primaries are seen even when no client could reach
both. Each run reports:

- RTO: the fault to the first write another node acknowledged (None: no failover);
- unavailable: the longest gap between two acknowledged writes (or from the last one to the
  end of the run, when writes did not resume);
- acknowledged writes lost: acknowledged ids the final primary (else the most advanced
  node) does not have;
- split brain: two nodes writable at once, or the old primary acknowledging a write after
  the new one took its first;
- stopped committing: for a primary cut off, the fault to the moment it no longer was
  writable (its agent's self-fence, or the leader's fence);
- detail: what the scenario's fault observed (events, epochs, rejoin time).

Scenarios that leave node1 the primary keep the stack for the next run (`KEEPS_STACK`);
the others need a fresh one, as the controller cannot rejoin another host's old primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from psycopg import sql

from lifeboat.common.kv import TOPOLOGY_BUCKET, TopologyStore
from lifeboat.common.state import Topology
from lifeboat.devstack import netns
from lifeboat.devstack.drill import TABLE, split_brain
from lifeboat.devstack.hoststack import CLIENT, MONITORS, NODES, HostStack, host_stack
from lifeboat.devstack.hostwriter import read_acked
from lifeboat.devstack.launch import module_argv
from lifeboat.devstack.procs import ManagedProcess

HostScenario = Literal[
    "hosts-isolated-primary",
    "hosts-primary-cut-from-controller",
    "hosts-standby-down",
    "hosts-controller-down",
    "hosts-monitor-partitioned",
    "hosts-kv-leader-killed",
]
HOST_SCENARIOS: tuple[HostScenario, ...] = get_args(HostScenario)
KEEPS_STACK = frozenset(
    {"hosts-standby-down", "hosts-controller-down", "hosts-monitor-partitioned"}
)
MONITORS_ON_HOSTS = frozenset({"hosts-monitor-partitioned"})
PRIMARY = "node1"


class Watch:
    """Which nodes are writable, sampled every 0.1 s in a thread of its own."""

    def __init__(self, stack: HostStack) -> None:
        self.stack = stack
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="writable-watch")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            at = time.monotonic()
            self.samples.append((at, tuple(n for n in NODES if self.stack.writable(n))))

    def most(self) -> int:
        return max((len(w) for _, w in self.samples), default=0)

    def last(self) -> tuple[str, ...]:
        return self.samples[-1][1] if self.samples else ()

    def first(self, after: float, check: Callable[[tuple[str, ...]], bool]) -> float | None:
        """The first sample taken after `after` for which `check` holds."""
        return next((t for t, w in self.samples if t > after and check(w)), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class Events:
    """Failover and node events as they are published (core subscriptions), with the time
    each arrived."""

    nc: NatsClient
    cluster: str
    seen: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)

    async def start(self) -> None:
        async def record(msg: Msg) -> None:
            with contextlib.suppress(ValueError):
                self.seen.append((time.monotonic(), msg.subject, json.loads(msg.data)))

        for pattern in (f"failover.*.{self.cluster}", f"node.*.{self.cluster}.*"):
            await self.nc.subscribe(pattern, cb=record)

    def of(self, kind: str, after: float = 0.0) -> list[tuple[float, dict[str, Any]]]:
        return [(t, e) for t, s, e in self.seen if s.startswith(f"{kind}.") and t > after]


async def until(check: Callable[[], object], timeout: float, interval: float = 0.1) -> float | None:
    """When `check()` (plain or async) first held within `timeout` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return time.monotonic()
        await asyncio.sleep(interval)
    return None


class HostDrill:
    """One stack's runs: `run(scenario, start_id)` each; `nc` reaches the stack's NATS."""

    def __init__(self, stack: HostStack, nc: NatsClient) -> None:
        self.stack = stack
        self.nc = nc
        self.events = Events(nc, stack.name)
        self.detail: dict[str, Any] = {}
        self.faults: dict[HostScenario, Callable[[], Awaitable[float]]] = {
            "hosts-isolated-primary": self._isolated_primary,
            "hosts-primary-cut-from-controller": self._cut_from_controller,
            "hosts-standby-down": self._standby_down,
            "hosts-controller-down": self._controller_down,
            "hosts-monitor-partitioned": self._monitor_partitioned,
            "hosts-kv-leader-killed": self._kv_leader_killed,
        }

    async def topology(self) -> Topology | None:
        with contextlib.suppress(Exception):  # NATS away or a server just killed: no answer
            found = await (await TopologyStore.open(self.nc.jetstream())).get(self.stack.name)
            return None if found is None else found.value
        return None

    async def settled(self, timeout: float = 90) -> Topology:
        """node1 the primary, both standbys synchronous and streaming, no operation."""

        async def ready() -> Topology | None:
            topo = await self.topology()
            if topo is None or topo.primary != PRIMARY or topo.operation is not None:
                return None
            if len(topo.synchronous) != len(NODES) - 1 or not self._streaming():
                return None
            return topo

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            topo = await ready()
            if topo is not None:
                return topo
            await asyncio.sleep(0.5)
        raise TimeoutError(f"the cluster did not settle in {timeout}s:\n{self.stack.tail()}")

    def _streaming(self, *names: str) -> bool:
        wanted = set(names or NODES[1:])
        try:
            rows = self.stack.node(PRIMARY).query(
                sql.SQL(
                    "select application_name from pg_stat_replication where state = 'streaming'"
                )
            )
        except Exception:
            return False
        return wanted <= {str(r[0]) for r in rows}

    async def run(self, scenario: HostScenario, start_id: int) -> dict[str, Any]:
        if not self.events.seen:
            await self.events.start()
        before = await self.settled()
        self.stack.node(PRIMARY).execute(
            sql.SQL(f"create table if not exists {TABLE} (id bigint primary key)"),
            dbname=self.stack.pg.database,
        )
        self.detail = {"epoch_before": before.epoch}
        out = self.stack.dir / f"writer-{start_id}.log"
        writer = ManagedProcess(
            "writer",
            self.stack.host(CLIENT).command(
                module_argv("lifeboat.devstack.hostwriter", str(out), str(start_id))
            ),
            env={**os.environ, "LIFEBOAT_WRITER_DSN": self.stack.client_dsn()},
            log_file=self.stack.dir / "writer-output.log",
        )
        watch = Watch(self.stack)
        writer.start()
        try:
            if await until(lambda: read_acked(out), 30) is None:
                raise RuntimeError(f"the writer acknowledged nothing in 30 s: {writer.log_tail()}")
            await asyncio.sleep(1.0)
            at = await self.faults[scenario]()
            # Writes go on a little on whoever is primary now; a client that tries the cut-off
            # node first loses libpq's shortest connect timeout (2 s) on it each round.
            await asyncio.sleep(5.0)
        finally:
            ended = time.monotonic()
            writer.stop(timeout=20)
            watch.stop()
        return await self._measure(read_acked(out), watch, at, ended)

    async def _measure(
        self, acked: list[tuple[int, float, int]], watch: Watch, at: float, ended: float
    ) -> dict[str, Any]:
        ports = {n.name: n.port for n in self.stack.pg.nodes}
        writable = watch.last()
        new = writable[0] if len(writable) == 1 else None
        # With nobody writable (a hold), the most advanced node that runs holds what was
        # acknowledged: synchronous standbys have every acknowledged commit.
        ids = [a[0] for a in acked]
        present: dict[str, set[int]] = {}
        for name in [new] if new else [n for n in NODES if self.stack.node(n).running()]:
            with contextlib.suppress(Exception):  # a node that stops meanwhile holds nothing
                present[name] = self._present(name, ids)
        held_by = max(present, key=lambda n: len(present[n]), default=None)
        lost = len(ids) - (len(present[held_by]) if held_by else 0)
        after = [t for _, t, p in acked if t > at and p != ports[PRIMARY]]
        times = [t for _, t, _ in acked] + [ended]  # writes that never resumed count to the end
        gaps = [b - a for a, b in itertools.pairwise(times)]
        split = watch.most() > 1 or (
            new is not None and new != PRIMARY and split_brain(acked, ports[PRIMARY], ports[new])
        )
        topo = await self.topology()
        self.detail.update(
            epoch_after=None if topo is None else topo.epoch,
            failovers_started=len(self.events.of("failover.started", at)),
            held=next((str(e.get("reason")) for _, e in self.events.of("failover.held", at)), None),
        )
        return {
            "old_primary": PRIMARY,
            "new_primary": new,
            "writable_at_end": list(writable),
            "rto_seconds": round(after[0] - at, 3) if after else None,
            "unavailable_seconds": round(max(gaps, default=0.0), 3),
            "acknowledged": len(ids),
            "acknowledged_lost": lost,
            "checked_on": held_by,
            "split_brain": split,
            "most_writable_at_once": watch.most(),
            "stopped_committing_seconds": self.detail.pop("stopped_committing_seconds", None),
            "detail": self.detail,
        }

    def _present(self, name: str, ids: list[int]) -> set[int]:
        rows = self.stack.node(name).query(
            sql.SQL("select id from {} where id = any({})").format(
                sql.Identifier(TABLE), sql.Literal(ids)
            ),
            dbname=self.stack.pg.database,
        )
        return {int(str(r[0])) for r in rows}

    # --- the faults: each returns when it struck, once the scenario's outcome is in -----

    async def _stopped_committing(self, at: float, timeout: float) -> None:
        """How long after `at` node1 stopped being writable (None: it did not)."""
        stopped = await until(lambda: not self.stack.writable(PRIMARY), timeout, 0.05)
        self.detail["stopped_committing_seconds"] = (
            None if stopped is None else round(stopped - at, 3)
        )

    def _promoted(self) -> bool:
        return any(self.stack.writable(n) for n in NODES if n != PRIMARY)

    async def _isolated_primary(self) -> float:
        """1. node1's host loses its link: no controller, standby or client reaches it."""
        host = self.stack.host(PRIMARY)
        at = time.monotonic()
        host.cut()
        await self._stopped_committing(at, 30)
        # Detection (3 probes), the agents' bound and its margin, promotion: well within 30 s.
        promoted = await until(self._promoted, 30)
        self.detail["promoted_after_seconds"] = (
            None if promoted is None else round(promoted - at, 3)
        )
        return at

    async def _cut_from_controller(self) -> float:
        """2. node1's host reaches neither the controller nor NATS (both on 198.18.0.1), but
        the standbys and the client still reach it and it them. Watched for 30 s, then the
        routes come back and the cluster settles."""
        host = self.stack.host(PRIMARY)
        at = time.monotonic()
        host.block(netns.CONTROLLER)
        await self._stopped_committing(at, 30)
        promoted = await until(self._promoted, max(0.0, at + 30 - time.monotonic()))
        self.detail["promoted_after_seconds"] = (
            None if promoted is None else round(promoted - at, 3)
        )
        host.unblock()
        healed = await until(lambda: len([n for n in NODES if self.stack.writable(n)]) == 1, 60)
        self.detail["one_writable_after_heal"] = healed is not None
        return at

    async def _standby_down(self) -> float:
        """6. node3's host goes down (its PostgreSQL and agent killed, its link cut) for 10 s,
        then comes back as after a reboot: PostgreSQL and the agent started again."""
        name = NODES[-1]
        host, node = self.stack.host(name), self.stack.node(name)
        at = time.monotonic()
        self.stack.kill_agent(name)
        node.kill()
        host.cut()
        await asyncio.sleep(10.0)
        host.mend()
        back = time.monotonic()
        node.start()
        self.stack.restart_agent(name)
        streams = await until(lambda: self._streaming(name), 60)
        self.detail["streaming_after_restart_seconds"] = (
            None if streams is None else round(streams - back, 3)
        )

        async def synchronous_again() -> bool:
            topo = await self.topology()
            return topo is not None and name in topo.synchronous

        again = await until(synchronous_again, 60)
        self.detail["synchronous_again_seconds"] = None if again is None else round(again - back, 3)
        return at

    async def _controller_down(self) -> float:
        """5. The controller's host stops (NATS, monitors and failover frozen, SIGSTOP) for
        15 s — three times the agents' self-fence bound — while PostgreSQL keeps serving;
        then it resumes. The agents keep their primary by the failsafe (every standby's agent
        answers); nothing fails over; the events resume."""
        frozen = self.stack.controller()
        at = time.monotonic()
        for proc in frozen:
            proc.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(15.0)
        finally:
            for proc in frozen:
                proc.signal(signal.SIGCONT)
        thawed = time.monotonic()
        self.detail["primary_writable_throughout"] = await asyncio.to_thread(
            self.stack.writable, PRIMARY
        )

        def heard_all() -> bool:
            nodes = {e.get("node") for _, e in self.events.of("node.health", thawed)}
            return set(NODES) <= nodes

        heard = await until(heard_all, 30)
        self.detail["events_resumed_seconds"] = None if heard is None else round(heard - thawed, 3)
        await asyncio.sleep(8.0)  # what the monitors say now must not start a failover
        return at

    async def _monitor_partitioned(self) -> float:
        """3. monitor3's host reaches neither the nodes nor the other monitors (NATS still):
        it alone reports the nodes down for 15 s; a minority must not fail anyone over."""
        host = self.stack.host(MONITORS[-1])
        peers = [self.stack.host(n).address for n in (*NODES, *MONITORS[:-1])]
        at = time.monotonic()
        host.block(*peers)
        await asyncio.sleep(15.0)
        host.unblock()
        self.detail["minority_saw_down"] = any(
            e.get("source", {}).get("instance") == MONITORS[-1]
            for _, e in self.events.of("node.down", at)
        )
        await asyncio.sleep(3.0)
        return at

    async def _kv_leader_killed(self) -> float:
        """4. node1's PostgreSQL killed; as soon as failover.started is out, the NATS server
        leading the topology bucket's stream is killed too (and started again after)."""
        at = time.monotonic()
        self.stack.node(PRIMARY).kill()
        started = await until(lambda: self.events.of("failover.started", at), 30, 0.02)
        leader = await self._kv_leader()
        self.detail.update(started=started is not None, kv_leader=leader)
        server = next((s for s in self.stack.nats_servers() if s.name == leader), None)
        if server is not None:
            server.process.signal(signal.SIGKILL)
            server.process.stop()
        promoted = await until(self._promoted, 60)
        self.detail["promoted_after_seconds"] = (
            None if promoted is None else round(promoted - at, 3)
        )
        completed = await until(lambda: self.events.of("failover.completed", at), 30)
        self.detail["completed"] = completed is not None
        if server is not None:
            server.launch()
        return at

    async def _kv_leader(self) -> str | None:
        with contextlib.suppress(Exception):
            info = await self.nc.jetstream().stream_info(f"KV_{TOPOLOGY_BUCKET}")
            return None if info.cluster is None else info.cluster.leader
        return None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return round(statistics.median(values), 3) if values else None

    return {
        "runs": len(runs),
        "rto_median_s": median("rto_seconds"),
        "rto_max_s": max((r["rto_seconds"] for r in runs if r["rto_seconds"]), default=None),
        "unavailable_median_s": median("unavailable_seconds"),
        "unavailable_max_s": max((r["unavailable_seconds"] for r in runs), default=None),
        "stopped_committing_median_s": median("stopped_committing_seconds"),
        "lost_total": sum(r["acknowledged_lost"] for r in runs),
        "split_brain_runs": sum(1 for r in runs if r["split_brain"]),
        "failed_over_runs": sum(1 for r in runs if r["new_primary"] not in (None, PRIMARY)),
        "no_primary_runs": sum(1 for r in runs if r["new_primary"] is None),
    }


async def _runs_on(
    base: Path, scenario: HostScenario, runs: int, first: int
) -> list[dict[str, Any]]:
    """`runs` runs of `scenario` on one stack in `base`, ids from `first` on."""
    with host_stack(base, monitors_on_hosts=scenario in MONITORS_ON_HOSTS) as stack:
        nc = await nats.connect(servers=stack.nats.url.split(","), max_reconnect_attempts=-1)
        try:
            drill = HostDrill(stack, nc)
            return [await drill.run(scenario, first + i * 1_000_000) for i in range(runs)]
        finally:
            await nc.close()


async def drill_on_hosts(
    base: Path,
    scenario: HostScenario,
    runs: int,
    on_run: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """`runs` runs of `scenario`, each stack in a directory under `base`: one stack for all
    when the scenario leaves node1 the primary, else a fresh one per run; `on_run` is told
    each run's result as it ends (a batch stopped midway keeps what it measured)."""
    results: list[dict[str, Any]] = []
    batches = [runs] if scenario in KEEPS_STACK else [1] * runs
    errors: list[str] = []
    for i, size in enumerate(batches):
        try:
            batch = await _runs_on(base / f"{scenario}-{i}", scenario, size, 1 + i)
        except (TimeoutError, RuntimeError, OSError) as exc:  # a stack that would not settle
            errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")
            continue
        for result in batch:
            results.append(result)
            if on_run is not None:
                on_run(result)
    summary = {**summarize(results), "errors": errors}
    return {"scenario": scenario, "runs": results, "summary": summary}
