from __future__ import annotations

from pydantic import Field, PositiveFloat, PositiveInt
from pydantic_settings import SettingsConfigDict

from lifeboat.common.settings import ServiceSettings


class MonitorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LIFEBOAT_", extra="ignore", frozen=True)

    http_port: int = Field(default=8101, ge=0, le=65535)
    # Where this monitor runs (e.g. a data centre); several monitors form the failover quorum.
    location: str = "default"
    probe_interval_seconds: PositiveFloat = 1.0
    probe_timeout_seconds: PositiveFloat = 1.0
    failure_threshold: PositiveInt = 3
    lag_warning_seconds: PositiveFloat = 30.0
    lag_critical_seconds: PositiveFloat = 120.0
    # Events waiting while NATS is away; the oldest health reports go first when it is full.
    outbox_size: PositiveInt = 10_000
