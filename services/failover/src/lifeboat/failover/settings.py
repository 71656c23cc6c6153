from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt
from pydantic_settings import SettingsConfigDict

from lifeboat.common.settings import ServiceSettings


class FailoverSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LIFEBOAT_", extra="ignore", frozen=True)

    http_port: int = Field(default=8102, ge=0, le=65535)
    loop_interval_seconds: PositiveFloat = 0.5
    lease_ttl_seconds: PositiveInt = 3
    failure_threshold: PositiveInt = 3
    # A monitor's report counts while younger than this.
    report_max_age_seconds: PositiveFloat = 3.0
    maximum_lag_on_failover: PositiveInt = 1024 * 1024
    # on: only synchronous standbys are promoted; with none healthy, commits stop waiting
    # (degrade to async, with an event). strict: commits wait until a standby is back.
    synchronous_mode: Literal["off", "on", "strict"] = "on"
    action_timeout_seconds: PositiveFloat = 2.0
    # The same refusal or hold is published again only after this long.
    repeat_event_after_seconds: PositiveFloat = 30.0
    # Who runs pg_ctl and pg_rewind on nodes whose data directory is on this host, when the
    # service runs as root (PostgreSQL refuses root), and where those binaries are.
    pg_os_user: str | None = None
    pg_bindir: Path | None = None
