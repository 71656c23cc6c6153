"""A Lifeboat cluster on test hosts (network namespaces, `netns`), as on separate machines.

Each PostgreSQL node and its node agent run inside a test host of their own (`ip netns exec`);
the controller — a 3-server NATS cluster, the monitors (3, the quorum) and the failover
service — runs in the root namespace on the controller's address, 198.18.0.1, where the
agents reach NATS. The cluster file names no data directory (remote mode): the controller
cannot signal a node, only its agent acts on it. A `client` host runs the drill's writer,
so a partition can leave clients on either side. With `monitors_on_hosts`, each monitor runs
on a test host of its own too (a partition of one monitor).

Everything is stopped by PID and the namespaces are torn down on the way out, even on
failure (`host_stack`).
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path

import psycopg
from psycopg import sql

from lifeboat.common.clusters import ClusterSpec
from lifeboat.devstack import netns
from lifeboat.devstack.launch import ServiceProcess, service_env
from lifeboat.devstack.postgres import PgCluster, PgNode
from lifeboat.devstack.procs import ManagedProcess, free_port
from lifeboat.devstack.servers import NatsCluster, NatsPorts, NatsServer
from lifeboat.devstack.throwaway import pg_on_free_ports, stop_cluster, write_clusters

NODES = ("node1", "node2", "node3")
MONITORS = ("monitor1", "monitor2", "monitor3")
CLIENT = "client"
# A node is writable when it is out of recovery and not made read-only (the SQL fence).
# Whether a node takes writes as a client sees it: out of recovery, and not read-only.
WRITABLE = (
    "select not pg_is_in_recovery() and current_setting('default_transaction_read_only') = 'off'"
)


class HostedService(ServiceProcess):
    """A service inside a test host's namespace (or on the controller when `host` is None),
    answering on `address`, where the other hosts reach it."""

    def __init__(
        self,
        service: str,
        env: Mapping[str, str],
        *,
        host: netns.TestHost | None,
        instance: str,
        extra: Mapping[str, str],
        log_file: Path,
    ) -> None:
        self.address = netns.CONTROLLER if host is None else host.address
        super().__init__(
            service,
            env,
            instance=instance,
            extra={"LIFEBOAT_HTTP_HOST": self.address, **extra},
            log_file=log_file,
        )
        if host is not None:
            self.argv = host.command(self.argv)  # `ip netns exec` execs: the PID is the service's
        self.host = host
        self.extra = dict(extra)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


class HostStack:
    """The cluster `name` on test hosts; built and torn down by `host_stack`."""

    def __init__(self, base: Path, net: netns.TestNetwork, *, name: str = "main") -> None:
        self.dir = base
        self.net = net
        self.name = name
        self.nats = NatsCluster(
            base / "nats",
            [NatsPorts(free_port(), free_port(), free_port()) for _ in range(3)],
            sync_always=False,
            log_dir=base,
            host=netns.CONTROLLER,
        )
        plain = pg_on_free_ports(base / "pg")
        self.pg = PgCluster(
            plain.base_dir,
            [n.port for n in plain.nodes],
            plain.passwords,
            durable=False,
            hosts=[(net.hosts[n].address, net.hosts[n].netns) for n in NODES],
        )
        self.clusters_file = base / "clusters.yaml"
        self.env = service_env(
            nats_url=self.nats.url,
            clusters_file=self.clusters_file,
            pg_password=self.pg.passwords.superuser.get_secret_value(),
            extra={
                "LIFEBOAT_NATS_REPLICAS": "3",
                "LIFEBOAT_MONITORS": str(len(MONITORS)),
                "LIFEBOAT_PG_OS_USER": self.pg.os_user.name,
                "PYTHONUNBUFFERED": "1",
            },
        )
        self.agents: dict[str, HostedService] = {}
        self.monitors: dict[str, HostedService] = {}
        self.failover: HostedService | None = None

    # --- parts --------------------------------------------------------------------------

    def node(self, name: str) -> PgNode:
        return next(n for n in self.pg.nodes if n.name == name)

    def host(self, name: str) -> netns.TestHost:
        return self.net.hosts[name]

    def spec(self) -> ClusterSpec:
        """The cluster in remote mode: no node's data directory is the controller's."""
        return self.pg.spec(self.name).remote()

    def client_dsn(self) -> str:
        """What a client uses: whichever node takes writes. A peer that vanishes (a cut link)
        fails the statement after 2 s instead of TCP's minutes of retransmissions."""
        password = self.pg.passwords.superuser.get_secret_value()
        return (
            f"host={','.join(n.host for n in self.pg.nodes)} "
            f"port={','.join(str(n.port) for n in self.pg.nodes)} user=postgres "
            f"password={password} dbname={self.pg.database} target_session_attrs=read-write "
            "tcp_user_timeout=2000 keepalives_idle=1 keepalives_interval=1 keepalives_count=2"
        )

    def writable(self, name: str) -> bool:
        """Over the node's Unix socket, which no partition of its host's network reaches."""
        try:
            return bool(self.node(name).query(sql.SQL(WRITABLE))[0][0])
        except psycopg.Error:
            return False

    def nats_servers(self) -> list[NatsServer]:
        return self.nats.servers

    def log(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    # --- starting and stopping ----------------------------------------------------------

    def up(self, *, monitors_on_hosts: bool = False) -> None:
        self.nats.start()
        self.pg.up()
        self.pg.wait_streaming()
        write_clusters(self.clusters_file, self.spec())
        ports = {n: free_port() for n in NODES}
        for name in NODES:
            peers = {n: f"http://{self.host(n).address}:{p}" for n, p in ports.items() if n != name}
            self.agents[name] = self._agent(name, ports[name], peers)
        for agent in self.agents.values():
            agent.wait_ready(60)
        for name in MONITORS:
            host = self.host(name) if monitors_on_hosts else None
            self.monitors[name] = self._launch("monitor", name, host)
        self.failover = self._launch("failover", "failover")
        for proc in (*self.monitors.values(), self.failover):
            proc.wait_ready(60)

    def _agent(self, name: str, port: int, peers: dict[str, str]) -> HostedService:
        return self._launch(
            "agent",
            f"agent-{name}",
            self.host(name),
            LIFEBOAT_HTTP_PORT=str(port),
            LIFEBOAT_AGENT_CLUSTER=self.name,
            LIFEBOAT_AGENT_NODE=name,
            LIFEBOAT_AGENT_DATA_DIR=str(self.node(name).data_dir),
            LIFEBOAT_AGENT_PEERS=json.dumps(peers),
        )

    def _launch(
        self, service: str, instance: str, host: netns.TestHost | None = None, **extra: str
    ) -> HostedService:
        proc = HostedService(
            service,
            self.env,
            host=host,
            instance=instance,
            extra=extra,
            log_file=self.log(instance),
        )
        proc.start()
        return proc

    def restart_agent(self, name: str) -> None:
        """The agent started again with its settings, as a reboot of its host would."""
        old = self.agents[name]
        old.stop()
        self.agents[name] = self._launch("agent", f"agent-{name}", old.host, **old.extra)
        self.agents[name].wait_ready(60)

    def kill_agent(self, name: str) -> None:
        self.agents[name].signal(signal.SIGKILL)
        self.agents[name].stop()

    def controller(self) -> list[ManagedProcess]:
        """What runs on the controller's host: NATS, the monitors (unless on hosts), failover."""
        found: list[ManagedProcess] = [s.process for s in self.nats.servers]
        found += [m for m in self.monitors.values() if m.host is None]
        found += [self.failover] if self.failover is not None else []
        return found

    def services(self) -> list[HostedService]:
        procs = [*self.agents.values(), *self.monitors.values()]
        return procs + ([self.failover] if self.failover is not None else [])

    def tail(self, chars: int = 2500) -> str:
        """The end of every service's and node's log, for a failure message."""
        logs = [(p.name, p.log_file) for p in self.services()]
        logs += [(n.name, n.log_file) for n in self.pg.nodes]
        return "\n".join(
            f"--- {name}\n" + path.read_text(errors="replace")[-chars:]
            for name, path in logs
            if path is not None and path.exists()
        )

    def close(self) -> None:
        for host in self.net.hosts.values():
            host.unblock()
            host.mend()
        for proc in self.services():
            proc.signal(signal.SIGCONT)  # a frozen one would not hear SIGTERM
            proc.stop(timeout=10)
        for server in self.nats.servers:
            server.process.signal(signal.SIGCONT)
        try:
            stop_cluster(self.pg)
        finally:
            self.nats.stop()


@contextlib.contextmanager
def host_stack(base: Path, *, monitors_on_hosts: bool = False) -> Iterator[HostStack]:
    """A HostStack in `base` (created), up; stopped and its hosts torn down on the way out."""
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)  # PostgreSQL runs as another user and must reach its directories
    names = (*NODES, CLIENT, *(MONITORS if monitors_on_hosts else ()))
    with netns.network_of(*names) as net:
        stack = HostStack(base, net)
        try:
            stack.up(monitors_on_hosts=monitors_on_hosts)
            yield stack
        finally:
            stack.close()
