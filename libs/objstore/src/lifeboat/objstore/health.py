"""The health check of the configured buckets, behind the "s3" circuit breaker."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from lifeboat.common.breakers import Breakers
from lifeboat.common.health import Check, ComponentHealth, Status, component
from lifeboat.common.settings import S3Settings
from lifeboat.objstore.client import make_light_s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def s3_check(settings: S3Settings, breakers: Breakers) -> Check:
    client = make_light_s3_client(settings)

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
