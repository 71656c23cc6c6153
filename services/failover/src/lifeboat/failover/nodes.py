"""SQL and process actions on one PostgreSQL node, each bounded in time and idempotent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr

from lifeboat.common.clusters import ClusterSpec, NodeSpec, replication_slot
from lifeboat.common.localpg import OsUser, find_bindir, postmaster_pid, run, signal_postgres
from lifeboat.failover.sync_names import format_sync_names

_CLIENTS = """
select count(pg_terminate_backend(pid)) from pg_stat_activity
where backend_type = 'client backend' and pid <> pg_backend_pid()
"""


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
        if node.data_dir is not None and signal_postgres(node.data_dir, signal.SIGKILL):
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
        slot = replication_slot(name)
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

    async def handover(self, primary: str, target: str, wait_seconds: float = 10.0) -> str:
        """The primary stops taking writes; the target replays everything it wrote.

        A node managed here is shut down cleanly, which streams its shutdown checkpoint to
        the standbys first: the new timeline then forks after it, and the old primary can
        follow the new one without a rewind. Elsewhere it is left running read-only.
        """
        old = self.cluster.node(primary)
        async with asyncio.timeout(self.timeout * 3), self._connect(old) as conn:
            await conn.execute("alter system set default_transaction_read_only = on")
            await conn.execute("select pg_reload_conf()")
            await conn.execute(_CLIENTS)
            row = await (await conn.execute("select pg_current_wal_lsn()::text")).fetchone()
        assert row is not None
        final, strictly_after = str(row[0]), False
        if old.data_dir is not None:
            final = await asyncio.to_thread(stop_cleanly, old.data_dir)
            strictly_after = True  # past the shutdown checkpoint record, not just its start
        check = "select pg_last_wal_replay_lsn() {} %s::pg_lsn".format(
            ">" if strictly_after else ">="
        )
        async with asyncio.timeout(wait_seconds), self._connect(self.cluster.node(target)) as conn:
            while True:
                caught_up = await (await conn.execute(check, (final,))).fetchone()
                if caught_up is not None and caught_up[0]:
                    return f"{target} replayed {primary} up to {final}"
                await asyncio.sleep(0.02)

    async def replication_conninfo(self, exclude: str) -> str:
        """A standby's primary_conninfo (replication user, passfile) to model a new one on."""
        for node in self.cluster.nodes:
            if node.name == exclude:
                continue
            with contextlib.suppress(TimeoutError, psycopg.Error):
                async with asyncio.timeout(self.timeout * 2), self._connect(node) as conn:
                    cur = await conn.execute("select current_setting('primary_conninfo')")
                    row = await cur.fetchone()
                    if row and row[0]:
                        return str(row[0])
        raise RuntimeError("no node has a primary_conninfo to model the rejoining standby on")

    async def rejoin(self, name: str, upstream: str) -> tuple[str, float]:
        node, up = self.cluster.node(name), self.cluster.node(upstream)
        if node.data_dir is None:
            raise RuntimeError(f"{name} is not managed on this host (no data_dir): rejoin it there")
        template = await self.replication_conninfo(exclude=name)
        slot = replication_slot(name)
        async with asyncio.timeout(self.timeout * 3), self._connect(up) as conn:
            await conn.execute(
                "select pg_create_physical_replication_slot(%s) where not exists "
                "(select 1 from pg_replication_slots where slot_name = %s)",
                (slot, slot),
            )
        started = time.monotonic()
        params = conninfo_to_dict(template)
        params.update(host=up.host, port=str(up.port), application_name=name)
        method = await asyncio.to_thread(
            rejoin_local, node, up, self.cluster, self.password, make_conninfo("", **params), slot
        )
        return method, time.monotonic() - started

    async def set_synchronous(self, name: str, standbys: tuple[str, ...]) -> None:
        node = self.cluster.node(name)
        value = format_sync_names(standbys)
        async with asyncio.timeout(self.timeout * 3), self._connect(node) as conn:
            await conn.execute(
                sql.SQL("alter system set synchronous_standby_names = {}").format(
                    sql.Literal(value)
                )
            )
            await conn.execute("select pg_reload_conf()")


_OWN_CONFIG = ("postgresql.conf", "pg_hba.conf", "pg_ident.conf")
_MANAGED = (
    "primary_conninfo",
    "primary_slot_name",
    "synchronous_standby_names",
    "default_transaction_read_only",
)


@dataclass(frozen=True)
class _Local:
    data: Path
    user: OsUser
    bindir: Path

    def pg(
        self, tool: str, *args: str, env: dict[str, str] | None = None, timeout: float = 90
    ) -> str:
        return run([str(self.bindir / tool), *args], user=self.user, env=env, timeout=timeout)


