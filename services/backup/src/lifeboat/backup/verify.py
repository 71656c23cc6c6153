"""Verification by restore: the backup restored into a scratch instance on this host, opened,
checked with pg_amcheck, and every table's rows counted against the counts taken when it was
made. The restore time measured is a real one: download, decode, recover, open."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from lifeboat.backup.catalogue import Listed
from lifeboat.backup.manifest import Manifest, Verification
from lifeboat.backup.plan import BASE_BACKUPS, RestorePlan
from lifeboat.backup.restore import RestoreContext, free_port, restore_logical, restore_physical
from lifeboat.pg import tools
from lifeboat.pg.scratch import Instance


async def _counts(instance: Instance, manifest: Manifest) -> tuple[int, list[str]]:
    problems: list[str] = []
    by_db: dict[str, list[tuple[str, str, int]]] = {}
    for name, expected in manifest.table_counts.items():
        db, _, qualified = name.partition("/")
        schema, _, table = qualified.partition(".")
        by_db.setdefault(db, []).append((schema, table, expected))
    checked = 0
    for db, tables in sorted(by_db.items()):
        async with await psycopg.AsyncConnection.connect(
            instance.conninfo(db), autocommit=True
        ) as conn:
            for schema, table, expected in tables:
                query = sql.SQL("select count(*) from {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(table)
                )
                try:
                    row = await (await conn.execute(query)).fetchone()
                except psycopg.Error as exc:
                    problems.append(f"{db}/{schema}.{table}: {exc}".strip())
                    continue
                checked += 1
                found = int(str(row[0])) if row else -1
                if found != expected and manifest.counts_exact:
                    problems.append(f"{db}/{schema}.{table}: {found} rows, {expected} expected")
    return checked, problems


async def verify(ctx: RestoreContext, manifest: Manifest, scratch_dir: Path) -> Verification:
    instance = Instance(
        scratch_dir / f"v-{uuid.uuid4().hex[:8]}",
        free_port(),
        ctx.user,
        ctx.bindir,
    )
    started = time.monotonic()
    if manifest.kind in BASE_BACKUPS:  # a `full` one's files are filesync's to check
        plan = RestorePlan(Listed(manifest, None).entry(), ())
        restored = await restore_physical(ctx, manifest, plan, instance)
    else:
        restored = await restore_logical(ctx, manifest, instance)
    restore_seconds = time.monotonic() - started
    try:
        checking = time.monotonic()
        problems: list[str] = []
        argv = [
            str(ctx.bindir / "pg_amcheck"),
            "--host",
            str(instance.socket_dir),
            "--port",
            str(instance.port),
            "--username",
            instance.superuser,
            "--all",
            "--install-missing",
            "--no-password",
        ]
        try:
            await tools.run_async(argv, user=ctx.user, timeout=24 * 3600)
        except tools.ToolError as exc:
            problems.append(f"pg_amcheck: {exc.output[:2000]}")
        checked, count_problems = await _counts(instance, manifest)
        problems += count_problems
        ok = not problems
        detail = (
            f"restored in {restore_seconds:.1f}s, pg_amcheck clean, {checked} table(s) counted"
            + ("" if manifest.counts_exact else " (counts informational: writes during backup)")
            if ok
            else "; ".join(problems)
        )
        return Verification(
            backup_id=manifest.backup_id,
            ok=ok,
            detail=detail,
            verified_at=datetime.now(UTC),
            restore_seconds=round(restored.seconds, 3),
            check_seconds=round(time.monotonic() - checking, 3),
            tables_checked=checked,
        )
    finally:
        await asyncio.to_thread(instance.remove)
