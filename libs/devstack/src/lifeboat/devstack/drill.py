"""Failover drills: measure failover on a running stack instead of asserting it.

`lifeboat-stack drill <scenario> [--runs N] [--json]` (or `python -m lifeboat.devstack drill
...`) runs them against the stack `make up` runs.

A writer inserts increasing ids through the libpq multi-host DSN every ~10 ms and records
each acknowledged one and which node took it. The drill injects a fault (`lifeboat.devstack
.faults`, the same the fault-matrix tests inject): SIGKILL of the primary's postmaster,
SIGSTOP of the whole primary for 8 s, a switchover through the gateway, or one of the
scenarios of issue 7's fault matrix (`MATRIX`). It waits for writes to resume, keeps writing
a little, then checks what the primary holds:

- RTO: fault to the first write acknowledged by another node (None when the primary stayed);
- unavailability: the longest gap between two acknowledged writes;
- acknowledged writes lost: acknowledged ids the primary does not have;
- split brain: the old primary acknowledged a write after the new one took its first;
- held: the first failover.held (or refusal) said during the run, the reason nobody was
  promoted for a while (a correct outcome where promoting could lose a commit).

Then it puts the cluster back to three healthy nodes (rejoin) for the next run. Faults are
injected into local data directories, so drills belong to the dev stack; they talk to the
gateway only through its client.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import psycopg
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from lifeboat.common.clusters import ClusterSpec, load_clusters
from lifeboat.common.secrets import MissingSecretError, resolve_secret
from lifeboat.devstack.faults import (
    drop_stream,
    signal_node,
    signal_walreceiver,
    starved,
    wait_stopped,
)
from lifeboat.gateway.client import ClusterStatus, GatewayClient, GatewayError, OperationDone
from lifeboat.pg.binaries import find_bindir
from lifeboat.pg.datadir import DataDir, signal_postmaster
from lifeboat.pg.osuser import OsUser

Scenario = Literal[
    "kill-primary",
    "freeze-primary",
    "switchover",
    "lagging-manual-failover",
    "stream-drop-kill",
    "switchover-target-kill",
    "restart-standbys",
    "request-burst",
    "starve-primary",
]
DEFAULT_SCENARIOS: tuple[Scenario, ...] = ("kill-primary", "freeze-primary", "switchover")
# The fault matrix's scenarios (issue 7; tests/integration/test_fault_matrix.py) a drill can
# inject into the stack `make up` runs, by their number there.
MATRIX: dict[Scenario, int] = {
    "lagging-manual-failover": 2,
    "stream-drop-kill": 3,
    "switchover-target-kill": 8,
    "restart-standbys": 9,
    "request-burst": 10,
    "starve-primary": 12,
}
SCENARIOS: tuple[Scenario, ...] = (*DEFAULT_SCENARIOS, *MATRIX)
# Scenarios after which the primary may rightly be the same node: a stall it rides out, a
# refused failover, a switchover whose handover failed.
KEEPS_PRIMARY = frozenset({"starve-primary", "lagging-manual-failover", "switchover-target-kill"})
# What says why nobody was promoted (or an operation refused).
HOLDS = ("failover.held", "failover.failed", "switchover.failed")
TABLE = "lifeboat_drill"


class DrillSettings(BaseSettings):
    """Where the drill finds the stack: by default the one `make up` runs in `.lifeboat/`."""

    model_config = SettingsConfigDict(
        env_prefix="LIFEBOAT_", extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    stack_dir: Path = Path(".lifeboat")
    """The stack's directory (cluster file, secrets)."""
    gateway_url: str = "http://127.0.0.1:8000"
    """Base URL of the gateway's REST API."""
    clusters_file: Path | None = None
    """The cluster description; `<stack_dir>/clusters.yaml` unless given."""
    pg_password: SecretStr | None = None
    """Password of the cluster file's control user."""
    pg_password_file: Path | None = None
    """A file holding it; `<stack_dir>/secrets/pg_password` unless given."""

    def cluster(self, name: str) -> ClusterSpec:
        return load_clusters(self.clusters_file or self.stack_dir / "clusters.yaml").cluster(name)

    def gateway_token(self) -> str | None:
        """The stack's admin token (`make up` writes it), if there is one."""
        file = self.stack_dir / "secrets" / "lifeboat_token"
        return file.read_text().strip() if file.exists() else None

    def postgres_password(self) -> str:
        file = self.pg_password_file or self.stack_dir / "secrets" / "pg_password"
        found = resolve_secret("LIFEBOAT_PG_PASSWORD", self.pg_password, file)
        if found is None:  # not reached: a file is always named
            raise MissingSecretError("LIFEBOAT_PG_PASSWORD is not set")
        return found.get_secret_value()


