"""The fault matrix (issue 7), each scenario once: real PostgreSQL, NATS, monitor and failover.

Synchronous mode `on`. Every scenario runs the drill's writer (increasing ids through the
multi-host DSN, each acknowledged one recorded with the node that took it) and ends with the
same checks (`ends_with_one_primary`): one writable node, every acknowledged id on it, and no
acknowledgement by the old primary after the new one took its first. A scenario where
promotion would risk an acknowledged commit may instead end with nobody promoted
(`ends_with_nobody_promoted`): then no node takes writes, and an event says why.

The faults are those of `lifeboat.devstack.faults`, which the drills (`bench/failover.py
--scenario`) inject too. Tests elsewhere cover parts of some scenarios without the writer:
`test_failover.py::test_a_leader_that_reaches_nats_but_not_postgres_steps_down` (6, the step
down alone), `test_an_interrupted_failover_is_finished_by_the_next_leader` (5, a leader dead
after the topology write) and `test_nats_restart_reconnects_everything_without_a_spurious_failover`
(7, a restart that keeps the store). Scenario 11 moved here from test_failover.py, with
the writer.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import APIError

from lifeboat.common.events import (
    FailoverRequested,
    NodeRejoinRequested,
    PhaseTiming,
    SwitchoverRequested,
)
from lifeboat.common.kv import LeaseStore
from lifeboat.common.state import Topology
from lifeboat.devstack import faults
from lifeboat.devstack.drill import TABLE, Writer, split_brain
from lifeboat.devstack.launch import ServiceProcess
from lifeboat.devstack.procs import eventually, free_port
from lifeboat.devstack.servers import NatsPorts, NatsServer
from lifeboat.devstack.throwaway import nats_on_free_ports
from tests.integration.test_failover import (
    HA,
    OPERATOR,
    ask,
    make_ha,
    record_failover,
    start_ha,
    wait_event,
)


@pytest.fixture
async def ha(nats_url: str, workdir: Path, unique: str) -> AsyncIterator[HA]:
    async with make_ha(nats_url, workdir, unique) as harness:
        yield harness


def writable(ha: HA) -> list[str]:
    """The nodes that would acknowledge a client's commit right now (not in recovery, not
    read-only, not waiting on a synchronous standby that does not exist)."""
    found = []
    for i, node in enumerate(ha.pg.nodes):
        try:
            with psycopg.connect(ha.dsn(i), autocommit=True, connect_timeout=2) as conn:
                row = conn.execute(
                    "select pg_is_in_recovery(), current_setting('default_transaction_read_only'),"
                    " current_setting('synchronous_standby_names')"
                ).fetchone()
        except psycopg.Error:
            continue
        if row is not None and row[0] is False and row[1] == "off" and row[2] != "lifeboat_fenced":
            found.append(node.name)
    return found


@asynccontextmanager
async def writing(ha: HA) -> AsyncIterator[Writer]:
    """The drill's writer, running (node1 acknowledged its first write) while inside."""
    with psycopg.connect(ha.dsn(0), autocommit=True) as conn:
        conn.execute(f"create table if not exists {TABLE} (id bigint primary key)")
    writer = Writer(ha.stack.writer_dsn(), start_id=1)
    writer.start()
    try:
        await wait_acked_by(ha, writer, "node1", after=0, timeout=20)
        yield writer
    finally:
        writer.stop()


def index(ha: HA, node: str) -> int:
    return [n.name for n in ha.pg.nodes].index(node)


def lost_on(ha: HA, node: str, writer: Writer) -> list[int]:
    """Acknowledged ids the node does not have."""
    ids = [a[0] for a in writer.acked]
    with psycopg.connect(ha.dsn(index(ha, node)), autocommit=True) as conn:
        rows = conn.execute(f"select id from {TABLE} where id = any(%s)", (ids,)).fetchall()
    present = {r[0] for r in rows}
    return [i for i in ids if i not in present]


async def wait_acked_by(ha: HA, writer: Writer, node: str, after: float, timeout: float) -> None:
    port = ha.pg.nodes[index(ha, node)].port
    await eventually(
        lambda: any(t > after and p == port for _, t, p in writer.acked),
        timeout=timeout,
        what=f"a write acknowledged by {node}",
        detail=ha.tail,
    )


async def settled(ha: HA, timeout: float = 40) -> Topology:
    """The topology once no operation is under way and its primary takes writes."""
    return await ha.wait_topology(
        lambda t: t.operation is None and t.primary is not None and writable(ha) == [t.primary],
        timeout=timeout,
    )


