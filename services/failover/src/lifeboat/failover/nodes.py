"""Actions on one PostgreSQL node over SQL, each bounded in time and idempotent.

Nodes whose data directory this host manages (`data_dir` in the cluster file) are also
stopped, killed and rejoined locally, through `local.py`; the others by their node agent,
asked over NATS (`agents.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr

from lifeboat.common.clusters import ClusterSpec, NodeSpec
from lifeboat.common.events import NodeRejoinFailed
from lifeboat.common.lsn import int_to_lsn, lsn_to_int
from lifeboat.failover.agents import Agents, LeaseSeen
from lifeboat.failover.local import in_recovery_at_next_start, local_data_dir, stop_cleanly
from lifeboat.failover.sync_names import format_sync_names
from lifeboat.pg.datadir import DataDir
from lifeboat.pg.rejoin import rejoin_node, start_node
from lifeboat.pg.replication import replication_slot, standby_conninfo

log = logging.getLogger(__name__)

_CLIENTS = """
select count(pg_terminate_backend(pid)) from pg_stat_activity
where backend_type = 'client backend' and pid <> pg_backend_pid()
"""
# A synchronous standby name no node has: a fenced primary's commits wait for it forever.
FENCED_SYNC_NAMES = "lifeboat_fenced"
_FENCE_STATE = """
select current_setting('synchronous_standby_names'),
       current_setting('default_transaction_read_only'),
       current_setting('synchronous_commit'),
       (select count(*)::int from pg_stat_activity
        where backend_type = 'client backend' and pid <> pg_backend_pid()
          and backend_start <= pg_conf_load_time())
"""


class FenceUnconfirmedError(RuntimeError):
    """The node could not be confirmed unable to acknowledge a commit: promote no one.

    `agent_quiet`: when the node's agent holds a lease, how long that lease must go
    unrenewed before the agent has stopped its node by its own bound (its bound, as the
    lease says, and the margin); None when no agent is known to guard the node."""

    def __init__(self, message: str, agent_quiet: float | None = None) -> None:
        super().__init__(message)
        self.agent_quiet = agent_quiet


class CandidateBehindError(RuntimeError):
    """The candidate lacks WAL another standby (or the fenced primary) has: promoting it
    could lose an acknowledged commit."""


# The WAL a node has, read on the node: as a standby the further of received and replayed
# (a restarted standby's received position is NULL or rounded down to a segment start); as
# a primary (a fenced one still answering) what it flushed.
_POSITION = """
select case when pg_is_in_recovery()
  then greatest(coalesce(pg_last_wal_receive_lsn(), '0/0'),
                coalesce(pg_last_wal_replay_lsn(), '0/0'))
  else pg_current_wal_flush_lsn() end::text
