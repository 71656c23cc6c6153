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
gateway only through its client. The scenarios about the failover service itself (a leader
killed, cut off from PostgreSQL, run in remote mode, or twinned) find the stack's failover
service by its PID in the stack's `children.json` and start more instances beside it with
its settings (its LIFEBOAT_ environment, as `docker compose up --scale failover=N` would),
each stopped by PID when the drill ends; which one leads, each says in its health.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import psycopg
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from lifeboat.common.clusters import ClustersFile, ClusterSpec, dump_clusters, load_clusters
from lifeboat.common.secrets import MissingSecretError, resolve_secret
from lifeboat.devstack.faults import (
    drop_stream,
    signal_node,
    signal_walreceiver,
    starved,
)
from lifeboat.devstack.launch import ServiceProcess, launch
from lifeboat.devstack.natsfaults import StackNats
from lifeboat.devstack.procs import kill_pid
from lifeboat.gateway.client import (
    ClusterStatus,
    GatewayClient,
    GatewayError,
    OperationDone,
    OperationView,
    result_of,
)
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
    "stall-primary",
    "candidate-kill",
    "switchover-new-primary-kill",
    "leader-kill",
    "leader-term",
    "leader-cut-off",
    "twin-instances",
    "remote-cut-off",
    "nats-rollback",
    "jetstream-full",
]
DEFAULT_SCENARIOS: tuple[Scenario, ...] = ("kill-primary", "freeze-primary", "switchover")
# The fault matrix's scenarios (issue 7; tests/integration/test_fault_matrix.py) a drill can
# inject into the stack `make up` runs, by their number there.
MATRIX: dict[Scenario, int] = {
    "remote-cut-off": 1,
    "lagging-manual-failover": 2,
    "stream-drop-kill": 3,
    "candidate-kill": 4,
    "switchover-new-primary-kill": 4,
    "leader-kill": 5,
    "leader-term": 5,
    "leader-cut-off": 6,
    "switchover-target-kill": 8,
    "restart-standbys": 9,
    "request-burst": 10,
    "twin-instances": 11,
    "starve-primary": 12,
    "stall-primary": 12,
    "nats-rollback": 7,
    "jetstream-full": 7,
}
SCENARIOS: tuple[Scenario, ...] = (*DEFAULT_SCENARIOS, *MATRIX)
# Scenarios after which the primary may rightly be the same node: a stall it rides out, a
# refused failover, a switchover whose handover failed.
KEEPS_PRIMARY = frozenset(
    {"starve-primary", "stall-primary", "lagging-manual-failover", "switchover-target-kill"}
)
# What says why nobody was promoted (or an operation refused).
HOLDS = ("failover.held", "failover.failed", "switchover.failed")
TABLE = "lifeboat_drill"
# nats-rollback: how soon the gateway's history must show the hold NATS has (its rewind
# check runs every 2 s)
GATEWAY_FOLLOWS_SECONDS = 5.0
# Seconds after a node's SIGKILL in which an acknowledgement from it was already on its way.
IN_FLIGHT = 0.2


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
class Instance:
    """One failover instance: its configured id, where its health answers, its PID."""

    name: str
    url: str
    pid: int

    def leads(self) -> bool:
        """Its health says it holds the lease (False while it does not answer)."""
        try:
            report = httpx.get(f"{self.url}/health", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return False
        return any(
            c.get("name") == "leadership" and bool(c.get("details", {}).get("leader"))
            for c in report.get("components", [])
        )


def _lifeboat_environ(pid: int) -> dict[str, str]:
    """The LIFEBOAT_ settings a running service was started with (its /proc environ)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(): v.decode() for k, v in pairs if k.startswith(b"LIFEBOAT_")}


class FailoverInstances:
    """The stack's failover service (its PID from the stack's children.json, as `make up`
    records it; the stack restarts it when it dies) and instances the drill starts beside it
    with the same settings, as `docker compose up --scale failover=N` would, each stopped by
    its PID."""

    def __init__(self, stack_dir: Path) -> None:
        self.stack_dir = stack_dir
        self.started: dict[str, ServiceProcess] = {}

    def _stack_pid(self) -> int | None:
        return stack_child(self.stack_dir, b"lifeboat.failover")

    def _stack_running(self) -> Instance | None:
        """The stack's own failover service if it runs (its id and port from its settings)."""
        pid = self._stack_pid()
        if pid is None:
            return None
        try:
            env = _lifeboat_environ(pid)
            url = f"http://127.0.0.1:{env['LIFEBOAT_HTTP_PORT']}"
            return Instance(env["LIFEBOAT_INSTANCE_ID"], url, pid)
        except (OSError, KeyError):  # it ended meanwhile
            return None

    def stack_instance(self, timeout: float = 60) -> Instance:
        """The stack's own failover service, once it runs and answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self._stack_running()
            with contextlib.suppress(httpx.HTTPError):
                if found and httpx.get(f"{found.url}/health/ready", timeout=2).status_code == 200:
                    return found
            time.sleep(0.5)
        raise TimeoutError(f"the stack's failover service did not answer within {timeout}s")

    def ensure(self, key: str, instance: str | None = None, **extra: str) -> ServiceProcess:
        """The drill's instance `key` (configured id `instance`, `key` unless given; `extra`
        settings win over the stack's), started unless it runs, once ready."""
        proc = self.started.get(key)
        if proc is not None and proc.alive():
            return proc
        if proc is not None:
            proc.stop()
        pid = self._stack_pid() or self.stack_instance().pid
        base = {k: v for k, v in os.environ.items() if not k.startswith("LIFEBOAT_")}
        env = {**base, **_lifeboat_environ(pid)}
        for own in ("LIFEBOAT_HTTP_PORT", "LIFEBOAT_INSTANCE_ID"):
            env.pop(own, None)
        proc = launch(
            "failover",
            env,
            instance=instance or key,
            extra=extra,
            name=key,
            log_file=self.stack_dir / f"drill-{key}.log",
        )
        self.started[key] = proc
        proc.wait_ready(60)
        return proc

    def stop(self, key: str) -> None:
        proc = self.started.pop(key, None)
        if proc is not None:
            proc.stop(timeout=15)

    def stop_all(self) -> None:
        for key in list(self.started):
            self.stop(key)

    def running(self) -> list[Instance]:
        """Every instance that runs now: the stack's (if it does) and the drill's."""
        stack = self._stack_running()
        found = [] if stack is None else [stack]
        for key, proc in self.started.items():
            if proc.alive() and proc.pid is not None:
                found.append(Instance(key, proc.url, proc.pid))
        return found

    def leader(self, timeout: float = 20) -> Instance | None:
        """The instance whose health says it leads; None if none does within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            leading = [i for i in self.running() if i.leads()]
            if leading or time.monotonic() > deadline:
                return leading[0] if leading else None
            time.sleep(0.1)

    def signal(self, instance: Instance, sig: signal.Signals) -> None:
        """`sig` to the instance's process (the drill's: its whole session)."""
        proc = self.started.get(instance.name)
        if proc is not None and proc.pid == instance.pid:
            proc.signal(sig)
        else:
            kill_pid(instance.pid, sig)

    def lead(self, key: str, timeout: float = 120) -> Instance:
        """Until the drill's instance `key` holds the lease: whoever else leads is stopped
        (SIGTERM: it hands the lease back), as an operator stops an instance."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader(timeout=5)
            if leader is not None and leader.name == key:
                return leader
            if leader is not None and leader.name in self.started:
                self.stop(leader.name)  # gone, so that ensure() starts it again
            elif leader is not None:
                self.signal(leader, signal.SIGTERM)
            time.sleep(0.5)
        raise TimeoutError(f"{key} did not take the failover lease within {timeout}s")