async def ends_with_one_primary(
    ha: HA, writer: Writer, old: str = "node1", timeout: float = 40
) -> Topology:
    """The matrix's end: the writer is acknowledged by the topology's primary again, which
    is then the one writable node and holds every acknowledged id; the old primary
    acknowledged nothing after the new one's first."""
    since = time.monotonic()
    topo = await settled(ha, timeout)
    assert topo.primary is not None
    await wait_acked_by(ha, writer, topo.primary, after=since, timeout=20)
    writer.stop()
    assert writable(ha) == [topo.primary]
    assert lost_on(ha, topo.primary, writer) == [], "acknowledged writes were lost"
    old_port, new_port = (ha.pg.nodes[index(ha, n)].port for n in (old, topo.primary))
    assert old == topo.primary or not split_brain(writer.acked, old_port, new_port)
    return topo


async def said_why(ha: HA, *needles: str, timeout: float = 30) -> str:
    """A failover.held (or, for a failover or switchover that found no candidate, its
    .failed) whose reason says all of `needles`; its reason."""

    reasons = await eventually(
        lambda: held(ha, *needles), timeout=timeout, what=f"a hold saying {needles}", detail=ha.tail
    )
    return reasons[0]


def held(ha: HA, *needles: str) -> list[str]:
    """The reasons said so far (see said_why) that say all of `needles`."""
    kinds = ("failover.held", "failover.failed", "switchover.failed")
    reasons = [str(e["reason"]) for kind in kinds for e in ha.of(kind)]
    return [r for r in reasons if all(n in r for n in needles)]


async def ends_with_nobody_promoted(ha: HA, *needles: str) -> str:
    """The other correct end: nobody takes writes (nothing was risked), and why is said."""
    why = await said_why(ha, *needles)
    assert writable(ha) == [], "a node takes writes although the failover held"
    return why


async def switch_over(ha: HA, target: str, reason: str) -> None:
    await ask(
        ha, SwitchoverRequested(cluster=ha.name, source=OPERATOR, target=target, reason=reason)
    )


async def leader(ha: HA, candidates: list[ServiceProcess]) -> ServiceProcess:
    """The failover instance holding the lease (the holder is the instance id + a token)."""
    leases = await LeaseStore.open(ha.nc.jetstream())

    async def holder() -> ServiceProcess | None:
        held = await leases.current(f"failover-{ha.name}")
        name = held.value.holder.split("#")[0] if held else None
        return next((p for p in candidates if p.name == name), None)

    return await eventually(holder, timeout=20, what="a failover leader", detail=ha.tail)


async def test_1_controller_cut_off_from_a_remote_primary_promotes_nobody_until_fenced(
    ha: HA,
) -> None:
    """Remote mode (no data_dir: fencing over SQL only) and the primary frozen, so the
    controller cannot reach it: it cannot be confirmed unable to commit, so nobody is
    promoted and failover.held says why. Once it answers again it is fenced, a standby is
    promoted, and every acknowledged write is on the one writable primary."""
    ha.stack.remote()
    await start_ha(ha)
    old = ha.pg.nodes[0]
    async with writing(ha) as writer:
        old.freeze()
        try:
            held = await said_why(ha, "confirmed unable", "node1")
            await asyncio.sleep(2)  # fence retries keep failing: still nobody promoted
            assert writable(ha) == [], f"a standby was promoted while node1 was not fenced: {held}"
        finally:
            old.thaw()
        await ends_with_one_primary(ha, writer)
    fenced = await wait_event(ha, "node.fenced")
    assert fenced["node"] == "node1"


async def test_2_manual_failover_to_the_slower_synchronous_standby_under_write_load(
    ha: HA,
) -> None:
    """node3's walreceiver stalls while node2 acknowledges every commit; the operator fails
    over to node3. It must get every acknowledged commit before it takes writes. (A lag
    allowed above the 16 MiB it falls behind: at the default 1 MiB the request is refused.)"""
    await start_ha(ha, LIFEBOAT_MAXIMUM_LAG_ON_FAILOVER=str(64 << 20))
    async with writing(ha) as writer:
        faults.signal_walreceiver(ha.dsn(2), signal.SIGSTOP)
        try:
            # node3 falls behind what node1 acknowledged, by more than socket buffers hold
            await asyncio.to_thread(faults.bulk_write, ha.dsn(0), 16)
            await ask(
                ha,
                FailoverRequested(
                    cluster=ha.name, source=OPERATOR, target="node3", reason="matrix 2"
                ),
            )
            await wait_event(ha, "failover.started", timeout=20)
            await asyncio.sleep(1)
        finally:
            faults.signal_walreceiver(ha.dsn(2), signal.SIGCONT)
        topo = await ends_with_one_primary(ha, writer)
    assert topo.primary == "node3"


