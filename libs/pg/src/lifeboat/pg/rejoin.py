"""Rejoining a node as a standby of a new primary: pg_rewind, else a fresh clone swapped in
only once complete. Run where the node's data directory is — by the failover service for
nodes the cluster file places on its host, by the node's agent for the others — in a worker
thread: pg_rewind and pg_basebackup take minutes.
"""

from __future__ import annotations

import contextlib
import shutil
import time

import psycopg
from psycopg.conninfo import make_conninfo
from pydantic import SecretStr

from lifeboat.common.clusters import ClusterSpec, NodeSpec
from lifeboat.pg.datadir import DataDir
from lifeboat.pg.replication import OWN_CONFIG, write_standby_config
from lifeboat.pg.tools import ToolError


def rejoin_node(
    data: DataDir,
    node: NodeSpec,
    upstream: NodeSpec,
    cluster: ClusterSpec,
    password: SecretStr | None,
    conninfo: str,
    slot: str,
) -> str:
    """Stop, rewind, configure as a standby and start a local node; when rewinding fails, or
    the rewound node will not start streaming, clone it afresh with pg_basebackup instead.

    The fresh clone is made beside the old data directory and swapped in only once complete:
    a failed clone leaves the node's data as it was.
    """
    if data.running():
        data.stop(timeout=30)
    rewind_env = None if password is None else {"PGPASSWORD": password.get_secret_value()}
    source = make_conninfo(
        "",
        host=upstream.host,
        port=upstream.port,
        user=cluster.user,
        dbname="postgres",
        connect_timeout=5,
    )
    own_config = {n: (data.path / n).read_bytes() for n in OWN_CONFIG if (data.path / n).exists()}
    _checkpoint(upstream, cluster, password)
    try:
        data.pg(
            "pg_rewind",
            f"--target-pgdata={data.path}",
            f"--source-server={source}",
            env=rewind_env,
            timeout=600,
        )
        _configure_standby(data, own_config, conninfo, slot)
        start_node(data)
        # A rewind can "succeed" yet leave WAL past the fork (the end-of-recovery checkpoint
        # of a crashed primary): the node starts but never streams the upstream's timeline.
        # Only streaming that timeline counts.
        if _streams(node, upstream, cluster, password):
            return "pg_rewind"
    except ToolError:
        pass
    data.kill()
    fresh = data.path.with_name(data.path.name + ".rejoin")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(mode=0o700)
    data.user.own(fresh)
    clone = DataDir(fresh, data.user, data.bindir)
    try:
        clone.pg(
            "pg_basebackup",
            "-D",
            str(fresh),
            "-d",
            conninfo,
            "-X",
            "stream",
            "-c",
            "fast",
            timeout=3600,
        )
    except ToolError:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    old = data.path.with_name(data.path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    data.path.rename(old)
    fresh.rename(data.path)
    shutil.rmtree(old, ignore_errors=True)
    _configure_standby(data, own_config, conninfo, slot)
    start_node(data)
    return "pg_basebackup"


def _checkpoint(upstream: NodeSpec, cluster: ClusterSpec, password: SecretStr | None) -> None:
    """A checkpoint on the upstream before pg_rewind reads its timeline from pg_control: a
    promotion writes the new one there only at the end-of-recovery checkpoint it runs in the
    background, so right after a switchover pg_rewind saw the old timeline, found "no rewind
    required", and the node then could not follow (as Patroni, which checkpoints a new
    primary before it rewinds anyone onto it). Best effort: without it the rewind is tried
    all the same, and a node that does not stream is cloned afresh."""
    dsn = cluster.node_dsn(upstream, password, connect_timeout=5).reveal()
    with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("checkpoint")


def _configure_standby(
    data: DataDir, own_config: dict[str, bytes], conninfo: str, slot: str
) -> None:
    for name, content in own_config.items():
        (data.path / name).write_bytes(content)
    written = write_standby_config(data.path, conninfo, slot)
    data.user.own(*written, *(data.path / name for name in own_config))


_TIMELINE = "select ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"


def _streams(
    node: NodeSpec,
    upstream: NodeSpec,
    cluster: ClusterSpec,
    password: SecretStr | None,
    wait_seconds: float = 15,
) -> bool:
    """The node streams the upstream's current timeline within `wait_seconds`. Streaming
    alone is not enough: a node with WAL past the fork streams the old timeline up to the
    fork point, for a moment, every few seconds, and never gets further (seen in the
    stream-drop-kill drill: the rejoin said pg_rewind, the node never followed)."""
    dsn = cluster.node_dsn(node, password, connect_timeout=2).reveal()
    source = cluster.node_dsn(upstream, password, connect_timeout=2).reveal()
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.Error):
            with psycopg.connect(source, autocommit=True) as conn:
                found = conn.execute(_TIMELINE).fetchone()
            with psycopg.connect(dsn, autocommit=True) as conn:
                row = conn.execute(
                    "select status, received_tli from pg_stat_wal_receiver"
                ).fetchone()
            if found is not None and row is not None and row == ("streaming", found[0]):
                return True
        time.sleep(0.3)
    return False


def start_node(data: DataDir) -> None:
    data.start(data.path.parent / "postgres.log", timeout=60)
