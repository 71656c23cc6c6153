"""One file set's objects in S3: content-addressed uploads that are never torn, multipart
uploads that resume after a crash, verified downloads, the manifest and the snapshots.

All of it is blocking (the S3 client's calls) and meant to run in worker threads, many at
once: the client is thread-safe and the bulk client pools enough connections.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat as st
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from lifeboat.filesync.index import Index, Stat
from lifeboat.filesync.scan import TMP_PREFIX, Changed, stat_of
from lifeboat.objstore.filesets import (
    Entry,
    Manifest,
    Snapshot,
    SnapshotVerification,
    manifest_key,
    object_key,
    objects_prefix,
    snapshot_key,
    snapshots_prefix,
    verification_key,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

MIN_PART = 5 * 1024 * 1024


class Unsafe(OSError):
    """Writing there would leave the root (a symlinked or non-directory parent)."""


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code", "") in ("NoSuchKey", "404", "NotFound")


@dataclass(frozen=True)
class Sizes:
    multipart_threshold: int = 64 * 1024 * 1024
    part_size: int = 16 * 1024 * 1024
    # Bytes held in memory by uploads at once, whatever the parallelism: a file below the
    # threshold, or a part, is read whole before it is sent.
    memory: int = 128 * 1024 * 1024


class Budget:
    """At most `limit` bytes taken at once; one taker may exceed it alone (a big part)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def take(self, n: int) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


def _read(fd: int, size: int, offset: int | None = None) -> bytes:
    """Up to `size` bytes in one buffer (no list of chunks joined: half the memory)."""
    data = os.pread(fd, size, offset) if offset is not None else os.read(fd, size)
    if len(data) < size and data:  # a short read: rare on regular files
        more = _read(fd, size - len(data), None if offset is None else offset + len(data))
        return data + more
    return data