"""
# How long a candidate may take to receive what a peer or the fenced primary has.
CATCH_UP_SECONDS = 5.0


class NodeActions:
    def __init__(
        self,
        cluster: ClusterSpec,
        password: SecretStr | None,
        timeout: float,
        *,
        os_user: str | None = None,
        bindir: Path | None = None,
        agents: Agents | None = None,
    ) -> None:
        self.cluster = cluster
        self.password = password
        self.timeout = timeout
        self.os_user = os_user
        self.bindir = bindir
        self.agents = agents

    def local(self, node: NodeSpec) -> DataDir | None:
        """The node's data directory when this host manages it."""
        if node.data_dir is None:
            return None
        return local_data_dir(node.data_dir, self.os_user, self.bindir)

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

    async def fence(self, name: str, *, epoch: int, reason: str, keep_running: bool = False) -> str:
        """Make the node unable to acknowledge a commit, and confirm it; or raise.

        Over SQL: read-only by default, commits made to wait for a synchronous standby that
        does not exist (so even a session that turns read-only off cannot have a commit
        acknowledged), client sessions ended, all read back. A node whose data directory is
        ours is also killed, which works on a frozen node too; with `keep_running` only when
        the SQL fence could not be confirmed (see commands.Fence). Another host's node whose
        SQL fence could not be confirmed is stopped by its agent, asked under `epoch`.
        Confirmed means stopped, or every SQL step read back; anything less raises
        `FenceUnconfirmedError`, and the caller must not promote anyone.
        """
        node = self.cluster.node(name)
        done: list[str] = []
        confirmed = False
        try:
            async with asyncio.timeout(self.timeout * 3), self._connect(node) as conn:
                await conn.execute("alter system set default_transaction_read_only = on")
                await conn.execute(
                    sql.SQL("alter system set synchronous_standby_names = {}").format(
                        sql.Literal(FENCED_SYNC_NAMES)
                    )
                )
                await conn.execute("alter system set synchronous_commit = on")
                await conn.execute("select pg_reload_conf()")
                await conn.execute(_CLIENTS)
                confirmed = await self._fenced(conn)
                done.append(
                    "made read-only, commits wait for a standby that does not exist, "
                    "client sessions ended"
                    if confirmed
                    else "fenced over SQL but could not read the fence back"
                )
        except (TimeoutError, psycopg.Error) as exc:
            done.append(f"not reachable over SQL ({type(exc).__name__})")
        local = self.local(node)
        if local is not None and not (keep_running and confirmed):
            if local.running():
                await asyncio.to_thread(local.kill)
            if local.running():
                done.append("still running after SIGKILL")
            else:
                done.append("stopped (SIGKILL)" if done else "not running")
                confirmed = True
        quiet = None
        if local is None and not confirmed and self.agents is not None:
            confirmed, detail, seen = await self._stopped_by_agent(name, epoch, reason)
            done.append(detail)
            quiet = None if seen is None else self.agents.quiet_for(seen)
        if not confirmed:
            raise FenceUnconfirmedError(f"{name}: {'; '.join(done)}", quiet)
        return "; ".join(done)

    async def _stopped_by_agent(
        self, name: str, epoch: int, reason: str
    ) -> tuple[bool, str, LeaseSeen | None]:
        """Another host's node stopped by its agent: on request, or, when the agent is cut
        off from NATS too, by its own bound — its lease not renewed for the bound plus the
        margin, which is known as soon as that has passed, not at the end of the wait for an
        answer that will not come. Also the agent's lease as first read (None: none)."""
        assert self.agents is not None
        seen, unreadable = await self._agent_lease(name)
        asked = asyncio.create_task(self.agents.stop(name, epoch, reason))
        try:
            if seen is not None:
                until = seen.at + self.agents.quiet_for(seen)
                await asyncio.wait({asked}, timeout=max(0.0, until - time.monotonic()))
                if not asked.done() or asked.result() is None:
                    by_bound = await self.agents.stopped_by_its_bound(name, seen)
                    if by_bound is not None:
                        return True, f"its agent has not answered; {by_bound}", seen
            answer = await asked
        finally:
            asked.cancel()
        if answer is not None:
            return answer.stopped, f"its agent: {answer.action}", seen
        why = f"its agent did not answer within {self.agents.timeout:g}s"
        if seen is None:
            why += (
                f"; its agent's lease could not be read ({unreadable})"
                if unreadable
                else "; no agent lease for it (no agent guards it)"
            )
        return False, why, seen

    async def _agent_lease(self, name: str) -> tuple[LeaseSeen | None, str | None]:
        """The node's agent's lease (None: none), or why it could not be read."""
        assert self.agents is not None
        try:
            return await self.agents.lease(name), None
        except Exception as exc:  # unreadable: no proof by the bound, the stop may still be
            log.warning("%s: its agent's lease could not be read: %s", name, exc)
            return None, f"{type(exc).__name__}: {exc}"[:200]

    async def _fenced(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> bool:
        """The fence as the node now has it: settings reloaded, and no client session left
        from before the reload (a session started since has the fenced settings)."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            row = await (await conn.execute(_FENCE_STATE)).fetchone()
            if row is not None and row == (FENCED_SYNC_NAMES, "on", "on", 0):
                return True
            await conn.execute(_CLIENTS)
            await asyncio.sleep(0.05)
        return False

    async def position(self, name: str, timeout: float | None = None) -> int:
        """The WAL position the node has (see _POSITION), read on it now."""
        node = self.cluster.node(name)
        async with asyncio.timeout(timeout or self.timeout * 2), self._connect(node) as conn:
            row = await (await conn.execute(_POSITION)).fetchone()
        assert row is not None
        return lsn_to_int(str(row[0]))

    async def _must_have(
        self, peers: tuple[str, ...], old_primary: str | None, *, optional: bool = False
    ) -> tuple[int, str]:
        """The furthest position a promoted node must have: every peer's (each must answer,
        unless `optional`), and the fenced old primary's when it still answers (it may not:
        it is fenced)."""
        need, who = 0, "nobody"
        for peer in peers:
            try:
                pos = await self.position(peer)
            except (TimeoutError, psycopg.Error) as exc:
                if optional:
                    continue
                raise CandidateBehindError(
                    f"{peer} may hold acknowledged commits and cannot be read "
                    f"({type(exc).__name__})"
                ) from exc
            if pos > need:
                need, who = pos, peer
        if old_primary is not None:
            with contextlib.suppress(TimeoutError, psycopg.Error):
                pos = await self.position(old_primary, timeout=1.0)
                if pos > need:
                    need, who = pos, old_primary
        return need, who

    async def promote(
        self,
        name: str,
        *,
        peers: tuple[str, ...] = (),
        old_primary: str | None = None,
        synchronous: tuple[str, ...] = (),
        guard: Callable[[], Awaitable[None]] | None = None,
        peers_optional: bool = False,
    ) -> str:
        """`guard` runs again right before `pg_promote`: the catch-up before it takes
        seconds, in which the lease or the epoch may have moved on."""
        node = self.cluster.node(name)
        need, who = await self._must_have(peers, old_primary, optional=peers_optional)
        async with (
            asyncio.timeout(self.timeout + 15 + CATCH_UP_SECONDS),
            self._connect(node) as conn,
        ):
            cur = await conn.execute("select pg_is_in_recovery()")
            row = await cur.fetchone()
            in_recovery = row is not None and bool(row[0])
            have = 0
            if in_recovery:
                deadline = time.monotonic() + CATCH_UP_SECONDS
                while True:
                    found = await (await conn.execute(_POSITION)).fetchone()
                    have = lsn_to_int(str(found[0])) if found else 0
                    if have >= need or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.02)
                if have < need:
                    raise CandidateBehindError(
                        f"{name} has {int_to_lsn(have)}, {who} has {int_to_lsn(need)}: not "
                        f"promoting it (waited {CATCH_UP_SECONDS:g}s)"
                    )
                if synchronous:  # strict: its first commit already waits for a standby
                    await conn.execute(
                        sql.SQL("alter system set synchronous_standby_names = {}").format(
                            sql.Literal(format_sync_names(synchronous))
                        )
                    )
                    await conn.execute("select pg_reload_conf()")
                if guard is not None:
                    await guard()
                await conn.execute("select pg_promote(wait => true, wait_seconds => 10)")
            # A node promoted by Lifeboat takes writes even if it was fenced before; its
            # synchronous set is the failover service's to set next. Not if the lease or the
            # epoch moved on meanwhile: that would undo another leader's fence.
            if guard is not None:
                await guard()
            await conn.execute("alter system reset default_transaction_read_only")
            await conn.execute("alter system reset synchronous_commit")
            cur = await conn.execute("select current_setting('synchronous_standby_names')")
            row = await cur.fetchone()
            if row is not None and row[0] == FENCED_SYNC_NAMES and synchronous:
                await conn.execute(
                    sql.SQL("alter system set synchronous_standby_names = {}").format(
                        sql.Literal(format_sync_names(synchronous))
                    )
                )
            elif row is not None and row[0] == FENCED_SYNC_NAMES:
                await conn.execute("alter system reset synchronous_standby_names")
            await conn.execute("select pg_reload_conf()")
        if not in_recovery:
            return "already out of recovery"
        return f"had {int_to_lsn(have)}, needed {int_to_lsn(need)} ({who})"

    async def detach(self, name: str, upstream: str) -> bool:
        """Stop a standby streaming from `upstream` (empty primary_conninfo), if it still
        does: see commands.Detach."""
        node, up = self.cluster.node(name), self.cluster.node(upstream)
        async with asyncio.timeout(self.timeout * 3), self._connect(node) as conn:
            row = await (
                await conn.execute(
                    "select pg_is_in_recovery(), current_setting('primary_conninfo')"
                )
            ).fetchone()
            if row is None or not row[0] or not row[1]:
                return False
            names = conninfo_to_dict(str(row[1]))
            if (str(names.get("host")), str(names.get("port", 5432))) != (up.host, str(up.port)):
                return False
            await conn.execute("alter system set primary_conninfo = ''")
            await conn.execute("select pg_reload_conf()")
            return True

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
                current = str(row[0]) if row and row[0] else ""
        if not current:  # detached (commands.Detach): model it on another node's
            current = await self.replication_conninfo(exclude=name)
        async with asyncio.timeout(self.timeout * 3):
            async with self._connect(node) as conn:
                conninfo = standby_conninfo(
                    current,
                    host=up.host,
                    port=up.port,
                    application_name=name,
                )
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
            # As the fence: a session that turns read-only off has its commits wait for a
            # standby that does not exist, none acknowledged by a node that is to follow.
            await conn.execute("alter system set default_transaction_read_only = on")
            await conn.execute(
                sql.SQL("alter system set synchronous_standby_names = {}").format(
                    sql.Literal(FENCED_SYNC_NAMES)
                )
            )
            await conn.execute("alter system set synchronous_commit = on")
            await conn.execute("select pg_reload_conf()")
            await conn.execute(_CLIENTS)
            row = await (await conn.execute("select pg_current_wal_lsn()::text")).fetchone()
        assert row is not None
        final, strictly_after = str(row[0]), False
        local = self.local(old)
        if local is not None:
            final = await asyncio.to_thread(stop_cleanly, local)
            strictly_after = True  # past the shutdown checkpoint record, not just its start
        check = "select pg_last_wal_replay_lsn() {} %s::pg_lsn".format(
            ">" if strictly_after else ">="
        )
        async with (
            asyncio.timeout(wait_seconds),
            self._connect(self.cluster.node(target)) as conn,
        ):
            while True:
                caught_up = await (await conn.execute(check, (final,))).fetchone()
                if caught_up is not None and caught_up[0]:
                    return f"{target} replayed {primary} up to {final}"
                await asyncio.sleep(0.02)

    async def start_again(self, name: str) -> str:
        """Start a node managed here that is not running (an old primary a failed handover
        stopped): it comes up as it stopped, read-only (`handover` set that)."""
        local = self.local(self.cluster.node(name))
        if local is None or local.running():
            return "not ours to start" if local is None else "running"
        await asyncio.to_thread(start_node, local)
        return "started"

    async def start_read_only(self, name: str, *, epoch: int, reason: str) -> str:
        """Start a stopped node in recovery, read-only: here when its data directory is, else
        by its agent, asked under `epoch`; raises with the reason when it was not started."""
        local = self.local(self.cluster.node(name))
        if local is not None:
            if not local.running():
                await asyncio.to_thread(in_recovery_at_next_start, local)
            return await self.start_again(name)
        if self.agents is None:
            raise RuntimeError(f"{name}: not ours to start, and no agent to ask")
        # Asked every round while it stays down: a host that is gone (no live lease, as its
        # TTL is no longer than the catch-up wait) costs no wait for an answer each time.
        seen, unreadable = await self._agent_lease(name)
        if seen is None:
            raise RuntimeError(
                f"{name}: its agent's lease could not be read ({unreadable})"
                if unreadable
                else f"{name}: no live agent lease (its host may be down): not asked to start"
            )
        answer = await self.agents.start(name, epoch, reason)
        if answer is None:
            raise RuntimeError(f"{name}: its agent did not answer within {self.agents.timeout:g}s")
        if not answer.started:
            raise RuntimeError(f"{name}: its agent: {answer.action}")
        return f"its agent: {answer.action}"

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

    async def rejoin(
        self, name: str, upstream: str, *, epoch: int, reason: str
    ) -> tuple[str, float, bool]:
        """Rejoin `name` as a standby of `upstream`: here when its data directory is, else by
        its agent, asked under `epoch`. The method, how long it took, and whether the agent
        announced it (its `node.rejoined`); raises with the reason when it could not."""
        node, up = self.cluster.node(name), self.cluster.node(upstream)
        local = self.local(node)
        if local is None and self.agents is None:
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
        conninfo = standby_conninfo(template, host=up.host, port=up.port, application_name=name)
        if local is not None:
            method = await asyncio.to_thread(
                rejoin_node, local, node, up, self.cluster, self.password, conninfo, slot
            )
            return method, time.monotonic() - started, False
        assert self.agents is not None
        if "password" in conninfo_to_dict(conninfo):
            raise RuntimeError(
                f"{name}: the standbys' primary_conninfo holds a password, which is never sent "
                "over NATS: give the replication user's password in a passfile"
            )
        answer = await self.agents.rejoin(name, epoch, upstream, conninfo, slot, reason)
        if isinstance(answer, str):
            raise RuntimeError(f"{name}: {answer}")
        if isinstance(answer, NodeRejoinFailed):
            raise RuntimeError(f"{name}: its agent: {answer.reason}")
        return answer.method, answer.seconds, True

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