async def test_3_a_stream_drops_the_primary_dies_within_a_second_the_other_lagging(
    ha: HA,
) -> None:
    """node3 lags (its walreceiver stalled), node2 acknowledges; node2's stream drops, so
    node3, once it receives again, alone holds the latest acknowledged commits; within a
    second the primary is killed. The reports from before may show node2 ahead: the
    promotion must go by positions read after the fence."""
    await start_ha(ha)
    async with writing(ha) as writer:
        faults.signal_walreceiver(ha.dsn(2), signal.SIGSTOP)
        await asyncio.sleep(1)
        faults.drop_stream(ha.dsn(1))
        faults.signal_walreceiver(ha.dsn(2), signal.SIGCONT)
        dropped = time.monotonic()
        await wait_acked_by(ha, writer, "node1", after=dropped, timeout=5)  # node3 acknowledged
        ha.pg.nodes[0].kill()
        topo = await ends_with_one_primary(ha, writer)
    assert topo.primary == "node3"


async def test_3_a_candidate_chosen_on_stale_reports_is_replaced_when_it_cannot_catch_up(
    ha: HA,
) -> None:
    """The same fault with the decision it can lead to (seen in the drill): reports from
    before the drop showed node2 ahead, so the failover started with node2, which lacks
    what node3 alone acknowledged and receives nothing. The executor refuses node2 every
    round; the failover must not hold for ever but choose node3 under a new epoch."""
    await start_ha(ha)
    async with writing(ha) as writer:
        for proc in ha.procs:
            proc.stop()
        faults.drop_stream(ha.dsn(1))
        await wait_acked_by(ha, writer, "node1", after=time.monotonic(), timeout=5)
        ha.pg.nodes[0].kill()
        fenced = (PhaseTiming(phase="fence", seconds=0.01),)
        await record_failover(ha, "node2", "node1 unreachable (on stale reports)", fenced)
        ha.start("monitor", f"{ha.name}-m2")
        ha.start("failover", f"{ha.name}-f2")
        topo = await ends_with_one_primary(ha, writer)
    assert (topo.primary, topo.epoch) == ("node3", 2)


async def test_4_the_candidate_killed_right_after_failover_started(ha: HA) -> None:
    """The candidate dies before it is promoted: the other standby may lack commits it
    alone acknowledged, so nobody is promoted (and it is said) until it is back."""
    await start_ha(ha)
    async with writing(ha) as writer:
        ha.pg.nodes[0].kill()
        started = await wait_event(ha, "failover.started", timeout=20)
        candidate = ha.pg.nodes[index(ha, str(started["candidate"]))]
        candidate.kill()
        await ends_with_nobody_promoted(ha, candidate.name)
        candidate.start()
        await ends_with_one_primary(ha, writer)


async def test_4_the_new_primary_killed_during_a_switchovers_rejoin(ha: HA) -> None:
    """node1 hands over to node2 and is being rejoined when node2 dies, before any standby is
    recorded as holding what node2 acknowledged: nobody is promoted (node3 may lack those
    commits) until node2 is back."""
    await start_ha(ha)
    async with writing(ha) as writer:
        await switch_over(ha, "node2", "matrix 4")
        await eventually(
            lambda: writable(ha) == ["node2"], timeout=30, what="node2 promoted", interval=0.02
        )
        ha.pg.nodes[1].kill()
        await ends_with_nobody_promoted(ha, "synchronous set is empty")
        ha.pg.nodes[1].start()
        topo = await ends_with_one_primary(ha, writer)
    assert (topo.primary, topo.epoch) == ("node2", 1)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_5_the_leader_killed_between_started_and_fenced(ha: HA, sig: signal.Signals) -> None:
    """The old primary frozen; the leader killed as soon as failover.started is out; the
    other instance finishes. The old primary, thawed after completion, never takes a write."""
    second = ha.start("failover", f"{ha.name}-f2")
    await start_ha(ha)
    first = next(p for p in ha.procs if p.name.endswith("-f1"))
    active = await leader(ha, [first, second])
    async with writing(ha) as writer:
        ha.pg.nodes[0].freeze()
        try:
            await wait_event(ha, "failover.started", timeout=20)
            active.signal(sig)
            await settled(ha, timeout=40)
        finally:
            ha.pg.nodes[0].thaw()
        await asyncio.sleep(1)  # a thawed node1 that still ran would take writes now
        await ends_with_one_primary(ha, writer)


