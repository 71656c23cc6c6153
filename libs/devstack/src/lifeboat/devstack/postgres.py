"""A replicated PostgreSQL cluster from the system's server binaries.

Node 1 is initialised as primary with what replication and pg_rewind need; the others are
streaming standbys made with `pg_basebackup -R`, each on its own replication slot. Nodes run
under `pg_ctl`, detached, so Lifeboat (and tests) can stop, kill or restart one at a time;
as root they run as an unprivileged user because PostgreSQL refuses root.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from ipaddress import ip_network
from pathlib import Path

import psycopg
from psycopg import sql
from pydantic import SecretStr

from lifeboat.common.clusters import ClusterSpec, NodeSpec
from lifeboat.devstack.procs import wait_until
from lifeboat.pg.binaries import find_bindir
from lifeboat.pg.datadir import DataDir
from lifeboat.pg.osuser import OsUser
from lifeboat.pg.replication import SERVER_SETTINGS, replication_slot
from lifeboat.pg.tools import run

HOST = "127.0.0.1"
SUPERUSER = "postgres"
REPLICATION_USER = "replicator"


@dataclass(frozen=True)
class Passwords:
    superuser: SecretStr
    replication: SecretStr


class PgNode:
    def __init__(
        self,
        cluster: PgCluster,
        name: str,
        port: int,
        host: str = HOST,
        netns: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.name = name
        self.port = port
        self.host = host  # where it listens: loopback, or a test host's address
        self.netns = netns
        self.home = cluster.base_dir / name
        self.data_dir = self.home / "data"
        # Sockets outside the data directory: pg_rewind copies a data directory file by file.
        self.socket_dir = self.home / "run"
        self.log_file = self.home / "postgres.log"

    @property
    def data(self) -> DataDir:
        return DataDir(self.data_dir, self.cluster.os_user, self.cluster.bindir, self.netns)

    @property
    def initialized(self) -> bool:
        return self.data.initialized

    def pid(self) -> int | None:
        return self.data.pid()

    def running(self) -> bool:
        return self.data.running()

    def start(self, timeout: float = 60) -> None:
        self.data.start(self.log_file, timeout)

    def stop(self, mode: str = "fast", timeout: float = 30) -> None:
        """Stop cleanly; if pg_ctl cannot, kill the postmaster by PID."""
        self.data.stop(mode, timeout)

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if sig == signal.SIGKILL:
            self.data.kill()
            wait_until(lambda: not self.running(), timeout=10, what=f"{self.name} to die")
        else:
            self.data.signal(sig)

    def freeze(self) -> None:
        """SIGSTOP the postmaster and every backend: the node hangs, as on a stalled host."""
        self.data.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.data.signal(signal.SIGCONT)

    def conninfo(self, dbname: str = "postgres") -> str:
        """Superuser connection over the local socket (trust, reachable only on this host)."""
        return f"host={self.socket_dir} port={self.port} user={SUPERUSER} dbname={dbname}"

    def execute(
        self,
        statement: sql.SQL | sql.Composed,
        params: tuple[object, ...] = (),
        dbname: str = "postgres",
    ) -> None:
        with psycopg.connect(self.conninfo(dbname), autocommit=True, connect_timeout=5) as conn:
            conn.execute(statement, params)

    def query(
        self, statement: sql.SQL | sql.Composed, dbname: str = "postgres"
    ) -> list[tuple[object, ...]]:
        with psycopg.connect(self.conninfo(dbname), autocommit=True, connect_timeout=5) as conn:
            rows: list[tuple[object, ...]] = conn.execute(statement).fetchall()
        return rows

    def spec(self, priority: int) -> NodeSpec:
        return NodeSpec(
            name=self.name,
            host=self.host,
            port=self.port,
            priority=priority,
            data_dir=self.data_dir,
        )

    def node_settings(self) -> str:
        # Appended last, so these win over what a base backup copied from the primary.
        return (
            f"\n# lifeboat: this node\nlisten_addresses = '{self.host}'\nport = {self.port}\n"
            f"unix_socket_directories = '{self.socket_dir}'\n"
        )


class PgCluster:
    def __init__(
        self,
        base_dir: Path,
        ports: list[int],
        passwords: Passwords,
        *,
        names: list[str] | None = None,
        database: str = "app",
        os_user: OsUser | None = None,
        durable: bool = True,
        bindir: Path | None = None,
        hosts: list[tuple[str, str | None]] | None = None,
    ) -> None:
        """`hosts`: each node's (address, network namespace), for nodes on test hosts;
        loopback by default."""
        if not ports:
            raise ValueError("a cluster needs at least one node")
        self.base_dir = base_dir
        self.passwords = passwords
        self.database = database
        self.os_user = os_user or OsUser.for_postgres()
        self.durable = durable
        self.bindir = find_bindir(bindir)
        names = names or [f"node{i + 1}" for i in range(len(ports))]
        places = hosts or [(HOST, None)] * len(ports)
        self.nodes = [
            PgNode(self, n, p, host, netns)
            for n, p, (host, netns) in zip(names, ports, places, strict=True)
        ]
        self.pgpass = base_dir / "pgpass"

    @property
    def primary(self) -> PgNode:
        return self.nodes[0]

    def spec(self, name: str = "main") -> ClusterSpec:
        return ClusterSpec(
            name=name,
            database=self.database,
            user=SUPERUSER,
            replication_user=REPLICATION_USER,
            nodes=tuple(n.spec(priority=100 - 10 * i) for i, n in enumerate(self.nodes)),
        )

    @property
    def initialized(self) -> bool:
        return all(n.initialized for n in self.nodes)

    def up(self) -> None:
        """Create the cluster on first use, otherwise start the nodes that exist."""
        if self.initialized:
            for node in self.nodes:
                node.start()
            return
        if any(n.home.exists() for n in self.nodes):
            raise RuntimeError(
                f"{self.base_dir} holds a partly created cluster; remove it (make clean) first"
            )
        self._create()

    def stop(self) -> None:
        for node in reversed(self.nodes):  # standbys first: the primary's shutdown waits less
            node.stop()

    def _prepare_dirs(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)
        for node in self.nodes:
            node.home.mkdir(mode=0o700)
            node.socket_dir.mkdir(mode=0o700)
        rp = self.passwords.replication.get_secret_value()
        self.pgpass.write_text(f"*:*:*:{REPLICATION_USER}:{rp}\n")
        self.pgpass.chmod(0o600)
        self.os_user.own(self.pgpass, *(n.home for n in self.nodes))

    def _create(self) -> None:
        self._prepare_dirs()
        primary = self.primary
        pwfile = primary.home / "initdb.pw"
        pwfile.write_text(self.passwords.superuser.get_secret_value() + "\n")
        pwfile.chmod(0o600)
        self.os_user.own(pwfile)
        try:
            run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(primary.data_dir),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--data-checksums",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
                user=self.os_user,
                timeout=180,
            )
        finally:
            pwfile.unlink()
        with (primary.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(self._replication_settings() + primary.node_settings())
        with (primary.data_dir / "pg_hba.conf").open("a") as hba:
            hba.write(
                f"\n# lifeboat\nhost replication {REPLICATION_USER} {HOST}/32 scram-sha-256\n"
            )
            nets = {ip_network(f"{n.host}/24", strict=False) for n in self.nodes if n.host != HOST}
            for net in sorted(str(n) for n in nets):
                # Test hosts: the others on the test network replicate and connect too.
                hba.write(f"host replication {REPLICATION_USER} {net} scram-sha-256\n")
                hba.write(f"host all all {net} scram-sha-256\n")
        primary.start()
        rp = self.passwords.replication.get_secret_value()
        primary.execute(
            sql.SQL("create role {} with replication login password {}").format(
                sql.Identifier(REPLICATION_USER), sql.Literal(rp)
            )
        )
        primary.execute(sql.SQL("create database {}").format(sql.Identifier(self.database)))
        for standby in self.nodes[1:]:
            primary.execute(
                sql.SQL("select pg_create_physical_replication_slot(%s)"),
                (replication_slot(standby.name),),
            )
        for standby in self.nodes[1:]:
            self._clone(standby)
            standby.start()

    def _clone(self, standby: PgNode) -> None:
        env = {"PGPASSFILE": str(self.pgpass)}
        run(
            [
                str(self.bindir / "pg_basebackup"),
                "-D",
                str(standby.data_dir),
                "-d",
                f"host={self.primary.host} port={self.primary.port} user={REPLICATION_USER} "
                f"passfile={self.pgpass} application_name={standby.name}",
                "-X",
                "stream",
                "-R",
                "-S",
                replication_slot(standby.name),
                "-c",
                "fast",
            ],
            user=self.os_user,
            env=env,
            timeout=300,
        )
        with (standby.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(standby.node_settings())

    def _replication_settings(self) -> str:
        lines = [
            "",
            "# lifeboat: replication, failover and pg_rewind",
            *SERVER_SETTINGS,
            "shared_buffers = '64MB'",
            "log_line_prefix = '%m [%p] %q%u@%d '",
        ]
        if not self.durable:
            # Test clusters trade crash safety for speed; never the local stack's default.
            lines += ["fsync = off"]
        return "\n".join(lines) + "\n"

    def wait_streaming(self, timeout: float = 60) -> None:
        """Until every standby streams from the primary."""
        expected = {n.name for n in self.nodes[1:]}

        def streaming() -> bool:
            try:
                rows = self.primary.query(
                    sql.SQL(
                        "select application_name from pg_stat_replication where state = 'streaming'"
                    )
                )
            except psycopg.Error:
                return False
            return expected <= {str(r[0]) for r in rows}

        wait_until(streaming, timeout=timeout, what="standbys to stream", interval=0.3)