def rejoin_local(
    node: NodeSpec,
    upstream: NodeSpec,
    cluster: ClusterSpec,
    password: SecretStr | None,
    conninfo: str,
    slot: str,
) -> str:
    """Stop, rewind, configure as a standby and start a local node; when rewinding fails, or
    the rewound node will not start, clone it afresh with pg_basebackup instead."""
    assert node.data_dir is not None
    local = _Local(
        node.data_dir, OsUser.for_postgres(os.environ.get("LIFEBOAT_PG_OS_USER")), find_bindir()
    )
    data = local.data
    if postmaster_pid(data) is not None:
        try:
            local.pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            signal_postgres(data, signal.SIGKILL)
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    rewind_env = dict(env)
    if password is not None:
        rewind_env["PGPASSWORD"] = password.get_secret_value()
    source = make_conninfo(
        "",
        host=upstream.host,
        port=upstream.port,
        user=cluster.user,
        dbname="postgres",
        connect_timeout=5,
    )
    # Both tools bring the source's configuration files along; the node keeps its own
    # (port, sockets, access rules).
    own_config = {n: (data / n).read_bytes() for n in _OWN_CONFIG if (data / n).exists()}
    try:
        local.pg(
            "pg_rewind",
            f"--target-pgdata={data}",
            f"--source-server={source}",
            env=rewind_env,
            timeout=600,
        )
        _configure_standby(local, own_config, conninfo, slot)
        _start(local)
        # A rewind can "succeed" yet leave WAL past the fork (the end-of-recovery checkpoint
        # of a crashed primary): the node starts but never streams. Only streaming counts.
        if _streams(node, cluster, password):
            return "pg_rewind"
    except (RuntimeError, subprocess.TimeoutExpired):
        pass
    _kill_and_wait(data)
    for child in data.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    local.pg(
        "pg_basebackup",
        "-D",
        str(data),
        "-d",
        conninfo,
        "-X",
        "stream",
        "-c",
        "fast",
        env=env,
        timeout=3600,
    )
    _configure_standby(local, own_config, conninfo, slot)
    _start(local)
    return "pg_basebackup"


def _configure_standby(
    local: _Local, own_config: dict[str, bytes], conninfo: str, slot: str
) -> None:
    data = local.data
    for name, content in own_config.items():
        (data / name).write_bytes(content)
    auto = data / "postgresql.auto.conf"
    kept = [
        line
        for line in (auto.read_text().splitlines() if auto.exists() else [])
        if line.split("=", 1)[0].strip() not in _MANAGED
    ]
    quoted = conninfo.replace("'", "''")
    kept += [f"primary_conninfo = '{quoted}'", f"primary_slot_name = '{slot}'"]
    auto.write_text("\n".join(kept) + "\n")
    (data / "standby.signal").touch()
    local.user.own(auto, data / "standby.signal", *(data / name for name in own_config))


def _kill_and_wait(data: Path, wait_seconds: float = 10) -> None:
    """SIGKILL the node and wait until its postmaster is gone: its lock files must be stale
    before a new one starts."""
    pid = postmaster_pid(data)
    signal_postgres(data, signal.SIGKILL)
    deadline = time.monotonic() + wait_seconds
    while pid is not None and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def _streams(
    node: NodeSpec, cluster: ClusterSpec, password: SecretStr | None, wait_seconds: float = 15
) -> bool:
    dsn = cluster.node_dsn(node, password, connect_timeout=2).reveal()
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.Error):
            with psycopg.connect(dsn, autocommit=True) as conn:
                row = conn.execute("select status from pg_stat_wal_receiver").fetchone()
            if row is not None and row[0] == "streaming":
                return True
        time.sleep(0.3)
    return False


def _start(local: _Local) -> None:
    log_file = local.data.parent / "postgres.log"
    local.pg("pg_ctl", "-D", str(local.data), "-l", str(log_file), "-w", "-t", "60", "start")


def stop_cleanly(data_dir: Path) -> str:
    """Shut a local node down (fast mode) and return its last checkpoint's location."""
    user = OsUser.for_postgres(os.environ.get("LIFEBOAT_PG_OS_USER"))
    bindir = find_bindir()
    run(
        [str(bindir / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "-t", "30", "stop"],
        user=user,
        timeout=40,
    )
    control = run([str(bindir / "pg_controldata"), str(data_dir)], user=user, timeout=30)
    for line in control.splitlines():
        if line.startswith("Latest checkpoint location:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError("pg_controldata shows no latest checkpoint location")
