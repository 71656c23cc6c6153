"""Throwaway stacks for the tests and the benchmarks: each in a directory of its own, on free
loopback ports, with every process it started stopped by PID when it is done.

- `local_ha`: a small HA stack to drive piece by piece: a replicated PostgreSQL cluster, its
  cluster file, the environment the services need, NATS (given, or one of its own), and
  the services (monitor, failover, ...) launched one at a time against them.
- `UpStack`: the whole `make up` stack as one child process, as an operator runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from lifeboat.common.clusters import ClustersFile, ClusterSpec, dump_clusters
from lifeboat.devstack.launch import ServiceProcess, launch, module_argv, service_env
from lifeboat.devstack.postgres import HOST, Passwords, PgCluster
from lifeboat.devstack.procs import ManagedProcess, free_port, kill_pid, wait_until
from lifeboat.devstack.servers import NatsCluster, NatsPorts, NatsServer


def nats_on_free_ports(data_dir: Path, *, log_file: Path | None = None) -> NatsServer:
    """A NATS server with JetStream in `data_dir` on free ports (not started); it is thrown
    away, so it does not fsync every write."""
    return NatsServer(
        data_dir, NatsPorts(free_port(), free_port()), sync_always=False, log_file=log_file
    )


def nats_cluster_on_free_ports(base_dir: Path, size: int = 3) -> NatsCluster:
    """A JetStream cluster of `size` servers in `base_dir` on free ports (not started)."""
    ports = [NatsPorts(free_port(), free_port(), free_port()) for _ in range(size)]
    return NatsCluster(base_dir, ports, sync_always=False, log_dir=base_dir)


def pg_on_free_ports(base_dir: Path, nodes: int = 3) -> PgCluster:
    """A replicated PostgreSQL cluster in `base_dir` on free ports, with fresh passwords and
    without fsync (it is thrown away); not started."""
    passwords = Passwords(
        SecretStr(secrets.token_urlsafe(12)), SecretStr(secrets.token_urlsafe(12))
    )
    ports = [free_port() for _ in range(nodes)]
    return PgCluster(base_dir, ports, passwords, durable=False)


def write_clusters(path: Path, *specs: ClusterSpec) -> Path:
    """The cluster file the services read, describing `specs`."""
    path.write_text(dump_clusters(ClustersFile(clusters=specs)))
    return path


def stop_cluster(cluster: PgCluster) -> None:
    """Stop every node, and kill by PID any postmaster that would not stop."""
    try:
        cluster.stop()
    finally:
        for node in cluster.nodes:
            node.kill()


class LocalHA:
    """A replicated cluster named `name` and the services started against it (see local_ha)."""

    def __init__(self, base: Path, nats_url: str, *, name: str = "main", nodes: int = 3) -> None:
        self.dir = base
        self.name = name
        self.nats_url = nats_url
        self.pg = pg_on_free_ports(base / "pg", nodes)
        self.clusters_file = base / "clusters.yaml"
        self.env = service_env(
            nats_url=nats_url,
            clusters_file=self.clusters_file,
            pg_password=self.pg.passwords.superuser.get_secret_value(),
        )
        self.procs: list[ServiceProcess] = []

    def spec(self) -> ClusterSpec:
        return self.pg.spec(self.name)

    def write_spec(self, spec: ClusterSpec) -> None:
        """Rewrite the cluster file (services read it when they start)."""
        write_clusters(self.clusters_file, spec)

    def remote(self) -> None:
        """Rewrite the cluster file without data directories (before the services start):
        the services then manage every node over SQL only, as under docker compose, and
        cannot kill a node they cannot reach."""
        self.write_spec(self.spec().remote())

    def writer_dsn(self) -> str:
        """The libpq multi-host DSN a client uses: whichever node takes writes."""
        hosts = ",".join(HOST for _ in self.pg.nodes)
        ports = ",".join(str(n.port) for n in self.pg.nodes)
        password = self.pg.passwords.superuser.get_secret_value()
        return (
            f"host={hosts} port={ports} user=postgres password={password} "
            f"dbname={self.pg.database} target_session_attrs=read-write"
        )

    def up(self) -> None:
        self.pg.up()
        self.pg.wait_streaming()
        self.write_spec(self.spec())

    def start(self, service: str, instance: str, **extra: str) -> ServiceProcess:
        """Launch `service` as `instance` on a free port (`extra` env wins), logging to
        <dir>/<instance>.log; it is stopped with the stack."""
        proc = launch(
            service,
            self.env,
            instance=instance,
            extra=extra,
            log_file=self.dir / f"{instance}.log",
        )
        self.procs.append(proc)
        return proc

    def dsn(self, node_index: int, dbname: str | None = None) -> str:
        """Password login over TCP to one node, as a client would."""
        node = self.pg.nodes[node_index]
        password = self.pg.passwords.superuser.get_secret_value()
        return (
            f"host={HOST} port={node.port} user=postgres password={password} "
            f"dbname={dbname or self.pg.database}"
        )

    def tail(self, chars: int = 3000) -> str:
        """The end of every service and PostgreSQL log, for a failure message."""
        logs = [(p.name, p.log_file) for p in self.procs]
        logs += [(n.name, n.log_file) for n in self.pg.nodes]
        return "\n".join(
            f"--- {name}\n" + path.read_text(errors="replace")[-chars:]
            for name, path in logs
            if path is not None and path.exists()
        )

    def stop_services(self) -> None:
        for proc in self.procs:
            proc.stop(timeout=10)

    def close(self) -> None:
        try:
            self.stop_services()
        finally:
            stop_cluster(self.pg)


@contextlib.contextmanager
def local_ha(
    base: Path, nats_url: str | None = None, *, name: str = "main", nodes: int = 3
) -> Iterator[LocalHA]:
    """A LocalHA in `base` (created), its cluster up and streaming. Without `nats_url` it runs
    a NATS server of its own in base/nats. Everything is stopped on the way out."""
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)  # PostgreSQL may run as another user and must reach its directories
    with contextlib.ExitStack() as cleanup:
        if nats_url is None:
            nats = nats_on_free_ports(base / "nats", log_file=base / "nats.log")
            cleanup.callback(nats.stop)
            nats.start()
            nats_url = nats.url
        ha = LocalHA(base, nats_url, name=name, nodes=nodes)
        cleanup.callback(ha.close)
        ha.up()
        yield ha


_STACK_PORTS = (
    "LIFEBOAT_NATS_PORT",
    "LIFEBOAT_NATS_MONITOR_PORT",
    "LIFEBOAT_NATS_CLUSTER_PORT",
    "LIFEBOAT_GATEWAY_PORT",
    "LIFEBOAT_MONITOR_PORT",
    "LIFEBOAT_FAILOVER_PORT",
    "LIFEBOAT_BACKUP_PORT",
    "LIFEBOAT_FILESYNC_PORT",
)
# SeaweedFS also listens on each of these plus 10000 (gRPC).
_S3_PORTS = (
    "LIFEBOAT_S3_PORT",
    "LIFEBOAT_S3_MASTER_PORT",
    "LIFEBOAT_S3_VOLUME_PORT",
    "LIFEBOAT_S3_FILER_PORT",
)


def up_stack_env(stack_dir: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a `make up` of its own in `stack_dir`: `base` (this process's
    environment unless given) without its LIFEBOAT_ settings, and free ports for everything."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if not k.startswith("LIFEBOAT_")}
    # NATS servers and PostgreSQL nodes take consecutive ports from their base; SeaweedFS
    # adds 10000 for gRPC.
    env.update({k: str(free_port(span=range(4))) for k in _STACK_PORTS})
    env.update({k: str(free_port(below=22000, span=(0, 10000))) for k in _S3_PORTS})
    env["LIFEBOAT_PG_BASE_PORT"] = str(free_port(below=29000, span=range(8)))
    env["LIFEBOAT_STACK_DIR"] = str(stack_dir)
    return env


def _get_json(url: str, timeout: float) -> Any:
    """The JSON body at `url` whatever the status (a 503 health report still says why);
    None when nothing answers or the body is not JSON."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        with exc:
            try:
                return json.load(exc)
            except ValueError:
                return None
    except (OSError, ValueError):
        return None


