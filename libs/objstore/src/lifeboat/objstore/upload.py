"""Streaming multipart upload: bytes in, one S3 object out, memory bounded, parts in parallel.

The caller writes bytes as they come (a tool's stdout after compression); every full part is
handed to a thread that uploads it while the next fills, at most `concurrency` at once. A
part is assembled only once a slot is free, from the pieces written (joined once, never
copied again), so memory stays near `part_size * (concurrency + 1)` whatever the size.
The sha256 of the stored bytes is computed on the way. An object smaller than one part is
a single PUT. Any failure aborts the multipart upload, so a failed transfer leaves no object
behind (S3 keeps no parts of an aborted upload; an upload whose process died is aborted
later by the janitor).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

MIN_PART = 5 * 1024 * 1024  # S3's smallest part but the last
MAX_PARTS = 10_000


@dataclass(frozen=True)
class UploadResult:
    key: str
    size: int
    sha256: str
    parts: int


def part_size_for(size_hint: int | None, minimum: int = 8 * 1024 * 1024) -> int:
    """A part size that keeps an object of about `size_hint` bytes (with room to spare)
    within S3's 10 000 parts."""
    if not size_hint:
        return minimum
    return max(minimum, -(-size_hint * 2 // (MAX_PARTS - 1000)))


class StreamingUpload:
    def __init__(
        self,
        client: S3Client,
        bucket: str,
        key: str,
        *,
        part_size: int = 8 * 1024 * 1024,
        concurrency: int = 4,
        metadata: dict[str, str] | None = None,
    ) -> None:
        if part_size < MIN_PART:
            raise ValueError(f"part_size must be at least {MIN_PART} bytes")
        self.client = client
        self.bucket = bucket
        self.key = key
        self.part_size = part_size
        self.metadata = metadata or {}
        self._pieces: list[bytes] = []
        self._buffered = 0
        self._hash = hashlib.sha256()
        self._size = 0
        self._upload_id: str | None = None
        self._parts: dict[int, str] = {}
        self._numbered = 0
        self._slots = asyncio.Semaphore(concurrency)
        self._running: set[asyncio.Task[None]] = set()
        self._failed: BaseException | None = None
        self._done = False

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    async def write(self, data: bytes) -> None:
        if self._failed is not None:
            raise self._failed
        if data:
            self._pieces.append(data)
            self._buffered += len(data)
            self._size += len(data)
        while self._buffered >= self._next_part_size():
            await self._dispatch(await self._take(self._next_part_size()))

    def _next_part_size(self) -> int:
        """`part_size`, doubled every 1,000 parts: small parts keep memory low for the usual
        object, and the 10,000-part limit is still out of reach for a huge one (5 MiB parts
        alone would stop at 50 GB)."""
        return self.part_size << min(self._numbered // 1000, 9)

    async def _take(self, size: int) -> bytes:
        """The next `size` bytes written, as one buffer; the rest stays as pieces. It waits
        for a free slot first, so a part is not held while `concurrency` others upload."""
        await self._slots.acquire()
        self._slots.release()  # only `_dispatch` takes slots, and it is the next to
        last = self._pieces.pop()
        need = size - (self._buffered - len(last))
        # Only the last piece is split (a write is small beside a part): one join, no copy
        # of the whole part.
        part = b"".join([*self._pieces, last[:need]])
        rest = last[need:]
        self._pieces = [rest] if rest else []
        self._buffered = len(rest)
        return part

    async def _dispatch(self, part: bytes) -> None:
        # Hash in order, off the event loop (hashlib lets go of the GIL for big buffers).
        await asyncio.to_thread(self._hash.update, part)
        if self._upload_id is None:
            created = await asyncio.to_thread(
                self.client.create_multipart_upload,
                Bucket=self.bucket,
                Key=self.key,
                Metadata=self.metadata,
            )
            self._upload_id = created["UploadId"]
        self._numbered += 1
        number = self._numbered
        if number > MAX_PARTS:
            raise ValueError(f"{self.key}: more than {MAX_PARTS} parts; use a larger part size")
        await self._slots.acquire()  # waits while `concurrency` parts are in flight
        if self._failed is not None:
            self._slots.release()
            raise self._failed
        task = asyncio.create_task(self._upload_part(number, part))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _upload_part(self, number: int, part: bytes) -> None:
        assert self._upload_id is not None
        try:
            answer = await asyncio.to_thread(
                self.client.upload_part,
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=part,
            )
            self._parts[number] = answer["ETag"]
        except BaseException as exc:
            self._failed = self._failed or exc
        finally:
            self._slots.release()

    async def complete(self) -> UploadResult:
        """Upload what is left and make the object exist; aborts (and raises) on failure."""
        try:
            if self._upload_id is None:
                body = b"".join(self._pieces)
                self._pieces.clear()
                await asyncio.to_thread(self._hash.update, body)
                await asyncio.to_thread(
                    self.client.put_object,
                    Bucket=self.bucket,
                    Key=self.key,
                    Body=body,
                    Metadata=self.metadata,
                )
                self._done = True
                return UploadResult(self.key, self._size, self._hash.hexdigest(), 1)
            if self._buffered:
                await self._dispatch(await self._take(self._buffered))
            await asyncio.gather(*list(self._running))
            if self._failed is not None:
                raise self._failed
            parts: list[CompletedPartTypeDef] = [
                {"PartNumber": n, "ETag": self._parts[n]} for n in sorted(self._parts)
            ]
            await asyncio.to_thread(
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
            )
            self._done = True
            return UploadResult(self.key, self._size, self._hash.hexdigest(), len(parts))
        except BaseException:
            await self.abort()
            raise

    async def abort(self) -> None:
        """Drop the parts uploaded so far; safe to call twice, or after a failure."""
        if self._done:
            return
        self._done = True
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*list(self._running), return_exceptions=True)
        if self._upload_id is None:
            return
        try:
            await asyncio.to_thread(
                self.client.abort_multipart_upload,
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self._upload_id,
            )
        except Exception as exc:  # S3 is down: the janitor aborts stale uploads later
            log.warning("could not abort the upload of %s: %s", self.key, exc)

    async def __aenter__(self) -> StreamingUpload:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is not None:
            await self.abort()
