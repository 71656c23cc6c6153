"""Bytes between a tool and S3, both ways, memory bounded.

Up: a tool's stdout is read in chunks by the event loop, compressed and encrypted on a worker
thread, and written to a `StreamingUpload` whose parts go up in parallel. At most a few chunks
wait between the stages, so the reader, the codec, the uploads and the tool itself all run at
once and memory does not grow with the backup.

Down: ranged GETs in parallel, decoded on a worker thread straight into a pipe (tar's or
pg_restore's stdin); the stored sha256 is checked when the object ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from lifeboat.objstore.codec import Codec, DecodingWriter
from lifeboat.objstore.download import stream_object
from lifeboat.objstore.upload import StreamingUpload, UploadResult

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CHUNK = 1024 * 1024
QUEUE_DEPTH = 2  # encoded chunks waiting for the upload: the parts in flight are the buffer

Progress = Callable[[int, int], Awaitable[None]]  # raw bytes so far, stored bytes so far


@dataclass(frozen=True)
class Sent:
    raw_bytes: int
    upload: UploadResult
    seconds: float


@dataclass(frozen=True)
class Transfer:
    """Where and how objects go: the client, the bucket, the codec, the part layout."""

    client: S3Client
    bucket: str
    codec: Codec
    part_size: int = 8 * 1024 * 1024
    concurrency: int = 4

    def upload(self, key: str, metadata: dict[str, str] | None = None) -> StreamingUpload:
        return StreamingUpload(
            self.client,
            self.bucket,
            key,
            part_size=self.part_size,
            concurrency=self.concurrency,
            metadata=metadata,
        )


async def _read_chunks(reader: asyncio.StreamReader, queue: asyncio.Queue[bytes | None]) -> None:
    buf = bytearray()
    while True:
        data = await reader.read(CHUNK)
        if not data:
            break
        buf += data
        if len(buf) >= CHUNK:
            await queue.put(bytes(buf))
            buf.clear()
    if buf:
        await queue.put(bytes(buf))
    await queue.put(None)


async def send(
    reader: asyncio.StreamReader,
    transfer: Transfer,
    key: str,
    *,
    progress: Progress | None = None,
    metadata: dict[str, str] | None = None,
    progress_every: float = 2.0,
) -> Sent:
    """Everything `reader` yields, encoded, as the object `key`; nothing at `key` on failure."""
    started = time.monotonic()
    upload = transfer.upload(key, metadata)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_DEPTH)
    producer = asyncio.create_task(_read_chunks(reader, queue))
    encoder = transfer.codec.encoder()
    raw = 0
    reported = started
    try:
        while (chunk := await queue.get()) is not None:
            raw += len(chunk)
            out = await asyncio.to_thread(encoder.update, chunk)
            if out:
                await upload.write(out)
            if progress is not None and time.monotonic() - reported >= progress_every:
                reported = time.monotonic()
                await progress(raw, upload.size)
        await producer
        await upload.write(await asyncio.to_thread(encoder.finish))
        result = await upload.complete()
    except BaseException:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await producer
        await upload.abort()
        raise
    if progress is not None:
        await progress(raw, result.size)
    return Sent(raw, result, time.monotonic() - started)


async def send_fd(
    fd: int,
    transfer: Transfer,
    key: str,
    *,
    progress: Progress | None = None,
    metadata: dict[str, str] | None = None,
    progress_every: float = 2.0,
) -> Sent:
    """`send` from a pipe file descriptor: one thread reads it in big blocks and encodes
    them (both let go of the GIL), the event loop only hands encoded bytes to the upload."""
    started = time.monotonic()
    upload = transfer.upload(key, metadata)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, bytes] | BaseException | None] = asyncio.Queue(QUEUE_DEPTH)
    stop = threading.Event()

    def put(item: tuple[int, bytes] | BaseException | None) -> None:
        while not stop.is_set():
            future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
            try:
                future.result(timeout=1.0)
                return
            except concurrent.futures.TimeoutError:
                future.cancel()

    def produce() -> None:
        encoder = transfer.codec.encoder()
        # One buffer, read into and encoded from in place: a fresh MiB per read is a fresh
        # mapping to fault in (big allocations are mmapped, see `lifeboat.common.malloc`),
        # which cost a physical backup as much CPU as its compression.
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        try:
            eof = False
            while not stop.is_set() and not eof:
                # A pipe gives at most its capacity per read: gather a whole chunk, so the
                # codec and the hand-over to the loop run once per MiB, not per 64 KiB.
                n = 0
                while n < CHUNK:
                    got = os.readv(fd, [view[n:]])
                    if not got:
                        eof = True
                        break
                    n += got
                if n:
                    put((n, encoder.update(view[:n])))
            put((0, encoder.finish()))
            put(None)
        except BaseException as exc:
            put(exc)

    worker = threading.Thread(target=produce, name=f"encode-{key}", daemon=True)
    worker.start()
    raw = 0
    reported = started
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            n, out = item
            raw += n
            if out:
                await upload.write(out)
            if progress is not None and time.monotonic() - reported >= progress_every:
                reported = time.monotonic()
                await progress(raw, upload.size)
        result = await upload.complete()
    except BaseException:
        stop.set()
        await upload.abort()
        raise
    finally:
        stop.set()
        await asyncio.to_thread(worker.join, 5)
    if progress is not None:
        await progress(raw, result.size)
    return Sent(raw, result, time.monotonic() - started)


async def send_bytes(data: bytes, transfer: Transfer, key: str) -> Sent:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return await send(reader, transfer, key)


async def receive_into(
    transfer: Transfer, key: str, sha256: str | None, sink: BinaryIO, *, concurrency: int = 3
) -> int:
    """Download `key`, decode it into `sink` (closed at the end); the stored bytes read."""
    writer = DecodingWriter(transfer.codec, sink)
    stored = 0
    try:
        async for chunk in stream_object(
            transfer.client,
            transfer.bucket,
            key,
            expected_sha256=sha256,
            concurrency=concurrency,
        ):
            stored += len(chunk)
            await asyncio.to_thread(writer.write, chunk)
        await asyncio.to_thread(writer.finish)
    finally:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(sink.close)
    return stored


def pipe() -> tuple[int, BinaryIO]:
    """A pipe: the read end for a tool's stdin, the write end as a blocking file for us."""
    r, w = os.pipe()
    with contextlib.suppress(OSError):
        # A bigger pipe (Linux): the decoder and the tool wake each other up less often.
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1024 * 1024)
    return r, os.fdopen(w, "wb", buffering=0)
