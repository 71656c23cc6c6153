"""Short, bounded probes of PostgreSQL nodes: what a node is, asked over a fresh connection."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import psycopg

from lifeboat.common.events import Role
from lifeboat.common.redact import Dsn, redact

_ROLE_SQL = """
select pg_is_in_recovery(),
       current_setting('transaction_read_only') = 'on',
       (select status from pg_stat_wal_receiver limit 1)
"""


@dataclass(frozen=True)
class NodeRole:
    role: Role
    writable: bool
    wal_receiver: str | None  # 'streaming' on a healthy standby
    latency_ms: float


class ProbeError(RuntimeError):
    pass


async def probe_role(dsn: Dsn, timeout: float) -> NodeRole:
    """Connect, ask the node what it is, and disconnect, all within `timeout` seconds."""
    started = time.monotonic()

    async def run() -> NodeRole:
        async with await psycopg.AsyncConnection.connect(dsn.reveal(), autocommit=True) as conn:
            cur = await conn.execute(_ROLE_SQL)
            row = await cur.fetchone()
        assert row is not None
        in_recovery, read_only, receiver = row
        return NodeRole(
            role=Role.STANDBY if in_recovery else Role.PRIMARY,
            writable=not in_recovery and not read_only,
            wal_receiver=receiver,
            latency_ms=round((time.monotonic() - started) * 1000, 2),
        )

    try:
        return await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        raise ProbeError(f"no answer within {timeout}s") from None
    except psycopg.Error as exc:
        raise ProbeError(redact(str(exc).strip()) or type(exc).__name__) from None
