"""Retention against real S3: exactly the backups the policy names go, with their objects, and
the WAL a retained base backup needs stays; objects without a manifest are never listed and
are removed once older than the grace period."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from lifeboat.backup.catalogue import Catalogue
from lifeboat.backup.decide import decide_retention
from lifeboat.backup.executor import Executor
from lifeboat.backup.manifest import Manifest, Source, StoredObject, backup_prefix, wal_prefix
from lifeboat.backup.nodes import Connections
from lifeboat.backup.plan import RetentionPolicy
from lifeboat.backup.walnames import segment_name
from lifeboat.common.breakers import Breakers
from lifeboat.common.clusters import ClusterSpec, NodeSpec
from lifeboat.common.events import BackupKind, ClusterEvent, Role
from lifeboat.common.events import Source as EventSource
from lifeboat.pg.osuser import OsUser
from tests.endpoints import S3Endpoint
from tests.integration.backup.conftest import BUCKET, transfer

SEG = 16 * 1024 * 1024
NOW = datetime.now(UTC)


def manifest(cluster: str, i: int, kind: BackupKind, days: float, segno: int) -> Manifest:
    bid = f"b{i:02d}-{kind.value}"
    return Manifest(
        backup_id=bid,
        cluster=cluster,
        kind=kind,
        source=Source(node="n1", role=Role.PRIMARY, reason="test"),
        pg_version="15",
        pg_version_num=150000,
        timeline=1,
        start_lsn=f"0/{segno * SEG:X}",
        stop_lsn=f"0/{segno * SEG + 100:X}",
        started_at=NOW - timedelta(days=days),
        stopped_at=NOW - timedelta(days=days),
        duration_seconds=1,
        raw_bytes=1,
        stored_bytes=1,
        compression="zstd",
        compression_level=3,
        objects=(
            StoredObject(
                name="base.tar", key=backup_prefix(cluster, bid) + "base.tar.zst",
                raw_bytes=1, stored_bytes=1, sha256="0" * 64,
            ),
        ),
    )  # fmt: skip


async def test_retention_removes_what_the_policy_says_and_keeps_needed_wal(
    s3: S3Endpoint, cluster_name: str, workdir: Path
) -> None:
    name = f"{cluster_name}r"
    t = transfer(s3)
    catalogue = Catalogue(t.client, BUCKET, name)
    physical = [manifest(name, i, BackupKind.PHYSICAL, 2 + i * 2, 40 - i * 5) for i in range(6)]
    logical = [manifest(name, 10 + i, BackupKind.LOGICAL, 9 + i, 0) for i in range(4)]
    for m in physical + logical:
        t.client.put_object(Bucket=BUCKET, Key=m.objects[0].key, Body=b"x")
        await catalogue.write_manifest(m)
    for segno in range(10, 45):
        key = wal_prefix(name) + segment_name(1, segno, SEG) + ".zst"
        t.client.put_object(Bucket=BUCKET, Key=key, Body=b"w")
    orphan = backup_prefix(name, "never-finished") + "base.tar.zst"
    t.client.put_object(Bucket=BUCKET, Key=orphan, Body=b"half")

    listed = await catalogue.listed()
    assert "never-finished" not in {i.manifest.backup_id for i in listed}
    entries = tuple(i.entry() for i in listed)
    # An orphan younger than the grace period stays; with no grace it goes.
    assert await catalogue.orphans(timedelta(hours=1)) == []
    orphans = tuple(await catalogue.orphans(timedelta(0)))
    assert orphans == (orphan,)
    decision = decide_retention(
        entries, tuple(await catalogue.wal()), orphans, RetentionPolicy(), NOW
    )
    published: list[ClusterEvent] = []

    async def publish(event: ClusterEvent) -> None:
        published.append(event)

    spec = ClusterSpec(name=name, nodes=(NodeSpec(name="n1", host="127.0.0.1"),))
    executor = Executor(
        name, Connections(spec, None, None), t, Path("/nonexistent"), OsUser.current(),
        workdir, publish, EventSource(service="backup", instance="t"), Breakers(),
    )  # fmt: skip
    await executor.run(decision)

    left = {i.manifest.backup_id for i in await catalogue.listed()}
    # Physical at 2, 4, 6 days are young and also the newest 3; 8, 10, 12 days go.
    # Logical at 9..12 days: all old, the newest 3 stay.
    assert left == {"b00-physical", "b01-physical", "b02-physical", "b10-logical",
                    "b11-logical", "b12-logical"}  # fmt: skip
    assert {e.backup_id for e in published if e.type == "backup.expired"} == {  # type: ignore[attr-defined]
        "b03-physical", "b04-physical", "b05-physical", "b13-logical"
    }  # fmt: skip
    gone = await catalogue.keys(backup_prefix(name, "b03-physical"))
    assert gone == []
    kept_wal = sorted(w.segno for w in await catalogue.wal() if w.segno is not None)
    assert kept_wal == list(range(30, 45))  # from the oldest retained base backup's start
    assert await catalogue.keys(backup_prefix(name, "never-finished")) == []
