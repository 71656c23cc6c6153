"""PostgreSQL nodes on test hosts (network namespaces, 198.18.0.0/24): partitions for real.

The controller (monitor and failover, in the root namespace) manages the nodes over SQL only,
as it would nodes on other machines: the cluster file names no data directory, so it cannot
kill a node it cannot reach. Cut off from the primary, it must not promote anyone — the
primary may still be committing for clients that reach it — and it says why.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from lifeboat.common import subjects
from lifeboat.common.clusters import ClusterSpec
from lifeboat.devstack import netns
from lifeboat.devstack.launch import launch, service_env
from lifeboat.devstack.postgres import PgCluster, PgNode
from lifeboat.devstack.procs import eventually, free_port
from lifeboat.devstack.throwaway import pg_on_free_ports, stop_cluster, write_clusters

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))


@pytest.fixture
def hosts() -> Iterator[netns.TestNetwork]:
    with netns.network_of("node1", "node2", "node3") as net:
        yield net


@pytest.fixture
def cluster(workdir: Path, hosts: netns.TestNetwork) -> Iterator[PgCluster]:
    plain = pg_on_free_ports(workdir / f"hosts-{free_port()}")
    pg = PgCluster(
        plain.base_dir,
        [n.port for n in plain.nodes],
        plain.passwords,
        durable=False,
        hosts=[(h.address, h.netns) for h in hosts.hosts.values()],
    )
    try:
        pg.up()
        pg.wait_streaming()
        yield pg
    finally:
        stop_cluster(pg)


def _recovering(node: PgNode) -> bool:
    return bool(node.query(psycopg.sql.SQL("select pg_is_in_recovery()"))[0][0])


def remote(spec: ClusterSpec) -> ClusterSpec:
    nodes = tuple(n.model_copy(update={"data_dir": None}) for n in spec.nodes)
    return spec.model_copy(update={"nodes": nodes})


async def test_a_cut_off_primary_is_not_failed_over_without_a_confirmed_fence(
    cluster: PgCluster,
    hosts: netns.TestNetwork,
    nats_url: str,
    nc: NatsClient,
    unique: str,
    workdir: Path,
) -> None:
    spec = remote(cluster.spec(unique))
    assert {n.host for n in spec.nodes} == {h.address for h in hosts.hosts.values()}
    clusters_file = write_clusters(workdir / f"{unique}.yaml", spec)
    env = service_env(
        nats_url=nats_url,
        clusters_file=clusters_file,
        pg_password=cluster.passwords.superuser.get_secret_value(),
    )
    held: list[dict[str, object]] = []

    async def on_held(msg: Msg) -> None:
        held.append(json.loads(msg.data))

    await nc.subscribe(subjects.FAILOVER_HELD.subject(cluster=unique), cb=on_held)
    procs = [
        launch("monitor", env, instance=f"{unique}-m1", log_file=workdir / f"{unique}-m1.log"),
        launch("failover", env, instance=f"{unique}-f1", log_file=workdir / f"{unique}-f1.log"),
    ]
    try:
        for proc in procs:
            proc.wait_ready(timeout=60)
        js = nc.jetstream()
        kv = await js.key_value("lifeboat_topology")

        async def topology() -> dict[str, object] | None:
            try:
                entry = await kv.get(unique)
            except Exception:
                return None
            found: dict[str, object] | None = json.loads(entry.value or b"null")
            return found

        async def synchronous() -> dict[str, object] | None:
            found = await topology()
            return found if found and found.get("synchronous") else None

        # Synchronous replication in place: the standbys hold every acknowledged commit.
        first = await eventually(synchronous, timeout=40, what="the synchronous set")
        assert first["primary"] == "node1"

        hosts.hosts["node1"].cut()
        reason = await eventually(
            lambda: next(
                (str(e["reason"]) for e in held if "could not be confirmed" in str(e["reason"])),
                None,
            ),
            timeout=40,
            what="failover.held for the unconfirmed fence",
            detail=lambda: procs[1].output()[-4000:],
        )
        assert "node1" in reason
        # Held, and held: no standby was promoted while node1 may still take commits.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert _recovering(cluster.nodes[1])
            assert _recovering(cluster.nodes[2])
            await asyncio.sleep(0.5)
        assert not _recovering(cluster.nodes[0])  # node1 itself still runs, cut off

        # Back on the network: node1 is fenced for real, and one primary remains.
        hosts.hosts["node1"].mend()

        def one_writable_primary() -> list[str] | None:
            try:
                writable = [
                    n.name
                    for n in cluster.nodes
                    if not _recovering(n)
                    and n.query(psycopg.sql.SQL("show default_transaction_read_only"))[0][0]
                    == "off"
                ]
            except psycopg.Error:  # a node being fenced ends its sessions: not settled yet
                return None
            return writable if len(writable) == 1 and writable != ["node1"] else None

        survivors = await eventually(
            one_writable_primary, timeout=60, what="one writable primary after the partition"
        )
        final = await eventually(topology, timeout=5, what="the topology")
        assert final["primary"] == survivors[0]
    finally:
        for proc in procs:
            proc.stop()
