"""NATS (JetStream) and SeaweedFS (S3) servers from their PyPI-packaged binaries."""

from __future__ import annotations

import json
import signal
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr

from lifeboat.common.settings import S3Settings
from lifeboat.devstack.procs import (
    LineSink,
    ManagedProcess,
    find_binary,
    free_port,
    tcp_open,
    wait_until,
)
from lifeboat.objstore.client import ensure_buckets, make_s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

HOST = "127.0.0.1"


@dataclass(frozen=True)
class NatsPorts:
    client: int = 4222
    monitor: int = 8222
    cluster: int | None = None  # the route port, for a server in a cluster


class NatsServer:
    """One nats-server with JetStream, from a config file of its own.

    `sync_always` fsyncs every JetStream write before acknowledging it (nats-server's default
    is every two minutes): a lease or topology write that was acknowledged survives a crash
    of the machine. Throwaway test servers may do without.
    """

    def __init__(
        self,
        data_dir: Path,
        ports: NatsPorts,
        *,
        name: str = "lifeboat-local",
        cluster: str | None = None,
        routes: tuple[int, ...] = (),
        sync_always: bool = True,
        log_file: Path | None = None,
        on_line: LineSink | None = None,
        max_file_store: int | None = None,
        host: str = HOST,
    ) -> None:
        """`max_file_store`: JetStream's storage limit in bytes (a test fills it); `host`: the
        address it listens on (a test network's controller address, say)."""
        self.data_dir = data_dir
        self.ports = ports
        self.name = name
        self.host = host
        self.config_file = data_dir.parent / f"{data_dir.name}.conf"
        lines = [
            f'server_name: "{name}"',
            f'listen: "{host}:{ports.client}"',
            f'http: "{host}:{ports.monitor}"',
            "jetstream {",
            f'  store_dir: "{data_dir}"',
            *(["  sync_interval: always"] if sync_always else []),
            *([f"  max_file_store: {max_file_store}"] if max_file_store else []),
            "}",
        ]
        if cluster is not None and ports.cluster is not None:
            route_list = ", ".join(f'"nats-route://{host}:{r}"' for r in routes)
            lines += [
                "cluster {",
                f'  name: "{cluster}"',
                f'  listen: "{host}:{ports.cluster}"',
                f"  routes: [{route_list}]",
                "}",
            ]
        self._config = "\n".join(lines) + "\n"
        self.process = ManagedProcess(
            name if cluster else "nats",
            [find_binary("nats-server"), "--config", str(self.config_file)],
            log_file=log_file,
            on_line=on_line,
        )

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.ports.client}"

    def _healthy(self) -> bool:
        # In a cluster JetStream is usable only once the servers have a meta leader, which
        # the full check waits for; a single server needs JetStream enabled, no more.
        query = "" if self.ports.cluster is not None else "?js-enabled-only=true"
        try:
            url = f"http://{self.host}:{self.ports.monitor}/healthz{query}"
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def launch(self) -> None:
        """Start the process without waiting for it to be healthy (a cluster's servers are
        healthy only once a majority of them runs)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self._config)
        self.process.start()

    def wait_healthy(self, timeout: float = 30) -> None:
        wait_until(lambda: self._check_alive() and self._healthy(), timeout=timeout, what=self.name)

    def start(self, timeout: float = 30) -> None:
        self.launch()
        self.wait_healthy(timeout)

    def _check_alive(self) -> bool:
        if not self.process.alive():
            raise RuntimeError(f"nats-server exited with {self.process.exit_code()}")
        return True

    def stop(self) -> None:
        self.process.stop()


class NatsCluster:
    """A JetStream cluster of `len(ports)` servers on this host, routed to one another.

    With three servers and replicated (R3) streams and buckets, any one server can die or
    restart without losing an event, a lease or an epoch.
    """

    def __init__(
        self,
        base_dir: Path,
        ports: list[NatsPorts],
        *,
        name: str = "lifeboat",
        sync_always: bool = True,
        log_dir: Path | None = None,
        on_line: LineSink | None = None,
        host: str = HOST,
        max_file_store: int | None = None,
    ) -> None:
        routes = tuple(p.cluster for p in ports if p.cluster is not None)
        self.servers = [
            NatsServer(
                base_dir / f"nats-{i + 1}",
                p,
                name=f"nats-{i + 1}",
                cluster=name,
                routes=routes,
                sync_always=sync_always,
                log_file=None if log_dir is None else log_dir / f"nats-{i + 1}.log",
                on_line=on_line,
                host=host,
                max_file_store=max_file_store,
            )
            for i, p in enumerate(ports)
        ]

    @property
    def url(self) -> str:
        """Every server's URL, comma-separated, as LIFEBOAT_NATS_URL takes them."""
        return ",".join(s.url for s in self.servers)

    def start(self, timeout: float = 60) -> None:
        for server in self.servers:
            server.launch()
        for server in self.servers:
            server.wait_healthy(timeout)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@dataclass(frozen=True)
