"""S3 clients: a short-deadline one for health checks, and one tuned for bulk transfers.

Bulk transfers (base backups, dumps, WAL, application files) want many pooled connections,
long read timeouts and adaptive retries; a health check wants to fail within its deadline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from lifeboat.common.settings import S3Settings
from lifeboat.objstore.light import LightS3

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = object

# Enough pooled connections for the parallel part uploads of one transfer and a few more.
BULK_CONNECTIONS = 32


def make_s3_client(settings: S3Settings, *, bulk: bool = False) -> S3Client:
    # Imported here: a process that only uses `make_light_s3_client` never loads boto3.
    import boto3
    from botocore.config import Config

    secret = settings.s3_secret()
    if bulk:
        config = Config(
            connect_timeout=max(settings.s3_timeout_seconds, 5),
            read_timeout=120,
            max_pool_connections=BULK_CONNECTIONS,
            retries={"max_attempts": 5, "mode": "adaptive"},
            s3={"addressing_style": "path"},
            tcp_keepalive=True,
        )
    else:
        config = Config(
            connect_timeout=settings.s3_timeout_seconds,
            read_timeout=max(settings.s3_timeout_seconds, 10),
            retries={"max_attempts": 2, "mode": "standard"},
            s3={"addressing_style": "path"},
        )
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        config=config,
    )


def make_light_s3_client(settings: S3Settings, *, bulk: bool = False) -> S3Client:
    """`make_s3_client`'s timeouts and retries on `LightS3`, for the calls it has (objects,
    multipart, listing, buckets): what the backup worker and health checks use."""
    secret = settings.s3_secret()
    timeout = settings.s3_timeout_seconds
    client = LightS3(
        settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=secret.get_secret_value() if secret else None,
        connect_timeout=max(timeout, 5) if bulk else timeout,
        read_timeout=120 if bulk else max(timeout, 10),
        max_attempts=5 if bulk else 2,
        max_connections=BULK_CONNECTIONS if bulk else 4,
    )
    # Typed as boto3's client, whose calls (the subset it has) it answers the same way.
    return cast("S3Client", client)


def ensure_buckets(client: S3Client, buckets: tuple[str, ...]) -> None:
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in buckets:
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
