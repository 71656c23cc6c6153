"""The fault matrix (issue 7), each scenario once: real PostgreSQL, NATS, monitor and failover.

Every scenario runs the drill's writer (increasing ids through the multi-host DSN, each
acknowledged one recorded with the node that took it) and ends with the same checks: one
writable node, and every acknowledged id on it. A scenario where promotion would risk an
acknowledged commit may end with nobody promoted; that is then asserted with its reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from lifeboat.devstack.drill import TABLE, Writer
from lifeboat.devstack.procs import eventually
from tests.integration.test_failover import HA, make_ha, start_ha, wait_event


@pytest.fixture
async def ha(nats_url: str, workdir: Path, unique: str) -> AsyncIterator[HA]:
    async with make_ha(nats_url, workdir, unique) as harness:
        yield harness


def writable(ha: HA) -> list[str]:
    """The nodes that would acknowledge a client's commit right now (not in recovery, not
    read-only, not waiting on a synchronous standby that does not exist)."""
    found = []
    for i, node in enumerate(ha.pg.nodes):
        try:
            with psycopg.connect(ha.dsn(i), autocommit=True, connect_timeout=2) as conn:
                row = conn.execute(
                    "select pg_is_in_recovery(), current_setting('default_transaction_read_only'),"
                    " current_setting('synchronous_standby_names')"
                ).fetchone()
        except psycopg.Error:
            continue
        if row is not None and row[0] is False and row[1] == "off" and row[2] != "lifeboat_fenced":
            found.append(node.name)
    return found


@contextmanager
def writing(ha: HA) -> Iterator[Writer]:
    with psycopg.connect(ha.dsn(0), autocommit=True) as conn:
        conn.execute(f"create table if not exists {TABLE} (id bigint primary key)")
    writer = Writer(ha.stack.writer_dsn(), start_id=1)
    writer.start()
    try:
        yield writer
    finally:
        writer.stop()


def lost_on(ha: HA, node: str, writer: Writer) -> list[int]:
    """Acknowledged ids the node does not have."""
    ids = [a[0] for a in writer.acked]
    index = [n.name for n in ha.pg.nodes].index(node)
    with psycopg.connect(ha.dsn(index), autocommit=True) as conn:
        rows = conn.execute(f"select id from {TABLE} where id = any(%s)", (ids,)).fetchall()
    present = {r[0] for r in rows}
    return [i for i in ids if i not in present]


async def wait_acked_by(ha: HA, writer: Writer, node: str, after: float, timeout: float) -> None:
    port = next(n.port for n in ha.pg.nodes if n.name == node)
    await eventually(
        lambda: any(t > after and p == port for _, t, p in writer.acked),
        timeout=timeout,
        what=f"a write acknowledged by {node}",
        detail=ha.tail,
    )


async def test_1_controller_cut_off_from_a_remote_primary_promotes_nobody_until_fenced(
    ha: HA,
) -> None:
    """Remote mode (no data_dir: fencing over SQL only) and the primary frozen, so the
    controller cannot reach it: it cannot be confirmed unable to commit, so nobody is
    promoted and failover.held says why. Once it answers again it is fenced, a standby is
    promoted, and every acknowledged write is on the one writable primary."""
    ha.stack.remote()
    await start_ha(ha)
    old = ha.pg.nodes[0]
    with writing(ha) as writer:
        await wait_acked_by(ha, writer, "node1", after=0, timeout=10)
        old.freeze()
        try:
            held = await eventually(
                lambda: [
                    e for e in ha.of("failover.held") if "confirmed unable" in str(e["reason"])
                ],
                timeout=30,
                what="failover.held for the unconfirmed fence",
                detail=ha.tail,
            )
            assert "node1" in str(held[0]["reason"])
            await asyncio.sleep(2)  # fence retries keep failing: still nobody promoted
            assert writable(ha) == [], "a standby was promoted while node1 was not fenced"
        finally:
            old.thaw()
        thawed = time.monotonic()
        after = await ha.wait_topology(lambda t: t.operation is None, timeout=40)
        assert after.primary in ("node2", "node3")
        await wait_acked_by(ha, writer, after.primary, after=thawed, timeout=20)
        await asyncio.sleep(0.5)
    assert writable(ha) == [after.primary]
    assert lost_on(ha, after.primary, writer) == []
    fenced = await wait_event(ha, "node.fenced")
    assert fenced["node"] == "node1"
