"""One node's probe over a persistent connection, bounded by a deadline.

A connection is kept per node for the statements, so a round costs one query per node. A
probe that does not answer in time counts as a failure and its connection is dropped, so a
frozen node never stalls the next round.

The open connection alone would miss what clients see: a postmaster that no longer accepts
(hung, or its accept loop stalled) leaves every established session working while no client
gets in. So the probe also knocks, every `knock_every` seconds, and every round after a
knock that failed (so failures are consecutive, as `node.down` needs): a new connection
that asks for GSSAPI encryption, which a working postmaster takes and hands to a child that
answers with one byte ('G' or 'N'); the knock then hangs up, before any authentication, and
the server logs nothing (a cancel request would cost a log line each time). A knock not
answered by the deadline fails the probe like an unreachable node.

What a knock cannot see, a refusal once connected (too many clients, authentication), a
full new connection finds every `admission_every` seconds. It is reported as
`refusing_connections`, an alert: the node serves, and failing it over would not let
clients in sooner than fixing what refuses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from dataclasses import dataclass, field

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from lifeboat.common.events import ReplicaState, Role
from lifeboat.common.redact import Dsn, redact

_NODE_SQL = """
select pg_is_in_recovery() as in_recovery,
       current_setting('transaction_read_only') = 'on' as read_only,
       current_setting('synchronous_standby_names') as sync_names,
       case when pg_is_in_recovery() then null else pg_current_wal_lsn()::text end as current_lsn,
       pg_last_wal_receive_lsn()::text as receive_lsn,
       pg_last_wal_replay_lsn()::text as replay_lsn,
       case when pg_is_in_recovery() then null
            else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       end as primary_timeline,
       (select timeline_id from pg_control_checkpoint()) as checkpoint_timeline,
       (select status from pg_stat_wal_receiver limit 1) as wal_receiver,
       (select received_tli from pg_stat_wal_receiver limit 1) as received_tli,
       (select sender_host || ':' || sender_port from pg_stat_wal_receiver limit 1) as sender,
       current_setting('primary_conninfo') as primary_conninfo
"""

_REPLICAS_SQL = """
select application_name, state, sync_state, flush_lsn::text, replay_lsn::text,
       extract(epoch from replay_lag)::float8 as replay_lag
