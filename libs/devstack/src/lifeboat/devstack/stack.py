"""`make up`: the whole Lifeboat stack in the foreground, until Ctrl-C.

Order of start: NATS, S3, PostgreSQL, a node agent beside each node, then the five services;
the reverse on the way out.
Data stays under the stack directory, so the next `make up` resumes with it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pydantic import SecretStr

from lifeboat.common.clusters import (
    ClustersFile,
    ClusterSpec,
    FileSetPlacement,
    FileSetSpec,
    dump_clusters,
)
from lifeboat.devstack.postgres import Passwords, PgCluster
from lifeboat.devstack.procs import ManagedProcess, free_port, kill_pid, port_is_free
from lifeboat.devstack.servers import (
    NatsCluster,
    NatsPorts,
    NatsServer,
    S3Credentials,
    S3Ports,
    SeaweedS3,
)
from lifeboat.devstack.settings import StackSettings
from lifeboat.pg.binaries import PostgresNotFoundError
from lifeboat.pg.osuser import OsUser
from lifeboat.pg.tools import ToolError

SERVICES = ("monitor", "failover", "backup", "filesync", "gateway")
_COLORS = {
    "nats": 36,
    "s3": 33,
    "stack": 1,
    "monitor": 32,
    "failover": 31,
    "backup": 34,
    "filesync": 35,
    "gateway": 96,
}
_print_lock = threading.Lock()
_tty = sys.stdout.isatty()


def say(source: str, line: str) -> None:
    label = f"{source:>9}"
    if _tty:
        label = f"\033[{_COLORS.get(source, 0)}m{label}\033[0m"
    with _print_lock:
        print(f"{label} | {line}", flush=True)


class StackError(RuntimeError):
    pass


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StackError(
                f"the stack in {path.parent} is already running ({holder}); stop it with Ctrl-C "
                "there first. Its data was not touched."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"make up, pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_or_create_secret(path: Path, length: int = 24) -> SecretStr:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(secrets.token_urlsafe(length))
        path.chmod(0o600)
    return SecretStr(path.read_text().strip())


@dataclass
class Service:
    name: str
    process: ManagedProcess
    restarts: int = 0
    next_start: float = 0.0


class Stack:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.dir = settings.stack_dir.resolve()
        self.secrets_dir = self.dir / "secrets"
        self.pids_file = self.dir / "children.json"
        self._stop = threading.Event()
        self.services: list[Service] = []
        self.nats: NatsServer | NatsCluster | None = None
        self.s3: SeaweedS3 | None = None
        self.pg: PgCluster | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def run(self) -> int:
        with exclusive_lock(self.dir / "stack.lock"):
            self._reap_leftovers()
            self._check_ports()
            signal.signal(signal.SIGINT, lambda *_: self._stop.set())
            signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
            try:
                self._start()
                if not self._stop.is_set():
                    self._supervise()
            finally:
                self._shutdown()
        return 0

    def _start(self) -> None:
        s = self.settings
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        creds = S3Credentials(
            access_key_id="lifeboat",
            secret_access_key=read_or_create_secret(
                self.secrets_dir / "s3_secret_access_key"
            ).get_secret_value(),
        )
        read_or_create_secret(self.secrets_dir / "lifeboat_token", 32)
        passwords = Passwords(
            superuser=read_or_create_secret(self.secrets_dir / "pg_password"),
            replication=read_or_create_secret(self.secrets_dir / "pg_replication_password"),
        )

        self.nats = self._nats()
        self.nats.start()
        self._record_children()

        say("stack", f"starting SeaweedFS S3 on 127.0.0.1:{s.s3_port}")
        self.s3 = SeaweedS3(
            self.dir / "s3",
            S3Ports(s.s3_port, s.s3_master_port, s.s3_volume_port, s.s3_filer_port),
            creds,
            log_file=self.dir / "s3.log",
        )
        self.s3.start(buckets=("lifeboat-backups", "lifeboat-files"))
        self._record_children()

        os_user = OsUser.for_postgres(s.pg_os_user)
        self.pg = PgCluster(
            self._pg_home(os_user),
            s.pg_ports,
            passwords,
            database=s.database,
            os_user=os_user,
            bindir=s.pg_bindir,
        )
        fresh = not self.pg.initialized
        say(
            "stack",
            f"{'creating' if fresh else 'starting'} PostgreSQL cluster "
            f"({s.pg_nodes} nodes, ports {s.pg_ports[0]}-{s.pg_ports[-1]}, "
            f"run as {self.pg.os_user.name})",
        )
        self.pg.up()
        if fresh:
            self.pg.wait_streaming()

        uploads = self._uploads(self.pg.spec(s.cluster_name))
        spec = self.pg.spec(s.cluster_name).model_copy(update={"filesets": (uploads,)})
        clusters_file = self.dir / "clusters.yaml"
        clusters_file.write_text(dump_clusters(ClustersFile(clusters=(spec,))))
        # The failover service acts on the nodes as it would from another host: over SQL and
        # through their agents, never on their data directories (those are the agents'), so
        # `make up` runs the code docker compose and separate hosts run.
        remote_file = self.dir / "failover-clusters.yaml"
        remote_file.write_text(dump_clusters(ClustersFile(clusters=(spec.remote(),))))
        env = self._service_env(clusters_file, creds)
        self._start_agents(env)
        for name in SERVICES:
            if name == "failover":
                self._start_service(name, {**env, "LIFEBOAT_CLUSTERS_FILE": str(remote_file)})
            elif name == "monitor":
                # Several monitors are the failover quorum; the first answers on its port.
                for i in range(1, s.monitors + 1):
                    port = s.monitor_port if i == 1 else 0
                    self._start_service(name, env, instance=f"monitor-{i}", port=port)
            elif name == "filesync":
                # One beside each node the file set is placed on, as on separate hosts.
                for i, placed in enumerate(uploads.placement):
                    node_env = {
                        **env,
                        "LIFEBOAT_FILESYNC_NODE": placed.node,
                        "LIFEBOAT_FILESYNC_STATE_DIR": str(self.dir / "filesync" / placed.node),
                    }
                    self._start_service(
                        name,
                        node_env,
                        instance=f"filesync-{placed.node}",
                        port=None if i == 0 else 0,  # the first on the configured port
                    )
            else:
                self._start_service(name, env)
        self._record_children()
        self._wait_ready()

    def _start_agents(self, env: dict[str, str]) -> None:
        """One node agent beside each node, as each would run on its node's host, on free
        ports; each knows the others' addresses (failsafe while NATS is away)."""
        assert self.pg is not None
        ports = {node.name: free_port() for node in self.pg.nodes}
        for node in self.pg.nodes:
            peers = {n: f"http://127.0.0.1:{p}" for n, p in ports.items() if n != node.name}
            agent_env = {
                **env,
                "LIFEBOAT_AGENT_CLUSTER": self.settings.cluster_name,
                "LIFEBOAT_AGENT_NODE": node.name,
                "LIFEBOAT_AGENT_DATA_DIR": str(node.data_dir),
                "LIFEBOAT_AGENT_PEERS": json.dumps(peers),
            }
            self._start_service(
                "agent", agent_env, instance=f"agent-{node.name}", port=ports[node.name]
            )

    def _uploads(self, spec: ClusterSpec) -> FileSetSpec:
        """The application's files beside the database: a file set `uploads` kept by the
        first node (its mirror, to S3) and copied to the second (pull), each its own root
        under the stack's directory, as each would be on its own host."""
        roots = {n.name: self.dir / "files" / n.name for n in spec.nodes[:2]}
        for root in roots.values():
            root.mkdir(parents=True, exist_ok=True)
        first, *rest = roots
        return FileSetSpec(
            name="uploads",
            root=roots[first],
            placement=(
                FileSetPlacement(node=first, mode="mirror"),
                *(FileSetPlacement(node=n, mode="pull", root=roots[n]) for n in rest),
            ),
        )

    def _nats(self) -> NatsServer | NatsCluster:
        s = self.settings
        if s.nats_servers == 1:
            say("stack", f"starting NATS JetStream on 127.0.0.1:{s.nats_port} (one server)")
            return NatsServer(
                self.dir / "nats",
                NatsPorts(s.nats_port, s.nats_monitor_port),
                on_line=lambda line: say("nats", line),
                max_file_store=s.nats_max_file_store,
            )
        last = s.nats_port + s.nats_servers - 1
        say(
            "stack",
            f"starting a {s.nats_servers}-server NATS JetStream cluster on 127.0.0.1:"
            f"{s.nats_port}-{last}",
        )
        ports = [
            NatsPorts(s.nats_port + i, s.nats_monitor_port + i, s.nats_cluster_port + i)
            for i in range(s.nats_servers)
        ]
        return NatsCluster(
            self.dir,
            ports,
            on_line=lambda line: say("nats", line),
            max_file_store=s.nats_max_file_store,
        )

    def _nats_servers(self) -> list[NatsServer]:
        if isinstance(self.nats, NatsCluster):
            return self.nats.servers
        return [] if self.nats is None else [self.nats]

    def _pg_home(self, os_user: OsUser) -> Path:
        """Where the data directories go: `<stack>/pg`, unless PostgreSQL's user cannot reach
        it (a clone in root's 0700 home): then a folder of this stack's own under
        `pg_data_root`, linked from `<stack>/pg` so that `make clean` finds it."""
        link = self.dir / "pg"
        if link.is_symlink():
            return link.resolve()
        blocked = os_user.can_reach(self.dir)
        if blocked is None:
            return link
        if link.exists():
            raise StackError(
                f"{link} holds PostgreSQL data that {os_user.name} cannot reach ({blocked} "
                f"is closed to it): move the clone elsewhere, or `make clean` and start again"
            )
        digest = hashlib.sha256(str(self.dir).encode()).hexdigest()[:12]
        home = self.settings.pg_data_root / digest
        home.mkdir(parents=True, exist_ok=True)
        self.settings.pg_data_root.chmod(0o755)
        home.chmod(0o755)
        if os_user.can_reach(home) is not None:
            raise StackError(
                f"{blocked} is closed to {os_user.name}, who runs PostgreSQL, and so is "
                f"{home}: set LIFEBOAT_PG_DATA_ROOT to a directory it can reach"
            )
        link.symlink_to(home / "pg")
        say("stack", f"{blocked} is closed to {os_user.name}: PostgreSQL data goes to {home}")
        return home / "pg"

    def _client_passfile(self, spec: ClusterSpec, password: SecretStr) -> Path:
        """A libpq password file (mode 0600) for the printed DSN: it connects as printed."""
        path = self.secrets_dir / "pgpass"
        escaped = password.get_secret_value().replace("\\", "\\\\").replace(":", "\\:")
        lines = [f"{n.host}:{n.port}:*:{spec.user}:{escaped}" for n in spec.nodes]
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        return path

    def _service_env(self, clusters_file: Path, creds: S3Credentials) -> dict[str, str]:
        s = self.settings
        urls = {n: f"http://127.0.0.1:{p}" for n, p in s.service_ports.items() if n != "gateway"}
        return {
            **os.environ,
            "LIFEBOAT_NATS_URL": self.nats.url if self.nats else "",
            "LIFEBOAT_NATS_REPLICAS": str(min(3, s.nats_servers)),
            "LIFEBOAT_CLUSTERS_FILE": str(clusters_file),
            "LIFEBOAT_PG_PASSWORD_FILE": str(self.secrets_dir / "pg_password"),
            "LIFEBOAT_S3_ENDPOINT_URL": f"http://127.0.0.1:{s.s3_port}",
            "LIFEBOAT_S3_ACCESS_KEY_ID": creds.access_key_id,
            "LIFEBOAT_S3_SECRET_ACCESS_KEY_FILE": str(self.secrets_dir / "s3_secret_access_key"),
            "LIFEBOAT_SERVICE_URLS": json.dumps(urls),
            # The gateway's admin token: commands through the API and the CLI need it.
            "LIFEBOAT_ADMIN_TOKEN_FILE": str(self.secrets_dir / "lifeboat_token"),
            # Backup: WAL archiving through a slot and the first backup at start need the
            # replication password; its spool and scratch restores go where PostgreSQL's
            # user can reach them.
            "LIFEBOAT_REPLICATION_PASSWORD_FILE": str(self.secrets_dir / "pg_replication_password"),
            "LIFEBOAT_WORK_DIR": str(self.pg.base_dir.parent / "backup-work") if self.pg else "",
            "LIFEBOAT_PG_OS_USER": self.pg.os_user.name if self.pg else "",
            # A laptop's stack: verify by scratch restore on request, not after every backup.
            "LIFEBOAT_VERIFY_AFTER_BACKUP": "false",
            "LIFEBOAT_MONITORS": str(s.monitors),
            "PYTHONUNBUFFERED": "1",
        }

    def _start_service(
        self, name: str, env: dict[str, str], *, instance: str = "", port: int | None = None
    ) -> None:
        instance = instance or f"{name}-1"
        label = instance if name in ("monitor", "filesync", "agent") else name  # several run
        process = ManagedProcess(
            label,
            [sys.executable, "-m", f"lifeboat.{name}"],
            env={
                **env,
                "LIFEBOAT_HTTP_PORT": str(
                    self.settings.service_ports[name] if port is None else port
                ),
                "LIFEBOAT_INSTANCE_ID": instance,
            },
            on_line=lambda line, n=label: say(n, line),  # type: ignore[misc]
        )
        process.start()
        self.services.append(Service(label, process))

    def _wait_ready(self) -> None:
        url = f"http://127.0.0.1:{self.settings.gateway_port}/health"
        deadline = time.monotonic() + self.settings.ready_timeout_seconds
        last = "no answer yet"
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    report = json.load(resp)
                if report["status"] == "healthy":
                    self._banner()
                    return
                last = ", ".join(
                    f"{c['name']}: {c['message']}"
                    for c in report["components"]
                    if c["status"] != "healthy"
                )
            except OSError as exc:
                last = str(exc)
            except ValueError as exc:
                last = f"unreadable health report: {exc}"
            self._stop.wait(1)
        if not self._stop.is_set():
            say(
                "stack",
                f"WARNING: not healthy after {self.settings.ready_timeout_seconds}s: {last}",
            )

    def _banner(self) -> None:
        s = self.settings
        assert self.pg is not None
        assert self.s3 is not None
        spec = self.pg.spec(s.cluster_name)
        passfile = self._client_passfile(spec, self.pg.passwords.superuser)
        gateway = f"http://127.0.0.1:{s.gateway_port}"
        creds = self.s3.credentials
        lines = [
            "Lifeboat is up.",
            f"  gateway     {gateway}  (try: curl -s {gateway}/health)",
            f"  NATS        nats://127.0.0.1:{s.nats_port}  "
            + (f"({s.nats_servers} servers, R3) " if s.nats_servers > 1 else "")
            + "(nats sub 'failover.>'; nats stream view LIFEBOAT_EVENTS)",
            f"  S3          {self.s3.endpoint_url}  access key {creds.access_key_id}, "
            f"secret in {self.secrets_dir / 's3_secret_access_key'}",
            f"  PostgreSQL  {spec.client_dsn(user=spec.user, passfile=passfile)}",
            f"              (psql, psycopg, libpq: the password is read from {passfile})",
            f"  JDBC        {spec.jdbc_url(user=spec.user)}",
            f"              password in {self.secrets_dir / 'pg_password'}",
            f"  files       {self.dir / 'files' / spec.nodes[0].name}  (file set `uploads`: "
            "kept in S3, and copied to the next node's directory beside it)",
            f"  data        {self.dir}  (make clean removes it)",
            "Ctrl-C stops everything and keeps the data.",
        ]
        for line in lines:
            say("stack", line)

    def _supervise(self) -> None:
        reported_down: set[str] = set()
        while not self._stop.wait(0.5):
            for svc in self.services:
                if svc.process.alive() or time.monotonic() < svc.next_start:
                    continue
                if svc.next_start == 0.0:
                    code = svc.process.exit_code()
                    say("stack", f"!!! {svc.name} exited with code {code}; restarting it")
                    delay = min(30.0, 2.0 ** min(svc.restarts, 5))
                    svc.next_start = time.monotonic() + delay
                    continue
                svc.restarts += 1
                svc.next_start = 0.0
                svc.process.start()
                self._record_children()
                say("stack", f"restarted {svc.name} (restart #{svc.restarts})")
            servers = [(n.name, n.process) for n in self._nats_servers()]
            servers += [("s3", self.s3.process)] if self.s3 is not None else []
            for name, process in servers:
                if not process.alive() and name not in reported_down:
                    reported_down.add(name)
                    say(
                        "stack",
                        f"!!! {name} exited with code {process.exit_code()}; "
                        "the services will report what that costs",
                    )
            assert self.pg is not None
            for node in self.pg.nodes:
                key = f"pg:{node.name}"
                if not node.running() and key not in reported_down:
                    reported_down.add(key)
                    say("stack", f"!!! PostgreSQL {node.name} is not running")
                elif node.running():
                    reported_down.discard(key)

    def _shutdown(self) -> None:
        # The agents last, after PostgreSQL: a primary's agent gone first would leave its
        # watchdog to kill the primary before its own clean stop (and the others' stop
        # before PostgreSQL's, or a failover would follow it).
        agents = [svc for svc in self.services if svc.name.startswith("agent-")]
        say("stack", "stopping services")
        self._stop_all([svc for svc in self.services if svc not in agents])
        if self.pg is not None:
            say("stack", "stopping PostgreSQL")
            self.pg.stop()
        self._stop_all(agents)
        for name, server in (("S3", self.s3), ("NATS", self.nats)):
            if server is not None:
                say("stack", f"stopping {name}")
                server.stop()
        self.pids_file.unlink(missing_ok=True)
        say("stack", "stopped; data kept in " + str(self.dir))

    def _stop_all(self, services: list[Service]) -> None:
        for svc in services:
            svc.process.signal(signal.SIGTERM)
        for svc in services:
            code = svc.process.stop(timeout=10)
            say("stack", f"{svc.name} stopped (exit code {code})")

    # --- leftovers and ports --------------------------------------------------------------

    def _record_children(self) -> None:
        pids = [p.pid for p in self._processes() if p.pid is not None]
        self.pids_file.write_text(json.dumps(pids))

    def _processes(self) -> list[ManagedProcess]:
        procs = [s.process for s in self.services]
        procs += [srv.process for srv in self._nats_servers()]
        procs += [self.s3.process] if self.s3 is not None else []
        return procs

    def _reap_leftovers(self) -> None:
        """Children of a `make up` that was killed outright hold the ports: end them."""
        leftover = json.loads(self.pids_file.read_text() or "[]") if self.pids_file.exists() else []
        for pid in leftover:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"lifeboat" in cmdline or b"nats-server" in cmdline or b"weed" in cmdline:
                say("stack", f"ending leftover process {pid} of an earlier run")
                kill_pid(pid, signal.SIGKILL)
        self.pids_file.unlink(missing_ok=True)
        pg_dir = self.dir / "pg"
        if pg_dir.exists():
            stale = PgCluster(
                pg_dir.resolve(),
                self.settings.pg_ports,
                Passwords(SecretStr(""), SecretStr("")),
                os_user=OsUser.for_postgres(self.settings.pg_os_user),
                bindir=self.settings.pg_bindir,
            )
            for node in stale.nodes:
                if node.running():
                    say("stack", f"stopping PostgreSQL {node.name} left running by an earlier run")
                    node.stop()

    def _check_ports(self) -> None:
        ports = self.settings.all_ports()
        users: dict[int, list[str]] = {}
        for name, port in ports.items():
            users.setdefault(port, []).append(name)
        twice = [
            f"{port} ({' and '.join(names)})" for port, names in users.items() if len(names) > 1
        ]
        if twice:
            raise StackError(
                "these ports are given to two servers: "
                + ", ".join(twice)
                + ". Choose others (see README, Configuration)."
            )
        busy = [f"{name} ({port})" for name, port in ports.items() if not port_is_free(port)]
        if busy:
            raise StackError(
                "these ports are in use: "
                + ", ".join(busy)
                + ". Stop what holds them or choose others (see README, Configuration)."
            )


def up(settings: StackSettings | None = None, out: IO[str] | None = None) -> int:
    """Run the stack; what cannot work is one clear line and exit code 2, not a traceback."""
    try:
        return Stack(settings or StackSettings()).run()
    except (StackError, ToolError, PostgresNotFoundError) as exc:
        print(f"make up: {exc}", file=out or sys.stderr)
        return 2
