"""S3 access shared by the services that store things there (needs the `s3` extra: boto3)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from lifeboat.common.breakers import Breakers
from lifeboat.common.health import Check, ComponentHealth, Status, component
from lifeboat.common.settings import S3Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = object


def make_s3_client(settings: S3Settings) -> S3Client:
    secret = settings.s3_secret()
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        config=Config(
            connect_timeout=settings.s3_timeout_seconds,
            read_timeout=max(settings.s3_timeout_seconds, 10),
            retries={"max_attempts": 2, "mode": "standard"},
            s3={"addressing_style": "path"},
        ),
    )


def ensure_buckets(client: S3Client, buckets: tuple[str, ...]) -> None:
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in buckets:
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)


def s3_check(settings: S3Settings, breakers: Breakers) -> Check:
    """A health check of the configured buckets."""
    client = make_s3_client(settings)

    async def check() -> ComponentHealth:
        return await check_s3(client, settings.s3_buckets, breakers, settings.s3_timeout_seconds)

    return check


async def check_s3(
    client: S3Client, buckets: tuple[str, ...], breakers: Breakers, timeout: float
) -> ComponentHealth:
    """Healthy when every bucket answers HEAD within `timeout`."""

    def head_all() -> None:
        for bucket in buckets:
            client.head_bucket(Bucket=bucket)

    try:
        async with breakers.guard("s3"):
            await asyncio.wait_for(asyncio.to_thread(head_all), timeout)
    except ClientError as exc:
        err = exc.response.get("Error", {})
        return component("s3", Status.UNHEALTHY, f"{err.get('Code')}: {err.get('Message', '')}")
    except (BotoCoreError, TimeoutError) as exc:
        return component("s3", Status.UNHEALTHY, f"S3 unreachable: {type(exc).__name__} {exc}")
    return component("s3", Status.HEALTHY, f"buckets reachable: {', '.join(buckets)}")
