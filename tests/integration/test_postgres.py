"""The replicated PostgreSQL cluster the stack and the fixtures build, and the role probe."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from lifeboat.common.events import Role
from lifeboat.devstack.postgres import PgCluster, PgNode
from lifeboat.devstack.procs import free_port
from lifeboat.pg.probe import ProbeError, probe_role


def test_one_primary_and_streaming_standbys_on_slots(pg_cluster: PgCluster) -> None:
    primary, *standbys = pg_cluster.nodes
    assert primary.query(sql.SQL("select pg_is_in_recovery()")) == [(False,)]
    for standby in standbys:
        assert standby.query(sql.SQL("select pg_is_in_recovery()")) == [(True,)]
    rows = primary.query(
        sql.SQL("select slot_name, active from pg_replication_slots order by slot_name")
    )
    assert rows == [(s.name, True) for s in standbys]


def test_ready_for_pg_rewind(pg_cluster: PgCluster) -> None:
    rows = pg_cluster.primary.query(
        sql.SQL(
            "select name, setting from pg_settings"
            " where name in ('wal_log_hints', 'data_checksums', 'wal_level')"
        )
    )
    settings = {row[0]: row[1] for row in rows}
    assert settings == {"wal_log_hints": "on", "data_checksums": "on", "wal_level": "replica"}


def test_writes_on_the_primary_reach_every_standby(pg_cluster: PgCluster) -> None:
    primary, *standbys = pg_cluster.nodes
    primary.execute(sql.SQL("create table if not exists probe (id int)"), dbname="app")
    primary.execute(sql.SQL("insert into probe values (42)"), dbname="app")
    for standby in standbys:
        deadline = time.monotonic() + 10
        while not _has_row(standby):
            assert time.monotonic() < deadline, f"{standby.name} did not replay the insert"
            time.sleep(0.1)


def _has_row(node: PgNode) -> bool:
    try:
        return node.query(sql.SQL("select count(*) from probe where id = 42"), "app") == [(1,)]
    except psycopg.errors.UndefinedTable:
        return False  # the create has not been replayed yet


async def test_probe_reports_each_nodes_role(pg_cluster: PgCluster) -> None:
    spec = pg_cluster.spec()
    password = pg_cluster.passwords.superuser
    found = [await probe_role(spec.node_dsn(n, password), 3) for n in spec.nodes]
    assert [f.role for f in found] == [Role.PRIMARY, Role.STANDBY, Role.STANDBY]
    assert [f.writable for f in found] == [True, False, False]
    assert [f.wal_receiver for f in found[1:]] == ["streaming", "streaming"]


async def test_probe_of_a_dead_port_fails_fast_and_clearly(pg_cluster: PgCluster) -> None:
    spec = pg_cluster.spec()
    dead = spec.nodes[0].model_copy(update={"port": free_port()})
    started = time.monotonic()
    with pytest.raises(ProbeError, match=r"refused|failed"):
        await probe_role(spec.node_dsn(dead, SecretStr("x")), 1)
    assert time.monotonic() - started < 2


async def test_probe_errors_never_show_the_password(pg_cluster: PgCluster) -> None:
    spec = pg_cluster.spec()
    with pytest.raises(ProbeError) as info:
        await probe_role(spec.node_dsn(spec.nodes[0], SecretStr("wrong-hunter2")), 3)
    assert "hunter2" not in str(info.value)
    assert "password authentication failed" in str(info.value)