class LeaderWatch:
    """How many failover instances say at once that they lead, sampled every 0.1 s."""

    def __init__(self, instances: FailoverInstances) -> None:
        self.instances = instances
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="leader-watch")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.most = max(self.most, sum(i.leads() for i in self.instances.running()))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.most


@dataclass(frozen=True)
class Injected:
    """A fault as injected: when it struck (the RTO's start), and the node an operator
    would bring back if the cluster holds without it (it may hold the only copy of
    acknowledged commits)."""

    at: float
    revive: str | None = None


class Drill:
    def __init__(
        self,
        gateway: str,
        cluster: ClusterSpec,
        password: str,
        token: str | None = None,
        stack_dir: Path | None = None,
    ) -> None:
        self.api = GatewayClient(gateway, token=token, timeout=180, operation_timeout=180)
        self.cluster = cluster
        self.password = password
        self.stack_dir = stack_dir if stack_dir is not None else DrillSettings().stack_dir
        self.instances = FailoverInstances(self.stack_dir)
        self.nats = StackNats(self.stack_dir)
        # What one run's fault leaves for the run to finish: the events' cursor before it,
        # what it observed, an operation still answering, instances to stop before the
        # rejoin, a watch on how many instances lead.
        self._since = 0
        self._detail: dict[str, Any] = {}
        self._pending: list[threading.Thread] = []
        self._transient: list[str] = []
        self._watch: LeaderWatch | None = None
        self._writer: Writer | None = None
        self._later: list[Callable[[], None]] = []  # what to read once the run settled
        self._matrix: dict[Scenario, Callable[[str, list[str]], Injected]] = {
            "stall-primary": self._stall,
            "candidate-kill": self._candidate_kill,
            "switchover-new-primary-kill": self._switchover_new_primary_kill,
            "leader-kill": lambda p, s: self._leader_killed(p, signal.SIGKILL),
            "leader-term": lambda p, s: self._leader_killed(p, signal.SIGTERM),
            "leader-cut-off": self._leader_cut_off,
            "twin-instances": self._twins,
            "remote-cut-off": self._remote_cut_off,
            "nats-rollback": self._nats_rollback,
            "jetstream-full": self._jetstream_full,
        }

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
        self._since, self._detail = since, {}
        writer = Writer(self.dsn(), start_id)
        writer.start()
        self._writer = writer
        try:
            time.sleep(1.0)
            fault = self._inject(scenario, primary)
            old_port = self.cluster.node(primary).port
            # Writes resume on another node; after a fault the primary may ride out (or a
            # refused operation), on any node once the fault is over.
            ended = time.monotonic()
            keeps = scenario in KEEPS_PRIMARY

            def resumed() -> bool:
                if keeps:
                    return any(t > ended for _, t, _ in writer.acked)
                return bool(self._taken_after(writer, fault, old_port))

            # A fault with a node to bring back holds by design when it struck after that
            # node took what nobody else has: an operator's 10 s, then the node is back.
            if not _within(resumed, 10 if fault.revive else 60) and fault.revive is not None:
                self._data(fault.revive).start(self._log(fault.revive))
                _within(resumed, 60)
            time.sleep(10.0 if scenario == "freeze-primary" else 2.0)  # past the thaw, too
        finally:
            writer.stop()
            if self._watch is not None:
                self._detail["leaders_at_once"] = self._watch.stop()
                self._watch = None
            for pending in self._pending:
                pending.join(200)
            self._pending = []
        result = self._measure(writer, primary, fault, since)
        for later in self._later:
            later()
        self._later = []
        if self._detail:
            result["detail"] = self._detail
        for key in self._transient:
            self.instances.stop(key)
        if self._transient:  # a request heard while nobody leads is not replayed later
            self.instances.leader(timeout=60)
        self._transient = []
        self.restore()
        return result

    def _inject(self, scenario: Scenario, primary: str) -> Injected:
        """The fault, as the matrix of issue 7 describes it (scenario numbers in MATRIX)."""
        standbys = sorted(n.name for n in self.cluster.nodes if n.name != primary)
        if scenario in self._matrix:
            return self._matrix[scenario](primary, standbys)
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
            self._handed_over(primary, 30)
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

    def _event(
        self, kind: str, timeout: float, says: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any] | None:
        """The first `kind` event of this run (that `says`), polled every 20 ms; None if
        none within `timeout` (0: as of now)."""
        deadline = time.monotonic() + timeout
        while True:
            page = self.api.history(self.cluster.name, limit=50, kinds=[kind])
            found = [
                e.event for e in page.events if e.seq > self._since and (says or bool)(e.event)
            ]
            if found or time.monotonic() >= deadline:
                return found[0] if found else None
            time.sleep(0.02)

    def _by(self, kind: str) -> str | None:
        """The instance that published this run's first `kind` event."""
        event = self._event(kind, 0)
        return None if event is None else str(event.get("source", {}).get("instance"))

    def _handed_over(self, node: str, timeout: float) -> bool:
        """Until the switchover's handover has taken the old primary's writes: it is stopped
        (the controller holds its data directory and stopped it cleanly) or read-only (its
        agent's host: the handover leaves it running); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not (self._data_dir(node) / "postmaster.pid").exists():
                return True
            with contextlib.suppress(psycopg.Error):
                with psycopg.connect(self.dsn(node), autocommit=True, connect_timeout=1) as conn:
                    row = conn.execute("show default_transaction_read_only").fetchone()
                if row is not None and row[0] == "on":
                    return True
            time.sleep(0.005)
        return False

    def _writable(self, node: str) -> bool:
        """The node is out of recovery (it would take writes)."""
        with contextlib.suppress(psycopg.Error):
            with psycopg.connect(self.dsn(node), autocommit=True) as conn:
                row = conn.execute("select pg_is_in_recovery()").fetchone()
            return row is not None and row[0] is False
        return False

    def _stall(self, primary: str, standbys: list[str]) -> Injected:
        """Matrix 12 as a stall: the primary's postmaster and every child stopped 4 s (about
        the detection time), then resumed."""
        at = time.monotonic()
        signal_node(self._data_dir(primary), signal.SIGSTOP)
        time.sleep(4.0)
        signal_postmaster(self._data_dir(primary), signal.SIGCONT)
        return Injected(at)

    def _candidate_kill(self, primary: str, standbys: list[str]) -> Injected:
        """Matrix 4: the primary killed, then the candidate as soon as failover.started
        names it. It may hold acknowledged commits the other lacks: it is the node to bring
        back."""
        at = time.monotonic()
        signal_node(self._data_dir(primary), signal.SIGKILL)
        started = self._event("failover.started", 30)
        if started is None:
            self._detail["started"] = False
            return Injected(at)
        candidate = str(started["candidate"])
        completed = self._event("failover.completed", 0) is not None
        signal_node(self._data_dir(candidate), signal.SIGKILL)
        self._detail.update(candidate=candidate, completed_before_kill=completed)
        return Injected(at, revive=candidate)

    def _switchover_new_primary_kill(self, primary: str, standbys: list[str]) -> Injected:
        """Matrix 4: a switchover to a standby, which is killed as soon as it is promoted
        (the old primary is being rejoined to it); it is the node to bring back."""
        target = standbys[0]
        asked = threading.Thread(target=self._operate, args=("switchover", target))
        asked.start()
        self._pending.append(asked)
        if not _within(lambda: self._writable(target), 30):
            self._detail["promoted"] = False
            return Injected(time.monotonic())
        at = time.monotonic()
        signal_node(self._data_dir(target), signal.SIGKILL)
        topo = self.status().topology
        operation = topo.operation if topo else None
        self._detail["operation_at_kill"] = None if operation is None else operation.kind
        return Injected(at, revive=target)

    def _leader_killed(self, primary: str, sig: signal.Signals) -> Injected:
        """Matrix 5: the primary frozen; the failover leader sent `sig` as soon as
        failover.started is out (fencing a frozen node takes its SQL deadline first); the
        others finish. The old primary is thawed once the cluster settled."""
        for key in ("standby-a", "standby-b"):  # whoever leads, another is left
            self.instances.ensure(key)
        leader = self.instances.leader()
        if leader is None:
            raise RuntimeError("no failover instance leads")
        data_dir = self._data_dir(primary)
        at = time.monotonic()
        signal_node(data_dir, signal.SIGSTOP)
        try:
            started = self._event("failover.started", 30)
            fenced = self._event("node.fenced", 0) is not None
            self.instances.signal(leader, sig)
            with contextlib.suppress(TimeoutError):
                self.wait_settled(90)
        finally:
            signal_postmaster(data_dir, signal.SIGCONT)
        time.sleep(1.0)  # a thawed old primary that still ran would take writes now
        self._detail.update(
            leader=leader.name, started=started is not None, fenced_before_signal=fenced
        )
        self._later.append(self._who_finished)
        return Injected(at)

    def _who_finished(self) -> None:
        self._detail.update(
            fenced_by=self._by("node.fenced"), completed_by=self._by("failover.completed")
        )

    def _leader_cut_off(self, primary: str, standbys: list[str]) -> Injected:
        """Matrix 6: the leader reaches NATS but no node (its PostgreSQL password is wrong)
        when the primary is killed; it must step down, another instance fails over."""
        self.instances.ensure("cut-off", LIFEBOAT_PG_PASSWORD="not-the-password")
        self._transient.append("cut-off")
        self.instances.lead("cut-off")
        self.instances.ensure("standby-a")
        cut_off = self.instances.leader(timeout=0)
        self._detail["cut_off_led_at_kill"] = cut_off is not None and cut_off.name == "cut-off"
        at = time.monotonic()
        signal_node(self._data_dir(primary), signal.SIGKILL)
        stepped = self._event(
            "failover.held", 60, lambda e: "stepping down" in str(e.get("reason"))
        )
        self._detail["stepped_down"] = stepped is not None
        self._later.append(self._who_finished)
        return Injected(at)

    def _twins(self, primary: str, standbys: list[str]) -> Injected:
        """Matrix 11: a second instance with the stack's failover's configured id; only one
        may ever lead, and the primary's death is one failover."""
        twin = self.instances.stack_instance().name
        self.instances.ensure("twin", instance=twin)
        self._watch = LeaderWatch(self.instances)
        time.sleep(3.0)  # a few lease renewals: the other must still not lead
        at = time.monotonic()
        signal_node(self._data_dir(primary), signal.SIGKILL)
        self._later.append(self._count_failovers)
        return Injected(at)

    def _count_failovers(self) -> None:
        page = self.api.history(self.cluster.name, limit=50, kinds=["failover.started"])
        started = sum(1 for e in page.events if e.seq > self._since)
        self._detail.update(failovers_started=started, one_failover=started == 1)

    def _remote_cut_off(self, primary: str, standbys: list[str]) -> Injected:
        """Matrix 1: the leader runs on the cluster file in remote mode (no data_dir); the
        primary frozen, so it cannot be reached over SQL. Where no agent runs beside it
        nobody may be promoted (held says why) until it answers again and is fenced; where
        one does (`make up`), the leader's stop request has it killed, then a standby is
        promoted (`held_while_cut_off` false, `promoted_while_cut_off` true, the writer's
        count of writable nodes the proof)."""
        remote = self.stack_dir / "drill-remote-clusters.yaml"
        clusters = load_clusters(self.stack_dir / "clusters.yaml")
        remote.write_text(
            dump_clusters(ClustersFile(clusters=tuple(c.remote() for c in clusters.clusters)))
        )
        self.instances.ensure("remote", LIFEBOAT_CLUSTERS_FILE=str(remote))
        self._transient.append("remote")
        self.instances.lead("remote")
        data_dir = self._data_dir(primary)
        at = time.monotonic()
        signal_node(data_dir, signal.SIGSTOP)
        try:
            held = self._event(
                "failover.held", 30, lambda e: "confirmed unable" in str(e.get("reason"))
            )
            time.sleep(2.0)  # fence retries keep failing: still nobody promoted
            promoted = [s for s in standbys if self._writable(s)]
        finally:
            signal_postmaster(data_dir, signal.SIGCONT)
        self._detail.update(
            held_while_cut_off=held is not None, promoted_while_cut_off=bool(promoted)
        )
        self._later.append(self._who_finished)
        return Injected(at)

    def _nats_rollback(self, primary: str, standbys: list[str]) -> Injected:
        """Matrix 7: every NATS server's store copied, the primary killed and failed over,
        then NATS restarted with the copies: the stored topology names the dead node under
        the old epoch. Nobody may act on it (held: "ahead of the topology") while the new
        primary keeps taking writes; the operator's forced failover naming it ends the hold
        (it records the node under a new epoch, promoting and fencing nobody). When that
        is refused (the new primary no longer takes writes), the record the rollback lost
        is written back by hand and the new primary started again, so the next run starts
        from a healthy cluster; the run says so (`repaired`)."""
        copy = self.stack_dir / "drill-nats-copy"
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir()
        self.nats.restarted(take=copy)
        self._restart_gateway()
        self.wait_healthy()  # every service back on NATS before the fault
        at = time.monotonic()
        signal_node(self._data_dir(primary), signal.SIGKILL)
        completed = self._event("failover.completed", 60)
        new = self.wait_settled(60)
        newest = self.nats.topology(self.cluster.name)
        rolled = time.monotonic()
        since = self.nats.restarted(put=copy)  # from here on NATS holds the old store
        back = time.monotonic()
        shutil.rmtree(copy, ignore_errors=True)
        # The first hold heard, kept: read at the end, the newest one may be a repeat (a
        # hold lasting past 30 s is said again), 30 s later than when it was first said.
        first: list[dict[str, Any]] = []

        def said_ahead() -> bool:
            if not first and (event := self._said(since, "failover.held", _ahead)) is not None:
                first.append(event)
            return bool(first)

        held = _within(said_ahead, 45)
        stored = json.loads(self.nats.topology(self.cluster.name) or b"{}")
        heard = self._event("failover.held", GATEWAY_FOLLOWS_SECONDS, _ahead) is not None
        self._restart_gateway()
        wrote = _within(lambda: self._acked_by(new, back), 10)
        stopped = self._said(since, f"node.self_fenced.{self.cluster.name}.{new}")
        failed = self._said(since, "failover.failed")
        self._detail.update(
            completed_before_rollback=completed is not None,
            nats_restart_seconds=round(back - rolled, 3),
            stored_topology_after_rollback=f"{stored.get('primary')}@{stored.get('epoch')}",
            held_ahead=held,
            rollback_to_hold_seconds=_seconds_after(first[0] if first else None, since),
            gateway_had_hold_within_5s=heard,
            new_primary_stopped_by_its_agent=stopped is not None,
            rollback_to_agent_stop_seconds=_seconds_after(stopped, since),
            failover_failed_after_rollback=failed is not None,
            new_primary_wrote_after_rollback=wrote,
            writable_after_rollback=",".join(
                n.name for n in self.cluster.nodes if self._writable(n.name)
            ),
        )
        forced = self._force(new)
        self._detail["forced"] = forced
        if forced != "OperationDone" and newest is not None:
            self.nats.put_topology(self.cluster.name, newest)
            if not self._data(new).running():
                self._data(new).start(self._log(new))
            self._detail["repaired"] = True
        return Injected(at)

    def _said(
        self, since: datetime, subject: str, says: Callable[[dict[str, Any]], bool] = bool
    ) -> dict[str, Any] | None:
        """The newest event on `subject` (a topic and its cluster's or node's name), read
        from NATS itself, if it was said after `since` (and `says`)."""
        if subject.count(".") < 2:
            subject = f"{subject}.{self.cluster.name}"
        event = self.nats.last_event(subject)
        if event is None or not says(event):
            return None
        return event if datetime.fromisoformat(str(event["occurred_at"])) >= since else None

    def _restart_gateway(self, timeout: float = 120) -> None:
        """The stack's gateway stopped (SIGTERM), once the stack has started it again and it
        answers with every node's health. No longer needed to hear heartbeats after all NATS
        servers restarted (its heartbeat consumer starts by sequence since d9095ac, and is
        recreated) nor for its history to follow a rolled-back store (the rewind check,
        2501c26): tests/integration/test_gateway_nats_restart.py shows both on one server,
        not in this drill. Kept as harmless: it still waits for every node's health, and the
        drill reads whether the running gateway heard the hold before it restarts it."""
        old = stack_child(self.stack_dir, b"lifeboat.gateway")
        if old is not None:
            kill_pid(old, signal.SIGTERM)

        def back() -> bool:
            pid = stack_child(self.stack_dir, b"lifeboat.gateway")
            if pid in (None, old):
                return False
            with contextlib.suppress(httpx.HTTPError, GatewayError):
                return all(n.health is not None for n in self.status().nodes)
            return False

        if not _within(back, timeout):
            raise TimeoutError(f"the stack's gateway did not answer within {timeout}s")

    def _acked_by(self, node: str, after: float) -> bool:
        """The drill's writer had a write acknowledged by `node` after `after`."""
        port = self.cluster.node(node).port
        acked = self._writer.acked if self._writer else []
        return any(t > after and p == port for _, t, p in acked)

    def _force(self, target: str) -> str:
        """The operator's way out of a topology older than the cluster: a forced failover
        naming the writable primary on the newest timeline; its outcome, in a word."""
        answer = self.api.submit(
            "failover", self.cluster.name, target=target, force=True, reason="drill: record it"
        )
        result = result_of(self.api.follow(answer)) if isinstance(answer, OperationView) else answer
        return type(result).__name__

    def _jetstream_full(self, primary: str, standbys: list[str]) -> Injected:
        """Matrix 7: JetStream's store full (a stream of the drill's filled it) when the
        primary dies: no lease, topology, report or event can be stored, so nobody may be
        promoted; once the filler is gone the failover goes ahead with every write."""
        if all(c.max_file_store is None for c in self.nats.configs):
            raise RuntimeError(
                "jetstream-full needs a store limit to fill: LIFEBOAT_NATS_MAX_FILE_STORE "
                "(bench/failover.py --start --nats-max-file-store)"
            )
        filled = self.nats.fill()
        at = time.monotonic()
        signal_node(self._data_dir(primary), signal.SIGKILL)
        promoted: set[str] = set()
        while time.monotonic() < at + 8:  # detection (3 s) and more: nothing may happen
            promoted |= {s for s in standbys if self._writable(s)}
            time.sleep(0.2)
        self.nats.drop_filler()
        freed = time.monotonic()
        wrote = _within(lambda: any(self._acked_by(s, freed) for s in standbys), 60)
        first = min(
            (t for _, t, p in (self._writer.acked if self._writer else []) if t > freed),
            default=None,
        )
        self._detail.update(
            filled_mib=round(filled / 2**20, 1),
            promoted_while_full=bool(promoted),
            space_back_to_first_write_seconds=round(first - freed, 3) if wrote and first else None,
        )
        return Injected(at)

    def _operate(self, kind: Literal["switchover"], target: str | None) -> None:
        """A switchover, followed to its end; a refusal is an outcome the drill measures."""
        with contextlib.suppress(httpx.HTTPError, GatewayError):
            self.api.operate(kind, self.cluster.name, target=target, reason="drill")

    def _taken_after(self, writer: Writer, fault: Injected, old_port: int) -> list[float]:
        """When nodes other than the old primary acknowledged writes after the fault; a node
        the fault killed may still have acknowledged one within IN_FLIGHT (on its way)."""
        killed = self.cluster.node(fault.revive).port if fault.revive else None
        return [
            t
            for _, t, port in writer.acked
            if t > fault.at
            and port != old_port
            and not (port == killed and t < fault.at + IN_FLIGHT)
        ]

    def _measure(self, writer: Writer, old: str, fault: Injected, since: int) -> dict[str, Any]:
        fault_at = fault.at
        new = self.wait_settled()
        with psycopg.connect(self.dsn(new), autocommit=True) as conn:
            ids = [a[0] for a in writer.acked]
            rows = conn.execute(f"select id from {TABLE} where id = any(%s)", (ids,)).fetchall()
        present = {r[0] for r in rows}
        lost = [i for i in ids if i not in present]
        old_port = self.cluster.node(old).port
        # Writes resume when another node takes them; an ack from the old primary just after
        # the fault was already in flight.
        after = self._taken_after(writer, fault, old_port)
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