@dataclass
class Writer:
    dsn: str
    start_id: int
    interval: float = 0.01
    acked: list[tuple[int, float, int]] = field(default_factory=list)  # id, time, server port
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="drill-writer")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        next_id = self.start_id
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=1) as conn:
                    port = int(str(conn.info.port))
                    while not self._stop.is_set():
                        conn.execute(f"insert into {TABLE} (id) values (%s)", (next_id,))
                        self.acked.append((next_id, time.monotonic(), port))
                        next_id += 1
                        time.sleep(self.interval)
            except psycopg.Error:
                next_id += 1  # the outcome of that id is unknown: never reuse it
                time.sleep(0.05)


def split_brain(acked: list[tuple[int, float, int]], old_port: int, new_port: int) -> bool:
    """The old primary acknowledged a write after the new one took its first: two nodes
    took writes at once."""
    old_last = max((t for _, t, p in acked if p == old_port), default=None)
    new_first = min((t for _, t, p in acked if p == new_port), default=None)
    return old_last is not None and new_first is not None and old_last > new_first


@dataclass(frozen=True)
class Injected:
    """A fault as injected: when it struck (the RTO's start), and the node an operator
    would bring back if the cluster holds without it (it may hold the only copy of
    acknowledged commits)."""

    at: float
    revive: str | None = None


