"""Reaching the cluster's nodes: connection strings without secrets on command lines, and a
short probe of every node that gives the planner plain `NodeState`s."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import psycopg
from psycopg.conninfo import make_conninfo
from pydantic import SecretStr

from lifeboat.backup.plan import NodeState
from lifeboat.common.clusters import ClusterSpec, NodeSpec
from lifeboat.common.events import Role
from lifeboat.common.lsn import lsn_to_int
from lifeboat.common.redact import Dsn, redact

_PROBE_SQL = """
select pg_is_in_recovery(),
       (select status from pg_stat_wal_receiver limit 1),
       case when pg_is_in_recovery() then pg_last_wal_replay_lsn()::text
            else pg_current_wal_lsn()::text end,
       case when pg_is_in_recovery()
            then (select received_tli from pg_stat_wal_receiver limit 1)
            else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       end
"""


@dataclass(frozen=True)
class Connections:
    spec: ClusterSpec
    password: SecretStr | None
    replication_password: SecretStr | None
    connect_timeout: float = 2.0

    def dsn(self, node: NodeSpec, dbname: str | None = None) -> Dsn:
        base = self.spec.node_dsn(node, self.password, connect_timeout=self.connect_timeout)
        if dbname is None:
            return base
        return Dsn(make_conninfo(base.reveal(), dbname=dbname))

    def tool_conninfo(self, node: NodeSpec, *, dbname: str | None = None) -> str:
        """For pg_dump and friends: no password (it goes in PGPASSWORD, which `ps` hides)."""
        return make_conninfo(
            "",
            host=node.host,
            port=node.port,
            user=self.spec.user,
            dbname=dbname or self.spec.database,
            sslmode=self.spec.sslmode,
            application_name="lifeboat_backup",
        )

    def replication_conninfo(
        self, node: NodeSpec, *, application_name: str = "lifeboat_backup"
    ) -> str:
        return make_conninfo(
            "",
            host=node.host,
            port=node.port,
            user=self.spec.replication_user,
            sslmode=self.spec.sslmode,
            application_name=application_name,
        )

    def tool_env(self, *, replication: bool = False) -> dict[str, str]:
        secret = self.replication_password if replication else self.password
        return {} if secret is None else {"PGPASSWORD": secret.get_secret_value()}


async def _probe(conns: Connections, node: NodeSpec) -> tuple[NodeState, int | None]:
    try:
        async with asyncio.timeout(conns.connect_timeout + 1):
            async with await psycopg.AsyncConnection.connect(
                conns.dsn(node).reveal(), autocommit=True
            ) as conn:
                row = await (await conn.execute(_PROBE_SQL)).fetchone()
    except (psycopg.Error, OSError, TimeoutError) as exc:
        return NodeState(
            node.name, False, tags=node.tags, error=redact(str(exc)) or "timeout"
        ), None
    assert row is not None
    in_recovery, receiver, lsn, timeline = row
    role = Role.STANDBY if in_recovery else Role.PRIMARY
    state = NodeState(
        node.name,
        True,
        role,
        streaming=receiver == "streaming",
        timeline=timeline,
        tags=node.tags,
    )
    return state, None if lsn is None else lsn_to_int(lsn)


async def observe(conns: Connections) -> tuple[NodeState, ...]:
    """Every node at once; a standby's lag is measured against the primary's current LSN."""
    probed = await asyncio.gather(*(_probe(conns, n) for n in conns.spec.nodes))
    primary_lsn = next(
        (lsn for state, lsn in probed if state.role is Role.PRIMARY and lsn is not None), None
    )
    out = []
    for state, lsn in probed:
        if state.role is Role.STANDBY and primary_lsn is not None and lsn is not None:
            state = NodeState(
                state.name,
                True,
                state.role,
                state.streaming,
                max(0, primary_lsn - lsn),
                state.timeline,
                state.tags,
            )
        out.append(state)
    return tuple(out)


def primary_of(states: tuple[NodeState, ...]) -> str | None:
    primaries = [s.name for s in states if s.reachable and s.role is Role.PRIMARY]
    return primaries[0] if len(primaries) == 1 else None
