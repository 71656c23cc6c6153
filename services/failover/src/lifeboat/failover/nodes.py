"""SQL and process actions on one PostgreSQL node, each bounded in time and idempotent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr

from lifeboat.common.clusters import ClusterSpec, NodeSpec
from lifeboat.common.localpg import postmaster_pid, process_tree

_CLIENTS = """
select count(pg_terminate_backend(pid)) from pg_stat_activity
where backend_type = 'client backend' and pid <> pg_backend_pid()
"""


def slot_name(node: str) -> str:
    return node.lower().replace("-", "_")


def sync_standby_names(standbys: tuple[str, ...]) -> str:
    if not standbys:
        return ""
    quoted = ", ".join('"' + s.replace('"', '""') + '"' for s in standbys)
    return f"ANY 1 ({quoted})"


class NodeActions:
    def __init__(self, cluster: ClusterSpec, password: SecretStr | None, timeout: float) -> None:
        self.cluster = cluster
        self.password = password
        self.timeout = timeout

    @contextlib.asynccontextmanager
    async def _connect(
        self, node: NodeSpec
    ) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
        dsn = self.cluster.node_dsn(node, self.password, connect_timeout=self.timeout)
        async with asyncio.timeout(self.timeout * 2):
            conn = await psycopg.AsyncConnection.connect(dsn.reveal(), autocommit=True)
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await conn.close()

    async def fence(self, name: str) -> str:
        """Make the node refuse writes and end its client sessions; stop it if it is ours."""
        node = self.cluster.node(name)
        done = []
        try:
            async with asyncio.timeout(self.timeout * 3), self._connect(node) as conn:
                await conn.execute("alter system set default_transaction_read_only = on")
                await conn.execute("select pg_reload_conf()")
                await conn.execute(_CLIENTS)
                done.append("made read-only, client sessions ended")
        except (TimeoutError, psycopg.Error) as exc:
            done.append(f"not reachable over SQL ({type(exc).__name__})")
        if node.data_dir is not None and stop_local(node.data_dir):
            done.append("stopped (SIGKILL)")
        return "; ".join(done)

    async def promote(self, name: str) -> None:
        node = self.cluster.node(name)
        async with asyncio.timeout(self.timeout + 15), self._connect(node) as conn:
            cur = await conn.execute("select pg_is_in_recovery()")
            row = await cur.fetchone()
            if row is not None and row[0]:
                await conn.execute("select pg_promote(wait => true, wait_seconds => 10)")
            # A node promoted by Lifeboat takes writes even if it was fenced before.
            await conn.execute("alter system reset default_transaction_read_only")
            await conn.execute("select pg_reload_conf()")

    async def repoint(self, name: str, upstream: str) -> None:
        """Stream `name` from `upstream`: its conninfo keeps user and passfile, new host."""
        node, up = self.cluster.node(name), self.cluster.node(upstream)
        slot = slot_name(name)
        async with asyncio.timeout(self.timeout * 3):
            async with self._connect(up) as conn:
                await conn.execute(
                    "select pg_create_physical_replication_slot(%s) where not exists "
                    "(select 1 from pg_replication_slots where slot_name = %s)",
                    (slot, slot),
                )
            async with self._connect(node) as conn:
                cur = await conn.execute("select current_setting('primary_conninfo')")
                row = await cur.fetchone()
                current = conninfo_to_dict(str(row[0]) if row and row[0] else "")
                current.update(host=up.host, port=str(up.port), application_name=name)
                conninfo = make_conninfo("", **current)
                await conn.execute(
                    sql.SQL("alter system set primary_conninfo = {}").format(sql.Literal(conninfo))
                )
                await conn.execute(
                    sql.SQL("alter system set primary_slot_name = {}").format(sql.Literal(slot))
                )
                await conn.execute("select pg_reload_conf()")

    async def set_synchronous(self, name: str, standbys: tuple[str, ...]) -> None:
        node = self.cluster.node(name)
        value = sync_standby_names(standbys)
        async with asyncio.timeout(self.timeout * 3), self._connect(node) as conn:
            await conn.execute(
                sql.SQL("alter system set synchronous_standby_names = {}").format(
                    sql.Literal(value)
                )
            )
            await conn.execute("select pg_reload_conf()")


def stop_local(data_dir: Path) -> bool:
    """SIGKILL the postmaster and its backends: works on a frozen node too."""
    pid = postmaster_pid(data_dir)
    if pid is None:
        return False
    for p in process_tree(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
    return True