class Drill:
    def __init__(
        self, gateway: str, cluster: ClusterSpec, password: str, token: str | None = None
    ) -> None:
        self.api = GatewayClient(gateway, token=token, timeout=180, operation_timeout=180)
        self.cluster = cluster
        self.password = password

    def dsn(self, node: str | None = None) -> str:
        if node is None:
            hosts = ",".join(n.host for n in self.cluster.nodes)
            ports = ",".join(str(n.port) for n in self.cluster.nodes)
            return (
                f"host={hosts} port={ports} dbname={self.cluster.database} "
                f"user={self.cluster.user} password={self.password} "
                "target_session_attrs=read-write"
            )
        spec = self.cluster.node(node)
        return (
            f"host={spec.host} port={spec.port} dbname={self.cluster.database} "
            f"user={self.cluster.user} password={self.password} connect_timeout=2"
        )

    def status(self) -> ClusterStatus:
        return self.api.cluster(self.cluster.name)

    def wait_healthy(self, timeout: float = 180) -> str:
        """Until one writable primary, every other node a streaming standby, no operation."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                status = self.status()
            except (httpx.HTTPError, GatewayError) as exc:
                last = str(exc)
                time.sleep(0.5)
                continue
            last = status
            topo = status.topology
            healths = {n.name: n.health for n in status.nodes}
            if topo and topo.operation is None and topo.primary is not None:
                primary = topo.primary
                ok = all(
                    h is not None
                    and (
                        (h.role == "primary" and bool(h.writable))
                        if name == primary
                        else (
                            h.role == "standby"
                            and h.wal_receiver == "streaming"
                            and h.upstream == primary
                        )
                    )
                    for name, h in healths.items()
                )
                in_sync = len(topo.synchronous) == len(healths) - 1
                if ok and in_sync:
                    return primary
            time.sleep(0.5)
        raise TimeoutError(f"cluster not healthy after {timeout}s: {last}")

    def run(self, scenario: Scenario, start_id: int) -> dict[str, Any]:
        self.restore()
        primary = self.wait_healthy()
        with psycopg.connect(self.dsn(primary), autocommit=True) as conn:
            conn.execute(f"create table if not exists {TABLE} (id bigint primary key)")
        since = self.api.history(self.cluster.name, limit=1, kinds=list(HOLDS)).last_seq
        writer = Writer(self.dsn(), start_id)
        writer.start()
        try:
            time.sleep(1.0)
            fault = self._inject(scenario, primary)
            old_port = self.cluster.node(primary).port
            # Writes resume on another node; after a fault the primary may ride out (or a
            # refused operation), on any node once the fault is over.
            ended = time.monotonic()
            keeps = scenario in KEEPS_PRIMARY

            def resumed() -> bool:
                return any(
                    (t > ended if keeps else t > fault.at and port != old_port)
                    for _, t, port in writer.acked
                )

            # A fault with a node to bring back holds by design when it struck after that
            # node took what nobody else has: an operator's 10 s, then the node is back.
            if not _within(resumed, 10 if fault.revive else 60) and fault.revive is not None:
                self._data(fault.revive).start(self._log(fault.revive))
                _within(resumed, 60)
            time.sleep(10.0 if scenario == "freeze-primary" else 2.0)  # past the thaw, too
        finally:
            writer.stop()
        result = self._measure(writer, primary, fault.at, since)
        self.restore()
        return result

    def _inject(self, scenario: Scenario, primary: str) -> Injected:
        """The fault, as the matrix of issue 7 describes it (scenario numbers in MATRIX)."""
        standbys = sorted(n.name for n in self.cluster.nodes if n.name != primary)
        at = time.monotonic()
        if scenario == "kill-primary":
            signal_node(self._data_dir(primary), signal.SIGKILL)
        elif scenario == "freeze-primary":
            signal_node(self._data_dir(primary), signal.SIGSTOP)
            threading.Timer(
                8.0, signal_postmaster, (self._data_dir(primary), signal.SIGCONT)
            ).start()
        elif scenario == "switchover":
            self._operate("switchover", None)
        elif scenario == "lagging-manual-failover":
            lagging = self.dsn(standbys[-1])
            signal_walreceiver(lagging, signal.SIGSTOP)
            thaw = threading.Timer(2.5, signal_walreceiver, (lagging, signal.SIGCONT))
            thaw.start()
            time.sleep(1.5)  # it falls behind what the other standby acknowledges
            at = time.monotonic()
            self.api.operate(
                "failover", self.cluster.name, target=standbys[-1], reason="drill: lagging target"
            )  # done or refused: both are measured
            thaw.join()
        elif scenario == "stream-drop-kill":
            dropped, lagging = standbys[0], self.dsn(standbys[-1])
            signal_walreceiver(lagging, signal.SIGSTOP)
            time.sleep(1.0)
            drop_stream(self.dsn(dropped))
            signal_walreceiver(lagging, signal.SIGCONT)
            time.sleep(0.3)  # the lagging one alone acknowledges now
            at = time.monotonic()
            signal_node(self._data_dir(primary), signal.SIGKILL)
        elif scenario == "switchover-target-kill":
            target = standbys[0]
            asked = threading.Thread(target=self._operate, args=("switchover", target))
            asked.start()
            wait_stopped(self._data_dir(primary), 30)
            at = time.monotonic()
            signal_node(self._data_dir(target), signal.SIGKILL)
            asked.join(200)
            return Injected(at, revive=target)
        elif scenario == "restart-standbys":
            signal_node(self._data_dir(primary), signal.SIGKILL)
            for name in standbys:
                self._data(name).stop()
                self._data(name).start(self._log(name))
        elif scenario == "request-burst":
            for _ in range(15):
                for name in standbys:  # refused in turn (they stream already): one a round
                    self.api.submit_rejoin(self.cluster.name, name, wait_seconds=0)
            at = time.monotonic()
            signal_node(self._data_dir(primary), signal.SIGKILL)
        else:
            with starved(self._data_dir(primary)):
                time.sleep(4.0)
        return Injected(at)

    def _operate(self, kind: Literal["switchover"], target: str | None) -> None:
        """A switchover, followed to its end; a refusal is an outcome the drill measures."""
        with contextlib.suppress(httpx.HTTPError, GatewayError):
            self.api.operate(kind, self.cluster.name, target=target, reason="drill")

    def _measure(self, writer: Writer, old: str, fault_at: float, since: int) -> dict[str, Any]:
        new = self.wait_settled()
        with psycopg.connect(self.dsn(new), autocommit=True) as conn:
            ids = [a[0] for a in writer.acked]
            rows = conn.execute(f"select id from {TABLE} where id = any(%s)", (ids,)).fetchall()
        present = {r[0] for r in rows}
        lost = [i for i in ids if i not in present]
        old_port = self.cluster.node(old).port
        # Writes resume when another node takes them; an ack from the old primary just after
        # the fault was already in flight.
        after = [t for _, t, port in writer.acked if t > fault_at and port != old_port]
        rto = (after[0] - fault_at) if after and new != old else None
        times = [t for _, t, _ in writer.acked]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        split = old != new and split_brain(writer.acked, old_port, self.cluster.node(new).port)
        page = self.api.history(self.cluster.name, limit=200, kinds=list(HOLDS))
        held = [str(e.event.get("reason")) for e in page.events if e.seq > since]
        return {
            "old_primary": old,
            "new_primary": new,
            "rto_seconds": None if rto is None else round(rto, 3),
            "unavailable_seconds": round(max(gaps, default=0.0), 3),
            "acknowledged": len(ids),
            "acknowledged_lost": len(lost),
            "split_brain": split,
            "held": held[0] if held else None,
        }

    def wait_settled(self, timeout: float = 120) -> str:
        """The primary once no operation is under way and it takes writes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            topo = status.topology
            health = next((n.health for n in status.nodes if topo and n.name == topo.primary), None)
            if topo and topo.operation is None and health is not None and health.writable:
                return str(topo.primary)
            time.sleep(0.3)
        raise TimeoutError(f"no primary took writes within {timeout}s")

    def restore(self) -> None:
        """Rejoin every node that is not a standby of the primary, then wait for health."""
        status = self.status()
        primary = status.topology.primary if status.topology else None
        for node in status.nodes:
            if node.name == primary or (node.health and node.health.role == "standby"):
                continue
            for _ in range(3):  # a rejoin may fail for a passing reason (a node starting)
                answer = self.api.rejoin(self.cluster.name, node.name, requested_by="drill")
                if isinstance(answer, OperationDone):
                    break
                time.sleep(2)
                if self._standby(node.name):  # refused as one already (health was stale)
                    break
            else:
                raise RuntimeError(f"rejoin of {node.name} failed: {answer.model_dump_json()}")
        self.wait_healthy()

    def _standby(self, node: str) -> bool:
        health = next((n.health for n in self.status().nodes if n.name == node), None)
        return health is not None and health.role == "standby"

    def _data_dir(self, node: str) -> Path:
        data_dir = self.cluster.node(node).data_dir
        if data_dir is None:
            raise RuntimeError(f"{node} has no data_dir: drills inject faults on local nodes")
        return data_dir

    def _data(self, node: str) -> DataDir:
        return DataDir(self._data_dir(node), OsUser.for_postgres(), find_bindir())

    def _log(self, node: str) -> Path:
        return self._data_dir(node).parent / "postgres.log"