class S3Ports:
    """SeaweedFS listens on each port and on port+10000 for gRPC: keep all below 22768."""

    s3: int = 8333
    master: int = 9333
    volume: int = 8080
    filer: int = 8888

    @classmethod
    def free(cls) -> S3Ports:
        return cls(*(free_port(below=22000, span=(0, 10000)) for _ in range(4)))


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str


class SeaweedS3:
    def __init__(
        self,
        data_dir: Path,
        ports: S3Ports,
        credentials: S3Credentials,
        *,
        log_file: Path | None = None,
        on_line: LineSink | None = None,
        host: str = HOST,
    ) -> None:
        """`host`: the address it listens on (a test host's, say)."""
        self.data_dir = data_dir
        self.ports = ports
        self.credentials = credentials
        self.host = host
        config = data_dir / "s3.json"
        self._config_file = config

        def grpc(port: int) -> str:
            return str(port + 10000)

        self.process = ManagedProcess(
            "s3",
            [
                find_binary("weed"),
                "server",
                f"-dir={data_dir / 'data'}",
                f"-ip={host}",
                f"-ip.bind={host}",
                # Never report usage to an outside host.
                "-master.telemetry=false",
                f"-master.port={ports.master}",
                f"-master.port.grpc={grpc(ports.master)}",
                "-master.volumeSizeLimitMB=256",
                f"-volume.port={ports.volume}",
                f"-volume.port.grpc={grpc(ports.volume)}",
                "-volume.max=0",
                f"-filer.port={ports.filer}",
                f"-filer.port.grpc={grpc(ports.filer)}",
                "-s3",
                f"-s3.port={ports.s3}",
                f"-s3.port.grpc={grpc(ports.s3)}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={config}",
            ],
            cwd=data_dir,
            log_file=log_file,
            on_line=on_line,
            stop_signal=signal.SIGINT,
        )

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.ports.s3}"

    def settings(self) -> S3Settings:
        return S3Settings(
            s3_endpoint_url=self.endpoint_url,
            s3_access_key_id=self.credentials.access_key_id,
            s3_secret_access_key=SecretStr(self.credentials.secret_access_key),
            s3_timeout_seconds=1,
        )

    def client(self) -> S3Client:
        return make_s3_client(self.settings())

    def _write_config(self) -> None:
        identity = {
            "name": "lifeboat",
            "credentials": [
                {
                    "accessKey": self.credentials.access_key_id,
                    "secretKey": self.credentials.secret_access_key,
                }
            ],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        self._config_file.write_text(json.dumps({"identities": [identity]}))
        self._config_file.chmod(0o600)

    def _answers(self) -> bool:
        if not self.process.alive():
            raise RuntimeError(
                f"weed exited with {self.process.exit_code()}:\n{self.process.log_tail()}"
            )
        if not tcp_open(self.ports.s3, self.host):
            return False
        try:
            self.client().list_buckets()
        except (BotoCoreError, ClientError):
            return False
        return True

    def start(self, buckets: tuple[str, ...] = (), timeout: float = 60) -> None:
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        self._write_config()
        self.process.start()
        wait_until(self._answers, timeout=timeout, what="SeaweedFS S3")
        ensure_buckets(self.client(), buckets)

    def stop(self) -> None:
        # weed lingers 10-30 s after a signal with nothing in flight; its writes are already
        # on disk, so a short grace is enough.
        self.process.stop(timeout=3)
