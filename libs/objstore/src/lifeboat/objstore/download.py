"""Streaming download: one S3 object as a sequence of chunks, memory bounded, checksummed.

Ranged GETs of `chunk_size` run `concurrency` at a time ahead of the reader and are yielded in
order, so a restore reads at the store's speed while holding at most `concurrency` chunks.
The sha256 of what was read is compared with the expected one at the end: a mismatch raises
`ChecksumMismatchError` (after the last chunk, so the caller must treat what it wrote as
suspect until the iteration ends cleanly).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class ObjectMissingError(LookupError):
    pass


class ChecksumMismatchError(ValueError):
    pass


def _missing(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code", "")
    return code in ("NoSuchKey", "404", "NotFound")


async def object_size(client: S3Client, bucket: str, key: str) -> int:
    try:
        head = await asyncio.to_thread(client.head_object, Bucket=bucket, Key=key)
    except ClientError as exc:
        if _missing(exc):
            raise ObjectMissingError(f"s3://{bucket}/{key} does not exist") from None
        raise
    return int(head["ContentLength"])


async def read_object(client: S3Client, bucket: str, key: str) -> bytes:
    """A small object whole (a manifest, a WAL segment)."""
    try:
        answer = await asyncio.to_thread(client.get_object, Bucket=bucket, Key=key)
    except ClientError as exc:
        if _missing(exc):
            raise ObjectMissingError(f"s3://{bucket}/{key} does not exist") from None
        raise
    return await asyncio.to_thread(answer["Body"].read)


async def stream_object(
    client: S3Client,
    bucket: str,
    key: str,
    *,
    expected_sha256: str | None = None,
    chunk_size: int = 8 * 1024 * 1024,
    concurrency: int = 3,
) -> AsyncIterator[bytes]:
    size = await object_size(client, bucket, key)
    digest = hashlib.sha256()

    def get(start: int) -> bytes:
        end = min(size, start + chunk_size) - 1
        answer = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end}")
        data = answer["Body"].read()
        if len(data) != end - start + 1:
            raise ChecksumMismatchError(f"{key}: short read at byte {start}")
        return data

    starts = list(range(0, size, chunk_size))
    pending: list[asyncio.Task[bytes]] = []
    try:
        for i in range(min(concurrency, len(starts))):
            pending.append(asyncio.create_task(asyncio.to_thread(get, starts[i])))
        nxt = len(pending)
        while pending:
            data = await pending.pop(0)
            if nxt < len(starts):
                pending.append(asyncio.create_task(asyncio.to_thread(get, starts[nxt])))
                nxt += 1
            await asyncio.to_thread(digest.update, data)
            yield data
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
        raise ChecksumMismatchError(
            f"s3://{bucket}/{key}: sha256 {digest.hexdigest()} does not match the manifest's "
            f"{expected_sha256}: the object is corrupted"
        )