async def test_6_the_leader_cut_off_from_postgres_but_not_nats(ha: HA) -> None:
    """The instance holding the lease reaches NATS but no node (its PostgreSQL password is
    wrong) when the primary dies: it steps down, and the other fails over."""
    await start_ha(ha)
    first = next(p for p in ha.procs if p.name.endswith("-f1"))
    first.stop()
    cut_off = ha.start("failover", f"{ha.name}-fx", LIFEBOAT_PG_PASSWORD="not-the-password")
    await leader(ha, [cut_off])
    ha.start("failover", f"{ha.name}-f2")
    async with writing(ha) as writer:
        ha.pg.nodes[0].kill()
        await said_why(ha, "stepping down", f"{ha.name}-fx#")
        await ends_with_one_primary(ha, writer, timeout=60)


async def test_7_nats_restarted_with_its_store_rolled_back_to_before_a_failover(
    workdir: Path, unique: str
) -> None:
    """The store is copied, a failover happens, then NATS comes back with the copy: the
    topology names node1 (dead) at epoch 0 while node2 takes writes on timeline 2. Nobody
    acts on the old topology (no fence of node2, no second promotion), and it is said."""
    server = nats_on_free_ports(workdir / f"{unique}-nats")
    server.start()
    try:
        async with make_ha(server.url, workdir, unique) as ha:
            await start_ha(ha)
            await ha.wait_topology(lambda t: t.timeline is not None)
            # The harness's connection reconnects by itself, its subscriptions with it.
            server.stop()
            copy = workdir / f"{unique}-nats-copy"
            shutil.copytree(server.data_dir, copy)
            server.start()
            async with writing(ha) as writer:
                ha.pg.nodes[0].kill()
                await ha.wait_topology(lambda t: t.epoch == 1 and t.operation is None)
                server.stop()
                shutil.rmtree(server.data_dir)
                shutil.copytree(copy, server.data_dir)
                server.start()
                await said_why(ha, "ahead of the topology", timeout=40)
                topo = await ha.topology()
                assert topo is not None
                assert (topo.primary, topo.epoch) == ("node1", 0)
                await wait_acked_by(ha, writer, "node2", after=time.monotonic(), timeout=10)
                writer.stop()
                assert writable(ha) == ["node2"]
                assert lost_on(ha, "node2", writer) == []
    finally:
        server.stop()


async def fill(js: JetStreamContext, subject: str) -> None:
    """Publish 512 KiB messages until JetStream refuses for want of space (bounded)."""
    blob = b"x" * (512 * 1024)
    for _ in range(1000):
        try:
            await js.publish(subject, blob)
        except APIError as exc:
            if "insufficient resources" in str(exc):
                return
            raise
    pytest.fail("JetStream never ran out of space")


async def test_7_jetstream_out_of_space_when_the_primary_dies(workdir: Path, unique: str) -> None:
    """JetStream's store is full (64 MiB, filled by another stream) when node1 dies: no
    lease renewal, topology write or report can be stored, so nobody acts, and nothing is
    promoted on a decision that could not be recorded. Once space is back, the failover
    goes ahead with every acknowledged write."""
    ports = NatsPorts(free_port(), free_port())
    server = NatsServer(
        workdir / f"{unique}-nats", ports, sync_always=False, max_file_store=64 << 20
    )
    server.start()
    try:
        async with make_ha(server.url, workdir, unique) as ha:
            small = str(8 << 20)  # the two streams' reservations fit beside the filler
            ha.stack.env.update(
                LIFEBOAT_EVENTS_MAX_BYTES=small, LIFEBOAT_HEARTBEATS_MAX_BYTES=small
            )
            await start_ha(ha)
            js = ha.nc.jetstream()
            filler = f"FILLER_{unique}"
            await js.add_stream(StreamConfig(name=filler, subjects=[f"filler.{unique}"]))
            async with writing(ha) as writer:
                await fill(js, f"filler.{unique}")
                ha.pg.nodes[0].kill()
                await asyncio.sleep(8)  # detection (3 s) and more: nothing may happen
                assert writable(ha) == [], "promoted on a decision JetStream could not store"
                await js.purge_stream(filler)
                await ends_with_one_primary(ha, writer)
    finally:
        server.stop()


