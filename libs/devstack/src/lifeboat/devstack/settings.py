from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PortField = Field(ge=1024, le=65535)


class StackSettings(BaseSettings):
    """`make up`'s knobs; every one can be set as LIFEBOAT_<NAME> (e.g. LIFEBOAT_PG_NODES=5)."""

    model_config = SettingsConfigDict(env_prefix="LIFEBOAT_", extra="ignore", frozen=True)

    stack_dir: Path = Path(".lifeboat")
    cluster_name: str = "main"
    database: str = "app"
    pg_nodes: int = Field(default=3, ge=1, le=9)
    pg_base_port: int = Field(default=55432, ge=1024, le=65000)
    pg_os_user: str | None = None
    pg_bindir: Path | None = None
    nats_port: int = Field(default=4222, ge=1024, le=65535)
    nats_monitor_port: int = Field(default=8222, ge=1024, le=65535)
    # SeaweedFS also listens on each of these plus 10000 (gRPC); keep them below 22768.
    s3_port: int = Field(default=8333, ge=1024, le=22767)
    s3_master_port: int = Field(default=9333, ge=1024, le=22767)
    s3_volume_port: int = Field(default=8080, ge=1024, le=22767)
    s3_filer_port: int = Field(default=8888, ge=1024, le=22767)
    gateway_port: int = Field(default=8000, ge=1024, le=65535)
    monitor_port: int = Field(default=8101, ge=1024, le=65535)
    failover_port: int = Field(default=8102, ge=1024, le=65535)
    backup_port: int = Field(default=8103, ge=1024, le=65535)
    filesync_port: int = Field(default=8104, ge=1024, le=65535)
    ready_timeout_seconds: float = Field(default=90, gt=0)

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
        ports |= {"nats": self.nats_port, "nats monitoring": self.nats_monitor_port}
        for name, port in (
            ("s3", self.s3_port),
            ("s3 master", self.s3_master_port),
            ("s3 volume", self.s3_volume_port),
            ("s3 filer", self.s3_filer_port),
        ):
            ports[name] = port
            ports[f"{name} grpc"] = port + 10000
        return ports | {f"{k} service": v for k, v in self.service_ports.items()}