class UpStack:
    """`python -m lifeboat.devstack up` as one managed child, logging to `log_file`.

    `env` defaults to up_stack_env(stack_dir): the stack's data, secrets and cluster file stay
    in `stack_dir`, so a second UpStack with the same env reuses them."""

    def __init__(self, stack_dir: Path, log_file: Path, env: dict[str, str] | None = None) -> None:
        self.env = env if env is not None else up_stack_env(stack_dir)
        self.dir = Path(self.env["LIFEBOAT_STACK_DIR"])
        self.log = log_file
        self.process = ManagedProcess(
            "stack", module_argv("lifeboat.devstack", "up"), env=self.env, log_file=log_file
        )
        self.gateway = f"http://127.0.0.1:{self.env['LIFEBOAT_GATEWAY_PORT']}"

    def start(self) -> None:
        self.process.start()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def health(self) -> dict[str, Any] | None:
        """The gateway's health report, healthy or not; None if it does not answer."""
        report = _get_json(f"{self.gateway}/health", timeout=5)
        return report if isinstance(report, dict) else None

    def wait_healthy(self, timeout: float) -> dict[str, Any]:
        """Until the gateway reports healthy; RuntimeError with the log if `make up` exits,
        TimeoutError if it is not healthy within `timeout` seconds."""
        found: dict[str, Any] = {}

        def healthy() -> bool:
            if not self.process.alive():
                raise RuntimeError(f"make up exited:\n{self.output()[-4000:]}")
            found.clear()
            found.update(self.health() or {})
            return found.get("status") == "healthy"

        wait_until(
            healthy,
            timeout=timeout,
            what="the stack to be healthy",
            interval=1,
            detail=lambda: f"last health: {found}\n{self.output()[-4000:]}",
        )
        return found

    def interrupt(self, timeout: float = 90) -> int:
        """Ctrl-C in a terminal: SIGINT to `make up`, then its exit code."""
        assert self.process.proc is not None, "the stack was never started"
        self.process.proc.send_signal(signal.SIGINT)
        return self.process.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 60) -> None:
        """If it still runs: Ctrl-C, `timeout` seconds to finish, then its whole session is
        ended by PID. Then any PostgreSQL left behind is killed by PID (from its data dir)."""
        if self.process.alive():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.interrupt(timeout)
        self.process.stop(timeout=10)
        for pidfile in self.dir.glob("pg/*/data/postmaster.pid"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(pidfile.read_text().split()[0])
                if b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    kill_pid(pid, signal.SIGKILL)
