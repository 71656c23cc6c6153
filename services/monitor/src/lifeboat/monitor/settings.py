from __future__ import annotations

from pydantic import Field, PositiveFloat, PositiveInt
from pydantic_settings import SettingsConfigDict

from lifeboat.common.settings import ServiceSettings


class MonitorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LIFEBOAT_", extra="ignore", frozen=True)

    http_port: int = Field(default=8101, ge=0, le=65535)
    """Port of the health endpoint."""
    location: str = "default"
    """Where this monitor runs (e.g. a data centre); several monitors form the quorum."""
    probe_interval_seconds: PositiveFloat = 1.0
    """How often every node is probed."""
    probe_timeout_seconds: PositiveFloat = 1.0
    """Deadline of one probe (connect and statements)."""
    check_new_connections: bool = True
    """Also knock on every node with a new connection (no authentication): one the
    postmaster does not take within the deadline fails the probe, as clients cannot get in
    although open sessions work."""
    knock_seconds: PositiveFloat = 5.0
    """How often a node is knocked on while it answers; every round after a failed knock."""
    admission_check_seconds: PositiveFloat = 30.0
    """How often a full new connection (authenticated) looks for a refusal (too many clients,
    authentication): `node.admission_changed`, an alert, never a failover."""
    failure_threshold: PositiveInt = 3
    """Failed probes in a row before `node.down`."""
    lag_warning_seconds: PositiveFloat = 30.0
    """Replication lag that raises a `node.lag` warning."""
    lag_critical_seconds: PositiveFloat = 120.0
    """Replication lag that raises a critical `node.lag`."""
    outbox_size: PositiveInt = 10_000
    """Events kept while NATS is away; the oldest health reports go first when full."""