from pg_stat_replication order by application_name
"""

_SLOTS_SQL = "select slot_name, active from pg_replication_slots where slot_type = 'physical'"


@dataclass(frozen=True)
class ProbeResult:
    reachable: bool
    latency_ms: float | None = None
    role: Role = Role.UNKNOWN
    writable: bool | None = None
    timeline: int | None = None
    current_lsn: str | None = None
    receive_lsn: str | None = None
    replay_lsn: str | None = None
    sender: str | None = None
    configured_upstream: str | None = None  # host:port from primary_conninfo
    wal_receiver: str | None = None
    synchronous_standby_names: str | None = None
    replicas: tuple[ReplicaState, ...] = ()
    slots: dict[str, bool] = field(default_factory=dict)
    error: str | None = None
    refusing_connections: str | None = None  # the server's refusal of a new connection


# libpq quotes a refusal the server sent with its severity; a network failure has none.
_ANSWERED = "FATAL:"
# A GSSENCRequest (length, code 80877104): the child answers it before reading a startup
# packet, and a client that hangs up then leaves no line in the log (SSLRequest would, with
# `ssl = on`, as the handshake then fails).
_KNOCK = struct.pack("!ii", 8, 80877104)


class NodeProber:
    def __init__(
        self,
        dsn: Dsn,
        timeout: float,
        *,
        check_new_connections: bool = True,
        knock_every: float = 5.0,
        admission_every: float = 30.0,
    ) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self.check_new_connections = check_new_connections
        self.knock_every = knock_every
        self.admission_every = admission_every
        params = conninfo_to_dict(dsn.reveal())
        self._address = (str(params.get("host", "localhost")), int(str(params.get("port", 5432))))
        self._conn: psycopg.AsyncConnection[dict[str, object]] | None = None
        self._cleanups: set[asyncio.Task[None]] = set()
        self._refusal: str | None = None
        # Spread over their intervals, so many nodes' new connections do not come at once:
        # each costs the server a fork (and a full one an authentication).
        now = time.monotonic()
        self._knock_at = now + random.uniform(0, knock_every)
        self._admit_at = now + random.uniform(0, admission_every)

    async def probe(self) -> ProbeResult:
        started = time.monotonic()
        task = asyncio.create_task(self._probe())
        checks: dict[str, asyncio.Task[None]] = {}
        if self.check_new_connections:
            if started >= self._knock_at:
                checks["knock"] = asyncio.create_task(self._knock())
            if started >= self._admit_at:
                self._admit_at = started + self.admission_every
                checks["admit"] = asyncio.create_task(self._admit())
        done, _ = await asyncio.wait({task, *checks.values()}, timeout=self.timeout)
        for check in checks.values():
            if check not in done:
                self._forget(check)
            else:
                check.exception()  # retrieved, whatever this round makes of it
        if task not in done:
            # Cancelling a query makes psycopg send a cancel request to the same (hung) server
            # and wait for it: leave that to the background, the round must not wait.
            self._abandon(task)
            return ProbeResult(reachable=False, error=f"no answer within {self.timeout}s")
        try:
            result = task.result()
        except psycopg.Error as exc:
            self._abandon(task)
            return ProbeResult(
                reachable=False, error=redact(str(exc).strip()) or type(exc).__name__
            )
        knock = checks.get("knock")
        if knock is not None:
            answered = knock in done and knock.exception() is None
            # After a failed knock, knock every round until one is answered.
            self._knock_at = started + self.knock_every if answered else started
            if knock not in done:
                return ProbeResult(
                    reachable=False,
                    error=f"accepts no new connection within {self.timeout}s "
                    "(its open connection still answers)",
                )
            if (failure := knock.exception()) is not None:
                return ProbeResult(reachable=False, error=f"no new connection: {failure}")
        latency = round((time.monotonic() - started) * 1000, 2)
        return ProbeResult(
            **{**result.__dict__, "latency_ms": latency, "refusing_connections": self._refusal}
        )

    async def _knock(self) -> None:
        """Returns once the postmaster has taken a new connection and a child answered."""
        host, port = self._address
        if host.startswith("/"):
            reader, writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        else:
            reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(_KNOCK)
            await writer.drain()
            if not await reader.read(1):  # 'G' or 'N' (or a refusal): a child is there
                # Hung up unanswered: not a postmaster (a proxy in front may do that).
                raise ConnectionError("closed without an answer")
        finally:
            writer.close()

    async def _admit(self) -> None:
        """A full new connection: notes the server's refusal if it answered one. Anything
        else (a network failure) is the knock's to judge, so it changes nothing here."""
        try:
            conn = await psycopg.AsyncConnection.connect(self.dsn.reveal(), autocommit=True)
        except psycopg.OperationalError as exc:
            text = str(exc)
            if _ANSWERED in text:
                self._refusal = redact(text.split(_ANSWERED, 1)[1].strip())[:500]
            return
        self._refusal = None
        await conn.close()

    def _forget(self, task: asyncio.Task[None]) -> None:
        """Cancel a connection attempt the round no longer waits for, in the background."""
        task.cancel()

        async def reap() -> None:
            with contextlib.suppress(BaseException):
                await task

        pending = asyncio.create_task(reap())
        self._cleanups.add(pending)
        pending.add_done_callback(self._cleanups.discard)

    def _abandon(self, task: asyncio.Task[ProbeResult]) -> None:
        conn, self._conn = self._conn, None
        task.cancel()

        async def cleanup() -> None:
            with contextlib.suppress(BaseException):
                await task
            if conn is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await conn.close()

        pending = asyncio.create_task(cleanup())
        self._cleanups.add(pending)
        pending.add_done_callback(self._cleanups.discard)

    async def _probe(self) -> ProbeResult:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.dsn.reveal(), autocommit=True, row_factory=dict_row
            )
        conn = self._conn
        row = await (await conn.execute(_NODE_SQL)).fetchone()
        assert row is not None
        in_recovery = bool(row["in_recovery"])
        replicas: tuple[ReplicaState, ...] = ()
        if not in_recovery:
            rows = await (await conn.execute(_REPLICAS_SQL)).fetchall()
            replicas = tuple(
                ReplicaState(
                    name=str(r["application_name"]),
                    state=str(r["state"]),
                    sync_state=str(r["sync_state"]),
                    flush_lsn=_opt_str(r["flush_lsn"]),
                    replay_lsn=_opt_str(r["replay_lsn"]),
                    replay_lag_seconds=_opt_float(r["replay_lag"]),
                )
                for r in rows
            )
        slots = {
            str(r["slot_name"]): bool(r["active"])
            for r in await (await conn.execute(_SLOTS_SQL)).fetchall()
        }
        timeline = row["primary_timeline"] or row["received_tli"] or row["checkpoint_timeline"]
        return ProbeResult(
            reachable=True,
            role=Role.STANDBY if in_recovery else Role.PRIMARY,
            writable=not in_recovery and not row["read_only"],
            timeline=int(str(timeline)) if timeline is not None else None,
            current_lsn=_opt_str(row["current_lsn"]),
            receive_lsn=_opt_str(row["receive_lsn"]),
            replay_lsn=_opt_str(row["replay_lsn"]),
            sender=_opt_str(row["sender"]),
            configured_upstream=_conninfo_target(_opt_str(row["primary_conninfo"])),
            wal_receiver=_opt_str(row["wal_receiver"]),
            synchronous_standby_names=None if in_recovery else _opt_str(row["sync_names"]),
            replicas=replicas,
            slots=slots,
        )

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await conn.close()
        for pending in list(self._cleanups):
            pending.cancel()


def _conninfo_target(conninfo: str | None) -> str | None:
    if not conninfo:
        return None
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return None
    host, port = params.get("host"), params.get("port", "5432")
    return f"{host}:{port}" if host else None


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _opt_float(value: object) -> float | None:
    return None if value is None else max(0.0, float(str(value)))