def _within(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rtos = [r["rto_seconds"] for r in runs if r["rto_seconds"] is not None]
    gaps = [r["unavailable_seconds"] for r in runs]
    return {
        "runs": len(runs),
        "rto_min_s": min(rtos, default=None),
        "rto_median_s": statistics.median(rtos) if rtos else None,
        "rto_max_s": max(rtos, default=None),
        "unavailable_median_s": statistics.median(gaps) if gaps else None,
        "unavailable_max_s": max(gaps, default=None),
        "lost_total": sum(r["acknowledged_lost"] for r in runs),
        "split_brain_runs": sum(1 for r in runs if r["split_brain"]),
        "held_runs": sum(1 for r in runs if r["held"]),
        "failed_over_runs": sum(1 for r in runs if r["new_primary"] != r["old_primary"]),
    }


def drill(
    gateway: str,
    cluster: ClusterSpec,
    password: str,
    scenario: Scenario,
    runs: int,
    token: str | None = None,
) -> dict[str, Any]:
    """`runs` runs of `scenario`; `token` operates the gateway (the stack's admin token)."""
    d = Drill(gateway, cluster, password, token)
    results = []
    base = int(time.time() * 1000) * 1000  # ids never collide with an earlier drill
    try:
        for i in range(runs):
            results.append(d.run(scenario, base + i * 1_000_000))
    finally:
        d.api.close()
    return {"scenario": scenario, "runs": results, "summary": summarize(results)}
