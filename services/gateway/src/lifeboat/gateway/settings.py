from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from lifeboat.common.settings import S3Settings, ServiceSettings


class GatewaySettings(ServiceSettings, S3Settings):
    model_config = SettingsConfigDict(env_prefix="LIFEBOAT_", extra="ignore", frozen=True)

    http_port: int = Field(default=8000, ge=0, le=65535)
    # Base URLs of the other services' health endpoints, aggregated by GET /health, e.g.
    # LIFEBOAT_SERVICE_URLS='{"monitor": "http://127.0.0.1:8101"}'.
    service_urls: dict[str, str] = Field(default_factory=dict)
    service_timeout_seconds: float = Field(default=1.5, gt=0)
