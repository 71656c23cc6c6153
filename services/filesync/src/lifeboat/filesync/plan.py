"""The sync decision, pure: what the disk holds and what S3 holds in, commands out.

Mirror: the local files (hashed through the index) against the set's manifest. New or changed
content is uploaded unless S3 already holds those bytes (content addressing: a rename or an
undelete uploads nothing); a path gone from disk becomes a tombstone, recoverable for the
retention window, then expires. Two things pause the set instead: its root is gone (an unmounted
disk looks exactly like "every file deleted"), or more than `max_delete_share` of it vanished
in one pass. A file that could not be read this pass is left as S3 has it.

Pull (and restore): the manifest (or a snapshot) against a local directory: download what
differs, fix mode and mtime where only they differ, remove what the manifest no longer has
(pull, or an in-place restore), under the same guard. A path that would land outside the
target root is refused, never written.

Deterministic: time comes from the observation, events are `stamped` with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import PurePosixPath

from lifeboat.common.decision import Decision, Publish, stamped
from lifeboat.common.events import FileSyncPaused, Source
from lifeboat.objstore.filesets import Entry, Manifest


@dataclass(frozen=True)
class Policy:
    max_delete_share: float = 0.5
    tombstone_retention: timedelta = timedelta(days=7)


@dataclass(frozen=True)
class Upload:
    path: str
    entry: Entry


@dataclass(frozen=True)
class Record:
    """The manifest names `entry` for `path` (after its upload, if any, succeeded)."""

    path: str
    entry: Entry


@dataclass(frozen=True)
class Tombstone:
    path: str
    entry: Entry


@dataclass(frozen=True)
class Expire:
    path: str


@dataclass(frozen=True)
class Pause:
    reason: str


@dataclass(frozen=True)
class Download:
    path: str
    entry: Entry


@dataclass(frozen=True)
class SetMeta:
    path: str
    entry: Entry


@dataclass(frozen=True)
class Remove:
    path: str


@dataclass(frozen=True)
class Refuse:
    path: str
    reason: str


Command = (
    Upload | Record | Tombstone | Expire | Download | SetMeta | Remove | Refuse | Pause | Publish
)


@dataclass(frozen=True)
class MirrorObservation:
    now: datetime
    cluster: str
    fileset: str
    source: Source
    root_present: bool
    local: Mapping[str, Entry]  # every readable regular file under the root, hashed
    unreadable: frozenset[str]  # present, but could not be read this pass
    manifest: Manifest
    stored: frozenset[str]  # hashes whose objects S3 holds
    policy: Policy = Policy()
    allow_mass_delete: bool = False  # an operator confirmed this pass's deletions


@dataclass(frozen=True)
class PullObservation:
    now: datetime
    cluster: str
    fileset: str
    source: Source
    local: Mapping[str, Entry]
    unreadable: frozenset[str]
    wanted: Mapping[str, Entry]  # the manifest's (or a snapshot's) entries
    remove_extra: bool = True  # pull and in-place restore: yes; restore into a directory: no
    policy: Policy = Policy()
    allow_mass_delete: bool = False


def unsafe_path(path: str) -> str | None:
    """Why `path` may not be written under a root, or None when it may."""
    if not path or "\x00" in path:
        return "empty or contains NUL"
    if path.startswith("/"):
        return "absolute path"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "'..', '.' or an empty component would leave or confuse the root"
    if PurePosixPath(path).is_absolute():
        return "absolute path"
    return None


def _guarded(
    gone: int, total: int, policy: Policy, allowed: bool
) -> tuple[bool, str]:  # (pause, why)
    if allowed or total == 0 or gone == 0:
        return False, ""
    share = gone / total
    if share > policy.max_delete_share:
        return True, (
            f"{gone} of {total} files ({share:.0%}) would be deleted at once, more than the "
            f"guard's {policy.max_delete_share:.0%}: nothing deleted; confirm to proceed"
        )
    return False, ""


def _paused(
    obs: MirrorObservation | PullObservation, reason: str, gone: int, total: int
) -> Decision[Command]:
    event = FileSyncPaused(
        source=obs.source,
        cluster=obs.cluster,
        fileset=obs.fileset,
        reason=reason,
        files_missing=gone,
        files_total=total,
    )
    return Decision((Pause(reason), Publish(stamped(event, obs.now))), reason)


def plan_mirror(obs: MirrorObservation) -> Decision[Command]:
    manifest = obs.manifest
    if not obs.root_present:
        reason = "the set's root is missing (unmounted or removed): paused, nothing deleted"
        return _paused(obs, reason, len(manifest.entries), len(manifest.entries))
    gone = sorted(p for p in manifest.entries if p not in obs.local and p not in obs.unreadable)
    pause, why = _guarded(len(gone), len(manifest.entries), obs.policy, obs.allow_mass_delete)
    if pause:
        return _paused(obs, why, len(gone), len(manifest.entries))

    uploads: list[Command] = []
    records: list[Command] = []
    queued: set[str] = set()
    for path in sorted(obs.local):
        entry = obs.local[path]
        if manifest.entries.get(path) == entry:
            continue
        if entry.sha256 not in obs.stored and entry.sha256 not in queued:
            uploads.append(Upload(path, entry))
            queued.add(entry.sha256)
        records.append(Record(path, entry))
    tombstones: list[Command] = [Tombstone(p, manifest.entries[p]) for p in gone]
    horizon = obs.now - obs.policy.tombstone_retention
    expires: list[Command] = [
        Expire(p)
        for p, t in sorted(manifest.tombstones.items())
        if t.deleted_at <= horizon and p not in obs.local
    ]
    commands = (*uploads, *records, *tombstones, *expires)
    if not commands:
        return Decision.nothing(f"in sync: {len(obs.local)} file(s)")
    reason = (
        f"{len(uploads)} upload(s), {len(records)} manifest change(s), "
        f"{len(tombstones)} deletion(s) kept as tombstones, {len(expires)} expired"
    )
    return Decision(commands, reason)


def plan_pull(obs: PullObservation) -> Decision[Command]:
    extra = (
        sorted(p for p in obs.local if p not in obs.wanted and p not in obs.unreadable)
        if obs.remove_extra
        else []
    )
    pause, why = _guarded(len(extra), len(obs.local), obs.policy, obs.allow_mass_delete)
    if pause:
        return _paused(obs, why, len(extra), len(obs.local))
    refused: list[Command] = []
    fetch: list[Command] = []
    for path in sorted(obs.wanted):
        problem = unsafe_path(path)
        if problem is not None:
            refused.append(Refuse(path, problem))
            continue
        want, have = obs.wanted[path], obs.local.get(path)
        if have == want:
            continue
        if have is not None and have.sha256 == want.sha256:
            fetch.append(SetMeta(path, want))
        else:
            fetch.append(Download(path, want))
    removes: list[Command] = [Remove(p) for p in extra]
    commands = (*refused, *fetch, *removes)
    if not commands:
        return Decision.nothing(f"in sync: {len(obs.wanted)} file(s)")
    return Decision(
        commands,
        f"{len(fetch)} to fetch or fix, {len(removes)} to remove, {len(refused)} refused",
    )
