"""Automatic failover end to end: real PostgreSQL, real NATS, monitor and failover processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import httpx
import nats
import psycopg
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from lifeboat.common.events import (
    ClusterEvent,
    FailoverCompleted,
    FailoverKind,
    FailoverRequested,
    NodeRejoinRequested,
    PhaseTiming,
    Source,
    SwitchoverRequested,
)
from lifeboat.common.kv import LeaseStore, TopologyStore
from lifeboat.common.state import Operation, Topology
from lifeboat.devstack.launch import ServiceProcess
from lifeboat.devstack.procs import eventually
from lifeboat.devstack.throwaway import LocalHA, local_ha, nats_on_free_ports
from lifeboat.failover.commands import Decision, Fence, Promote
from lifeboat.failover.executor import Executor
from lifeboat.failover.nodes import NodeActions


class HA:
    """A throwaway HA stack (devstack.throwaway.LocalHA) plus a NATS connection that
    collects every event about its cluster."""

    def __init__(self, stack: LocalHA, nc: NatsClient) -> None:
        self.stack = stack
        self.pg = stack.pg
        self.name = stack.name
        self.nc = nc
        self.procs = stack.procs
        self.events: list[dict[str, object]] = []

    def tag(self, node: str, *tags: str) -> None:
        """Rewrite the cluster file with `tags` on `node` (before the services start)."""
        spec = self.stack.spec()
        nodes = tuple(
            n.model_copy(update={"tags": frozenset(tags)}) if n.name == node else n
            for n in spec.nodes
        )
        self.stack.write_spec(spec.model_copy(update={"nodes": nodes}))

    def start(self, service: str, instance: str, **extra: str) -> ServiceProcess:
        return self.stack.start(service, instance, **extra)

    async def topology(self) -> Topology | None:
        store = await TopologyStore.open(self.nc.jetstream())
        found = await store.get(self.name)
        return None if found is None else found.value

    async def wait_topology(
        self, check: Callable[[Topology], bool], timeout: float = 30
    ) -> Topology:
        last: Topology | None = None

        async def reached() -> Topology | None:
            nonlocal last
            last = await self.topology()
            return last if last is not None and check(last) else None

        return await eventually(
            reached,
            timeout=timeout,
            what="the topology to get there",
            detail=lambda: f"last: {last}\n{self.tail()}",
        )

    def tail(self) -> str:
        return self.stack.tail()

    def dsn(self, node_index: int) -> str:
        return self.stack.dsn(node_index)

    def of(self, kind: str) -> list[dict[str, object]]:
        return [e for e in self.events if e.get("type") == kind]


@pytest.fixture
async def ha(nats_url: str, workdir: Path, unique: str) -> AsyncIterator[HA]:
    async with make_ha(nats_url, workdir, unique) as harness:
        yield harness


@asynccontextmanager
async def make_ha(nats_url: str, workdir: Path, unique: str) -> AsyncIterator[HA]:
    with local_ha(workdir / unique, nats_url, name=unique) as stack:
        nc = await nats.connect(nats_url)
        harness = HA(stack, nc)

        async def collect(msg: Msg) -> None:
            harness.events.append(json.loads(msg.data))

        await nc.subscribe(f"*.*.{unique}", cb=collect)
        await nc.subscribe(f"*.*.{unique}.*", cb=collect)
        try:
            yield harness
        finally:
            stack.stop_services()
            for conn in {harness.nc, nc}:  # a test may have replaced the connection
                with suppress(Exception):
                    await conn.close()


async def start_ha(
    ha: HA, synchronous: tuple[str, ...] = ("node2", "node3"), **failover_env: str
) -> Topology:
    ha.start("monitor", f"{ha.name}-m1")
    ha.start("failover", f"{ha.name}-f1", **failover_env)
    return await ha.wait_topology(lambda t: t.primary == "node1" and t.synchronous == synchronous)


def insert(dsn: str, ids: range) -> list[int]:
    acked = []
    with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
        conn.execute("create table if not exists writes (id int primary key)")
        for i in ids:
            conn.execute("insert into writes values (%s)", (i,))
            acked.append(i)
    return acked


async def test_killed_primary_is_replaced_by_a_synchronous_standby(ha: HA) -> None:
    topo = await start_ha(ha)
    assert topo.epoch == 0
    acked = await asyncio.to_thread(insert, ha.dsn(0), range(100))
    killed_at = time.monotonic()
    ha.pg.nodes[0].kill()

    after = await ha.wait_topology(lambda t: t.primary != "node1" and t.operation is None)
    took = time.monotonic() - killed_at
    assert after.epoch == 1
    new_index = int(after.primary[-1]) - 1  # type: ignore[index]
    other = ({1, 2} - {new_index}).pop()
    with psycopg.connect(ha.dsn(new_index), autocommit=True) as conn:
        assert conn.execute("select pg_is_in_recovery()").fetchone() == (False,)
        rows = {r[0] for r in conn.execute("select id from writes").fetchall()}
        assert set(acked) <= rows, "acknowledged writes were lost"
        conn.execute("insert into writes values (1000)")
    # the other standby now streams from the new primary
    await wait_follows(ha, other, new_index, timeout=20)
    assert took < 20, f"failover took {took:.1f}s"
    await asyncio.sleep(0.5)
    started, completed = ha.of("failover.started"), ha.of("failover.completed")
    assert len(started) == 1
    assert len(completed) == 1
    assert completed[0]["new_primary"] == after.primary
    assert completed[0]["kind"] == "automatic"
    done = FailoverCompleted.model_validate(completed[0])
    phases = {p.phase for p in done.phases}
    assert {"promote", "converged"} <= phases
    assert ha.of("node.fenced")[0]["node"] == "node1"


async def test_frozen_primary_is_fenced_and_never_accepts_writes_again(ha: HA) -> None:
    await start_ha(ha)
    old = ha.pg.nodes[0]
    old.freeze()
    try:
        after = await ha.wait_topology(lambda t: t.primary != "node1" and t.operation is None)
    finally:
        old.thaw()
    assert after.epoch == 1
    await asyncio.sleep(1)
    # Lifeboat manages node1 locally, so fencing stopped it: no second writable primary.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(ha.dsn(0), connect_timeout=2)
    fenced = ha.of("node.fenced")
    assert fenced
    assert fenced[0]["node"] == "node1"


async def test_a_killed_standby_is_no_failover_and_leaves_the_synchronous_set(ha: HA) -> None:
    await start_ha(ha)
    ha.pg.nodes[2].kill()
    topo = await ha.wait_topology(lambda t: t.synchronous == ("node2",))
    assert topo.primary == "node1"
    assert topo.epoch == 0
    assert not ha.of("failover.started")
    await wait_event(ha, "node.down", timeout=10)  # the monitor says so after 3 failed probes
    assert [e["node"] for e in ha.of("node.down")] == ["node3"]
    changed = ha.of("failover.sync_changed")
    assert changed[-1]["standbys"] == ["node2"]
    # writes still commit: node2 acknowledges them
    await asyncio.wait_for(asyncio.to_thread(insert, ha.dsn(0), range(5)), 10)


async def ask(ha: HA, event: ClusterEvent) -> None:
    await ha.nc.jetstream().publish(event.subject(), event.model_dump_json().encode())


OPERATOR = Source(service="test", instance="operator")


async def wait_event(ha: HA, kind: str, timeout: float = 30) -> dict[str, object]:
    """The latest `kind` event, once there is one."""
    seen = await eventually(
        lambda: ha.of(kind), timeout=timeout, what=f"a {kind} event", interval=0.1, detail=ha.tail
    )
    return seen[-1]


def follows(ha: HA, index: int, upstream_index: int) -> bool:
    try:
        with psycopg.connect(ha.dsn(index), autocommit=True, connect_timeout=2) as conn:
            row = conn.execute("select status, sender_port from pg_stat_wal_receiver").fetchone()
    except psycopg.OperationalError:
        return False
    return row == ("streaming", ha.pg.nodes[upstream_index].port)


async def wait_follows(ha: HA, index: int, upstream_index: int, timeout: float = 60) -> None:
    await eventually(
        lambda: follows(ha, index, upstream_index),
        timeout=timeout,
        what=f"node{index + 1} to stream from node{upstream_index + 1}",
        interval=0.3,
        detail=ha.tail,
    )


async def test_switchover_loses_nothing_and_the_old_primary_follows(ha: HA) -> None:
    await start_ha(ha)
    acked = await asyncio.to_thread(insert, ha.dsn(0), range(200))
    await ask(
        ha,
        SwitchoverRequested(
            cluster=ha.name,
            source=OPERATOR,
            target="node3",
            reason="kernel upgrade",
            requested_by="test",
        ),
    )
    after = await ha.wait_topology(lambda t: t.primary == "node3" and t.operation is None, 60)
    assert after.epoch == 1
    with psycopg.connect(ha.dsn(2), autocommit=True) as conn:
        rows = {r[0] for r in conn.execute("select id from writes").fetchall()}
    assert set(acked) <= rows
    await wait_follows(ha, 0, 2)  # the old primary is a standby of the new one
    await wait_follows(ha, 1, 2)
    done = await wait_event(ha, "switchover.completed")
    assert done["old_primary"] == "node1"
    rejoined = await wait_event(ha, "node.rejoined")
    assert rejoined["node"] == "node1"
    assert rejoined["method"] in ("pg_rewind", "pg_basebackup")
    assert not ha.of("node.fenced")


async def test_refused_requests_say_why_and_change_nothing(ha: HA) -> None:
    await start_ha(ha)
    await ask(
        ha, SwitchoverRequested(cluster=ha.name, source=OPERATOR, target="node1", reason="oops")
    )
    refused = await wait_event(ha, "switchover.failed")
    assert refused["reason"] == "node1 is already the primary"
    await ask(
        ha, FailoverRequested(cluster=ha.name, source=OPERATOR, target="node9", reason="typo")
    )
    refused = await wait_event(ha, "failover.failed")
    assert f"no node named 'node9' in cluster {ha.name}" == refused["reason"]
    topo = await ha.topology()
    assert topo is not None
    assert (topo.primary, topo.epoch) == ("node1", 0)


async def test_manual_failover_then_the_old_primary_rejoins(ha: HA) -> None:
    await start_ha(ha)
    await ask(
        ha,
        FailoverRequested(
            cluster=ha.name,
            source=OPERATOR,
            target="node2",
            reason="planned maintenance",
            requested_by="test",
        ),
    )
    await ha.wait_topology(lambda t: t.primary == "node2" and t.operation is None)
    fenced = await wait_event(ha, "node.fenced")
    assert fenced["node"] == "node1"
    await ask(ha, NodeRejoinRequested(cluster=ha.name, node="node1", source=OPERATOR))
    await wait_follows(ha, 0, 1)
    topo = await ha.wait_topology(lambda t: "node1" in t.synchronous, 30)
    assert topo.primary == "node2"
    done = await wait_event(ha, "failover.completed")
    assert done["kind"] == "manual"


async def test_gateway_operations_role_checks_and_history(ha: HA) -> None:
    await start_ha(ha)
    token_file = ha.stack.dir / "lifeboat_token"
    gateway = ha.start("gateway", f"{ha.name}-g1", LIFEBOAT_ADMIN_TOKEN_FILE=str(token_file))
    await eventually(token_file.exists, timeout=30, what="the gateway's admin token")
    auth = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60, headers=auth) as api:

        async def answers(path: str) -> bool:
            try:
                return (await api.get(path)).status_code == 200
            except httpx.HTTPError:
                return False

        replica = f"/clusters/{ha.name}/nodes/node2/replica"
        await eventually(lambda: answers(replica), timeout=30, what="the gateway to see node2")
        status = (await api.get(f"/clusters/{ha.name}")).json()
        assert status["topology"]["primary"] == "node1"
        assert {n["name"]: n["health"]["role"] for n in status["nodes"]} == {
            "node1": "primary",
            "node2": "standby",
            "node3": "standby",
        }
        assert (await api.get(f"/clusters/{ha.name}/nodes/node1/primary")).status_code == 200
        assert (await api.get(f"/clusters/{ha.name}/nodes/node2/primary")).status_code == 503
        assert (await api.get(f"/clusters/{ha.name}/nodes/node2/replica")).status_code == 200

        missing = await api.get("/clusters/nope/nodes/node1/primary")
        assert missing.status_code == 404
        assert "no cluster named 'nope'" in missing.json()["detail"]
        bad = await api.post(f"/clusters/{ha.name}/switchover", json={"reason": ""})
        assert bad.status_code == 422
        unknown = await api.post(
            f"/clusters/{ha.name}/switchover", json={"target": "node9", "reason": "x"}
        )
        assert unknown.status_code == 404
        refused = await api.post(
            f"/clusters/{ha.name}/switchover", json={"target": "node1", "reason": "x"}
        )
        assert refused.status_code == 409
        assert refused.json()["reason"] == "node1 is already the primary"

        accepted = await api.post(
            f"/clusters/{ha.name}/switchover", json={"target": "node2", "reason": "patching"}
        )
        assert accepted.status_code in (200, 202), accepted.text
        followed = (await api.get(accepted.headers["Location"], params={"wait": 60})).json()
        assert followed["state"] == "completed", followed
        primary = f"/clusters/{ha.name}/nodes/node2/primary"
        await eventually(lambda: answers(primary), timeout=30, what="node2 to be the primary")
        assert (await api.get(f"/clusters/{ha.name}/nodes/node1/primary")).status_code == 503

        history = (await api.get(f"/clusters/{ha.name}/history")).json()["events"]
        kinds = [e["event"]["type"] for e in history]
        assert "switchover.failed" in kinds
        assert "switchover.completed" in kinds
        assert kinds.index("switchover.failed") < kinds.index("switchover.completed")


async def test_one_of_two_monitors_killed_and_failover_still_works(ha: HA) -> None:
    ha.start("monitor", f"{ha.name}-m2", LIFEBOAT_LOCATION="dc2")
    await start_ha(ha)
    first = next(p for p in ha.procs if p.name.endswith("-m1"))
    first.signal(signal.SIGKILL)
    await asyncio.sleep(1)
    ha.pg.nodes[0].kill()
    after = await ha.wait_topology(lambda t: t.primary != "node1" and t.operation is None)
    assert after.epoch == 1


async def record_failover(
    ha: HA, candidate: str, reason: str, phases: tuple[PhaseTiming, ...] = ()
) -> None:
    """The topology as a leader that died just after the commit point left it: the next
    epoch, an automatic failover from node1 to `candidate` under way, with the synchronous
    set it recorded and the `phases` it had done."""
    store = await TopologyStore.open(ha.nc.jetstream())
    current = await store.get(ha.name)
    assert current is not None
    op = Operation(
        kind=FailoverKind.AUTOMATIC,
        old_primary="node1",
        new_primary=candidate,
        reason=reason,
        synchronous=current.value.synchronous,
        phases=phases,
    )
    await store.compare_and_set(current.value.promoted(candidate, op), current.revision)


async def test_an_interrupted_failover_is_finished_by_the_next_leader(ha: HA) -> None:
    """The leader wrote the new epoch and died before promoting: whoever leads next
    finishes the job instead of starting over."""
    await start_ha(ha)
    for proc in ha.procs:
        proc.stop()
    ha.pg.nodes[0].kill()
    await record_failover(ha, "node2", "node1 unreachable (interrupted)")
    ha.start("monitor", f"{ha.name}-m3")
    ha.start("failover", f"{ha.name}-f2")
    after = await ha.wait_topology(lambda t: t.operation is None)
    assert (after.primary, after.epoch) == ("node2", 1)  # same epoch: finished, not redone
    await wait_follows(ha, 2, 1)
    done = await wait_event(ha, "failover.completed")
    assert done["reason"] == "node1 unreachable (interrupted)"


async def test_a_standby_failover_instance_takes_over_the_lease(ha: HA) -> None:
    ha.start("failover", f"{ha.name}-f2")
    await start_ha(ha)
    leader = next(p for p in ha.procs if p.name.endswith("-f1"))
    standby = next(p for p in ha.procs if p.name.endswith("-f2"))
    leases = await LeaseStore.open(ha.nc.jetstream())
    held = await leases.current(f"failover-{ha.name}")
    assert held is not None
    # The holder is the instance id and a per-process token.
    active = leader if held.value.holder.split("#")[0] == leader.name else standby
    active.signal(signal.SIGKILL)
    ha.pg.nodes[0].kill()
    after = await ha.wait_topology(lambda t: t.primary != "node1" and t.operation is None)
    assert after.epoch == 1
    held = await leases.current(f"failover-{ha.name}")
    assert held is not None
    assert held.value.holder.split("#")[0] != active.name


async def test_a_stale_epoch_is_refused_before_touching_a_node(ha: HA) -> None:
    await start_ha(ha)
    for proc in ha.procs:
        proc.stop()
    store = await TopologyStore.open(ha.nc.jetstream())
    current = await store.get(ha.name)
    assert current is not None
    spec = ha.pg.spec(ha.name)

    async def leader() -> bool:
        return True

    async def publish(event: object) -> None:
        raise AssertionError("nothing may be published for a refused command")

    executor = Executor(
        ha.name, store, NodeActions(spec, ha.pg.passwords.superuser, 2), publish, leader, OPERATOR
    )
    stale = current.value.epoch - 1 if current.value.epoch else 99
    outcomes = await executor.run(
        Decision((Fence("node1", stale, "test"), Promote("node2", stale)), "test"), current
    )
    assert [o.ok for o in outcomes] == [False]
    assert "stale" in outcomes[0].detail
    with psycopg.connect(ha.dsn(0), autocommit=True) as conn:  # node1 untouched, writable
        assert conn.execute("show default_transaction_read_only").fetchone() == ("off",)


async def test_nats_restart_reconnects_everything_without_a_spurious_failover(
    workdir: Path, unique: str
) -> None:
    server = nats_on_free_ports(workdir / f"{unique}-nats")
    server.start()
    try:
        async with make_ha(server.url, workdir, unique) as ha:
            await start_ha(ha)
            await ha.nc.close()
            server.stop()
            await asyncio.sleep(3)  # longer than the lease TTL and the failure threshold
            server.start()
            ha.nc = await nats.connect(server.url)
            ha.events.clear()
            seen: list[Msg] = []

            async def on_health(msg: Msg) -> None:
                seen.append(msg)

            sub = await ha.nc.subscribe(f"node.health.{ha.name}.*", cb=on_health)
            try:
                await eventually(
                    lambda: len(seen) >= 6,
                    timeout=30,
                    what="the monitor to report again after NATS came back",
                )
            finally:
                await sub.unsubscribe()
            await asyncio.sleep(4)  # the failover service had time to (wrongly) act
            topo = await ha.topology()
            assert topo is not None
            assert (topo.primary, topo.epoch) == ("node1", 0)
            for proc in ha.procs:
                assert proc.alive(), ha.tail()
    finally:
        server.stop()


async def test_a_nofailover_standby_is_never_promoted(ha: HA) -> None:
    ha.tag("node2", "nofailover")  # node2 would win on priority otherwise
    await start_ha(ha, synchronous=("node3",))
    ha.pg.nodes[0].kill()
    after = await ha.wait_topology(lambda t: t.primary != "node1" and t.operation is None)
    assert after.primary == "node3"


async def test_a_lagging_standby_is_passed_over(ha: HA) -> None:
    await start_ha(ha, synchronous=(), LIFEBOAT_SYNCHRONOUS_MODE="off")
    with psycopg.connect(ha.dsn(1), autocommit=True) as conn:  # node2 stops receiving WAL
        conn.execute("alter system set primary_conninfo = ''")
        conn.execute("select pg_reload_conf()")
    with psycopg.connect(ha.dsn(0), autocommit=True) as conn:  # 4 MiB it will not have
        conn.execute(
            "create table filler as select repeat('x', 1000) as pad from generate_series(1, 4000)"
        )
    await asyncio.sleep(2.5)  # the monitor has seen both positions
    ha.pg.nodes[0].kill()
    after = await ha.wait_topology(lambda t: t.primary != "node1" and t.operation is None)
    assert after.primary == "node3"


async def test_a_leader_that_reaches_nats_but_not_postgres_steps_down(ha: HA) -> None:
    """Guarantee 7: f1 holds the lease but its PostgreSQL password is wrong (as good as cut
    off from the nodes); the monitor reaches them. It must hand the lease over rather than
    keep failing: f2 then does what f1 could not (set node1's synchronous standbys)."""
    ha.start("monitor", f"{ha.name}-m1")
    ha.start(
        "failover",
        f"{ha.name}-f1",
        LIFEBOAT_PG_PASSWORD="not-the-password",
        LIFEBOAT_STEP_DOWN_SECONDS="60",
    )

    def stepped_down() -> list[dict[str, object]]:
        return [e for e in ha.of("failover.held") if "stepping down" in str(e["reason"])]

    (held,) = await eventually(stepped_down, timeout=30, what="f1 to step down", detail=ha.tail)
    assert f"{ha.name}-f1#" in str(held["reason"])
    assert "password authentication failed" in str(held["reason"])
    assert not ha.of("failover.sync_changed")  # nothing announced that PostgreSQL did not take
    ha.start("failover", f"{ha.name}-f2")
    topo = await ha.wait_topology(lambda t: t.synchronous == ("node2", "node3"))
    assert topo.primary == "node1"
    leases = await LeaseStore.open(ha.nc.jetstream())
    now = await leases.current(f"failover-{ha.name}")
    assert now is not None
    assert now.value.holder.startswith(f"{ha.name}-f2#")


def _rewinds_of(data_dir: Path) -> list[int]:
    """The pg_rewind processes rewinding `data_dir`."""
    target = f"--target-pgdata={data_dir}".encode()
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            if argv[0].endswith(b"pg_rewind") and target in argv:
                found.append(int(cmdline.parent.name))
    return found


def _state_of(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def test_a_failover_is_decided_while_a_rejoin_runs(ha: HA) -> None:
    """Guarantee 7: a rejoin runs beside the decision loop, not in it. node1's pg_rewind is
    frozen the moment it starts (a rewind or a clone that takes minutes); the primary, node2,
    is killed meanwhile: node3 is promoted while the rewind still waits."""
    await start_ha(ha)
    await ask(
        ha,
        FailoverRequested(
            cluster=ha.name, source=OPERATOR, target="node2", reason="test", requested_by="test"
        ),
    )
    await ha.wait_topology(
        lambda t: t.primary == "node2" and t.operation is None and "node3" in t.synchronous, 60
    )
    frozen: list[int] = []
    done = threading.Event()

    def freeze_the_rewind() -> None:
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline:
            for pid in _rewinds_of(ha.pg.nodes[0].data_dir):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                    frozen.append(pid)
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=freeze_the_rewind, daemon=True)
    watcher.start()
    try:
        await ask(ha, NodeRejoinRequested(cluster=ha.name, node="node1", source=OPERATOR))
        await eventually(lambda: frozen, timeout=60, what="node1's pg_rewind", detail=ha.tail)
        ha.pg.nodes[1].kill()

        after = await ha.wait_topology(lambda t: t.primary == "node3" and t.operation is None)
        assert _state_of(frozen[0]) == "T", "the rewind is still frozen: node3 came first"
        assert after.epoch == 2
    finally:
        done.set()
        watcher.join(5)
        for pid in frozen:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
