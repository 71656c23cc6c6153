"""WAL archiving to S3 and point-in-time restores: to a time between two known transactions;
through an S3 outage without losing a segment; across a failover (timeline switch), which the
archiver follows, re-creating its slot on the new primary.

This module has its own S3, since one test stops it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from lifeboat.backup.catalogue import Catalogue
from lifeboat.backup.manifest import Manifest, backup_id
from lifeboat.backup.nodes import observe
from lifeboat.backup.plan import RestorePlan, SourceChoice, choose_source, plan_restore
from lifeboat.backup.restore import free_port, restore_physical
from lifeboat.backup.take import Context, Job, take_physical
from lifeboat.backup.wal import Archiver
from lifeboat.common.breakers import Breakers
from lifeboat.common.events import (
    BackupKind,
    BackupRequested,
    ClusterEvent,
    Source,
    WalArchived,
    WalSourceChanged,
    WalState,
)
from lifeboat.common.lsn import lsn_to_int
from lifeboat.devstack.postgres import PgCluster
from lifeboat.devstack.servers import SeaweedS3
from lifeboat.pg.scratch import Instance
from tests.endpoints import S3Endpoint
from tests.integration.backup.conftest import (
    BUCKET,
    connections,
    restore_context,
    small_cluster,
    transfer,
)

SEG = 16 * 1024 * 1024


class Events:
    def __init__(self) -> None:
        self.seen: list[ClusterEvent] = []

    async def publish(self, event: ClusterEvent) -> None:
        self.seen.append(event)

    def of(self, kind: type[ClusterEvent]) -> list[ClusterEvent]:
        return [e for e in self.seen if isinstance(e, kind)]


@pytest.fixture(scope="module")
async def archiving(
    cluster: PgCluster, endpoint: S3Endpoint, cluster_name: str, workdir: Path
) -> AsyncIterator[tuple[Archiver, Events]]:
    async with archiver_of(cluster, endpoint, cluster_name, workdir) as running:
        yield running


@asynccontextmanager
async def archiver_of(
    cluster: PgCluster, endpoint: S3Endpoint, cluster_name: str, workdir: Path
) -> AsyncIterator[tuple[Archiver, Events]]:
    """The archiver of `cluster` running, with the events it published."""
    events = Events()
    archiver = Archiver(
        cluster=cluster_name,
        conns=connections(cluster, cluster_name),
        transfer=transfer(endpoint),
        spool=workdir / f"spool-{cluster_name}",
        bindir=cluster.bindir,
        slot="lifeboat_archiver",
        publish=events.publish,
        source=Source(service="backup", instance="test"),
        breakers=Breakers(failure_threshold=2, reset_timeout=1.0),
        status_interval=0.2,
    )
    task = asyncio.create_task(archiver.run())
    try:
        yield archiver, events
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def primary_of(pg: PgCluster) -> int:
    for i, node in enumerate(pg.nodes):
        if node.running() and not node.query(sql.SQL("select pg_is_in_recovery()"))[0][0]:
            return i
    raise AssertionError("no primary")


def write(pg: PgCluster, label: str, *, switch: bool = True) -> datetime:
    """Commit one row, close its segment (unless not `switch`), and return a time just after
    the commit."""
    node = pg.nodes[primary_of(pg)]
    node.execute(
        sql.SQL("create table if not exists marks (label text, at timestamptz)"), dbname="app"
    )
    node.execute(
        sql.SQL("insert into marks values ({}, now())").format(sql.Literal(label)), dbname="app"
    )
    time.sleep(0.3)
    at = datetime.now(UTC)
    time.sleep(0.3)
    if switch:
        node.execute(sql.SQL("select pg_switch_wal()"))
    return at


def current_segment(pg: PgCluster) -> tuple[int, int]:
    """(timeline, number) of the segment the primary writes now. Not pg_walfile_name(): right
    after a switch it names the segment before the boundary."""
    node = pg.nodes[primary_of(pg)]
    name, lsn = node.query(
        sql.SQL("select pg_walfile_name(pg_current_wal_lsn()), pg_current_wal_lsn()::text")
    )[0]
    return int(str(name)[:8], 16), lsn_to_int(str(lsn)) // SEG


async def archived_past(archiver: Archiver, pg: PgCluster, timeout: float = 30) -> None:
    """Until every segment before the current one is in S3."""
    tli, segno = current_segment(pg)
    deadline = time.monotonic() + timeout
    while (archiver.position.timeline, archiver.position.end) < (tli, segno * SEG):
        if time.monotonic() > deadline:
            logs = "\n".join(n.log_file.read_text()[-1500:] for n in pg.nodes)
            spool = sorted(p.name for p in archiver.spool.iterdir())
            raise AssertionError(
                f"not archived up to {tli}/{segno}: {archiver.status()}\n{spool}\n{logs}"
            )
        await asyncio.sleep(0.1)


async def base_backup(pg: PgCluster, s3: S3Endpoint, name: str) -> Manifest:
    conns = connections(pg, name)
    choice = choose_source(await observe(conns))
    assert isinstance(choice, SourceChoice)
    ctx = Context(conns, transfer(s3), pg.bindir)
    job = Job(
        name,
        backup_id(BackupKind.PHYSICAL, datetime.now(UTC), uuid.uuid4()),
        BackupKind.PHYSICAL,
        choice,
    )
    manifest = await take_physical(ctx, job)
    await Catalogue(ctx.transfer.client, BUCKET, name).write_manifest(manifest)
    return manifest


async def pitr(pg: PgCluster, s3: S3Endpoint, name: str, workdir: Path, at: datetime) -> list[str]:
    catalogue = Catalogue(transfer(s3).client, BUCKET, name)
    entries = tuple(item.entry() for item in await catalogue.listed())
    plan = plan_restore(entries, tuple(await catalogue.wal()), target_time=at)
    assert isinstance(plan, RestorePlan), plan
    manifest = await catalogue.manifest(plan.backup.backup_id)
    instance = Instance(
        workdir / f"pitr-{uuid.uuid4().hex[:6]}", free_port(), pg.os_user, pg.bindir
    )
    await restore_physical(restore_context(s3, pg), manifest, plan, instance)
    try:
        with psycopg.connect(instance.conninfo("app")) as conn:
            return [str(r[0]) for r in conn.execute("select label from marks order by at")]
    finally:
        instance.remove()


async def test_pitr_to_a_time_between_two_transactions_recovers_exactly_the_first(
    cluster: PgCluster, endpoint: S3Endpoint, cluster_name: str, workdir: Path,
    archiving: tuple[Archiver, Events],
) -> None:  # fmt: skip
    archiver, events = archiving
    write(cluster, "before-backup")
    await base_backup(cluster, endpoint, cluster_name)
    first = write(cluster, "first")
    write(cluster, "second")
    await archived_past(archiver, cluster)
    assert events.of(WalArchived)
    assert archiver.status().lag_bytes is not None
    assert await pitr(cluster, endpoint, cluster_name, workdir, first) == ["before-backup", "first"]


async def test_pitr_into_the_segment_being_written_uses_its_uploaded_part(
    cluster: PgCluster, endpoint: S3Endpoint, cluster_name: str, workdir: Path,
    archiving: tuple[Archiver, Events],
) -> None:  # fmt: skip
    """The target is in the segment the primary still writes: only its partial is in S3
    (padded on restore: recovery refuses a short segment, 'wrong size')."""
    archiver, _ = archiving
    at = write(cluster, "in-partial", switch=False)
    write(cluster, "after", switch=False)
    node = cluster.nodes[primary_of(cluster)]
    lsn = lsn_to_int(str(node.query(sql.SQL("select pg_current_wal_lsn()::text"))[0][0]))
    deadline = time.monotonic() + 20
    while archiver.position.end < lsn:
        assert time.monotonic() < deadline, archiver.status()
        await asyncio.sleep(0.1)
    assert str(archiver.position.segment).endswith(".partial")
    labels = await pitr(cluster, endpoint, cluster_name, workdir, at)
    assert labels[-1] == "in-partial"


async def test_s3_stopped_mid_archive_loses_no_segment(
    cluster: PgCluster, own_s3: SeaweedS3, endpoint: S3Endpoint, cluster_name: str,
    archiving: tuple[Archiver, Events],
) -> None:  # fmt: skip
    archiver, _ = archiving
    own_s3.stop()
    try:
        for i in range(3):
            write(cluster, f"outage-{i}")
        deadline = time.monotonic() + 20
        while archiver.state is not WalState.CATCHING_UP:
            assert time.monotonic() < deadline, archiver.status()
            await asyncio.sleep(0.1)
    finally:
        own_s3.start(buckets=(BUCKET,))
    await archived_past(archiver, cluster, timeout=60)
    segnos = sorted(
        w.segno for w in await Catalogue(transfer(endpoint).client, BUCKET, cluster_name).wal()
        if w.segno is not None
    )  # fmt: skip
    assert segnos == list(range(segnos[0], segnos[-1] + 1)), f"gap in {segnos}"


async def test_archiving_follows_a_failover_and_pitr_crosses_the_timeline(
    cluster: PgCluster, endpoint: S3Endpoint, cluster_name: str, workdir: Path,
    archiving: tuple[Archiver, Events],
) -> None:  # fmt: skip
    archiver, events = archiving
    write(cluster, "on-timeline-1")
    await archived_past(archiver, cluster)
    old, new = cluster.nodes[0], cluster.nodes[1]
    old.kill()
    new.execute(sql.SQL("select pg_promote(true, 30)"))
    archiver.primary_changed("failover.completed")
    after = write(cluster, "on-timeline-2")
    write(cluster, "later")
    await archived_past(archiver, cluster, timeout=60)
    assert archiver.timeline == 2
    moved = [e for e in events.of(WalSourceChanged) if isinstance(e, WalSourceChanged)]
    assert moved[-1].primary == new.name
    assert moved[-1].previous == old.name
    fresh = [e for e in events.of(BackupRequested) if isinstance(e, BackupRequested)]
    assert fresh
    assert "timeline changed to 2" in fresh[-1].reason
    wal = await Catalogue(transfer(endpoint).client, BUCKET, cluster_name).wal()
    assert "00000002.history" in {w.name for w in wal}
    labels = await pitr(cluster, endpoint, cluster_name, workdir, after)
    assert labels[-2:] == ["on-timeline-1", "on-timeline-2"]
    assert "later" not in labels


async def test_archiving_follows_a_switchover_and_keeps_the_old_primarys_last_wal(
    endpoint: S3Endpoint, workdir: Path
) -> None:
    """A switchover: the primary stops cleanly (its last WAL, the shutdown checkpoint, reaches
    the standby), the standby is promoted. The archive has every segment of timeline 1 up to
    the switch, then timeline 2's, with no gap."""
    name = f"sw{uuid.uuid4().hex[:8]}"
    with small_cluster(workdir) as pg:
        async with archiver_of(pg, endpoint, name, workdir) as (archiver, events):
            write(pg, "before")
            await archived_past(archiver, pg)
            old, new = pg.nodes
            old.stop("fast")  # a switchover's clean stop
            new.execute(sql.SQL("select pg_promote(true, 30)"))
            archiver.primary_changed("switchover.completed")
            write(pg, "after")
            await archived_past(archiver, pg, timeout=60)
            assert archiver.timeline == 2
            moved = [e for e in events.of(WalSourceChanged) if isinstance(e, WalSourceChanged)]
            assert (moved[-1].previous, moved[-1].primary) == (old.name, new.name)
            wal = await Catalogue(transfer(endpoint).client, BUCKET, name).wal()
            first = sorted(w.segno or 0 for w in wal if w.timeline == 1 and w.segno is not None)
            assert first == list(range(first[0], first[-1] + 1)), f"gap in timeline 1: {first}"
            assert "00000002.history" in {w.name for w in wal}
            assert any(w.timeline == 2 and w.segno is not None for w in wal)