class SetStore:
    def __init__(self, client: S3Client, bucket: str, prefix: str, sizes: Sizes = Sizes()) -> None:
        if sizes.part_size < MIN_PART:
            raise ValueError(f"part size must be at least {MIN_PART} bytes")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.sizes = sizes
        self.budget = Budget(max(sizes.memory, sizes.multipart_threshold, sizes.part_size))

    # --- manifest and snapshots ---------------------------------------------------------

    def read_manifest(self, cluster: str, fileset: str) -> Manifest:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=manifest_key(self.prefix))
        except ClientError as exc:
            if _missing(exc):
                return Manifest(cluster=cluster, fileset=fileset)
            raise
        return Manifest.model_validate_json(body["Body"].read())

    def write_manifest(self, manifest: Manifest) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=manifest_key(self.prefix),
            Body=manifest.model_dump_json().encode(),
            ContentType="application/json",
        )

    def _keys(self, prefix: str) -> Iterator[tuple[str, int]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"], obj["Size"]

    def stored_objects(self) -> dict[str, int]:
        """sha256 -> size of every object in the set's store (one listing)."""
        base = objects_prefix(self.prefix)
        return {key.rsplit("/", 1)[-1]: size for key, size in self._keys(base)}

    def snapshots(self) -> list[Snapshot]:
        out = []
        for key, _ in self._keys(snapshots_prefix(self.prefix)):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            out.append(Snapshot.model_validate_json(body))
        return sorted(out, key=lambda s: (s.taken_at, s.snapshot_id))

    def snapshot(self, snapshot_id: str) -> Snapshot:
        key = snapshot_key(self.prefix, snapshot_id)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _missing(exc):
                raise KeyError(f"no snapshot {snapshot_id!r}") from None
            raise
        return Snapshot.model_validate_json(body)

    def write_snapshot(self, snapshot: Snapshot) -> str:
        key = snapshot_key(self.prefix, snapshot.snapshot_id)
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=snapshot.model_dump_json().encode(),
            ContentType="application/json",
        )
        return key

    def delete_snapshot(self, snapshot_id: str) -> None:
        """Unlisted first (the snapshot goes before its verification)."""
        self.client.delete_object(Bucket=self.bucket, Key=snapshot_key(self.prefix, snapshot_id))
        self.client.delete_object(
            Bucket=self.bucket, Key=verification_key(self.prefix, snapshot_id)
        )

    def verifications(self, snapshot_ids: list[str]) -> dict[str, SnapshotVerification]:
        """The latest verification of each snapshot that has one."""
        found = {}
        for sid in snapshot_ids:
            key = verification_key(self.prefix, sid)
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if _missing(exc):
                    continue
                raise
            found[sid] = SnapshotVerification.model_validate_json(body)
        return found

    def write_verification(self, verification: SnapshotVerification) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=verification_key(self.prefix, verification.snapshot_id),
            Body=verification.model_dump_json().encode(),
            ContentType="application/json",
        )

    def read_back(self, sha256: str, size: int) -> str | None:
        """None when the object is whole (its size and hash), else what is wrong with it."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=object_key(self.prefix, sha256))
        except ClientError as exc:
            if _missing(exc):
                return f"{sha256[:12]}: missing"
            return f"{sha256[:12]}: {exc}"
        digest, length = hashlib.sha256(), 0
        for chunk in answer["Body"].iter_chunks(1024 * 1024):
            digest.update(chunk)
            length += len(chunk)
        if length != size or digest.hexdigest() != sha256:
            return f"{sha256[:12]}: {length} bytes, not the {size} stored (or another hash)"
        return None

    def delete_objects(self, hashes: list[str]) -> None:
        keys = [object_key(self.prefix, h) for h in hashes]
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
            )

    # --- uploads ------------------------------------------------------------------------

    def upload(
        self,
        path: Path,
        expected: Entry,
        index: Index,
        on_part: Callable[[int], None] | None = None,
    ) -> Entry:
        """Store the file's bytes under their hash; the entry of what was stored.

        The stat is taken before and after the read from the open file: if it moved, the
        bytes may mix two versions and nothing is stored (`Changed`). A file that changed
        between the scan and now, but not during the read, is stored as it is now.
        """
        if expected.size >= self.sizes.multipart_threshold:
            return self._upload_large(path, expected, index, on_part)
        with self.budget.take(expected.size):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                before = stat_of(os.fstat(fd))
                if before.size >= self.sizes.multipart_threshold:  # grew since the scan
                    raise Changed(f"{path}: grew past the multipart threshold")
                data = _read(fd, before.size + 1)
                after = stat_of(os.fstat(fd))
            finally:
                os.close(fd)
            if after != before or len(data) != before.size:
                raise Changed(f"{path}: changed while being uploaded")
            sha = hashlib.sha256(data).hexdigest()
            self.client.put_object(Bucket=self.bucket, Key=object_key(self.prefix, sha), Body=data)
            return _entry(sha, after)

    def _upload_large(
        self, path: Path, expected: Entry, index: Index, on_part: Callable[[int], None] | None
    ) -> Entry:
        sha = expected.sha256
        key = object_key(self.prefix, sha)
        done: dict[int, str] = {}
        resume = index.upload(sha)
        upload_id = part_size = None
        if resume is not None:
            _, upload_id, part_size = resume
            try:
                done = self._parts(key, upload_id)
            except ClientError:  # aborted or expired meanwhile: start over
                upload_id = None
                done = {}
        if upload_id is None or part_size is None:
            part_size = self.sizes.part_size
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
            index.upload_started(sha, key, upload_id, part_size)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            before = stat_of(os.fstat(fd))
            digest = hashlib.sha256()
            parts: list[CompletedPartTypeDef] = []
            number, offset = 1, 0
            while offset < before.size or number == 1:
                with self.budget.take(part_size):
                    data = _read(fd, part_size, offset)
                    etag = self._part(key, upload_id, number, data, done, on_part)
                digest.update(data)
                parts.append({"PartNumber": number, "ETag": etag})
                offset += len(data)
                number += 1
                if not data:
                    break
            after = stat_of(os.fstat(fd))
        finally:
            os.close(fd)
        if after != before or digest.hexdigest() != sha:
            # Torn or not the bytes we were asked to store: drop it, hash again next time.
            self._abort(key, upload_id)
            index.upload_done(sha)
            raise Changed(f"{path}: changed while being uploaded")
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
        index.upload_done(sha)
        return _entry(sha, after)

    def _part(
        self,
        key: str,
        upload_id: str,
        number: int,
        data: bytes,
        done: dict[int, str],
        on_part: Callable[[int], None] | None,
    ) -> str:
        """Upload part `number` unless S3 has it already, with these very bytes (its ETag is
        their MD5): what a crashed upload sent is not sent again."""
        etag = done.get(number)
        if etag is not None and etag == hashlib.md5(data).hexdigest():
            return etag
        answer = self.client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        if on_part is not None:
            on_part(number)
        return answer["ETag"].strip('"')

    def _parts(self, key: str, upload_id: str) -> dict[int, str]:
        parts: dict[int, str] = {}
        marker = 0
        while True:
            answer = self.client.list_parts(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker
            )
            for p in answer.get("Parts", []):
                parts[p["PartNumber"]] = p["ETag"].strip('"')
            if not answer.get("IsTruncated"):
                return parts
            marker = answer["NextPartNumberMarker"]

    def _abort(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(ClientError):  # gone already
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    # --- downloads ----------------------------------------------------------------------

    def download(self, root: Path, rel: str, entry: Entry) -> None:
        """The entry's bytes at `root/rel`, with its mode and mtime, whole or not at all: a
        temporary file beside it, checked against the hash, then renamed over it."""
        target = safe_target(root, rel)
        tmp = target.parent / f"{TMP_PREFIX}{secrets.token_hex(6)}"
        digest = hashlib.sha256()
        try:
            answer = self.client.get_object(
                Bucket=self.bucket, Key=object_key(self.prefix, entry.sha256)
            )
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                for chunk in answer["Body"].iter_chunks(1024 * 1024):
                    digest.update(chunk)
                    os.write(fd, chunk)
                os.fchmod(fd, entry.mode)
            finally:
                os.close(fd)
            if digest.hexdigest() != entry.sha256:
                raise OSError(f"{rel}: the stored object does not match its hash (corrupted)")
            os.utime(tmp, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def set_meta(root: Path, rel: str, entry: Entry) -> None:
    target = safe_target(root, rel)
    os.chmod(target, entry.mode, follow_symlinks=False)
    os.utime(target, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)


def remove(root: Path, rel: str) -> None:
    target = safe_target(root, rel, create=False)
    target.unlink(missing_ok=True)


def safe_target(root: Path, rel: str, *, create: bool = True) -> Path:
    """`root/rel`, its parents made as real directories: a symlink or file on the way, or a
    directory where the file goes, is refused rather than written through."""
    parts = rel.split("/")
    here = root
    for part in parts[:-1]:
        here = here / part
        try:
            s = os.lstat(here)
        except FileNotFoundError:
            if not create:
                return root / rel
            try:
                os.mkdir(here, 0o755)
                continue
            except FileExistsError:  # a parallel download made it: check what it is
                s = os.lstat(here)
        if not st.S_ISDIR(s.st_mode):
            raise Unsafe(f"{rel}: {here} is not a directory (a symlink?); not written")
    target = here / parts[-1]
    try:
        if st.S_ISDIR(os.lstat(target).st_mode):
            raise Unsafe(f"{rel}: a directory is in the way; not written")
    except FileNotFoundError:
        pass
    return target


def _entry(sha: str, s: Stat) -> Entry:
    return Entry(sha256=sha, size=s.size, mtime_ns=s.mtime_ns, mode=s.mode)
