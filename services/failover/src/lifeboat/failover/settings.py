from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from lifeboat.common.settings import ServiceSettings


class FailoverSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LIFEBOAT_", extra="ignore", frozen=True)

    http_port: int = Field(default=8102, ge=0, le=65535)
