"""The node agent against real servers: PostgreSQL nodes, NATS, one agent process per node.

The test plays the failover leader: it writes the topology as the leader would (a new epoch
by compare-and-swap), and takes NATS away by stopping the server, which every agent then
loses. Each test runs a NATS server of its own, so stopping it touches no other test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
import pytest
from nats.aio.client import Client as NatsClient

from lifeboat.agent.node import postmaster
from lifeboat.agent.watchdog import Files, read_armed
from lifeboat.common.events import (
    FailoverRequested,
    NodeRejoinRequested,
    NodeStopRequested,
    Role,
    Source,
    SwitchoverRequested,
)
from lifeboat.common.kv import TopologyStore
from lifeboat.common.state import Topology
from lifeboat.common.subjects import (
    DEAD_LETTER,
    FAILOVER_FAILED,
    FAILOVER_STARTED,
    NODE_FENCED,
    NODE_REJOIN_STARTED,
    NODE_REJOINED,
    NODE_SELF_FENCED,
    NODE_STARTED,
    NODE_STOP_REQUESTED,
    NODE_STOPPED,
    STREAM_NAME,
)
from lifeboat.devstack import faults
from lifeboat.devstack.launch import ServiceProcess
from lifeboat.devstack.procs import eventually, free_port
from lifeboat.devstack.servers import NatsServer
from lifeboat.devstack.throwaway import LocalHA, local_ha, nats_on_free_ports

BOUND = 3.0  # LIFEBOAT_AGENT_SELF_FENCE_SECONDS in these tests
# Beyond the bound: a check interval, a pg_controldata run and a fast stop, on a busy machine.
SLACK = 2.5
CHECK = 0.5  # the agents' round (LIFEBOAT_AGENT_CHECK_SECONDS's default)


class Cluster:
    """Three nodes, their agents and a NATS server of their own."""

    def __init__(self, stack: LocalHA, server: NatsServer, nc: NatsClient) -> None:
        self.stack = stack
        self.server = server
        self.nc = nc
        self.name = stack.name
        self.agents: dict[str, ServiceProcess] = {}

    def node(self, name: str) -> Any:
        return next(n for n in self.stack.pg.nodes if n.name == name)

    async def write_topology(self, primary: str, epoch: int) -> None:
        """What the leader writes: who is primary under which epoch (create, else CAS)."""
        store = await TopologyStore.open(self.nc.jetstream())
        members = {
            n.name: Role.PRIMARY if n.name == primary else Role.STANDBY for n in self.stack.pg.nodes
        }
        topology = Topology(cluster=self.name, primary=primary, epoch=epoch, members=members)
        current = await store.get(self.name)
        if current is None:
            await store.create(topology)
        else:
            await store.compare_and_set(topology, current.revision)

    def start_agents(
        self, *, peers: bool, links: dict[str, Link] | None = None, bound: float = BOUND
    ) -> None:
        """One agent per node; one with a `link` reaches NATS only through it."""
        ports = {n.name: free_port() for n in self.stack.pg.nodes}
        for node in self.stack.pg.nodes:
            others = {n: f"http://127.0.0.1:{p}" for n, p in ports.items() if n != node.name}
            link = (links or {}).get(node.name)
            self.agents[node.name] = self.stack.start(
                "agent",
                f"{self.name}-agent-{node.name}",
                LIFEBOAT_NATS_URL=self.server.url if link is None else link.url,
                LIFEBOAT_HTTP_PORT=str(ports[node.name]),
                LIFEBOAT_AGENT_CLUSTER=self.name,
                LIFEBOAT_AGENT_NODE=node.name,
                LIFEBOAT_AGENT_DATA_DIR=str(node.data_dir),
                LIFEBOAT_AGENT_SELF_FENCE_SECONDS=str(bound),
                LIFEBOAT_AGENT_PEERS=json.dumps(others if peers else {}),
            )
        for agent in self.agents.values():
            agent.wait_ready()

    def extra_agent(
        self, label: str, node: str, data_dir: Path, bound: float = BOUND
    ) -> ServiceProcess:
        """One more agent process under `node`'s name, on `data_dir`, without peers."""
        agent = self.stack.start(
            "agent",
            f"{self.name}-agent-{label}",
            LIFEBOAT_NATS_URL=self.server.url,
            LIFEBOAT_HTTP_PORT=str(free_port()),
            LIFEBOAT_AGENT_CLUSTER=self.name,
            LIFEBOAT_AGENT_NODE=node,
            LIFEBOAT_AGENT_DATA_DIR=str(data_dir),
            LIFEBOAT_AGENT_SELF_FENCE_SECONDS=str(bound),
            LIFEBOAT_AGENT_PEERS="{}",
        )
        agent.wait_ready()
        return agent

    async def says(self, agent: ServiceProcess, words: str) -> bool:
        """Whether `agent`'s verdict says `words`."""
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=2) as client:
                view = (await client.get(f"{agent.url}/agent/view")).json()
            return words in view["verdict"]
        return False

    async def serving(
        self, *, peers: bool, links: dict[str, Link] | None = None, bound: float = BOUND
    ) -> None:
        """node1 the primary at epoch 0, and every agent has read it."""
        await self.write_topology("node1", 0)
        self.start_agents(peers=peers, links=links, bound=bound)
        await self.wait_views(epoch=0)

    async def view(self, node: str) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=2) as client:
            resp = await client.get(f"{self.agents[node].url}/agent/view")
        resp.raise_for_status()
        view: dict[str, Any] = resp.json()
        return view

    async def verdict_is(self, node: str, verdict: str) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return bool((await self.view(node))["verdict"] == verdict)
        return False

    async def wait_views(self, epoch: int) -> None:
        """Until every agent has read the topology at `epoch`."""

        async def read() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                views = [await self.view(n) for n in self.agents]
                return all(v["epoch"] == epoch for v in views)
            return False

        await eventually(
            read, timeout=60, what=f"every agent to read epoch {epoch}", detail=self.tail
        )

    async def wait_stopped(self, node: str, timeout: float) -> float:
        """Until `node` is not running; how long that took."""
        started = time.monotonic()
        await eventually(
            lambda: not self.node(node).running(),
            timeout=timeout,
            what=f"{node} to be stopped by its agent",
            interval=0.05,
            detail=self.tail,
        )
        return time.monotonic() - started

    async def fenced_events(self, node: str, count: int = 1) -> list[dict[str, Any]]:
        """The node's `node.self_fenced` events, read from the stream: one sent from the
        outbox right after NATS came back may precede this client's own reconnection."""
        return await self.stored(NODE_SELF_FENCED.subject(cluster=self.name, node=node), count)

    async def stored(self, subject: str, count: int = 1) -> list[dict[str, Any]]:
        """The first `count` events on `subject` in the stream, once there are as many."""

        async def stored() -> list[dict[str, Any]]:
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                sub = await self.nc.jetstream().pull_subscribe(subject, stream=STREAM_NAME)
                try:
                    msgs = await sub.fetch(count, timeout=1)
                finally:
                    await sub.unsubscribe()
                found = [json.loads(m.data) for m in msgs]
                return found if len(found) >= count else []
            return []

        return await eventually(stored, timeout=30, what=f"{count} on {subject}", detail=self.tail)

    async def stored_all(self, subject: str) -> list[dict[str, Any]]:
        """Every event on `subject` in the stream now."""
        sub = await self.nc.jetstream().pull_subscribe(subject, stream=STREAM_NAME)
        found: list[dict[str, Any]] = []
        try:
            with contextlib.suppress(nats.errors.TimeoutError):
                while msgs := await sub.fetch(100, timeout=1):
                    found += [json.loads(m.data) for m in msgs]
        finally:
            await sub.unsubscribe()
        return found

    def remote(self, sql_link: Link) -> None:
        """The cluster file as on other hosts: no data directory is the controller's, and it
        reaches node1 only through `sql_link`."""
        spec = self.stack.spec()
        nodes = tuple(
            n.model_copy(
                update={"data_dir": None, "port": sql_link.port if n.name == "node1" else n.port}
            )
            for n in spec.nodes
        )
        self.stack.write_spec(spec.model_copy(update={"nodes": nodes}))

    async def controlled_remotely(
        self, sql_link: Link, *, links: dict[str, Link] | None = None, **failover_env: str
    ) -> None:
        """The cluster file in remote mode (see `remote`), a monitor and a failover
        instance on it, the agents (some reaching NATS through `links`); until the leader
        has recorded a synchronous set: in mode `on` only a recorded synchronous standby may
        be promoted."""
        self.remote(sql_link)
        self.stack.start("monitor", f"{self.name}-m1")
        self.stack.start("failover", f"{self.name}-f1", **failover_env)
        store = await TopologyStore.open(self.nc.jetstream())
        await eventually(
            lambda: self.named("node1"), timeout=60, what="the topology", detail=self.tail
        )
        self.start_agents(peers=False, links=links)
        await self.wait_views(epoch=0)

        async def synchronous() -> bool:
            found = await store.get(self.name)
            return found is not None and bool(found.value.synchronous)

        await eventually(
            synchronous, timeout=30, what="a recorded synchronous set", detail=self.tail
        )

    async def named(self, primary: str) -> bool:
        found = await (await TopologyStore.open(self.nc.jetstream())).get(self.name)
        return found is not None and found.value.primary == primary

    async def node2_promoted_after_node1_stopped(self) -> None:
        """Until node2 takes writes; never while node1 still ran."""
        node1_stopped: float | None = None

        def promoted() -> bool:
            nonlocal node1_stopped
            if node1_stopped is None and not self.node("node1").running():
                node1_stopped = time.monotonic()
            rows = self.node("node2").query(psycopg.sql.SQL("select pg_is_in_recovery()"))
            return rows[0][0] is False

        await eventually(
            promoted, timeout=60, what="node2 promoted", interval=0.05, detail=self.tail
        )
        assert node1_stopped is not None, "node2 was promoted while node1 still ran"
        assert await self.named("node2")

    def running(self, *nodes: str) -> bool:
        return all(self.node(n).running() for n in nodes)

    def tail(self) -> str:
        return self.stack.tail()

    def in_recovery(self, node: str) -> bool:
        with psycopg.connect(self.stack.dsn(int(node[-1]) - 1), connect_timeout=2) as conn:
            row = conn.execute("select pg_is_in_recovery()").fetchone()
        return bool(row and row[0])

    def streams_from(self, node: str, upstream: str) -> bool:
        with psycopg.connect(self.stack.dsn(int(node[-1]) - 1), connect_timeout=2) as conn:
            row = conn.execute("select status, sender_port from pg_stat_wal_receiver").fetchone()
        return row == ("streaming", self.node(upstream).port)

    def writable(self, node: str) -> bool:
        with psycopg.connect(self.stack.dsn(int(node[-1]) - 1), connect_timeout=2) as conn:
            conn.execute("create table if not exists agent_writes (at float8)")
            conn.execute("insert into agent_writes values (%s)", (time.time(),))
            conn.commit()
        return True


