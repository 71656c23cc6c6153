"""Taking a backup: the tool's output streamed into S3, then the manifest that lists it.

`logical`: pg_dump custom format (uncompressed by pg_dump: our zstd is faster than its zlib)
of each database in a snapshot exported by a connection that counts every table's rows in
that same snapshot, so a test restore can compare exactly. `all_databases` adds the globals
(roles, tablespaces) from pg_dumpall. `physical`: pg_basebackup's tar stream, WAL included
(-X fetch) so the backup alone reaches consistency; its start and end LSNs and timeline come
from its own report. A source that stops being what it was (a standby promoted during its
base backup) fails the backup: the manifest is never written, so nothing is listed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import psycopg
from psycopg import sql

from lifeboat.backup.manifest import (
    Encryption,
    Manifest,
    Source,
    StoredObject,
    backup_prefix,
)
from lifeboat.backup.nodes import Connections
from lifeboat.backup.pipeline import Progress, Sent, Transfer, send_fd
from lifeboat.backup.plan import SourceChoice
from lifeboat.common.events import BackupKind, Role
from lifeboat.objstore.codec import key_id
from lifeboat.pg import tools

_TABLES_SQL = """
select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.relkind = 'r' and n.nspname not in ('pg_catalog', 'information_schema')
  and n.nspname not like 'pg_toast%' and n.nspname not like 'pg_temp%'
order by 1, 2
"""
_INFO_SQL = """
select current_setting('server_version'), current_setting('server_version_num')::int,
       (select system_identifier::text from pg_control_system()),
       (select setting::bigint from pg_settings where name = 'wal_segment_size'),
       pg_is_in_recovery(),
       pg_snapshot_xmax(pg_current_snapshot())::text
