"""Restoring a backup into a PostgreSQL instance on this host.

Physical: the base backup's tar stream is decoded straight into `tar -x` (nothing staged),
the WAL the plan names is fetched beside it, and the copy recovers to the target through a
`restore_command` that only copies from that local directory (no credentials reach the
server), then promotes. Logical: a fresh `initdb`, the globals if backed up, each database
through pg_restore's stdin. A failed restore removes what it created; it never touches an
existing data directory (the node swap happens in `swap_into_node` only after success).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from lifeboat.backup.manifest import Manifest, StoredObject
from lifeboat.backup.pipeline import Transfer, pipe, receive_into
from lifeboat.backup.plan import RestorePlan, WalFile
from lifeboat.objstore.codec import Codec, Compression, WrongKeyError, key_id
from lifeboat.objstore.download import read_object
from lifeboat.pg import tools
from lifeboat.pg.osuser import OsUser
from lifeboat.pg.recovery import LOCAL_TRUST, RecoveryTarget, configure_recovery
from lifeboat.pg.replication import OWN_CONFIG
from lifeboat.pg.scratch import Instance


class RestoreError(RuntimeError):
    pass


@dataclass(frozen=True)
class RestoreContext:
    transfer: Transfer
    bindir: Path
    user: OsUser


@dataclass(frozen=True)
class Restored:
    instance: Instance
    seconds: float
    wal_segments: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_key(manifest: Manifest, codec: Codec) -> None:
    """Refuse before touching anything when the configured key is not the backup's."""
    if manifest.encryption is None:
        return
    if codec.key is None:
        raise WrongKeyError(f"{manifest.backup_id} is encrypted and no key is configured")
    if key_id(codec.key) != manifest.encryption.key_id:
        raise WrongKeyError(
            f"{manifest.backup_id} was encrypted with key {manifest.encryption.key_id}, "
            f"the configured key is {key_id(codec.key)}: wrong key"
        )


def _codec_for(manifest: Manifest, codec: Codec) -> Codec:
    return Codec(Compression(manifest.compression), manifest.compression_level, codec.key)


async def _extract(ctx: RestoreContext, codec: Codec, obj: StoredObject, into: Path) -> None:
    transfer = Transfer(ctx.transfer.client, ctx.transfer.bucket, codec)
    read_end, sink = pipe()
    argv = ["tar", "-x", "-f", "-", "-C", str(into)]
    try:
        async with tools.stream(argv, user=ctx.user, stdin=read_end, timeout=24 * 3600):
            os.close(read_end)
            read_end = -1
            await receive_into(transfer, obj.key, obj.sha256, sink)
    finally:
        if read_end >= 0:
            os.close(read_end)


async def _fetch_wal(ctx: RestoreContext, codec: Codec, plan: RestorePlan, into: Path) -> int:
    await asyncio.to_thread(into.mkdir, mode=0o700, exist_ok=True)
    limit = asyncio.Semaphore(4)

    seg = plan.backup.wal_segment_size or 16 * 1024 * 1024

    async def one(wal: WalFile) -> None:
        async with limit:
            stored = await read_object(ctx.transfer.client, ctx.transfer.bucket, wal.key)
            decoder = codec.decoder()
            data = await asyncio.to_thread(lambda: decoder.update(stored) + decoder.finish())
            if wal.segno is not None and ".partial" in wal.key and len(data) < seg:
                # The segment being written, as far as it was uploaded: recovery refuses a
                # short segment file ("wrong size") but stops at the zeros after the last
                # record, as in a segment pg_receivewal preallocated.
                data += bytes(seg - len(data))
            await asyncio.to_thread((into / wal.name).write_bytes, data)

    await asyncio.gather(*(one(w) for w in plan.wal))
    ctx.user.own(into)
    return len(plan.wal)


def _must_be_empty(instance: Instance) -> None:
    if instance.data_dir.exists() and any(instance.data_dir.iterdir()):
        raise RestoreError(f"{instance.data_dir} is not empty: refusing to restore into it")


