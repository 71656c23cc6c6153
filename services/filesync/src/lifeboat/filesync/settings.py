from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from lifeboat.common.settings import S3Settings, ServiceSettings


class FilesyncSettings(ServiceSettings, S3Settings):
    model_config = SettingsConfigDict(env_prefix="LIFEBOAT_", extra="ignore", frozen=True)

    http_port: int = Field(default=8104, ge=0, le=65535)
    """Port of the health endpoint."""
