"""S3 stopped in the middle of a base backup, the backup service running as a process with WAL
archiving on: the take is retried with backoff, the S3 breaker opens, `backup.failed` says why
(with the request's correlation id) and nothing is listed; WAL written during the outage
waits in the spool, which stays bounded (receiving pauses, the slot keeps the rest on the
primary). S3 back: the breaker closes, the next backup request succeeds and the archive
catches up without a gap.

This module has its own S3, since it stops it."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from psycopg import sql

from lifeboat.backup.catalogue import Catalogue
from lifeboat.backup.manifest import backup_prefix
from lifeboat.common.events import BackupKind, BackupRequested
from lifeboat.common.lsn import lsn_to_int
from lifeboat.devstack.launch import ServiceProcess
from lifeboat.devstack.postgres import PgCluster
from lifeboat.devstack.procs import eventually
from lifeboat.devstack.servers import SeaweedS3
from tests.endpoints import S3Endpoint
from tests.integration.backup.conftest import BUCKET, transfer
from tests.integration.backup.harness import SRC, Watch, Workers, backup_env, send, watching

SEG = 16 * 1024 * 1024
SPOOL_MAX_MB = 48
# pg_receivewal stopped at the spool's bound while it pads a new segment leaves a .partial of
# neither 0 nor 16 MB and would refuse to restart on it: the archiver pads it out first.
WEDGED = "bytes, should be 0 or"


@pytest.fixture(scope="module")
def workers(
    cluster: PgCluster, nats_url: str, endpoint: S3Endpoint, workdir: Path, cluster_name: str
) -> Iterator[Workers]:
    env = backup_env(
        cluster, nats_url, endpoint, workdir, cluster_name,
        LIFEBOAT_WAL_ARCHIVE="true",
        LIFEBOAT_WAL_SPOOL_MAX_MB=str(SPOOL_MAX_MB),
        LIFEBOAT_WAL_STATUS_INTERVAL_SECONDS="0.5",
        LIFEBOAT_PHYSICAL_MAX_RATE="4M",
        LIFEBOAT_BREAKER_FAILURE_THRESHOLD="3",
        LIFEBOAT_BREAKER_RESET_SECONDS="3",
    )  # fmt: skip
    w = Workers(env, workdir)
    try:
        yield w
    finally:
        w.stop_all()


@pytest.fixture
async def watch(nats_url: str, cluster_name: str) -> AsyncIterator[tuple[Watch, NatsClient]]:
    w, client = await watching(nats_url, cluster_name, ("backup", "wal"))
    try:
        yield w, client
    finally:
        await client.close()


def breaker(proc: ServiceProcess, name: str = "s3") -> str | None:
    try:
        with urllib.request.urlopen(f"{proc.url}/health/circuit-breakers", timeout=2) as resp:
            report = json.loads(resp.read())
    except OSError:
        return None
    return next((b["state"] for b in report["breakers"] if b["name"] == name), None)


def new_segment(pg: PgCluster) -> None:
    """Commit a row and close the segment it is in: one more 16 MB segment to archive."""
    pg.primary.execute(sql.SQL("insert into marks values (now())"), dbname="app")
    pg.primary.execute(sql.SQL("select pg_switch_wal()"))


def current_segno(pg: PgCluster) -> int:
    lsn = pg.primary.query(sql.SQL("select pg_current_wal_lsn()::text"))[0][0]
    return lsn_to_int(str(lsn)) // SEG


async def archived_segnos(endpoint: S3Endpoint, cluster: str) -> list[int]:
    wal = await Catalogue(transfer(endpoint).client, BUCKET, cluster).wal()
    return sorted({w.segno for w in wal if w.segno is not None and ".partial" not in w.key})


async def test_s3_down_mid_backup_fails_it_cleanly_and_wal_waits_bounded_then_catches_up(
    cluster: PgCluster, own_s3: SeaweedS3, endpoint: S3Endpoint, workers: Workers,
    watch: tuple[Watch, NatsClient], cluster_name: str,
) -> None:  # fmt: skip
    events, client = watch
    cluster.primary.execute(sql.SQL("create table marks (at timestamptz)"), dbname="app")
    proc = workers.start("s3-a")
    await asyncio.to_thread(new_segment, cluster)
    await events.wait("wal.archived", timeout=60)
    catalogue = Catalogue(transfer(endpoint).client, BUCKET, cluster_name)

    rid = await send(
        client,
        BackupRequested(cluster=cluster_name, source=SRC, kind=BackupKind.PHYSICAL, verify=False),
    )
    started = await events.wait("backup.started", rid)
    await events.wait("backup.progress", rid)
    first_status = len(events.of("wal.status"))
    outage_from = await asyncio.to_thread(current_segno, cluster)
    own_s3.stop()
    try:
        # WAL keeps coming during the outage: 8 segments, twice the spool's bound.
        for _ in range(8):
            await asyncio.to_thread(new_segment, cluster)
            await asyncio.sleep(0.5)
        await eventually(
            lambda: breaker(proc) == "open", timeout=60, what="the S3 breaker to open",
            detail=proc.output,
        )  # fmt: skip
        failed = await events.wait("backup.failed", rid, timeout=120, detail=proc.output)
        statuses = events.of("wal.status")[first_status:]
    finally:
        own_s3.start(buckets=(BUCKET,))
    assert failed["backup_id"] == started["backup_id"]
    assert "S3" in failed["reason"], failed["reason"]
    assert any(w in failed["reason"] for w in ("circuit", "breaker", "times in a row"))
    assert not events.of("backup.completed", rid)
    events.assert_correlated(rid, least=3)  # started, progress, failed
    # The archiver retried with backoff all along (and each S3 call beneath it, too).
    log = proc.output()
    assert log.count("WAL upload waits for S3") >= 3, log[-3000:]
    assert await catalogue.listed() == []
    keys = [
        k for k, _, _ in await catalogue.keys(backup_prefix(cluster_name, started["backup_id"]))
    ]
    assert keys == [], keys  # no object, no manifest: nothing half-listed

    # The spool stayed bounded: receiving paused at the bound (the slot keeps the rest).
    assert {"catching_up", "spool_full"} & {s["state"] for s in statuses}, statuses[-3:]
    assert any(s["state"] == "spool_full" for s in statuses), [s["state"] for s in statuses]
    most = max(s["spool_bytes"] for s in statuses)
    assert most <= SPOOL_MAX_MB * 1024 * 1024 + 3 * SEG, most

    # S3 back: the breaker closes (a WAL upload is its trial), the next request succeeds.
    await eventually(
        lambda: breaker(proc) == "closed", timeout=60, what="the S3 breaker to close",
        detail=proc.output,
    )  # fmt: skip
    # Every segment written during the outage reached S3, none missing (checked before the
    # next backup, whose retention prunes the WAL no retained backup needs).
    last = await asyncio.to_thread(current_segno, cluster) - 1

    async def caught_up() -> list[int] | None:
        assert WEDGED not in proc.output(), "pg_receivewal could not restart on a .partial"
        segnos = await archived_segnos(endpoint, cluster_name)
        return segnos if segnos and segnos[-1] >= last else None

    def archive_state() -> str:
        status = (events.of("wal.status") or [{}])[-1]
        return f"up to segment {last}: {status}\n{proc.output()[-4000:]}"

    segnos = await eventually(
        caught_up, timeout=60, what="the archive to catch up", interval=0.5, detail=archive_state
    )
    assert segnos[0] <= outage_from, (outage_from, segnos)
    assert segnos == list(range(segnos[0], segnos[-1] + 1)), f"gap in {segnos}"

    # A checkpoint, so that the standby's next backup starts after the outage's WAL.
    await asyncio.to_thread(cluster.primary.execute, sql.SQL("checkpoint"))
    again = await send(
        client,
        BackupRequested(cluster=cluster_name, source=SRC, kind=BackupKind.PHYSICAL, verify=False),
    )
    done = await events.wait("backup.completed", again, timeout=120, detail=proc.output)
    events.assert_correlated(again, least=2)
    assert [i.manifest.backup_id for i in await catalogue.listed()] == [done["backup_id"]]