class Link:
    """A TCP relay between one agent and NATS that the test cuts and restores: that agent's
    host loses NATS while the others keep it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """No new connection, and every open one closed."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._pipes):
            writer.close()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._pipes |= {client_w, server_w}

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pump(client_r, server_w), pump(server_r, client_w))
        self._pipes -= {client_w, server_w}


@contextlib.contextmanager
def own_nats(base: Path) -> Iterator[NatsServer]:
    server = nats_on_free_ports(base / "nats", log_file=base / "nats.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def cluster_with_agents(workdir: Path, unique: str) -> AsyncIterator[Cluster]:
    base = workdir / unique
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    with own_nats(base) as server, local_ha(base, server.url, name=unique) as stack:
        # A lost connection is the test's doing: it comes back with the server.
        nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        try:
            yield Cluster(stack, server, nc)
        finally:
            stack.stop_services()
            await nc.close()


async def test_a_primary_the_topology_no_longer_names_is_stopped_within_the_bound(
    workdir: Path, unique: str
) -> None:
    async with cluster_with_agents(workdir, unique) as c:
        await c.serving(peers=False)
        assert await asyncio.to_thread(c.writable, "node1")

        await c.write_topology("node2", 1)  # the leader's commit point: a new epoch
        took = await c.wait_stopped("node1", timeout=BOUND + SLACK)

        assert took < BOUND, f"node1 stopped {took:.2f}s after the epoch moved"
        (event,) = await c.fenced_events("node1")
        assert (event["epoch"], event["primary"]) == (1, "node2")
        assert "names node2 primary at epoch 1" in event["reason"]
        assert event["action"] == "stopped (fast)"
        assert c.running("node2", "node3")


async def test_a_node_started_writable_that_the_topology_does_not_name_is_fenced(
    workdir: Path, unique: str
) -> None:
    async with cluster_with_agents(workdir, unique) as c:
        # node2 was promoted under epoch 1; node1, the old primary, still runs writable.
        c.node("node2").execute(psycopg.sql.SQL("select pg_promote()"))
        await c.write_topology("node2", 1)
        c.start_agents(peers=False)
        await c.wait_stopped("node1", timeout=60)
        await c.fenced_events("node1")

        # An operator (a reboot, a container restart) starts it again: the agent left
        # standby.signal, so it comes up in recovery, never writable, and is left running.
        await eventually(
            lambda: (c.node("node1").data_dir / "standby.signal").exists(),
            timeout=10,
            what="node1's agent to leave standby.signal",
            detail=c.tail,
        )
        await asyncio.to_thread(c.node("node1").start)
        assert await asyncio.to_thread(c.in_recovery, "node1")
        await asyncio.sleep(3 * CHECK)
        assert c.node("node1").running(), "a read-only node is not the agent's to stop"
        assert await asyncio.to_thread(c.in_recovery, "node1")
        assert len(await c.fenced_events("node1")) == 1
        assert c.node("node2").running(), "the primary the topology names is left alone"
        assert await asyncio.to_thread(c.writable, "node2")
        await eventually(
            lambda: c.verdict_is("node2", "named primary at epoch 1"),
            timeout=10,
            what="node2's agent to read the topology naming it",
            detail=c.tail,
        )


async def test_the_named_primary_started_again_comes_up_read_only(
    workdir: Path, unique: str
) -> None:
    """Guarantee 5 at its source: a restart (here a crash) starts no node writable, not even
    the one the topology names; the failover leader gives it its writes back (see
    test_failover / the e2e tests), not the start."""
    async with cluster_with_agents(workdir, unique) as c:
        await c.serving(peers=False)
        signal_file = c.node("node1").data_dir / "standby.signal"
        await eventually(
            signal_file.exists, timeout=10, what="node1's agent to arm it", detail=c.tail
        )
        assert await asyncio.to_thread(c.writable, "node1"), "read only when it starts"

        c.node("node1").kill()
        await asyncio.to_thread(c.node("node1").start)

        assert await asyncio.to_thread(c.in_recovery, "node1")
        await asyncio.sleep(3 * CHECK)
        assert c.node("node1").running()
        assert not (await c.view("node1"))["writable"]


async def test_a_primary_that_loses_nats_fences_itself_within_the_bound(
    workdir: Path, unique: str
) -> None:
    async with cluster_with_agents(workdir, unique) as c:
        await c.serving(peers=False)

        c.server.stop()
        took = await c.wait_stopped("node1", timeout=BOUND + SLACK)

        # Its last confirmation came before the server stopped: at most the bound, plus the
        # stop itself, from then.
        assert took < BOUND + SLACK
        assert c.running("node2", "node3")
        await asyncio.to_thread(c.server.start)
        (event,) = await c.fenced_events("node1")  # kept in the outbox until NATS was back
        assert "not confirmed primary for" in event["reason"]
        assert (event["epoch"], event["bound_seconds"]) == (0, BOUND)


def watchdogs(data_dir: Path) -> list[int]:
    """The watchdog processes watching `data_dir`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            if b"lifeboat.agent.watchdog" in argv and str(data_dir).encode() in argv:
                found.append(int(cmdline.parent.name))
    return found


async def test_a_primary_whose_agent_is_killed_is_stopped_by_its_watchdog_within_the_bound(
    workdir: Path, unique: str
) -> None:
    """The leader takes a primary whose agent's lease goes unrenewed as stopped after the
    bound (+1 s): an agent killed while its node is primary must not leave it running. Its
    watchdog, armed at every confirmation and in a session of its own, kills it; the agent,
    started again, says so in `node.self_fenced`; the watchdog then exits by itself."""
    async with cluster_with_agents(workdir, unique) as c:
        data_dir = c.node("node1").data_dir
        await c.serving(peers=False)
        await eventually(lambda: len(watchdogs(data_dir)) == 1, timeout=10, what="node1's watchdog")
        assert await asyncio.to_thread(c.writable, "node1")

        c.agents["node1"].signal(signal.SIGKILL)
        armed = read_armed(Files.beside(data_dir))  # its last arming, before the kill
        assert armed is not None
        # Gone, not reaped: a killed postmaster's parent may take a while to reap it.
        await eventually(
            lambda: postmaster(data_dir) is None,
            timeout=BOUND + SLACK,
            what="node1 to be killed by its watchdog",
            interval=0.05,
            detail=c.tail,
        )
        late = time.monotonic() - armed.deadline

        # The leader relies on node1 being stopped 1 s past the bound after the agent's last
        # lease renewal, which came after the start of the read the deadline counts from.
        assert late < 1.0, f"node1 stopped {late:.2f}s past its agent's deadline"
        assert c.running("node2", "node3")
        c.agents["node1"].stop()
        c.agents["node1"].start()
        (event,) = await c.fenced_events("node1")
        assert "the watchdog killed postmaster" in event["reason"]
        assert "the agent was gone" in event["reason"]
        assert event["action"] == "stopped (SIGKILL, by the watchdog)"
        await eventually(lambda: not watchdogs(data_dir), timeout=5, what="the watchdog to exit")


async def test_a_primary_whose_nats_hangs_fences_itself_within_the_bound(
    workdir: Path, unique: str
) -> None:
    """A broker that accepts and never answers (frozen): every read waits, each only until
    the deadline."""
    async with cluster_with_agents(workdir, unique) as c:
        await c.serving(peers=False)

        c.server.process.signal(signal.SIGSTOP)
        try:
            took = await c.wait_stopped("node1", timeout=BOUND + SLACK)
        finally:
            c.server.process.signal(signal.SIGCONT)

        assert took < BOUND + SLACK
        assert c.running("node2", "node3")
        (event,) = await c.fenced_events("node1")
        assert "not confirmed primary for" in event["reason"], event["reason"]


async def test_failsafe_keeps_a_primary_that_reaches_every_standbys_agent_and_only_it(
    workdir: Path, unique: str
) -> None:
    async with cluster_with_agents(workdir, unique) as c:
        await c.serving(peers=True)

        c.server.stop()
        await asyncio.sleep(2 * BOUND)
        assert c.node("node1").running(), f"failsafe did not hold:\n{c.tail()}"
        assert await asyncio.to_thread(c.writable, "node1"), "a NATS outage took writes away"
        assert "failsafe" in (await c.view("node1"))["verdict"]

        c.agents["node3"].signal(signal.SIGTERM)  # node1 can no longer hear from node3
        took = await c.wait_stopped("node1", timeout=BOUND + SLACK + 1)

        assert took < BOUND + SLACK
        assert c.running("node2", "node3")
        await asyncio.to_thread(c.server.start)
        (event,) = await c.fenced_events("node1")
        assert "node3's agent did not answer" in event["reason"], event["reason"]


async def test_failsafe_stops_a_primary_cut_off_from_nats_once_a_standbys_agent_reads_a_new_epoch(
    workdir: Path, unique: str
) -> None:
    """Only the primary's host loses NATS; the standbys' agents still read the topology. The
    failsafe keeps the primary serving until a standby's agent has read the leader's new
    epoch, then it stops at once: sooner than the bound."""
    async with cluster_with_agents(workdir, unique) as c:
        link = Link(c.server.ports.client)
        await link.up()
        try:
            await c.serving(peers=True, links={"node1": link})

            await link.cut()
            await asyncio.sleep(2 * BOUND)
            assert c.node("node1").running(), f"failsafe did not hold:\n{c.tail()}"
            assert await asyncio.to_thread(c.writable, "node1")

            await c.write_topology("node2", 1)  # the leader's commit point
            took = await c.wait_stopped("node1", timeout=BOUND + SLACK)

            assert took < BOUND, f"node1 stopped {took:.2f}s after the epoch moved"
            await link.up()  # node1's agent sends what it kept
            (event,) = await c.fenced_events("node1")
            # Whichever standby's agent read the new epoch first.
            assert re.search(r"node[23]'s agent read node2 as primary at epoch 1", event["reason"])
        finally:
            await link.cut()


async def test_a_primary_the_controller_cannot_reach_is_fenced_by_its_agent_then_rejoined_by_it(
    workdir: Path, unique: str
) -> None:
    """Remote mode (nothing local to the controller), the controller and the monitor cut off
    from node1's PostgreSQL, node1's agent still on NATS: the SQL fence cannot be confirmed,
    so the leader asks node1's agent, which stops node1 under the new epoch; node2 is
    promoted by an automatic failover, not a forced one. (Without the agent: held for as
    long as node1 is out of reach.) Asked to rejoin node1, the leader orders it of node1's
    agent, which rewinds it onto node2."""
    async with cluster_with_agents(workdir, unique) as c:
        sql_link = Link(c.node("node1").port)
        await sql_link.up()
        try:
            await c.controlled_remotely(sql_link)
            await sql_link.cut()
            await c.node2_promoted_after_node1_stopped()
            (fenced,) = await c.stored(NODE_FENCED.subject(cluster=unique, node="node1"))
            assert "its agent: " in fenced["reason"], fenced["reason"]
            (answer,) = await c.stored(NODE_STOPPED.subject(cluster=unique, node="node1"))
            assert answer["stopped"] is True
            assert answer["epoch"] == fenced["epoch"] == 1

            # The operator's rejoin of node1, whose data directory the controller does not
            # have: the leader orders it of node1's agent, which rewinds it onto node2.
            await sql_link.up()
            ask = NodeRejoinRequested(
                cluster=unique, node="node1", source=Source(service="test", instance="t")
            )
            await c.nc.publish(ask.subject(), ask.model_dump_json().encode())
            (started,) = await c.stored(NODE_REJOIN_STARTED.subject(cluster=unique, node="node1"))
            (rejoined,) = await c.stored(NODE_REJOINED.subject(cluster=unique, node="node1"))
            assert rejoined["correlation_id"] == started["correlation_id"]
            assert (rejoined["upstream"], rejoined["epoch"]) == ("node2", 1)
            assert rejoined["source"]["service"] == "agent"
            await eventually(
                lambda: c.streams_from("node1", "node2"),
                timeout=30,
                what="node1 streaming from node2",
                detail=c.tail,
            )
        finally:
            await sql_link.cut()


async def test_a_switchover_on_other_hosts_leaves_the_old_primary_rejoined_by_its_agent(
    workdir: Path, unique: str
) -> None:
    """Remote mode: the handover leaves node1 running read-only (nothing local to stop it
    cleanly); once node2 is promoted, node1's agent stops it and, ordered by the leader,
    rewinds it onto node2: a switchover ends with three nodes again, on other hosts too."""
    async with cluster_with_agents(workdir, unique) as c:
        sql_link = Link(c.node("node1").port)
        await sql_link.up()
        try:
            await c.controlled_remotely(sql_link)
            request = SwitchoverRequested(
                cluster=unique,
                source=Source(service="test", instance="operator"),
                target="node2",
                reason="planned maintenance of node1's host",
            )
            await c.nc.jetstream().publish(request.subject(), request.model_dump_json().encode())
            (rejoined,) = await c.stored(NODE_REJOINED.subject(cluster=unique, node="node1"))
            assert (rejoined["upstream"], rejoined["epoch"]) == ("node2", 1)
            assert rejoined["source"]["service"] == "agent"
            await eventually(
                lambda: c.streams_from("node1", "node2"),
                timeout=30,
                what="node1 streaming from node2",
                detail=c.tail,
            )
            assert await c.named("node2")
            assert not await asyncio.to_thread(c.in_recovery, "node2")
        finally:
            await sql_link.cut()


def filler_rows(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=2) as conn:
        row = conn.execute("select count(*) from lifeboat_filler").fetchone()
    return int(row[0]) if row else 0


async def test_a_manual_failover_nobody_can_finish_gives_the_stopped_old_primary_its_writes_back(
    workdir: Path, unique: str
) -> None:
    """Remote mode. node3's walreceiver stalls while node2 acknowledges every commit; the
    operator fails over to node3, and node2 dies as the failover begins. node1, fenced over
    SQL, is stopped by its agent once the topology names node3, and node3 can never get what
    node2 alone held. After the catch-up time the leader asks node1's agent to start it again
    read-only, then gives it its writes back under a new epoch: a primary again, every
    acknowledged commit on it. (The old main promoted node3 again, refused, for ever: nobody
    writable until an operator acted.)"""
    async with cluster_with_agents(workdir, unique) as c:
        sql_link = Link(c.node("node1").port)
        await sql_link.up()
        try:
            await c.controlled_remotely(sql_link, LIFEBOAT_MAXIMUM_LAG_ON_FAILOVER=str(64 << 20))
            faults.signal_walreceiver(c.stack.dsn(2), signal.SIGSTOP)
            try:
                await asyncio.to_thread(faults.bulk_write, c.stack.dsn(0), 16)  # node2 acks
                acknowledged = filler_rows(c.stack.dsn(0))
                request = FailoverRequested(
                    cluster=unique,
                    source=Source(service="test", instance="operator"),
                    target="node3",
                    reason="node3 is the one to keep",
                )
                await c.nc.jetstream().publish(
                    request.subject(), request.model_dump_json().encode()
                )
                # Dead before the request, node2 gets it refused: it may hold commits node3
                # lacks. Once the failover has begun, nothing can take its place.
                await c.stored(FAILOVER_STARTED.subject(cluster=unique))
                c.node("node2").kill()
                await c.wait_stopped("node1", timeout=30)
            finally:
                faults.signal_walreceiver(c.stack.dsn(2), signal.SIGCONT)
            (started,) = await c.stored(NODE_STARTED.subject(cluster=unique, node="node1"))
            assert (started["started"], started["action"], started["epoch"]) == (
                True,
                "started read-only",
                1,
            )
            await eventually(
                lambda: c.named("node1"), timeout=60, what="node1 primary again", detail=c.tail
            )

            def writable() -> bool:
                with contextlib.suppress(psycopg.Error):
                    return not c.in_recovery("node1")
                return False

            await eventually(writable, timeout=30, what="node1 writable", detail=c.tail)
            store = await TopologyStore.open(c.nc.jetstream())
            found = await store.get(unique)
            assert found is not None
            assert found.value.epoch == 2
            assert await asyncio.to_thread(c.in_recovery, "node3"), "node3 was promoted too"
            assert filler_rows(c.stack.dsn(0)) == acknowledged
            said = await c.stored_all(FAILOVER_FAILED.subject(cluster=unique))
            assert any("node3 did not catch up with node1" in e["reason"] for e in said), said
        finally:
            await sql_link.cut()


async def test_a_stop_request_under_a_stale_epoch_or_for_the_named_primary_is_refused(
    workdir: Path, unique: str
) -> None:
    """A stale leader stops nothing: the agent obeys only the epoch the topology is at, and
    never for the node it names primary. A malformed request is a dead letter."""
    async with cluster_with_agents(workdir, unique) as c:
        await c.serving(peers=False)
        me = Source(service="test", instance="stale-leader")
        for epoch in (0, 7):  # node1 is the primary at epoch 0; 7 is not the topology's
            request = NodeStopRequested(
                cluster=unique, node="node1", source=me, epoch=epoch, reason="test"
            )
            await c.nc.publish(request.subject(), request.model_dump_json().encode())
        await c.nc.publish(NODE_STOP_REQUESTED.subject(cluster=unique, node="node1"), b"{oops")
        answers = await c.stored(NODE_STOPPED.subject(cluster=unique, node="node1"), count=2)
        assert [a["stopped"] for a in answers] == [False, False]
        assert all(
            "refused: the topology is at epoch 0 with node1 primary" in a["action"] for a in answers
        )
        (letter,) = await c.stored(DEAD_LETTER.subject(consumer="agent-node1"))
        assert letter["original_subject"].startswith("node.stop_requested.")
        assert c.node("node1").running()
        assert await asyncio.to_thread(c.writable, "node1")


@pytest.mark.parametrize("forced", [False, True], ids=["automatic", "forced"])
async def test_a_primary_cut_off_from_the_controller_and_nats_fails_over_by_its_agents_bound(
    workdir: Path, unique: str, forced: bool
) -> None:
    """The controller cannot reach node1 (remote mode: fencing over SQL only) and node1's
    agent cannot reach NATS; clients still could. The leader cannot confirm the fence over
    SQL, and node1's agent does not answer its stop request; but node1's agent lease has not
    been renewed for its bound (+ the margin), so the agent has stopped node1 by its own
    bound: the automatic failover promotes node2 (before agent leases, it held for as long
    as node1 was cut off). An operator's forced failover, the other way out, waits out the
    bound after its new epoch. Never two writable nodes."""
    async with cluster_with_agents(workdir, unique) as c:
        sql_link, nats_link = Link(c.node("node1").port), Link(c.server.ports.client)
        await sql_link.up()
        await nats_link.up()
        try:
            # The controller reaches node1 only through the relay; nothing is local to it.
            await c.controlled_remotely(
                sql_link,
                links={"node1": nats_link},
                LIFEBOAT_AGENT_SELF_FENCE_SECONDS=str(BOUND),
            )
            await sql_link.cut()
            await nats_link.cut()
            if forced:
                request = FailoverRequested(
                    cluster=unique,
                    source=Source(service="test", instance="operator"),
                    target="node2",
                    reason="node1 is gone for good",
                    force=True,
                    data_loss_budget_bytes=16 << 20,
                )
                subject = request.subject()
                await c.nc.jetstream().publish(subject, request.model_dump_json().encode())

            await c.node2_promoted_after_node1_stopped()
            if not forced:
                (fenced,) = await c.stored(NODE_FENCED.subject(cluster=unique, node="node1"))
                assert "has not renewed its lease" in fenced["reason"], fenced["reason"]
        finally:
            await sql_link.cut()
            await nats_link.cut()


async def test_a_second_agent_under_a_nodes_name_confirms_nothing_and_stops_nothing(
    workdir: Path, unique: str
) -> None:
    """A copied configuration: a second agent named node1, on node2's data directory (in
    place of node2's own agent). node1's own agent holds node1's lease, which the second
    cannot take (each agent's identity is kept beside its data directory), so the second
    confirms nothing and obeys no order: a stop request for node1 stops node1, by its own
    agent, and not node2 (before, both agents took the lease under the node's name, and
    both stopped their nodes)."""
    async with cluster_with_agents(workdir, unique) as c:
        await c.serving(peers=False)
        c.agents["node2"].stop()  # the copy runs there instead: one agent per directory
        copy = c.extra_agent("node1-copy", "node1", c.node("node2").data_dir)

        async def refused() -> bool:
            return await c.says(copy, "is held by another agent")

        await eventually(refused, timeout=30, what="the copy refused the lease", detail=c.tail)
        await asyncio.sleep(BOUND)  # node1's own agent goes on confirming it
        assert await asyncio.to_thread(c.writable, "node1")

        await c.write_topology("node3", 1)
        request = NodeStopRequested(
            cluster=unique,
            node="node1",
            source=Source(service="test", instance="leader"),
            epoch=1,
            reason="test",
        )
        await c.nc.publish(request.subject(), request.model_dump_json().encode())
        answers = await c.stored(NODE_STOPPED.subject(cluster=unique, node="node1"), count=2)
        assert sorted(a["stopped"] for a in answers) == [False, True], answers
        (no,) = [a for a in answers if not a["stopped"]]
        assert "is held by another agent" in no["action"]
        await c.wait_stopped("node1", timeout=BOUND + SLACK)
        assert c.running("node2")
        assert await asyncio.to_thread(c.in_recovery, "node2")


async def test_a_restarted_agent_takes_its_lease_over_and_a_clone_of_it_is_refused(
    workdir: Path, unique: str
) -> None:
    """node1's agent stopped and started again: same identity (kept beside the data
    directory), so it takes over its predecessor's lease, which nobody renews, and node1
    stays confirmed. A clone of node1's volume (its id file copied beside another data
    directory), its agent running under node1's name, sees the lease renewed under the
    same identity: it is refused, and node1's own agent goes on confirming node1. A second
    agent process on node1's own data directory does not start (one per directory)."""
    bound = 10.0  # room for a process to start before its predecessor's deadline
    async with cluster_with_agents(workdir, unique) as c:
        await c.serving(peers=False, bound=bound)
        data_dir = c.node("node1").data_dir
        c.agents["node1"].stop()
        c.agents["node1"] = again = c.extra_agent("node1-again", "node1", data_dir, bound)
        await eventually(
            lambda: c.says(again, "named primary at epoch 0"),
            timeout=bound,
            what="the restarted agent confirming node1",
            detail=c.tail,
        )

        copied = workdir / unique / "clone" / data_dir.name
        copied.mkdir(parents=True)
        identity = f".{data_dir.name}.lifeboat-agent-id"
        (copied.parent / identity).write_bytes((data_dir.parent / identity).read_bytes())
        clone = c.extra_agent("node1-clone", "node1", copied, bound)
        await eventually(
            lambda: c.says(clone, "renewed by another process with this agent's identity"),
            timeout=30,
            what="the clone refused",
            detail=c.tail,
        )
        await asyncio.sleep(2)
        assert await c.says(again, "named primary at epoch 0")
        assert await asyncio.to_thread(c.writable, "node1")
        clone.stop()

        with pytest.raises(RuntimeError, match="another agent runs on"):  # it exits
            c.extra_agent("node1-twice", "node1", data_dir, bound)
        assert await c.says(again, "named primary at epoch 0")