async def test_8_the_switchover_target_killed_right_after_the_old_primarys_clean_stop(
    ha: HA,
) -> None:
    """node1 stopped cleanly for the handover and node2, the target, dies. Before node2 had
    replayed node1's last WAL, the handover fails: nobody was promoted, node1 is started
    again and stays the primary, and the operator is told. After it, node2 may be promoted
    and have acknowledged commits nobody else has: nobody is promoted, and it is said,
    until node2 is back."""
    await start_ha(ha)
    async with writing(ha) as writer:
        await switch_over(ha, "node2", "matrix 8")
        stopped = await asyncio.to_thread(faults.wait_stopped, ha.pg.nodes[0].data_dir, 20)
        assert stopped, ha.tail()
        ha.pg.nodes[1].kill()
        await eventually(
            lambda: writable(ha) == ["node1"] or held(ha, "node2 unreachable"),
            timeout=30,
            what="node1 back, or a hold",
            detail=ha.tail,
        )
        if held(ha, "node2 unreachable"):
            assert writable(ha) == []
            ha.pg.nodes[1].start()
        else:
            await said_why(ha, "the handover to node2 failed", "node1 stays the primary")
        await ends_with_one_primary(ha, writer, old="node1")


async def test_9_both_standbys_restarted_while_the_primary_is_down(ha: HA) -> None:
    """Restarted standbys report no received position (or one rounded to a segment): they
    are judged by what they have, and one is promoted with every acknowledged commit."""
    await start_ha(ha)
    async with writing(ha) as writer:
        ha.pg.nodes[0].kill()
        for node in ha.pg.nodes[1:]:
            node.stop()
            node.start()
        await ends_with_one_primary(ha, writer)


async def test_10_a_burst_of_operator_requests_then_the_primary_killed(ha: HA) -> None:
    """Thirty queued requests (each answered in its turn, one a round) must not delay the
    failover: the dead primary goes first, and the requests are answered."""
    await start_ha(ha)
    async with writing(ha) as writer:
        burst = [
            SwitchoverRequested(cluster=ha.name, source=OPERATOR, target="node1", reason="burst"),
            NodeRejoinRequested(cluster=ha.name, node="node3", source=OPERATOR),
            FailoverRequested(cluster=ha.name, source=OPERATOR, target="node9", reason="burst"),
        ]
        for request in burst * 10:
            await ask(ha, request.model_copy(update={"event_id": uuid4()}))
        killed = time.monotonic()
        ha.pg.nodes[0].kill()
        topo = await ends_with_one_primary(ha, writer)
    took = next(t for _, t, p in writer.acked if t > killed) - killed
    assert took < 10, f"writes resumed {took:.1f}s after the kill: the requests went first"
    assert topo.epoch == 1
    assert ha.of("switchover.failed")


async def test_11_two_failover_instances_with_the_same_configured_id(ha: HA) -> None:
    """`docker compose up --scale failover=2`: one configured id, two processes; only one
    ever leads, and the primary's death is one failover by one leader."""
    ha.start("failover", f"{ha.name}-f2", LIFEBOAT_INSTANCE_ID=f"{ha.name}-f1")
    await start_ha(ha)
    twins = [p for p in ha.procs if p.name.endswith(("-f1", "-f2"))]
    async with writing(ha) as writer:
        await asyncio.sleep(3)  # a few lease renewals: the other must still not lead
        leading = [p for p in twins if "took the failover lease" in p.output()]
        assert len(leading) == 1, [p.output()[-1500:] for p in twins]
        ha.pg.nodes[0].kill()
        topo = await ends_with_one_primary(ha, writer)
    assert topo.epoch == 1
    assert len(ha.of("failover.started")) == 1


async def test_12_the_primarys_cpu_starved_for_4_seconds(ha: HA) -> None:
    """A stall shorter than a real failure: node1 runs 10 ms in every 100 ms for 4 s. It
    may be failed over or kept; either way there is one primary with every commit."""
    await start_ha(ha)
    async with writing(ha) as writer:
        with faults.starved(ha.pg.nodes[0].data_dir):
            await asyncio.sleep(4)
        await asyncio.sleep(2)
        await ends_with_one_primary(ha, writer)