def stack_child(stack_dir: Path, module: bytes) -> int | None:
    """The PID of the stack's child running `module` (from its children.json), if it runs."""
    file = stack_dir / "children.json"
    pids = json.loads(file.read_text() or "[]") if file.exists() else []
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if module in argv:
            return int(pid)
    return None


def _ahead(event: dict[str, Any]) -> bool:
    """A hold saying the topology is older than the cluster (matrix 7's rollback)."""
    return "ahead of the topology" in str(event.get("reason"))


def _seconds_after(event: dict[str, Any] | None, since: datetime) -> float | None:
    """How long after `since` an event was said (None without one)."""
    if event is None:
        return None
    said = datetime.fromisoformat(str(event["occurred_at"]))
    return round((said - since).total_seconds(), 3)


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
        **({"detail": tally} if (tally := _tally(runs)) else {}),
    }


def _tally(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the runs' faults observed (`detail`), over the runs: a flag by how many runs
    had it, a number by its largest, anything else by how many runs said each value."""
    out: dict[str, Any] = {}
    for run in runs:
        for key, value in run.get("detail", {}).items():
            if isinstance(value, bool):
                out[f"{key}_runs"] = out.get(f"{key}_runs", 0) + int(value)
            elif isinstance(value, int | float):
                out[f"{key}_max"] = max(out.get(f"{key}_max", value), value)
            else:
                counts = out.setdefault(key, {})
                counts[str(value)] = counts.get(str(value), 0) + 1
    return out


def drill(
    gateway: str,
    cluster: ClusterSpec,
    password: str,
    scenario: Scenario,
    runs: int,
    token: str | None = None,
    stack_dir: Path | None = None,
    on_run: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """`runs` runs of `scenario`; `token` operates the gateway (the stack's admin token);
    `stack_dir` is the stack's directory (DrillSettings' unless given); `on_run` is told
    each run's result as it ends."""
    d = Drill(gateway, cluster, password, token, stack_dir)
    results = []
    base = int(time.time() * 1000) * 1000  # ids never collide with an earlier drill
    try:
        for i in range(runs):
            results.append(d.run(scenario, base + i * 1_000_000))
            if on_run is not None:
                on_run(results[-1])
    finally:
        d.instances.stop_all()
        d.nats.close()
        d.api.close()
    return {"scenario": scenario, "runs": results, "summary": summarize(results)}
