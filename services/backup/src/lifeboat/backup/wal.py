"""Continuous WAL archiving from the current primary, through a replication slot.

`pg_receivewal` streams into a local spool. The segment being received is compressed as it
grows (what pg_receivewal has flushed, one zstd frame per step) and uploaded as its partial
every `partial_interval`; once complete it is those frames and the rest, encrypted and
checksummed, in S3 within one PUT. Completed segments (and timeline history files) are
dropped from the spool once uploaded (but for the newest, which pg_receivewal needs to know
where to resume). When S3 is down
segments wait in the spool and go up, oldest first, once it is back; past `spool_max_bytes`
receiving pauses and the slot keeps the WAL on the primary instead, which
`max_slot_wal_keep_size` bounds in turn (and `wal.slot_limited` says when it bites).

The archiver follows the primary: on `failover.completed` / `switchover.completed` (or when its
stream breaks) it finds the writable node again, creates its slot there and resumes from the
spool's position, crossing the timeline switch as pg_receivewal does; a new timeline asks for
a fresh base backup. `wal.status` publishes the archive lag, in bytes and in seconds (the age
of the oldest WAL not yet in S3): the RPO right now.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from botocore.exceptions import BotoCoreError, ClientError

from lifeboat.backup.manifest import wal_prefix
from lifeboat.backup.nodes import Connections, observe, primary_of
from lifeboat.backup.pipeline import Transfer
from lifeboat.backup.walnames import history_timeline, parse_segment, segment_name
from lifeboat.common.breakers import Breakers, CircuitOpenError
from lifeboat.common.decision import stamped
from lifeboat.common.events import (
    BackupKind,
    BackupRequested,
    ClusterEvent,
    Source,
    WalArchived,
    WalSlotLimited,
    WalSourceChanged,
    WalState,
    WalStatus,
)
from lifeboat.common.lsn import int_to_lsn, lsn_to_int
from lifeboat.common.redact import redact
from lifeboat.pg import tools

log = logging.getLogger(__name__)

Publish = Callable[[ClusterEvent], Awaitable[None]]

RECEIVER_NAME = "lifeboat_archiver"  # pg_receivewal's application_name on the primary
# WAL is compressed at zstd's fastest level: what it saves in S3 at higher levels is not worth
# the lag it adds on a busy host (the level is not recorded: decompression needs none).
WAL_LEVEL = 1
TICK = 0.05  # how often the spool is looked at: a completed segment waits at most this long
SAMPLE_EVERY = 0.1  # how often the primary's position is sampled: the lag's resolution


def pad_partials(spool: Path, seg_size: int) -> list[str]:
    """pg_receivewal fills a new segment file with zeros before it writes WAL into it;
    stopped while filling one (at the spool's bound, say), it leaves a `.partial` of another
    size, and then refuses to start ("should be 0 or 16777216"): archiving would stop for
    good. What WAL such a file holds is at its start, so filling the rest with zeros is
    exactly what pg_receivewal would have done. Returns the files padded."""
    padded = []
    for path in sorted(spool.glob("*.partial")):
        size = path.stat().st_size
        if 0 < size < seg_size:
            with path.open("r+b") as f:
                f.truncate(seg_size)  # the rest reads as zeros
            log.warning("%s: padded to %d bytes (was %d)", path.name, seg_size, size)
            padded.append(path.name)
    return padded


@dataclass
class _Growing:
    """The segment being received, compressed as it grows: each step's new bytes become one
    zstd frame, so when the segment completes its object is these frames and the last
    step's, ready at once instead of 16 MiB to compress and upload after the fact."""

    name: str
    raw: int = 0  # bytes of the segment taken so far
    crc: int = 0  # their crc32: the completed file must still begin with them
    pieces: list[bytes] = field(default_factory=list)

    def add(self, data: bytes, piece: bytes) -> None:
        self.raw += len(data)
        self.crc = zlib.crc32(data, self.crc)
        self.pieces.append(piece)


@dataclass
class Position:
    """What is in S3: the end of the newest archived segment on the newest timeline."""

    timeline: int = 0
    end: int = 0  # byte position
    segment: str | None = None


class Archiver:
    def __init__(
        self,
        *,
        cluster: str,
        conns: Connections,
        transfer: Transfer,
        spool: Path,
        bindir: Path,
        slot: str,
        publish: Publish,
        source: Source,
        breakers: Breakers,
        spool_max_bytes: int = 2 * 1024**3,
        slot_max_keep_mb: int = 8192,
        status_interval: float = 1.0,
        segment_size: int = 16 * 1024 * 1024,
        partial_interval: float = 0.25,
    ) -> None:
        self.cluster = cluster
        self.conns = conns
        self.transfer = transfer
        self.spool = spool
        self.bindir = bindir
        self.slot = slot
        self.publish = publish
        self.source = source
        self.breakers = breakers
        self.spool_max_bytes = spool_max_bytes
        self.slot_max_keep_mb = slot_max_keep_mb
        self.status_interval = status_interval
        self.seg = segment_size
        self.partial_interval = partial_interval
        self._partial_at = 0.0
        self._partial_keys: dict[str, str] = {}  # segment name -> its partial's key in S3
        self.primary: str | None = None
        self.timeline: int | None = None
        self.position = Position()
        self.state = WalState.STOPPED
        self.error: str | None = None
        self._move = asyncio.Event()
        self._samples: deque[tuple[float, int]] = deque(maxlen=6000)  # 10 min of samples
        self._primary_lsn: int | None = None
        self._slot_status: str | None = None
        self._uploaded: set[str] = set()
        self._spool_size = 0
        self._growing: dict[str, _Growing] = {}
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self._conn_node: str | None = None

    # --- control --------------------------------------------------------------------------

    def primary_changed(self, reason: str) -> None:
        """A failover or switchover finished: stop streaming from the old primary now."""
        log.info("WAL archiving re-targets: %s", reason)
        self._move.set()

    async def run(self) -> None:
        await asyncio.to_thread(self.spool.mkdir, parents=True, exist_ok=True)
        tasks = [
            asyncio.create_task(self._upload_loop(), name="wal-upload"),
            asyncio.create_task(self._status_loop(), name="wal-status"),
        ]
        try:
            await self._receive_loop()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._close_conn()

    # --- receiving ------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        backoff = 0.5
        while True:
            self._move.clear()
            try:
                await self._receive_once()
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error = redact(str(exc))
                log.warning("WAL receiving stopped: %s", self.error)
                backoff = min(backoff * 2, 5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._move.wait(), backoff)

    async def _receive_once(self) -> None:
        states = await observe(self.conns)
        primary = primary_of(states)
        if primary is None:
            self.state = WalState.NO_PRIMARY
            self.error = "no single writable node"
            return
        timeline = next(s.timeline for s in states if s.name == primary)
        if primary != self.primary:
            await self._moved_to(primary, timeline)
        self.primary, self.timeline = primary, timeline
        node = self.conns.spec.node(primary)
        await self._prepare_primary(primary)
        if timeline is not None:
            await self._cross_fork(primary, timeline)
        while await self._spool_bytes() > self.spool_max_bytes:
            self.state = WalState.SPOOL_FULL
            if await self._wait_or_move(1.0):
                return
        await asyncio.to_thread(pad_partials, self.spool, self.seg)
        argv = [
            str(self.bindir / "pg_receivewal"),
            "--directory",
            str(self.spool),
            "--slot",
            self.slot,
            "--no-loop",
            "--no-password",
            # Flushed and reported at once: the primary then knows how far the spool is,
            # which is how far an uploaded partial segment reaches.
            "--synchronous",
            "--dbname",
            self.conns.replication_conninfo(node, application_name=RECEIVER_NAME),
        ]
        env = self.conns.tool_env(replication=True)
        stopping = False
        try:
            async with tools.stream_logged(argv, env=env, timeout=10 * 365 * 86400) as (proc, _):
                self.state = WalState.STREAMING
                self.error = None
                moved = asyncio.ensure_future(self._move.wait())
                exited = asyncio.ensure_future(proc.wait())
                full = asyncio.ensure_future(self._until_spool_full())
                done, pending = await asyncio.wait(
                    {moved, exited, full}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in pending:
                    task.cancel()
                if exited not in done:
                    stopping = True
                    proc.terminate()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(proc.wait(), 5)
        except tools.ToolError:
            if not stopping:  # a deliberate stop is not a failure of the tool
                raise

    async def _wait_or_move(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._move.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _until_spool_full(self) -> None:
        while await self._spool_bytes() <= self.spool_max_bytes:  # noqa: ASYNC110 (polls disk)
            await asyncio.sleep(1.0)
        self.state = WalState.SPOOL_FULL

    async def _moved_to(self, primary: str, timeline: int | None) -> None:
        previous, old_timeline = self.primary, self.timeline
        await self.publish(
            WalSourceChanged(
                cluster=self.cluster,
                source=self.source,
                previous=previous,
                primary=primary,
                timeline=timeline,
                slot=self.slot,
                reason="archiving starts"
                if previous is None
                else f"{previous} is no longer primary",
            )
        )
        if old_timeline is not None and timeline is not None and timeline > old_timeline:
            # Every worker that sees the new timeline asks for the same backup: one id.
            request = BackupRequested(
                cluster=self.cluster,
                source=self.source,
                kind=BackupKind.PHYSICAL,
                reason=f"timeline changed to {timeline}: a fresh base backup",
                requested_by="wal-archiver",
            )
            await self.publish(stamped(request, datetime.now(UTC)))
        self._growing.clear()  # what was taken from the old primary's stream starts over
        if previous is not None:
            await self._drop_old_slot(previous)

    async def _drop_old_slot(self, node: str) -> None:
        """Best effort: an old primary back as a standby must not keep our slot's WAL."""
        with contextlib.suppress(psycopg.Error, OSError, KeyError):
            async with await psycopg.AsyncConnection.connect(
                self.conns.dsn(self.conns.spec.node(node)).reveal(), autocommit=True
            ) as conn:
                await conn.execute(
                    "select pg_drop_replication_slot(slot_name) from pg_replication_slots "
                    "where slot_name = %s and not active",
                    (self.slot,),
                )

    async def _prepare_primary(self, primary: str) -> None:
        """The slot, created reserving WAL now, and the size guard on it."""
        dsn = self.conns.dsn(self.conns.spec.node(primary))
        async with await psycopg.AsyncConnection.connect(dsn.reveal(), autocommit=True) as conn:
            await conn.execute(
                "select pg_create_physical_replication_slot(%s, true) "
                "where not exists (select 1 from pg_replication_slots where slot_name = %s)",
                (self.slot, self.slot),
            )
            row = await (await conn.execute("show max_slot_wal_keep_size")).fetchone()
            if self.slot_max_keep_mb and row is not None and str(row[0]) == "-1":
                await conn.execute(
                    f"alter system set max_slot_wal_keep_size = '{int(self.slot_max_keep_mb)}MB'"
                )
                await conn.execute("select pg_reload_conf()")
                log.info(
                    "set max_slot_wal_keep_size to %d MB on %s", self.slot_max_keep_mb, primary
                )

    def _spool_start(self) -> tuple[int, int] | None:
        """Where pg_receivewal would resume: (timeline, byte position), from the spool."""
        best: tuple[int, int] | None = None
        for path in self.spool.iterdir():
            partial = path.name.endswith(".partial")
            parsed = parse_segment(path.name.removesuffix(".partial"), self.seg)
            if parsed is None:
                continue
            tli, segno = parsed
            pos = segno * self.seg if partial else (segno + 1) * self.seg
            if best is None or (pos, tli) > (best[1], best[0]):
                best = (tli, pos)
        return best

    async def _cross_fork(self, primary: str, timeline: int) -> None:
        """After a failover the spool may hold WAL of the old timeline past the point where
        the new primary forked from it (an old primary's last, unreplicated writes): the new
        primary cannot stream from there. Resume instead at the start of the fork's segment
        on the new timeline, which holds the old timeline up to the fork and the new after."""
        start = await asyncio.to_thread(self._spool_start)
        if start is None or start[0] >= timeline:
            return
        dsn = self.conns.dsn(self.conns.spec.node(primary))
        try:
            async with await psycopg.AsyncConnection.connect(dsn.reveal(), autocommit=True) as conn:
                row = await (
                    await conn.execute(
                        "select pg_read_file(%s)", (f"pg_wal/{timeline:08X}.history",)
                    )
                ).fetchone()
        except psycopg.Error as exc:
            log.warning("cannot read the history of timeline %d: %s", timeline, exc)
            return
        lines = [ln.split() for ln in str(row[0] if row else "").splitlines() if ln.strip()]
        if not lines:
            return
        fork = lsn_to_int(lines[-1][1])
        if start[1] < fork:
            return  # the new primary still serves the old timeline from where we are
        fork_segno = fork // self.seg
        await self._flush_uploads()

        def reset() -> None:
            for path in self.spool.iterdir():
                parsed = parse_segment(path.name.removesuffix(".partial"), self.seg)
                if parsed is not None and parsed[0] < timeline and parsed[1] >= fork_segno:
                    path.unlink(missing_ok=True)
            marker = self.spool / (segment_name(timeline, fork_segno, self.seg) + ".partial")
            with marker.open("wb") as f:
                f.truncate(self.seg)

        await asyncio.to_thread(reset)
        self._growing.clear()
        log.info("WAL archiving resumes on timeline %d at the fork, %s", timeline, lines[-1][1])

    async def _flush_uploads(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = await asyncio.to_thread(self._ready)
            if all(p.name in self._uploaded for p in ready):
                return
            await asyncio.sleep(0.2)

    # --- uploading ------------------------------------------------------------------------

    async def _spool_bytes(self) -> int:
        def size() -> int:
            return sum(p.stat().st_size for p in self.spool.iterdir() if p.is_file())

        try:
            return await asyncio.to_thread(size)
        except OSError:
            return 0

    def _ready(self) -> list[Path]:
        """Completed segments and history files, oldest first (histories before segments)."""
        ready = []
        for path in self.spool.iterdir():
            name = path.name
            if history_timeline(name) is not None:
                ready.append(path)
            elif parse_segment(name, self.seg) is not None:
                with contextlib.suppress(OSError):
                    if path.stat().st_size == self.seg:
                        ready.append(path)
        return sorted(ready, key=lambda p: (history_timeline(p.name) is None, p.name[8:], p.name))

    async def _upload_loop(self) -> None:
        backoff = TICK
        while True:
            ready = await asyncio.to_thread(self._ready)
            pending = [p for p in ready if p.name not in self._uploaded]
            try:
                for path in pending:
                    await self._upload(path)
                if self.partial_interval > 0:
                    await self._grow()
                backoff = TICK
                if self.state is WalState.CATCHING_UP:
                    self.state = WalState.STREAMING
                await asyncio.to_thread(self._prune)
            except (BotoCoreError, ClientError, CircuitOpenError, OSError) as exc:
                self.state = WalState.CATCHING_UP
                self.error = f"S3: {type(exc).__name__}: {exc}"
                log.warning("WAL upload waits for S3: %s", self.error)
                backoff = min(max(backoff, 0.1) * 2, 5.0)
            await asyncio.sleep(backoff)

    def _encode_whole(self, path: Path) -> tuple[bytes, int, float]:
        """The completed file as stored, its raw size and when its last byte was written; the
        pieces taken while it grew are used when the file still begins with them."""
        raw = path.read_bytes()
        completed_at = path.stat().st_mtime
        codec = self.transfer.codec
        grown = self._growing.pop(path.name, None)
        if not codec.joins:
            encoder = codec.encoder()
            return encoder.update(raw) + encoder.finish(), len(raw), completed_at
        pieces: list[bytes] = []
        taken = 0
        if grown is not None and zlib.crc32(memoryview(raw)[: grown.raw]) == grown.crc:
            pieces, taken = grown.pieces, grown.raw
        pieces.append(codec.piece(raw[taken:], WAL_LEVEL))
        return codec.seal(b"".join(pieces)), len(raw), completed_at

    async def _upload(self, path: Path) -> None:
        started = time.monotonic()
        stored, raw_size, completed_at = await asyncio.to_thread(self._encode_whole, path)
        digest = await self._put(path.name, stored, {"raw-bytes": str(raw_size)})
        # Acknowledged by S3: only now is the segment archived.
        seconds = round(max(0.0, time.time() - completed_at), 3)
        self._uploaded.add(path.name)
        parsed = parse_segment(path.name, self.seg)
        timeline = history_timeline(path.name) if parsed is None else parsed[0]
        if parsed is not None:
            tli, segno = parsed
            end = (segno + 1) * self.seg
            if (tli, end) > (self.position.timeline, self.position.end):
                self.position = Position(tli, end, path.name)
        await self.publish(
            WalArchived(
                cluster=self.cluster,
                source=self.source,
                segment=path.name,
                timeline=timeline or 0,
                size_bytes=raw_size,
                stored_bytes=len(stored),
                sha256=digest,
                seconds=seconds,
            )
        )
        await self._drop_partial(path.name)  # the whole segment supersedes its partial
        log.debug("archived %s in %.3fs", path.name, time.monotonic() - started)

    async def _put(self, name: str, stored: bytes, metadata: dict[str, str]) -> str:
        """`stored` as the WAL object `name`, its sha256 in its metadata; the sha256."""
        digest = await asyncio.to_thread(lambda: hashlib.sha256(stored).hexdigest())
        async with self.breakers.guard("s3"):
            await asyncio.to_thread(
                self.transfer.client.put_object,
                Bucket=self.transfer.bucket,
                Key=wal_prefix(self.cluster) + name + self.transfer.codec.suffix,
                Body=stored,
                Metadata={"sha256": digest, **metadata},
            )
        return digest

    async def _query(self, query: str, params: tuple[str, ...] = ()) -> tuple[Any, ...] | None:
        """One row from the primary over a connection kept open: a new one every tick would
        cost the primary a backend fork each time, on the host whose WAL we chase."""
        if self.primary is None:
            return None
        if self._conn is None or self._conn.closed or self._conn_node != self.primary:
            await self._close_conn()
            dsn = self.conns.dsn(self.conns.spec.node(self.primary))
            self._conn = await psycopg.AsyncConnection.connect(dsn.reveal(), autocommit=True)
            self._conn_node = self.primary
        try:
            return await (await self._conn.execute(query, params)).fetchone()
        except (psycopg.Error, OSError):
            await self._close_conn()
            raise

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

    async def _grow(self) -> None:
        """Take what pg_receivewal has flushed of the segment being written into its pieces
        (every tick), and upload them as its partial (every `partial_interval`), so the
        archive reaches within a fraction of a second of the primary, not a segment behind.
        A partial covers exactly the bytes taken, all of them flushed before they were read."""
        if not self.transfer.codec.joins or self.primary is None:
            return
        partials = sorted(
            (p for p in self.spool.iterdir() if p.name.endswith(".partial")),
            key=lambda p: p.name[8:] + p.name[:8],
        )
        if not partials:
            return
        path = partials[-1]
        name = path.name.removesuffix(".partial")
        parsed = parse_segment(name, self.seg)
        if parsed is None:
            return
        tli, segno = parsed
        try:
            row = await self._query(
                "select flush_lsn::text from pg_stat_replication where application_name = %s",
                (RECEIVER_NAME,),
            )
        except (psycopg.Error, OSError):
            return
        if row is None or row[0] is None:
            return
        flushed = lsn_to_int(str(row[0]))
        if flushed // self.seg != segno:
            return
        grown = self._growing.get(name)
        if grown is None:
            # A new segment: the one before may still wait for its upload as a whole; any
            # older one was completed or made moot (a fork) and is dropped.
            kept = sorted(n for n in self._growing if n < name)[-1:]
            self._growing = {n: self._growing[n] for n in kept}
            grown = self._growing[name] = _Growing(name)
        want = flushed - segno * self.seg - grown.raw
        if want > 0:

            def take() -> tuple[bytes, bytes]:
                fd = os.open(path, os.O_RDONLY)
                try:
                    data = os.pread(fd, want, grown.raw)
                finally:
                    os.close(fd)
                return data, self.transfer.codec.piece(data, WAL_LEVEL)

            try:
                data, piece = await asyncio.to_thread(take)
            except FileNotFoundError:
                return  # completed (renamed) meanwhile: the whole segment goes up instead
            if name not in self._growing:
                return  # the segment was completed and uploaded while this was read
            grown.add(data, piece)
        end = segno * self.seg + grown.raw
        due = time.monotonic() - self._partial_at >= self.partial_interval
        if not due or (tli, end) <= (self.position.timeline, self.position.end):
            return
        ready = await asyncio.to_thread(self._ready)
        if any(p.name not in self._uploaded for p in ready):
            # A segment completed since this round began: it goes up first, or the position
            # would claim WAL that is not in S3 yet.
            return
        self._partial_at = time.monotonic()
        codec = self.transfer.codec
        stored = await asyncio.to_thread(lambda: codec.seal(b"".join(grown.pieces)))
        await self._put(name + ".partial", stored, {"flushed-lsn": int_to_lsn(end)})
        self._partial_keys[name] = wal_prefix(self.cluster) + name + ".partial" + codec.suffix
        if name not in self._uploaded and (tli, end) > (
            self.position.timeline,
            self.position.end,
        ):
            self.position = Position(tli, end, name + ".partial")

    async def _drop_partial(self, name: str) -> None:
        key = self._partial_keys.pop(name, None)
        if key is not None:
            with contextlib.suppress(BotoCoreError, ClientError):
                await asyncio.to_thread(
                    self.transfer.client.delete_object, Bucket=self.transfer.bucket, Key=key
                )

    def _prune(self) -> None:
        """Drop uploaded files but the newest segment (pg_receivewal resumes after it), and
        partial segments an uploaded later segment has made moot."""
        segments = sorted(
            (p for p in self.spool.iterdir() if parse_segment(p.name, self.seg)),
            key=lambda p: p.name[8:] + p.name[:8],
        )
        newest = segments[-1].name if segments else None
        for path in self.spool.iterdir():
            name = path.name
            if name in self._uploaded and name != newest and history_timeline(name) is None:
                path.unlink(missing_ok=True)
            elif name.endswith(".partial") and newest is not None:
                parsed = parse_segment(name.removesuffix(".partial"), self.seg)
                latest = parse_segment(newest, self.seg)
                if parsed and latest and parsed[1] <= latest[1] and parsed[0] < latest[0]:
                    path.unlink(missing_ok=True)
            elif name in self._uploaded and history_timeline(name) is not None:
                path.unlink(missing_ok=True)

    # --- status ---------------------------------------------------------------------------

    async def _status_loop(self) -> None:
        published = 0.0
        while True:
            await asyncio.sleep(min(self.status_interval, SAMPLE_EVERY))
            with contextlib.suppress(Exception):
                await self._sample()
            if time.monotonic() - published >= self.status_interval:
                published = time.monotonic()
                with contextlib.suppress(Exception):
                    await self.publish(self.status())

    async def _sample(self) -> None:
        self._spool_size = await self._spool_bytes()
        if self.primary is None:
            return
        row = await self._query(
            "select pg_current_wal_lsn()::text, "
            "(select wal_status from pg_replication_slots where slot_name = %s), "
            "(select safe_wal_size from pg_replication_slots where slot_name = %s)",
            (self.slot, self.slot),
        )
        if row is None:
            return
        lsn, wal_status, safe = row
        self._primary_lsn = lsn_to_int(str(lsn))
        self._samples.append((time.monotonic(), self._primary_lsn))
        if wal_status in ("unreserved", "lost") and wal_status != self._slot_status:
            await self.publish(
                WalSlotLimited(
                    cluster=self.cluster,
                    source=self.source,
                    node=self.primary,
                    slot=self.slot,
                    wal_status=str(wal_status),
                    safe_wal_size=None if safe is None else int(str(safe)),
                    reason=(
                        "max_slot_wal_keep_size reached: the primary may remove WAL "
                        "before it is archived"
                        if wal_status == "unreserved"
                        else "the slot lost WAL the archive does not have: a new base "
                        "backup is needed for point-in-time restores past this"
                    ),
                )
            )
        self._slot_status = None if wal_status is None else str(wal_status)

    def lag(self) -> tuple[int | None, float | None]:
        if self._primary_lsn is None:
            return None, None
        archived = self.position.end
        lag_bytes = max(0, self._primary_lsn - archived)
        if lag_bytes == 0:
            return 0, 0.0
        # The oldest WAL not in S3 was written after the last sample that did not have it
        # yet: its age is at most that sample's (an upper bound, within SAMPLE_EVERY). With
        # no such sample left, the oldest sample's age is all that is known.
        since: float | None = None
        for t, lsn in self._samples:
            if lsn > archived:
                since = since if since is not None else t
                break
            since = t
        return lag_bytes, 0.0 if since is None else round(time.monotonic() - since, 3)

    def status(self) -> WalStatus:
        lag_bytes, lag_seconds = self.lag()
        return WalStatus(
            cluster=self.cluster,
            source=self.source,
            state=self.state,
            primary=self.primary,
            timeline=self.timeline,
            primary_lsn=None if self._primary_lsn is None else int_to_lsn(self._primary_lsn),
            archived_lsn=int_to_lsn(self.position.end) if self.position.end else None,
            last_segment=self.position.segment,
            lag_bytes=lag_bytes,
            lag_seconds=lag_seconds,
            spool_bytes=self._spool_size,
            error=self.error,
        )
