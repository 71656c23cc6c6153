"""One node's probe over a persistent connection: cheap every second, bounded by a deadline.

A connection is kept per node because authenticating anew each second would dominate the
cost at 100 nodes. A probe that does not answer in time counts as a failure and its connection
is dropped, so a frozen node never stalls the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
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


class NodeProber:
    def __init__(self, dsn: Dsn, timeout: float) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self._conn: psycopg.AsyncConnection[dict[str, object]] | None = None
        self._cleanups: set[asyncio.Task[None]] = set()

    async def probe(self) -> ProbeResult:
        started = time.monotonic()
        task = asyncio.create_task(self._probe())
        done, _ = await asyncio.wait({task}, timeout=self.timeout)
        if not done:
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
        latency = round((time.monotonic() - started) * 1000, 2)
        return ProbeResult(**{**result.__dict__, "latency_ms": latency})

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