"""
_DATABASES_SQL = (
    "select datname from pg_database where datallowconn and not datistemplate order by 1"
)
_START = re.compile(r"write-ahead log start point: ([0-9A-F]+/[0-9A-F]+) on timeline (\d+)")
_END = re.compile(r"write-ahead log end point: ([0-9A-F]+/[0-9A-F]+)")


class BackupError(RuntimeError):
    pass


@dataclass(frozen=True)
class Job:
    cluster: str
    backup_id: str
    kind: BackupKind
    source: SourceChoice
    request_id: UUID | None = None
    database: str | None = None  # logical: one database (the cluster's if None)
    all_databases: bool = False


@dataclass(frozen=True)
class Context:
    conns: Connections
    transfer: Transfer
    bindir: Path
    progress: Progress | None = None
    count_rows: bool = True
    max_rate: str | None = None  # physical: pg_basebackup --max-rate


@dataclass(frozen=True)
class _Info:
    version: str
    version_num: int
    system_identifier: str
    wal_segment_size: int
    in_recovery: bool
    xmax: str


async def _info(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> _Info:
    row = await (await conn.execute(_INFO_SQL)).fetchone()
    assert row is not None
    return _Info(
        str(row[0]), int(str(row[1])), str(row[2]), int(str(row[3])), bool(row[4]), str(row[5])
    )


async def count_rows(conn: psycopg.AsyncConnection[tuple[object, ...]], db: str) -> dict[str, int]:
    # One core for the counts: with parallel workers they would take the cores the dump or
    # base backup running beside them needs (on 2 cores a physical backup took longer).
    await conn.execute("set max_parallel_workers_per_gather = 0")
    counts: dict[str, int] = {}
    for schema, table in await (await conn.execute(_TABLES_SQL)).fetchall():
        query = sql.SQL("select count(*) from {}.{}").format(
            sql.Identifier(str(schema)), sql.Identifier(str(table))
        )
        row = await (await conn.execute(query)).fetchone()
        counts[f"{db}/{schema}.{table}"] = int(str(row[0])) if row else 0
    return counts


def _tool(ctx: Context, name: str) -> str:
    return str(ctx.bindir / name)


_VERSIONS: dict[str, str] = {}


async def _version(ctx: Context, name: str) -> str:
    tool = _tool(ctx, name)
    if tool not in _VERSIONS:
        _VERSIONS[tool] = (await tools.run_async([tool, "--version"])).strip()
    return _VERSIONS[tool]


def _stored(name: str, sent: Sent, database: str | None = None) -> StoredObject:
    return StoredObject(
        name=name,
        key=sent.upload.key,
        raw_bytes=sent.raw_bytes,
        stored_bytes=sent.upload.size,
        sha256=sent.upload.sha256,
        database=database,
    )


class _Offset:
    """Progress over several objects, as one running total."""

    def __init__(self, inner: Progress | None) -> None:
        self.inner = inner
        self.raw = 0
        self.stored = 0

    def done(self, sent: Sent) -> None:
        self.raw += sent.raw_bytes
        self.stored += sent.upload.size

    def __call__(self) -> Progress | None:
        inner = self.inner
        if inner is None:
            return None

        def report(raw: int, stored: int) -> Awaitable[None]:
            return inner(self.raw + raw, self.stored + stored)

        return report


async def _connect(ctx: Context, node: str, db: str) -> psycopg.AsyncConnection[tuple[object, ...]]:
    spec = ctx.conns.spec.node(node)
    return await psycopg.AsyncConnection.connect(ctx.conns.dsn(spec, db).reveal(), autocommit=True)


async def _dump_database(
    ctx: Context, job: Job, db: str, offset: _Offset
) -> tuple[StoredObject, dict[str, int], _Info, str]:
    node = ctx.conns.spec.node(job.source.node)
    key = backup_prefix(job.cluster, job.backup_id) + f"{db}.dump{ctx.transfer.codec.suffix}"
    async with await _connect(ctx, job.source.node, db) as conn:
        await conn.execute("begin transaction isolation level repeatable read read only")
        info = await _info(conn)
        row = await (await conn.execute("select pg_export_snapshot()")).fetchone()
        assert row is not None
        snapshot = str(row[0])
        argv = [
            _tool(ctx, "pg_dump"),
            "--format=custom",
            "--compress=0",
            f"--snapshot={snapshot}",
            "--dbname",
            ctx.conns.tool_conninfo(node, dbname=db),
        ]
        env = ctx.conns.tool_env()
        async with tools.stream_fd(argv, env=env, timeout=24 * 3600) as (_, _, out):
            counting = asyncio.ensure_future(count_rows(conn, db)) if ctx.count_rows else None
            try:
                sent = await send_fd(out, ctx.transfer, key, progress=offset())
            finally:
                counts = await counting if counting is not None else {}
        await conn.execute("commit")
    offset.done(sent)
    version = await _version(ctx, "pg_dump")
    return _stored(f"{db}.dump", sent, db), counts, info, version


async def _globals(ctx: Context, job: Job, offset: _Offset) -> StoredObject:
    node = ctx.conns.spec.node(job.source.node)
    key = backup_prefix(job.cluster, job.backup_id) + f"globals.sql{ctx.transfer.codec.suffix}"
    argv = [
        _tool(ctx, "pg_dumpall"),
        "--globals-only",
        "--dbname",
        ctx.conns.tool_conninfo(node, dbname="postgres"),
    ]
    async with tools.stream_fd(argv, env=ctx.conns.tool_env(), timeout=3600) as (_, _, out):
        sent = await send_fd(out, ctx.transfer, key, progress=offset())
    offset.done(sent)
    return _stored("globals.sql", sent)


def _manifest(
    ctx: Context,
    job: Job,
    *,
    started: datetime,
    info: _Info,
    objects: list[StoredObject],
    counts: dict[str, int],
    exact: bool,
    tools_used: dict[str, str],
    databases: tuple[str, ...] = (),
    timeline: int | None = None,
    start_lsn: str | None = None,
    stop_lsn: str | None = None,
) -> Manifest:
    stopped = datetime.now(UTC)
    codec = ctx.transfer.codec
    return Manifest(
        backup_id=job.backup_id,
        cluster=job.cluster,
        kind=job.kind,
        request_id=job.request_id,
        source=Source(node=job.source.node, role=job.source.role, reason=job.source.reason),
        pg_version=info.version,
        pg_version_num=info.version_num,
        system_identifier=info.system_identifier,
        timeline=timeline,
        start_lsn=start_lsn,
        stop_lsn=stop_lsn,
        wal_segment_size=info.wal_segment_size,
        started_at=started,
        stopped_at=stopped,
        duration_seconds=round((stopped - started).total_seconds(), 3),
        raw_bytes=sum(o.raw_bytes for o in objects),
        stored_bytes=sum(o.stored_bytes for o in objects),
        compression=codec.compression.value,
        compression_level=codec.level,
        encryption=None if codec.key is None else Encryption(key_id=key_id(codec.key)),
        objects=tuple(objects),
        databases=databases,
        table_counts=counts,
        counts_exact=exact,
        tools=tools_used,
    )


async def take_logical(ctx: Context, job: Job) -> Manifest:
    started = datetime.now(UTC)
    offset = _Offset(ctx.progress)
    if job.all_databases:
        async with await _connect(ctx, job.source.node, ctx.conns.spec.database) as conn:
            rows = await (await conn.execute(_DATABASES_SQL)).fetchall()
        databases = tuple(str(r[0]) for r in rows)
    else:
        databases = (job.database or ctx.conns.spec.database,)
    objects: list[StoredObject] = []
    counts: dict[str, int] = {}
    info: _Info | None = None
    version = ""
    if job.all_databases:
        objects.append(await _globals(ctx, job, offset))
    for db in databases:
        stored, db_counts, info, version = await _dump_database(ctx, job, db, offset)
        objects.append(stored)
        counts.update(db_counts)
    assert info is not None
    return _manifest(
        ctx,
        job,
        started=started,
        info=info,
        objects=objects,
        counts=counts,
        exact=True,
        tools_used={"pg_dump": version},
        databases=databases,
    )


async def _counts_everywhere(ctx: Context, node: str) -> tuple[dict[str, int], str]:
    """Row counts of every database in one snapshot each, and the xmax before counting."""
    counts: dict[str, int] = {}
    async with await _connect(ctx, node, ctx.conns.spec.database) as conn:
        rows = await (await conn.execute(_DATABASES_SQL)).fetchall()
        xmax = (await _info(conn)).xmax
    for (db,) in rows:
        async with await _connect(ctx, node, str(db)) as conn:
            await conn.execute("begin transaction isolation level repeatable read read only")
            counts.update(await count_rows(conn, str(db)))
            await conn.execute("commit")
    return counts, xmax


async def take_physical(ctx: Context, job: Job) -> Manifest:
    started = datetime.now(UTC)
    node = ctx.conns.spec.node(job.source.node)
    async with await _connect(ctx, job.source.node, ctx.conns.spec.database) as conn:
        before = await _info(conn)
    if before.in_recovery != (job.source.role is Role.STANDBY):
        raise BackupError(f"{node.name} is no longer a {job.source.role.value}")
    key = backup_prefix(job.cluster, job.backup_id) + f"base.tar{ctx.transfer.codec.suffix}"
    argv = [
        _tool(ctx, "pg_basebackup"),
        "--dbname",
        ctx.conns.replication_conninfo(node),
        "--pgdata=-",
        "--format=tar",
        "--wal-method=fetch",
        "--checkpoint=fast",
        "--verbose",
        "--no-sync",
    ]
    if ctx.max_rate:
        argv.append(f"--max-rate={ctx.max_rate}")
    # The counts run beside the backup. They are the backup's own when no transaction got an
    # id from before its start to after the counts (xmax did not move).
    counting = (
        asyncio.ensure_future(_counts_everywhere(ctx, job.source.node)) if ctx.count_rows else None
    )
    try:
        env = ctx.conns.tool_env(replication=True)
        async with tools.stream_fd(argv, env=env, timeout=24 * 3600) as (_, stderr, out):
            sent = await send_fd(out, ctx.transfer, key, progress=ctx.progress)
        counts = (await counting)[0] if counting is not None else {}
    except BaseException:
        if counting is not None:
            counting.cancel()
        raise
    start = _START.search(stderr.text)
    end = _END.search(stderr.text)
    if start is None or end is None:
        raise BackupError(f"pg_basebackup did not report its WAL range: {stderr.text[-500:]}")
    async with await _connect(ctx, job.source.node, ctx.conns.spec.database) as conn:
        after = await _info(conn)
    if after.in_recovery != before.in_recovery:
        raise BackupError(f"{node.name} was promoted during its base backup: not listed")
    xmax = after.xmax
    version = await _version(ctx, "pg_basebackup")
    return _manifest(
        ctx,
        job,
        started=started,
        info=before,
        objects=[_stored("base.tar", sent)],
        counts=counts,
        # No transaction got an id between the start and the counts: the counts are the
        # backup's own.
        exact=bool(counts) and xmax == before.xmax,
        tools_used={"pg_basebackup": version},
        timeline=int(start[2]),
        start_lsn=start[1],
        stop_lsn=end[1],
    )


TAKERS: dict[BackupKind, Callable[[Context, Job], Awaitable[Manifest]]] = {
    BackupKind.LOGICAL: take_logical,
    BackupKind.PHYSICAL: take_physical,
    BackupKind.FULL: take_physical,  # then the executor adds the files half
}
