from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from lifeboat.common.settings import ServiceSettings


class MonitorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LIFEBOAT_", extra="ignore", frozen=True)

    http_port: int = Field(default=8101, ge=0, le=65535)