def _configure(
    instance: Instance,
    target: RecoveryTarget,
    wal_dir: Path,
    listen: str,
    trust_local: bool,
    own_config_from: Path | None,
) -> None:
    data = instance.data_dir
    if own_config_from is not None:
        # An existing node keeps its own configuration, not the source's.
        for name in OWN_CONFIG:
            if (own_config_from / name).exists():
                shutil.copy2(own_config_from / name, data / name)
    configure_recovery(
        data,
        port=instance.port,
        socket_dir=instance.socket_dir,
        restore_command=f'cp "{wal_dir}/%f" "%p"',
        target=target,
        listen_addresses=listen,
    )
    if trust_local:
        # Only this OS user (and root) can reach the private socket directory.
        hba = data / "pg_hba.conf"
        hba.write_text(LOCAL_TRUST + "\n" + (hba.read_text() if hba.exists() else ""))
    (data / "pg_wal").mkdir(exist_ok=True)
    instance.user.own(instance.home)
    data.chmod(0o700)


async def restore_physical(
    ctx: RestoreContext,
    manifest: Manifest,
    plan: RestorePlan,
    instance: Instance,
    *,
    listen: str = "",
    trust_local: bool = True,
    own_config_from: Path | None = None,
) -> Restored:
    check_key(manifest, ctx.transfer.codec)
    codec = _codec_for(manifest, ctx.transfer.codec)
    started = time.monotonic()
    await asyncio.to_thread(_must_be_empty, instance)
    await asyncio.to_thread(instance.prepare)
    try:
        wal_dir = instance.home / "wal"
        base = next(o for o in manifest.objects if o.name == "base.tar")
        _, fetched = await asyncio.gather(
            _extract(ctx, codec, base, instance.data_dir), _fetch_wal(ctx, codec, plan, wal_dir)
        )
        target = RecoveryTarget(time=plan.target_time, lsn=plan.target_lsn)
        await asyncio.to_thread(
            _configure, instance, target, wal_dir, listen, trust_local, own_config_from
        )
        try:
            await asyncio.to_thread(instance.start)
            await asyncio.to_thread(instance.wait_promoted)
        except tools.ToolError as exc:
            tail = await asyncio.to_thread(instance.log_tail, 40)
            raise RestoreError(f"the restored copy did not recover: {exc}\n{tail}") from None
    except BaseException:
        await asyncio.to_thread(instance.remove)
        raise
    return Restored(instance, time.monotonic() - started, fetched)


async def _psql_file(ctx: RestoreContext, instance: Instance, data: bytes) -> None:
    argv = [str(ctx.bindir / "psql"), "-q", "-X", "-d", instance.conninfo(), "-f", "-"]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await proc.communicate(data)


async def restore_logical(ctx: RestoreContext, manifest: Manifest, instance: Instance) -> Restored:
    """A fresh instance (initdb, start), then the dumps into it."""
    check_key(manifest, ctx.transfer.codec)
    started = time.monotonic()
    await asyncio.to_thread(_must_be_empty, instance)
    try:
        await asyncio.to_thread(instance.initdb)
        await asyncio.to_thread(instance.start)
        await restore_dumps(ctx, manifest, instance)
    except BaseException:
        await asyncio.to_thread(instance.remove)
        raise
    return Restored(instance, time.monotonic() - started, 0)


async def restore_dumps(ctx: RestoreContext, manifest: Manifest, instance: Instance) -> None:
    """The globals (if backed up) and every database of `manifest` into a running instance,
    each dump streamed from S3 into pg_restore's stdin."""
    check_key(manifest, ctx.transfer.codec)
    codec = _codec_for(manifest, ctx.transfer.codec)
    transfer = Transfer(ctx.transfer.client, ctx.transfer.bucket, codec)
    has_globals = any(o.name == "globals.sql" for o in manifest.objects)
    for obj in manifest.objects:
        if obj.name == "globals.sql":
            stored = await read_object(transfer.client, transfer.bucket, obj.key)
            decoder = codec.decoder()
            await _psql_file(ctx, instance, decoder.update(stored) + decoder.finish())
    for obj in manifest.objects:
        if obj.database is None:
            continue
        if obj.database != "postgres":
            async with await psycopg.AsyncConnection.connect(
                instance.conninfo(), autocommit=True
            ) as conn:
                await conn.execute(
                    sql.SQL("create database {}").format(sql.Identifier(obj.database))
                )
        argv = [
            str(ctx.bindir / "pg_restore"),
            "--exit-on-error",
            "--dbname",
            instance.conninfo(obj.database),
        ]
        if not has_globals:
            argv += ["--no-owner", "--no-privileges"]
        read_end, sink = pipe()
        try:
            async with tools.stream(argv, stdin=read_end, timeout=24 * 3600):
                os.close(read_end)
                read_end = -1
                await receive_into(transfer, obj.key, obj.sha256, sink)
        finally:
            if read_end >= 0:
                os.close(read_end)
