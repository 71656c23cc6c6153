"""Where the suite's servers listen."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from pydantic import SecretStr

from lifeboat.common.settings import S3Settings


@dataclass(frozen=True)
class S3Endpoint:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str

    def settings(self) -> S3Settings:
        return S3Settings(
            s3_endpoint_url=self.endpoint_url,
            s3_access_key_id=self.access_key_id,
            s3_secret_access_key=SecretStr(self.secret_access_key),
        )

    def env(self) -> dict[str, str]:
        return {
            "LIFEBOAT_S3_ENDPOINT_URL": self.endpoint_url,
            "LIFEBOAT_S3_ACCESS_KEY_ID": self.access_key_id,
            "LIFEBOAT_S3_SECRET_ACCESS_KEY": self.secret_access_key,
        }


def answers_ok(url: str) -> bool:
    """True when `url` answers 200 right now."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
