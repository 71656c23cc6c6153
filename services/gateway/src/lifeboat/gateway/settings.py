from __future__ import annotations

import getpass

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from lifeboat.common.settings import S3Settings, ServiceSettings


class GatewaySettings(ServiceSettings, S3Settings):
    model_config = SettingsConfigDict(env_prefix="LIFEBOAT_", extra="ignore", frozen=True)

    http_port: int = Field(default=8000, ge=0, le=65535)
    """Port of the REST API."""
    service_urls: dict[str, str] = Field(default_factory=dict)
    """The other services' health endpoints that GET /health aggregates, as JSON, e.g.
    `{"monitor": "http://127.0.0.1:8101"}`."""
    service_timeout_seconds: float = Field(default=1.5, gt=0)
    """Deadline of one service health check."""


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return "cli"


class CliSettings(BaseSettings):
    """What the `lifeboat` command line reads from the environment (`--gateway` wins)."""

    model_config = SettingsConfigDict(
        env_prefix="LIFEBOAT_", extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    gateway_url: str = "http://127.0.0.1:8000"
    """Base URL of the gateway's REST API."""
    requested_by: str = Field(default_factory=_login_name, min_length=1, max_length=200)
    """Who operations are requested by, on their events; the login name by default."""
