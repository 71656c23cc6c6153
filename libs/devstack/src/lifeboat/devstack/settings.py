from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PortField = Field(ge=1024, le=65535)


class StackSettings(BaseSettings):
    """`make up`'s knobs; every one can be set as LIFEBOAT_<NAME> (e.g. LIFEBOAT_PG_NODES=5)."""

    model_config = SettingsConfigDict(
        env_prefix="LIFEBOAT_", extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    stack_dir: Path = Path(".lifeboat")
    """Where the stack keeps its data, logs and secrets."""
    cluster_name: str = "main"
    """Name of the local PostgreSQL cluster."""
    database: str = "app"
    """The application database created on the primary."""
    pg_nodes: int = Field(default=3, ge=1, le=9)
    """PostgreSQL nodes: node1 primary, the others streaming standbys."""
    pg_base_port: int = Field(default=55432, ge=1024, le=65000)
    """Port of node1; node N listens on this + N - 1."""
    pg_os_user: str | None = None
    """Who runs PostgreSQL when `make up` runs as root (default `postgres`, else `nobody`)."""
    pg_bindir: Path | None = None
    """Where `initdb` and the other server binaries are, if not found by themselves."""
    pg_data_root: Path = Path("/var/lib/lifeboat")
    """Where PostgreSQL data directories go when the stack directory is out of the PostgreSQL
    user's reach (a clone in root's 0700 home, say); one folder per stack directory."""
    nats_port: int = Field(default=4222, ge=1024, le=65535)
    """NATS client port."""
    nats_monitor_port: int = Field(default=8222, ge=1024, le=65535)
    """NATS monitoring port."""
    nats_servers: int = Field(default=3, ge=1, le=5)
    """NATS servers: 3 form a JetStream cluster with every stream and KV bucket replicated
    (R3), so one can die without losing an event or a lease; 1 is the smallest setup and
    gives that up. Server N listens on each NATS port + N - 1."""
    nats_cluster_port: int = Field(default=6222, ge=1024, le=65535)
    """Route port of the first NATS server of the cluster."""
    nats_max_file_store: int | None = Field(default=None, ge=1 << 20)
    """JetStream's file store limit of each NATS server, in bytes; unset, none (the disk is
    the limit). The `jetstream-full` drill needs one to fill; each stream's `max_bytes`
    (LIFEBOAT_EVENTS_MAX_BYTES, LIFEBOAT_HEARTBEATS_MAX_BYTES) is reserved from it."""
    s3_port: int = Field(default=8333, ge=1024, le=22767)
    """S3 (SeaweedFS) port; SeaweedFS also uses each S3 port + 10000 for gRPC."""
    s3_master_port: int = Field(default=9333, ge=1024, le=22767)
    """SeaweedFS master port."""
    s3_volume_port: int = Field(default=8080, ge=1024, le=22767)
    """SeaweedFS volume port."""
    s3_filer_port: int = Field(default=8888, ge=1024, le=22767)
    """SeaweedFS filer port."""
    gateway_port: int = Field(default=8000, ge=1024, le=65535)
    """The REST API."""
    monitor_port: int = Field(default=8101, ge=1024, le=65535)
    """Health endpoint of the first monitor (the others take free ports)."""
    monitors: int = Field(default=3, ge=1, le=9)
    """Monitors to run; a majority of them must see the primary down to fail it over."""
    failover_port: int = Field(default=8102, ge=1024, le=65535)
    """Failover health endpoint."""
    backup_port: int = Field(default=8103, ge=1024, le=65535)
    """Backup health endpoint."""
    filesync_port: int = Field(default=8104, ge=1024, le=65535)
    """Filesync health endpoint."""
    ready_timeout_seconds: float = Field(default=90, gt=0)
    """How long `make up` waits for every service to be ready."""

    @property
    def pg_ports(self) -> list[int]:
        return [self.pg_base_port + i for i in range(self.pg_nodes)]

    @property
    def service_ports(self) -> dict[str, int]:
        return {
            "monitor": self.monitor_port,
            "failover": self.failover_port,
            "backup": self.backup_port,
            "filesync": self.filesync_port,
            "gateway": self.gateway_port,
        }

    def all_ports(self) -> dict[str, int]:
        ports = {f"postgres node{i + 1}": p for i, p in enumerate(self.pg_ports)}
        for i in range(self.nats_servers):
            ports |= {f"nats {i + 1}": self.nats_port + i}
            ports |= {f"nats {i + 1} monitoring": self.nats_monitor_port + i}
            if self.nats_servers > 1:
                ports |= {f"nats {i + 1} routes": self.nats_cluster_port + i}
        for name, port in (
            ("s3", self.s3_port),
            ("s3 master", self.s3_master_port),
            ("s3 volume", self.s3_volume_port),
            ("s3 filer", self.s3_filer_port),
        ):
            ports[name] = port
            ports[f"{name} grpc"] = port + 10000
        return ports | {f"{k} service": v for k, v in self.service_ports.items()}
