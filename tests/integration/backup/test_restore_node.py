"""A restore into an existing node, asked over NATS of the backup service as a process: refused
without confirmation and for the running primary (the node's data left as it was); with
confirmation into a stopped standby (or a running one, stopped only for the swap) the data
directory is replaced safely (the old one kept aside) and the node comes back with the
restored data. Every answer carries the request's
correlation id, as does the answer to a verification asked for before anything is listed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from nats.aio.client import Client as NatsClient
from psycopg import sql

from lifeboat.common.events import (
    BackupKind,
    BackupRequested,
    BackupVerifyRequested,
    RestoreRequested,
)
from lifeboat.devstack.postgres import PgCluster, PgNode
from lifeboat.devstack.procs import eventually
from tests.endpoints import S3Endpoint
from tests.integration.backup.conftest import small_cluster
from tests.integration.backup.harness import SRC, Watch, Workers, backup_env, send


@pytest.fixture(scope="module")
def cluster(workdir: Path) -> Iterator[PgCluster]:
    """A primary and two standbys: one restored into while it runs, one stopped first."""
    with small_cluster(workdir, nodes=3) as pg:
        yield pg


@pytest.fixture(scope="module")
def workers(
    cluster: PgCluster, nats_url: str, s3: S3Endpoint, workdir: Path, cluster_name: str
) -> Iterator[Workers]:
    w = Workers(backup_env(cluster, nats_url, s3, workdir, cluster_name), workdir)
    try:
        yield w
    finally:
        w.stop_all()


def marks(node: PgNode) -> list[str]:
    """The labels on `node`; none while it has not replayed the table's creation yet."""
    try:
        rows = node.query(sql.SQL("select label from marks order by label"), dbname="app")
    except psycopg.errors.UndefinedTable:
        return []
    return [str(r[0]) for r in rows]


def in_recovery(node: PgNode) -> bool:
    return bool(node.query(sql.SQL("select pg_is_in_recovery()"))[0][0])


def left_beside(node: PgNode) -> list[str]:
    """What a restore may have left in the node's home: kept or staged data directories."""
    return sorted(p.name for p in node.home.iterdir() if p.name.startswith(("data.", "restore-")))


async def test_restore_into_a_node_is_confirmed_spares_the_primary_and_swaps_a_stopped_standby(
    cluster: PgCluster, workers: Workers, watch: tuple[Watch, NatsClient], cluster_name: str
) -> None:
    events, client = watch
    primary, running, standby = cluster.nodes
    primary.execute(sql.SQL("create table marks (label text)"), dbname="app")
    primary.execute(sql.SQL("insert into marks values ('before')"), dbname="app")
    await eventually(
        lambda: marks(running) == marks(standby) == ["before"],
        timeout=30,
        what="the standbys to replay 'before'",
    )
    workers.start("rn-a")
    # Nothing listed yet: a verification asked for still gets its answer.
    operation = uuid.uuid4()
    vid = await send(
        client,
        BackupVerifyRequested(cluster=cluster_name, source=SRC, correlation_id=operation),
    )
    nothing = await events.wait("backup.verified", vid)
    assert not nothing["ok"]
    assert "nothing to verify" in nothing["detail"]
    events.assert_correlated(vid, operation)
    rid = await send(
        client,
        BackupRequested(cluster=cluster_name, source=SRC, kind=BackupKind.PHYSICAL, verify=False),
    )
    done = await events.wait("backup.completed", rid)
    assert done["source_role"] == "standby"
    events.assert_correlated(rid, least=2)  # started, completed (and any progress)
    primary.execute(sql.SQL("insert into marks values ('after')"), dbname="app")
    backup = done["backup_id"]

    # Without confirmation: refused, the operator's own operation id on the answer.
    operation = uuid.uuid4()
    unconfirmed = await send(
        client,
        RestoreRequested(
            cluster=cluster_name, source=SRC, backup_id=backup, target="node",
            node=standby.name, correlation_id=operation,
        ),
    )  # fmt: skip
    refused = await events.wait("restore.failed", unconfirmed)
    assert "confirm" in refused["reason"]
    events.assert_correlated(unconfirmed, operation)

    # The running primary: refused even confirmed, its data as it was.
    on_primary = await send(
        client,
        RestoreRequested(
            cluster=cluster_name, source=SRC, backup_id=backup, target="node",
            node=primary.name, confirm=True,
        ),
    )  # fmt: skip
    refused = await events.wait("restore.failed", on_primary)
    assert "running primary" in refused["reason"]
    events.assert_correlated(on_primary)
    assert not events.of("restore.started", on_primary)
    assert primary.running()
    assert not in_recovery(primary)
    assert marks(primary) == ["after", "before"]
    assert left_beside(primary) == []

    # A standby the operator stopped: restored beside it, swapped in, started.
    standby.stop()
    operation = uuid.uuid4()
    confirmed = await send(
        client,
        RestoreRequested(
            cluster=cluster_name, source=SRC, backup_id=backup, target="node",
            node=standby.name, confirm=True, correlation_id=operation,
        ),
    )  # fmt: skip
    restored = await events.wait("restore.completed", confirmed, timeout=120)
    events.assert_correlated(confirmed, operation, least=2)  # started, completed
    assert restored["data_dir"] == str(standby.data_dir)
    assert restored["port"] == standby.port
    assert standby.running()
    assert marks(standby) == ["before"]  # the backup's data, not what came after
    assert not in_recovery(standby)  # recovered to the backup's end, then opened
    # ... read-only: a primary of its own beside the cluster's takes no write until named
    (ro,) = standby.query(sql.SQL("show default_transaction_read_only"), dbname="app")
    assert ro == ("on",)
    kept = standby.data_dir.with_name(f"data.replaced-{restored['restore_id']}")
    assert (kept / "PG_VERSION").exists()
    assert (kept / "standby.signal").exists()  # the node's own old directory, whole
    assert left_beside(standby) == [kept.name]  # no staging directory left
    assert primary.running()
    assert marks(primary) == ["after", "before"]

    # A standby still running: restored beside it while it serves, stopped only to swap.
    assert marks(running) == ["after", "before"]
    live = await send(
        client,
        RestoreRequested(
            cluster=cluster_name, source=SRC, backup_id=backup, target="node",
            node=running.name, confirm=True,
        ),
    )  # fmt: skip
    swapped = await events.wait("restore.completed", live, timeout=120)
    events.assert_correlated(live, least=2)
    assert running.running()
    assert marks(running) == ["before"]
    kept = running.data_dir.with_name(f"data.replaced-{swapped['restore_id']}")
    assert (kept / "standby.signal").exists()
    assert left_beside(running) == [kept.name]
