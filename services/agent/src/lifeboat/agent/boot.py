"""A node's start on a host of its own (`python -m lifeboat.agent.boot`), before its agent.

Under docker compose each PostgreSQL node's container runs this, then the agent
(`docker/node/entrypoint.sh`). It makes the data directory when there is none and starts
the node:

- a data directory that exists is started as it is — read-only when `standby.signal` is
  there, which the agent leaves once it has read any topology (and which this puts back if
  a topology exists), so a container restart never brings an old primary back writable;
- an empty one is cloned (pg_basebackup) from the primary the topology names, or, before
  there is a topology, from the node that takes writes;
- only the node configured as the first primary (`LIFEBOAT_AGENT_FIRST_PRIMARY`) runs
  initdb, and only while there is no topology and no other node runs at all: a lost volume
  of a former primary comes back as a clone, never as a second, empty cluster.

`plan` decides on a frozen observation; `main` gathers it, acts and tries again, bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import psycopg
from nats.js.errors import BucketNotFoundError
from psycopg import sql
from psycopg.conninfo import make_conninfo
from pydantic import SecretStr

from lifeboat.agent.failsafe import VIEW_PATH
from lifeboat.agent.node import arm
from lifeboat.agent.settings import AgentSettings
from lifeboat.common.clusters import ClusterSpec, NodeSpec
from lifeboat.common.kv import TOPOLOGY_BUCKET, TopologyStore
from lifeboat.common.log import configure_logging
from lifeboat.common.state import Topology
from lifeboat.pg.binaries import find_bindir
from lifeboat.pg.datadir import DataDir
from lifeboat.pg.osuser import OsUser
from lifeboat.pg.rejoin import start_node
from lifeboat.pg.replication import SERVER_SETTINGS, replication_slot

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0
# Beside the data directory, not in it: pg_basebackup and pg_rewind copy what is in it, and
# these name this host's port, sockets and password file.
NODE_CONF = "lifeboat-node.conf"
PASSFILE = "pgpass"
_IS_PRIMARY = sql.SQL("select not pg_is_in_recovery()")


@dataclass(frozen=True)
class Observation:
    node: str
    initialized: bool
    topology: Topology | None
    read_error: str | None  # the topology could not be read
    first_primary: bool
    writable: tuple[str, ...]  # other members that answer as primary over SQL
    # Other members whose PostgreSQL accepts a connection on its port, or whose agent
    # answers: a node that runs at all has data, so the cluster exists.
    running: tuple[str, ...] = ()


@dataclass(frozen=True)
class Start:
    reason: str


@dataclass(frozen=True)
class Init:
    reason: str


@dataclass(frozen=True)
class Clone:
    source: str
    reason: str


@dataclass(frozen=True)
class Wait:
    reason: str


Plan = Start | Init | Clone | Wait


def plan(o: Observation) -> Plan:
    if o.initialized:
        return Start("the data directory exists")
    if o.read_error is not None:
        return Wait(f"the data directory is empty and the topology cannot be read ({o.read_error})")
    t = o.topology
    if t is not None:
        if t.primary == o.node:
            return Wait(
                f"the topology names {o.node} primary at epoch {t.epoch}, but its data "
                "directory is empty: fail over to another node, or restore this one"
            )
        if t.primary is None:
            return Wait(f"the topology names no primary at epoch {t.epoch} to clone from")
        return Clone(t.primary, f"the topology names {t.primary} primary at epoch {t.epoch}")
    if len(o.writable) > 1:
        return Wait(f"no topology yet and {', '.join(o.writable)} all take writes")
    if o.writable:
        return Clone(o.writable[0], f"no topology yet; {o.writable[0]} takes writes")
    if o.running:
        # Its NATS store lost (or new) beside nodes that hold data: an initdb here would be
        # a second, empty cluster, which the failover would record as the primary.
        return Wait(
            f"no topology, and {', '.join(o.running)} runs but takes no writes: the cluster "
            "exists; not creating another. Give one node its writes back "
            "(`pg_ctl promote` there) for the failover to record it"
        )
    if o.first_primary:
        return Init("no topology yet and no node runs: this is the first primary")
    return Wait("no topology yet and no node takes writes: waiting for the first primary")


# --- gathering ----------------------------------------------------------------------------


async def read_topology(settings: AgentSettings) -> tuple[Topology | None, str | None]:
    timeout = settings.agent_nats_timeout_seconds * 5
    try:
        async with asyncio.timeout(timeout):
            servers = [u.strip() for u in settings.nats_url.split(",") if u.strip()]
            nc = await nats.connect(servers, connect_timeout=timeout, allow_reconnect=False)
            try:
                # Not TopologyStore.open, which creates a missing bucket (at one replica):
                # the failover service makes it, as it should be.
                try:
                    bucket = await nc.jetstream().key_value(TOPOLOGY_BUCKET)
                except BucketNotFoundError:
                    return None, None  # a new store: no topology yet
                found = await TopologyStore(nc.jetstream(), bucket).get(settings.agent_cluster)
            finally:
                await nc.close()
    except TimeoutError:
        return None, f"no answer from NATS within {timeout:g}s"
    except Exception as exc:  # no servers, no responders, a closed connection, ...
        return None, f"{type(exc).__name__}: {exc}"[:300]
    return (None if found is None else found.value), None


def runs(node: NodeSpec, agent_url: str | None) -> bool:
    """Its PostgreSQL accepts a TCP connection, or its agent answers (any answer)."""
    with contextlib.suppress(OSError), socket.create_connection((node.host, node.port), 2):
        return True
    if agent_url is None:
        return False
    try:
        httpx.get(f"{agent_url}{VIEW_PATH}", timeout=2)
    except httpx.HTTPError:
        return False
    return True


def takes_writes(spec: ClusterSpec, node: NodeSpec, password: SecretStr | None) -> bool:
    dsn = spec.node_dsn(node, password, connect_timeout=2).reveal()
    with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(_IS_PRIMARY).fetchone()
        return bool(row and row[0])
    return False


# --- acting -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """This node: its data directory, where it listens, and the secrets it needs."""

    settings: AgentSettings
    data: DataDir
    spec: ClusterSpec

    @property
    def me(self) -> NodeSpec:
        return self.spec.node(self.settings.agent_node)

    @property
    def home(self) -> Path:
        return self.data.path.parent

    def password(self) -> SecretStr | None:
        return self.settings.postgres_password()

    def write_own_files(self) -> None:
        """This host's settings (written at every start: a clone brings its source's
        postgresql.conf, which includes this file by a path relative to the data
        directory) and the replication user's password file that primary_conninfo names."""
        self.home.mkdir(parents=True, exist_ok=True)
        conf = self.home / NODE_CONF
        conf.write_text(
            f"listen_addresses = '*'\nport = {self.me.port}\n"
            f"unix_socket_directories = '{self.home}'\n"
        )
        passfile = self.home / PASSFILE
        secret = self.settings.replication_secret()
        line = "" if secret is None else f"*:*:*:{self.spec.replication_user}:"
        passfile.touch(mode=0o600)
        passfile.write_text("" if secret is None else line + secret.get_secret_value() + "\n")
        self.data.user.own(conf, passfile)

    def conninfo(self, source: NodeSpec) -> str:
        return (
            f"host={source.host} port={source.port} user={self.spec.replication_user} "
            f"passfile={self.home / PASSFILE} application_name={self.me.name}"
        )

    def init(self) -> None:
        """initdb beside the data directory, the replication role and the database made,
        then moved into place: a node stopped half-way is made afresh at its next start,
        never started half made (without the role no standby could ever clone it)."""
        password, secret = self.password(), self.settings.replication_secret()
        if password is None or secret is None:
            raise RuntimeError(
                "initdb needs the superuser's and the replication user's passwords "
                "(LIFEBOAT_PG_PASSWORD_FILE, LIFEBOAT_REPLICATION_PASSWORD_FILE)"
            )
        part = self._beside(".init")
        pwfile = self.home / "initdb.pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(password.get_secret_value() + "\n")
        self.data.user.own(pwfile)
        try:
            self.data.pg(
                "initdb",
                "-D",
                str(part),
                "-U",
                self.spec.user,
                f"--pwfile={pwfile}",
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "--data-checksums",
                "-E",
                "UTF8",
                timeout=300,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with (part / "postgresql.conf").open("a") as conf:
            conf.write("\n# lifeboat\n" + "\n".join(SERVER_SETTINGS) + "\n")
            conf.write(f"include_if_exists = '../{NODE_CONF}'\n")
        with (part / "pg_hba.conf").open("a") as hba:
            user = self.spec.replication_user
            hba.write(f"\n# lifeboat\nhost replication {user} all scram-sha-256\n")
            hba.write("host all all all scram-sha-256\n")
        made = DataDir(part, self.data.user, self.data.bindir)
        start_node(made)
        try:
            self._create_roles(secret)
        finally:
            made.stop(timeout=60)
        self._move_in(part)
        self.start()

    def _create_roles(self, secret: SecretStr) -> None:
        dsn = self.spec.node_dsn(self.me, self.password()).reveal()
        # Over the node's own socket: the replication password never crosses a network.
        local = make_conninfo(dsn, dbname="postgres", host=str(self.home))
        with psycopg.connect(local, autocommit=True) as c:
            c.execute(
                sql.SQL("create role {} with replication login password {}").format(
                    sql.Identifier(self.spec.replication_user),
                    sql.Literal(secret.get_secret_value()),
                )
            )
            c.execute(sql.SQL("create database {}").format(sql.Identifier(self.spec.database)))

    def clone(self, source: NodeSpec) -> None:
        """pg_basebackup beside the data directory, moved into place once complete: a clone
        cut short is never started as the node's data."""
        slot = replication_slot(self.me.name)
        dsn = self.spec.node_dsn(source, self.password()).reveal()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "select pg_create_physical_replication_slot(%s) where not exists "
                "(select 1 from pg_replication_slots where slot_name = %s)",
                (slot, slot),
            )
        part = self._beside(".clone")
        self.data.pg(
            "pg_basebackup",
            "-D",
            str(part),
            "-d",
            self.conninfo(source),
            "-X",
            "stream",
            "-R",
            "-S",
            slot,
            "-c",
            "fast",
            timeout=3600,
        )
        self._move_in(part)

    def _beside(self, suffix: str) -> Path:
        """An empty directory beside the data directory, for PostgreSQL's account (what an
        earlier, interrupted try left there is removed)."""
        part = self.data.path.with_name(self.data.path.name + suffix)
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(mode=0o700)
        self.data.user.own(part)
        return part

    def _move_in(self, part: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.data.path.rmdir()  # empty: a non-empty one that is no cluster raises here
        part.rename(self.data.path)

    def start(self) -> None:
        start_node(self.data)


def observe(node: Node, topology: Topology | None, error: str | None) -> Observation:
    others = [n for n in node.spec.nodes if n.name != node.me.name]
    asked = not node.data.initialized and topology is None and error is None
    writable = tuple(
        n.name for n in others if asked and takes_writes(node.spec, n, node.password())
    )
    peers = node.settings.agent_peers
    running = tuple(n.name for n in others if asked and runs(n, peers.get(n.name)))
    return Observation(
        node=node.me.name,
        initialized=node.data.initialized,
        topology=topology,
        read_error=error,
        first_primary=node.settings.agent_first_primary,
        writable=writable,
        running=running,
    )


def boot(node: Node) -> Plan:
    """Until the node is started, or the boot's time is up (then it raises)."""
    deadline = time.monotonic() + node.settings.agent_boot_timeout_seconds
    said = ""
    while True:
        topology, error = asyncio.run(read_topology(node.settings))
        chosen = plan(observe(node, topology, error))
        if chosen.reason != said:
            log.info("%s: %s", node.me.name, chosen.reason)
            said = chosen.reason
        match chosen:
            case Wait(reason):
                if time.monotonic() + RETRY_SECONDS > deadline:
                    raise RuntimeError(f"gave up: {reason}")
                time.sleep(RETRY_SECONDS)
                continue
            case Init():
                node.write_own_files()
                node.init()
            case Clone(source):
                node.write_own_files()
                node.clone(node.spec.node(source))
                node.start()
            case Start():
                node.write_own_files()
                if topology is not None and arm(node.data):
                    log.info("%s: standby.signal left: a topology exists", node.me.name)
                node.start()
        return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lifeboat.agent.boot", description=__doc__)
    parser.add_argument("--stop", action="store_true", help="stop the node (fast) and exit")
    args = parser.parse_args(argv)
    settings = AgentSettings()
    configure_logging(
        "agent-boot", settings.instance_id, level=settings.log_level, fmt=settings.log_format
    )
    data = DataDir(
        settings.agent_data_dir,
        OsUser.for_postgres(settings.pg_os_user),
        find_bindir(settings.pg_bindir),
    )
    if args.stop:
        data.stop(timeout=int(settings.agent_stop_timeout_seconds * 6))
        return
    node = Node(settings, data, settings.clusters.cluster(settings.agent_cluster))
    try:
        boot(node)
    except Exception as exc:
        log.error("%s: the node was not started: %s", settings.agent_node, exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
