"""A restore into a node whose data directory is not on the backup service's host (the
cluster file without `data_dir`, as under compose or on separate hosts), asked over NATS of
the backup service as a process, carried out by the node's agent as a process: the service
restores beside itself and serves the copy, the agent copies it in and swaps it, its node's
own directory kept aside. The topology's primary comes back read-only on the restored data;
a standby is left stopped on it (started, it would be a second primary). Asked directly,
the agent refuses a writable node."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from psycopg import sql

from lifeboat.agent.agent import STRAY_AFTER_SECONDS
from lifeboat.common.bus import encode
from lifeboat.common.events import (
    BackupKind,
    BackupRequested,
    NodeRestoreOrdered,
    RestoreRequested,
    Role,
)
from lifeboat.common.kv import TopologyStore
from lifeboat.common.state import Topology
from lifeboat.devstack.launch import ServiceProcess
from lifeboat.devstack.postgres import PgCluster, PgNode
from lifeboat.devstack.procs import eventually
from tests.endpoints import S3Endpoint
from tests.integration.backup.conftest import small_cluster
from tests.integration.backup.harness import SRC, Watch, Workers, backup_env, send, watching


@pytest.fixture(scope="module")
def cluster(workdir: Path) -> Iterator[PgCluster]:
    with small_cluster(workdir, nodes=2) as pg:
        yield pg


@pytest.fixture(scope="module")
def env(
    cluster: PgCluster, nats_url: str, s3: S3Endpoint, workdir: Path, cluster_name: str
) -> dict[str, str]:
    return backup_env(
        cluster, nats_url, s3, workdir, cluster_name, spec=cluster.spec(cluster_name).remote()
    )


@pytest.fixture(scope="module")
def workers(env: dict[str, str], workdir: Path) -> Iterator[Workers]:
    w = Workers(env, workdir)
    try:
        yield w
    finally:
        w.stop_all()


@pytest.fixture(scope="module")
def agents(
    cluster: PgCluster, env: dict[str, str], workdir: Path, cluster_name: str
) -> Iterator[dict[str, ServiceProcess]]:
    started: dict[str, ServiceProcess] = {}
    try:
        for node in cluster.nodes:
            proc = ServiceProcess(
                "agent",
                env,
                instance=f"agent-{node.name}",
                extra={
                    "LIFEBOAT_AGENT_CLUSTER": cluster_name,
                    "LIFEBOAT_AGENT_NODE": node.name,
                    "LIFEBOAT_AGENT_DATA_DIR": str(node.data_dir),
                },
                log_file=workdir / f"agent-{cluster_name}-{node.name}.log",
            )
            proc.start()
            started[node.name] = proc
        for proc in started.values():
            proc.wait_ready(60)
        yield started
    finally:
        for proc in started.values():
            proc.stop()


@pytest.fixture
async def watch(nats_url: str, cluster_name: str) -> AsyncIterator[tuple[Watch, NatsClient]]:
    w, client = await watching(nats_url, cluster_name, ("backup", "restore"))
    await client.subscribe(f"node.*.{cluster_name}.*", cb=w.on)
    try:
        yield w, client
    finally:
        await client.close()


def marks(node: PgNode) -> list[str]:
    rows = node.query(sql.SQL("select label from marks order by label"), dbname="app")
    return [str(r[0]) for r in rows]


def in_recovery(node: PgNode) -> bool:
    return bool(node.query(sql.SQL("select pg_is_in_recovery()"))[0][0])


def answer(events: Watch, type_: str, restore_id: str) -> dict[str, Any] | None:
    return next((e for e in events.of(type_) if e["restore_id"] == restore_id), None)


async def test_a_node_on_another_host_is_restored_by_its_agent(
    cluster: PgCluster,
    workers: Workers,
    agents: dict[str, ServiceProcess],
    watch: tuple[Watch, NatsClient],
    cluster_name: str,
) -> None:
    events, client = watch
    primary, standby = cluster.nodes
    members = {primary.name: Role.PRIMARY, standby.name: Role.STANDBY}
    store = await TopologyStore.open(client.jetstream())
    await store.create(
        Topology(cluster=cluster_name, primary=primary.name, epoch=0, members=members)
    )
    primary.execute(sql.SQL("create table marks (label text)"), dbname="app")
    primary.execute(sql.SQL("insert into marks values ('before')"), dbname="app")
    # The agent's own check, behind the service's: a writable node is never swapped.
    order = NodeRestoreOrdered(
        cluster=cluster_name, node=primary.name, source=SRC, restore_id="r-direct",
        host="127.0.0.1", port=1,
    )  # fmt: skip
    body, headers = encode(order)
    await client.publish(order.subject(), body, headers=headers)
    refused = await events.wait("node.restore_failed", timeout=20, restore_id="r-direct")
    assert "refused" in refused["reason"]
    assert "writable" in refused["reason"]
    assert refused["correlation_id"] == str(order.event_id)
    assert primary.running()
    workers.start("rr-a")
    rid = await send(
        client,
        BackupRequested(cluster=cluster_name, source=SRC, kind=BackupKind.PHYSICAL, verify=False),
    )
    backup = (await events.wait("backup.completed", rid, timeout=120))["backup_id"]
    primary.execute(sql.SQL("insert into marks values ('after')"), dbname="app")
    await eventually(lambda: marks(standby) == ["after", "before"], timeout=30, what="replay")

    # A running standby: copied in by its agent, then left stopped on the restored data.
    operation = uuid.uuid4()
    into_standby = await send(
        client,
        RestoreRequested(
            cluster=cluster_name, source=SRC, backup_id=backup, target="node",
            node=standby.name, confirm=True, correlation_id=operation,
        ),
    )  # fmt: skip
    done = await events.wait("restore.completed", into_standby, timeout=180)
    events.assert_correlated(into_standby, operation, least=2)
    restored = answer(events, "node.restored", done["restore_id"])
    assert restored is not None
    assert restored["started"] is False
    assert primary.name in restored["detail"]
    assert done["data_dir"] == str(standby.data_dir)
    assert not standby.running()
    kept = Path(restored["kept"])
    assert (kept / "standby.signal").exists()  # the standby's own directory, whole
    assert (standby.data_dir / "backup_label").exists()  # the copy, not yet started
    assert (standby.data_dir / "standby.signal").exists()  # any start: in recovery
    assert not (standby.data_dir / "lifeboat.restoring").exists()
    assert (standby.data_dir / "lifeboat.restored-held").exists()
    # Started by hand, it comes up in recovery on the restored data, and its agent does not
    # ask to have it rejoined (which would rewind the restore away).
    standby.start()
    assert in_recovery(standby)
    assert marks(standby) == ["before"]
    await asyncio.sleep(STRAY_AFTER_SECONDS + 2)
    assert not [e for e in events.of("node.rejoin_requested") if e["node"] == standby.name]
    standby.stop()
    assert primary.running()
    assert marks(primary) == ["after", "before"]

    # The topology's primary, stopped by its operator: restored, and back read-only.
    primary.stop()
    into_primary = await send(
        client,
        RestoreRequested(
            cluster=cluster_name, source=SRC, backup_id=backup, target="node",
            node=primary.name, confirm=True,
        ),
    )  # fmt: skip
    done = await events.wait("restore.completed", into_primary, timeout=180)
    restored = answer(events, "node.restored", done["restore_id"])
    assert restored is not None
    assert restored["started"] is True
    assert primary.running()
    assert marks(primary) == ["before"]  # the backup's data, not what came after
    (ro,) = primary.query(sql.SQL("show default_transaction_read_only"), dbname="app")
    assert ro == ("on",)
    assert (Path(restored["kept"]) / "PG_VERSION").exists()
    # Nothing of either restore is left on the backup service's host.
    restores = Path(workers.env["LIFEBOAT_WORK_DIR"]) / cluster_name / "restores"
    assert not restores.exists() or not any(restores.iterdir())
