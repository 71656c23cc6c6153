"""A NATS server cut off from its peers goes on answering reads as the topology stream's
leader until it steps down: what an agent beside it reads is the record as it was. The check
an agent makes before it counts a read as confirming its primary (`read_current`: a write on
the record's revision that a majority must acknowledge) is not passed by such a read.

Each NATS server runs on a test host of its own; the test, in the root namespace, reaches
all three while the cut-off one reaches neither peer."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient

from lifeboat.common.kv import TOPOLOGY_BUCKET, TopologyStore, Versioned
from lifeboat.common.state import Topology
from lifeboat.devstack import netns
from lifeboat.devstack.procs import ManagedProcess, find_binary, wait_until

from .test_nats_cluster import declared_buckets, first_write

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=f"{netns.available()}")

NAMES = ("nats1", "nats2", "nats3")


def _config(host: netns.TestHost, peers: list[netns.TestHost], store: Path) -> str:
    routes = ", ".join(f'"nats-route://{p.address}:6222"' for p in peers)
    return "\n".join(
        [
            f'server_name: "{host.name}"',
            f'listen: "{host.address}:4222"',
            f'http: "{host.address}:8222"',
            f'jetstream {{ store_dir: "{store}" }}',
            f'cluster {{ name: "stale", listen: "{host.address}:6222", routes: [{routes}] }}',
        ]
    )


def _healthy(host: netns.TestHost) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host.address}:8222/healthz", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.fixture
def servers(workdir: Path) -> Iterator[dict[str, netns.TestHost]]:
    with netns.network_of(*NAMES) as net:
        hosts = net.hosts
        procs = []
        try:
            for host in hosts.values():
                conf = workdir / f"{host.name}.conf"
                conf.write_text(_config(host, list(hosts.values()), workdir / host.name))
                proc = ManagedProcess(
                    host.name,
                    host.command([find_binary("nats-server"), "--config", str(conf)]),
                    log_file=workdir / f"{host.name}.log",
                )
                proc.start()
                procs.append(proc)
            for host in hosts.values():
                wait_until(partial(_healthy, host), timeout=60, what=f"{host.name} healthy")
            yield hosts
        finally:
            for proc in procs:
                proc.stop()


async def _connect(*hosts: netns.TestHost) -> NatsClient:
    urls = [f"nats://{h.address}:4222" for h in hosts]
    return await nats.connect(urls, connect_timeout=3, max_reconnect_attempts=0)


async def _current(store: TopologyStore) -> int | str | None:
    """The revision `read_current` gives, or why it gave none."""
    try:
        async with asyncio.timeout(5):
            found = await store.read_current("main", "node1")
    except Exception as exc:  # no quorum: no acknowledgement
        return type(exc).__name__
    return None if found is None else found.revision


async def test_a_read_from_a_cut_off_stream_leader_is_not_taken_for_current(
    servers: dict[str, netns.TestHost],
) -> None:
    everyone = await _connect(*servers.values())
    try:
        js = everyone.jetstream(timeout=5)
        await declared_buckets(js)
        store = await TopologyStore.open(js)
        first = await first_write(lambda: store.create(Topology(cluster="main", primary="node1")))
        info = await js.stream_info(f"KV_{TOPOLOGY_BUCKET}")
        assert info.cluster is not None
        assert info.cluster.leader in servers
        leader = servers[info.cluster.leader]
        peers = [h for h in servers.values() if h is not leader]

        beside = await _connect(leader)  # an agent whose only server is the leader
        majority = await _connect(*peers)
        try:
            old = TopologyStore(
                beside.jetstream(timeout=2), await beside.jetstream().key_value(TOPOLOGY_BUCKET)
            )
            new = await TopologyStore.open(majority.jetstream(timeout=2))
            assert await _current(old) == first.revision

            leader.block(*(p.address for p in peers))
            for peer in peers:
                peer.block(leader.address)
            cut_at = time.monotonic()

            # The majority elects a leader of its own and takes a failover's new epoch.
            async def promote() -> Versioned[Topology] | None:
                try:
                    return await new.compare_and_set(
                        first.value.promoted("node2", None), first.revision
                    )
                except Exception:
                    return None

            second: Versioned[Topology] | None = None
            while second is None and time.monotonic() - cut_at < 40:
                second = await promote()
            assert second is not None, "the majority took no write within 40 s of the cut"
            took = time.monotonic() - cut_at

            # Beside the cut-off server: a read may still answer with the old record, and
            # the check does not pass it.
            try:
                async with asyncio.timeout(2):
                    stale = await old.get("main")
            except Exception as exc:
                stale_read = type(exc).__name__
            else:
                assert stale is not None
                stale_read = f"revision {stale.revision} (epoch {stale.value.epoch})"
            checked = await _current(old)
            print(
                f"the majority wrote epoch {second.value.epoch} {took:.1f}s after the cut; "
                f"the cut-off server answered the read with {stale_read}; the check: {checked}"
            )
            assert checked != first.revision
            assert await _current(new) == second.revision
        finally:
            await beside.close()
            await majority.close()
    finally:
        await everyone.close()
