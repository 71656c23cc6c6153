"""The catalogue is what S3 holds: manifests (one per listed backup), their latest test
restore, and the archived WAL. Nothing here is cached across calls, so any worker on any
host lists exactly what another would."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError
from pydantic import ValidationError

from lifeboat.backup.manifest import (
    Manifest,
    Verification,
    backup_prefix,
    backups_prefix,
    manifest_key,
    verification_key,
    wal_prefix,
)
from lifeboat.backup.plan import CatalogEntry, WalFile
from lifeboat.backup.walnames import history_timeline, parse_segment
from lifeboat.objstore.download import ObjectMissingError, read_object

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)


class CatalogueError(RuntimeError):
    pass


@dataclass(frozen=True)
class Listed:
    manifest: Manifest
    verification: Verification | None

    def entry(self) -> CatalogEntry:
        m = self.manifest
        return CatalogEntry(
            backup_id=m.backup_id,
            kind=m.kind,
            stopped_at=m.stopped_at,
            good=self.verification is None or self.verification.ok,
            timeline=m.timeline,
            start_lsn=m.start_lsn,
            stop_lsn=m.stop_lsn,
            wal_segment_size=m.wal_segment_size,
            files_lsn=m.files_lsn,
        )


class Catalogue:
    def __init__(self, client: S3Client, bucket: str, cluster: str) -> None:
        self.client = client
        self.bucket = bucket
        self.cluster = cluster

    def _keys(self, prefix: str) -> Iterator[tuple[str, datetime, int]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"], obj["LastModified"], obj["Size"]

    async def keys(self, prefix: str) -> list[tuple[str, datetime, int]]:
        return await asyncio.to_thread(lambda: list(self._keys(prefix)))

    async def put_json(self, key: str, body: str) -> None:
        await asyncio.to_thread(
            self.client.put_object,
            Bucket=self.bucket,
            Key=key,
            Body=body.encode(),
        )

    async def write_manifest(self, manifest: Manifest) -> str:
        """The commit point: from now on the backup is listed."""
        key = manifest_key(self.cluster, manifest.backup_id)
        await self.put_json(key, manifest.model_dump_json(indent=2))
        return key

    async def write_verification(self, verification: Verification) -> None:
        key = verification_key(self.cluster, verification.backup_id)
        await self.put_json(key, verification.model_dump_json(indent=2))

    async def manifest(self, backup: str) -> Manifest:
        try:
            raw = await read_object(self.client, self.bucket, manifest_key(self.cluster, backup))
        except ObjectMissingError:
            raise CatalogueError(f"no backup {backup!r} is listed for {self.cluster}") from None
        return Manifest.model_validate_json(raw)

    async def has_request(self, request_id: str) -> bool:
        """Whether a listed backup came from this request: one LIST, no manifest read, as
        backup ids end with the request id's first 8 hex digits (then the manifest says)."""
        tail = request_id.replace("-", "")[:8]
        prefix = backups_prefix(self.cluster)
        for key, _, _ in await self.keys(prefix):
            backup = key[len(prefix) :].split("/", 1)[0]
            if key.endswith("/manifest.json") and backup.endswith(f"-{tail}"):
                manifest = await self.manifest(backup)
                if str(manifest.request_id) == request_id:
                    return True
        return False

    async def listed(self) -> list[Listed]:
        """Every listed backup, oldest first: those with a manifest, and only those."""
        keys = await self.keys(backups_prefix(self.cluster))
        names = {k for k, _, _ in keys}
        listed: list[Listed] = []
        for key in sorted(names):
            if not key.endswith("/manifest.json"):
                continue
            try:
                manifest = Manifest.model_validate_json(
                    await read_object(self.client, self.bucket, key)
                )
            except (ValidationError, json.JSONDecodeError, ObjectMissingError) as exc:
                log.warning("ignoring unreadable manifest %s: %s", key, exc)
                continue
            verification = None
            vkey = verification_key(self.cluster, manifest.backup_id)
            if vkey in names:
                try:
                    verification = Verification.model_validate_json(
                        await read_object(self.client, self.bucket, vkey)
                    )
                except (ValidationError, ObjectMissingError):
                    verification = None
            listed.append(Listed(manifest, verification))
        listed.sort(key=lambda item: (item.manifest.stopped_at, item.manifest.backup_id))
        return listed

    async def wal(self) -> list[WalFile]:
        files: list[WalFile] = []
        partials: dict[str, WalFile] = {}
        prefix = wal_prefix(self.cluster)
        for key, modified, _ in await self.keys(prefix):
            name = key[len(prefix) :].split(".", 1)[0]
            if key[len(prefix) :].split(".")[1:2] == ["history"]:
                tli = history_timeline(f"{name}.history")
                if tli is not None:
                    files.append(WalFile(f"{name}.history", key, tli, None, modified))
                continue
            parsed = parse_segment(name, 16 * 1024 * 1024)
            if parsed is None:
                continue
            found = WalFile(name, key, parsed[0], parsed[1], modified)
            if ".partial" in key:
                partials[name] = found
            else:
                files.append(found)
        # The segment being written, as far as it was uploaded: restored under its own name
        # (recovery reads it up to its last valid record) when no whole copy exists.
        whole = {f.name for f in files}
        files += [p for n, p in partials.items() if n not in whole]
        return files

    async def delete_keys(self, keys: list[str]) -> int:
        def delete() -> int:
            for i in range(0, len(keys), 1000):
                batch = keys[i : i + 1000]
                self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            return len(keys)

        return await asyncio.to_thread(delete) if keys else 0

    async def delete_backup(self, backup: str) -> int:
        """Unlist first (the manifest goes first), then remove the objects."""
        prefix = backup_prefix(self.cluster, backup)
        keys = [k for k, _, _ in await self.keys(prefix)]
        manifest = manifest_key(self.cluster, backup)
        if manifest in keys:
            await self.delete_keys([manifest])
        return 1 + await self.delete_keys([k for k in keys if k != manifest])

    async def orphans(self, grace: timedelta, now: datetime | None = None) -> list[str]:
        """Objects of backups that never got a manifest, older than `grace`."""
        now = now or datetime.now(UTC)
        by_backup: dict[str, list[tuple[str, datetime]]] = {}
        prefix = backups_prefix(self.cluster)
        for key, modified, _ in await self.keys(prefix):
            backup = key[len(prefix) :].split("/", 1)[0]
            by_backup.setdefault(backup, []).append((key, modified))
        stale: list[str] = []
        for backup, objs in by_backup.items():
            if any(k == manifest_key(self.cluster, backup) for k, _ in objs):
                continue
            if all(now - modified > grace for _, modified in objs):
                stale += [k for k, _ in objs]
        return stale

    async def abort_stale_uploads(self, grace: timedelta, now: datetime | None = None) -> int:
        """Multipart uploads a dead worker left open hold storage until aborted."""
        now = now or datetime.now(UTC)

        def abort() -> int:
            count = 0
            try:
                answer = self.client.list_multipart_uploads(
                    Bucket=self.bucket, Prefix=f"{self.cluster}/"
                )
            except ClientError:
                return 0
            for upload in answer.get("Uploads", []):
                if now - upload["Initiated"] > grace:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    count += 1
            return count

        return await asyncio.to_thread(abort)
