"""Backup planning, pure: plain data in, a plain answer out, no I/O and no clock of its own.

Which node to back up from, which scheduled backups are due, what retention removes (and the
WAL it must keep), what a delete request may remove, and which base backup and WAL segments a
restore to a time or LSN needs. Every function is deterministic, so it is tested with tables
and a fixed `now`; the executor does what these say and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from croniter import croniter  # type: ignore[import-untyped]

from lifeboat.backup.walnames import lsn_segno
from lifeboat.common.events import BackupKind, Role
from lifeboat.common.lsn import lsn_to_int

NOBACKUP_TAG = "nobackup"
ARCHIVE_TIME_SLACK_SECONDS = 2


@dataclass(frozen=True)
class Refusal:
    reason: str


# --- the source node ------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeState:
    """One node as a probe saw it just now."""

    name: str
    reachable: bool
    role: Role = Role.UNKNOWN
    streaming: bool = False  # a standby whose WAL receiver streams
    lag_bytes: int | None = None  # a standby's replay distance behind the primary
    timeline: int | None = None
    tags: frozenset[str] = frozenset()
    error: str | None = None


@dataclass(frozen=True)
class SourceChoice:
    node: str
    role: Role
    reason: str


def _why_not(node: NodeState, max_lag: int) -> str:
    if not node.reachable:
        return f"{node.name}: unreachable ({node.error or 'no answer'})"
    if NOBACKUP_TAG in node.tags:
        return f"{node.name}: tagged {NOBACKUP_TAG}"
    if node.role is not Role.STANDBY:
        return f"{node.name}: {node.role.value}"
    if not node.streaming:
        return f"{node.name}: not streaming"
    return f"{node.name}: {node.lag_bytes} bytes behind (max {max_lag})"


def choose_source(
    nodes: tuple[NodeState, ...],
    *,
    preferred: str | None = None,
    prefer_standby: bool = True,
    max_lag_bytes: int = 64 * 1024 * 1024,
) -> SourceChoice | Refusal:
    """A healthy streaming standby (the least behind), else the primary; or the node asked for."""
    if preferred is not None:
        for node in nodes:
            if node.name == preferred:
                if not node.reachable:
                    return Refusal(f"requested node {preferred} is unreachable: {node.error}")
                return SourceChoice(node.name, node.role, "requested")
        return Refusal(f"requested node {preferred} is not in the cluster")
    healthy = [
        n
        for n in nodes
        if n.reachable
        and n.role is Role.STANDBY
        and n.streaming
        and NOBACKUP_TAG not in n.tags
        and n.lag_bytes is not None
        and n.lag_bytes <= max_lag_bytes
    ]
    if prefer_standby and healthy:
        best = min(healthy, key=lambda n: (n.lag_bytes or 0, n.name))
        return SourceChoice(
            best.name,
            Role.STANDBY,
            f"healthy streaming standby, {best.lag_bytes} bytes behind: spares the primary",
        )
    primaries = [n for n in nodes if n.reachable and n.role is Role.PRIMARY]
    if len(primaries) != 1:
        found = ", ".join(n.name for n in primaries) or "none"
        return Refusal(
            f"no healthy standby and not exactly one primary (primaries: {found}); "
            + "; ".join(_why_not(n, max_lag_bytes) for n in nodes)
        )
    others = [_why_not(n, max_lag_bytes) for n in nodes if n is not primaries[0]]
    why = "standbys not preferred" if not prefer_standby else "no healthy streaming standby"
    detail = f" ({'; '.join(others)})" if others and prefer_standby else ""
    return SourceChoice(primaries[0].name, Role.PRIMARY, f"{why}{detail}, so the primary")


# --- schedules ------------------------------------------------------------------------------


def valid_cron(expression: str) -> bool:
    return bool(expression.strip()) and bool(croniter.is_valid(expression))


def due_slots(expression: str, after: datetime, now: datetime, limit: int = 3) -> list[datetime]:
    """Fire times of `expression` in (after, now], newest `limit` only: a worker back after a
    long outage runs the latest slot, not every one it missed."""
    if not valid_cron(expression) or now <= after:
        return []
    it = croniter(expression, after)
    slots: list[datetime] = []
    while True:
        slot: datetime = it.get_next(datetime)
        if slot > now:
            break
        slots.append(slot)
    return slots[-limit:]


# --- retention ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogEntry:
    """A listed backup, as retention and restores need it."""

    backup_id: str
    kind: BackupKind
    stopped_at: datetime
    good: bool = True  # not failed by its latest test restore
    timeline: int | None = None
    start_lsn: str | None = None
    stop_lsn: str | None = None
    wal_segment_size: int = 16 * 1024 * 1024
    files_lsn: str | None = None  # `full`: the restore point its file snapshots follow


# The kinds holding a base backup of the whole cluster: restorable with archived WAL to a
# point in time after them, the reason WAL is kept.
BASE_BACKUPS = frozenset({BackupKind.PHYSICAL, BackupKind.FULL})


@dataclass(frozen=True)
class RetentionPolicy:
    max_age: timedelta = timedelta(days=7)
    min_count: dict[BackupKind, int] = field(
        default_factory=lambda: {BackupKind.PHYSICAL: 3, BackupKind.LOGICAL: 3}
    )


@dataclass(frozen=True)
class RetentionPlan:
    expire: tuple[tuple[str, str], ...]  # (backup id, reason)
    keep: tuple[str, ...]
    # Archived WAL below this segment number is needed by no retained base backup; None
    # when no physical backup is retained (then no WAL is removed).
    wal_keep_from_segno: int | None


def _newest_good(entries: list[CatalogEntry]) -> str | None:
    good = [e for e in entries if e.good]
    return max(good, key=lambda e: (e.stopped_at, e.backup_id)).backup_id if good else None


def plan_retention(
    entries: tuple[CatalogEntry, ...], now: datetime, policy: RetentionPolicy
) -> RetentionPlan:
    expire: list[tuple[str, str]] = []
    keep: list[str] = []
    for kind in sorted({e.kind for e in entries}):
        mine = sorted(
            (e for e in entries if e.kind == kind),
            key=lambda e: (e.stopped_at, e.backup_id),
            reverse=True,
        )
        floor = policy.min_count.get(kind, 1)
        last_good = _newest_good(mine)
        for rank, entry in enumerate(mine):
            young = now - entry.stopped_at <= policy.max_age
            if young or rank < floor or entry.backup_id == last_good:
                keep.append(entry.backup_id)
                continue
            days = policy.max_age.total_seconds() / 86400
            expire.append(
                (
                    entry.backup_id,
                    f"older than {days:g} days and beyond the newest {floor} {kind.value}",
                )
            )
    kept = set(keep)
    retained_physical = [
        e
        for e in entries
        if e.backup_id in kept and e.kind in BASE_BACKUPS and e.start_lsn is not None
    ]
    keep_from = (
        min(lsn_segno(e.start_lsn, e.wal_segment_size) for e in retained_physical if e.start_lsn)
        if retained_physical
        else None
    )
    return RetentionPlan(tuple(expire), tuple(sorted(keep)), keep_from)


def plan_delete(
    entries: tuple[CatalogEntry, ...], backup: str, *, force: bool
) -> CatalogEntry | Refusal:
    """The backup a delete request may remove, or why not: never the last good backup of its
    kind unless forced."""
    found = [e for e in entries if e.backup_id == backup]
    if not found:
        return Refusal(f"no backup {backup!r} is listed")
    entry = found[0]
    others_good = [
        e for e in entries if e.kind == entry.kind and e.good and e.backup_id != entry.backup_id
    ]
    if entry.good and not others_good and not force:
        return Refusal(
            f"{backup} is the last good {entry.kind.value} backup; deleting it needs force"
        )
    return entry


# --- restores -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WalFile:
    """One archived WAL file: a segment (with its number) or a timeline history file."""

    name: str
    key: str
    timeline: int
    segno: int | None  # None for a .history file
    archived_at: datetime
    sha256: str | None = None


@dataclass(frozen=True)
class RestorePlan:
    backup: CatalogEntry
    wal: tuple[WalFile, ...]  # what recovery will ask for, in order; history files first
    target_time: datetime | None = None
    target_lsn: str | None = None  # neither: the backup's own WAL, no archived WAL


def plan_restore(
    entries: tuple[CatalogEntry, ...],
    wal: tuple[WalFile, ...],
    *,
    backup: str | None = None,
    target_time: datetime | None = None,
    target_lsn: str | None = None,
) -> RestorePlan | Refusal:
    """The base backup and the WAL a restore needs, or why it cannot be done."""
    if target_time is not None and target_lsn is not None:
        return Refusal("give a target time or a target LSN, not both")
    has_target = target_time is not None or target_lsn is not None
    if target_lsn is not None:
        try:
            lsn_to_int(target_lsn)
        except ValueError:
            return Refusal(f"{target_lsn!r} is not an LSN")
    if backup is not None:
        found = [e for e in entries if e.backup_id == backup]
        if not found:
            return Refusal(f"no backup {backup!r} is listed")
        chosen = found[0]
        if has_target and chosen.kind not in BASE_BACKUPS:
            return Refusal(f"{backup} is a {chosen.kind.value} backup: only its own point in time")
        if target_time is not None and target_time < chosen.stopped_at:
            return Refusal(f"target {target_time.isoformat()} is before {backup} ended")
        stop = chosen.stop_lsn
        if (
            target_lsn is not None
            and stop is not None
            and lsn_to_int(target_lsn) < lsn_to_int(stop)
        ):
            return Refusal(f"target LSN {target_lsn} is before {backup} ended")
    elif has_target:
        physical = sorted(
            (e for e in entries if e.kind in BASE_BACKUPS and e.good),
            key=lambda e: (e.stopped_at, e.backup_id),
        )
        if not physical:
            return Refusal("no good physical backup is listed: point-in-time restore needs one")
        if target_time is not None:
            before = [e for e in physical if e.stopped_at <= target_time]
            if not before:
                return Refusal(
                    f"target {target_time.isoformat()} is before the oldest backup, which "
                    f"ended at {physical[0].stopped_at.isoformat()}"
                )
        else:
            assert target_lsn is not None
            before = [
                e
                for e in physical
                if e.stop_lsn is not None and lsn_to_int(e.stop_lsn) <= lsn_to_int(target_lsn)
            ]
            if not before:
                return Refusal(f"target LSN {target_lsn} is before the oldest backup ended")
        chosen = before[-1]
    else:
        ranked = sorted(entries, key=lambda e: (e.good, e.kind in BASE_BACKUPS, e.stopped_at))
        if not ranked:
            return Refusal("no backup is listed")
        chosen = ranked[-1]
    if chosen.kind is BackupKind.FULL and not has_target and chosen.files_lsn is not None:
        # The database as of the restore point its files were snapshotted after, not of the
        # base backup's end (a little earlier): rows and files of one moment.
        target_lsn = chosen.files_lsn
    elif chosen.kind not in BASE_BACKUPS or not has_target:
        return RestorePlan(chosen, ())
    return _with_wal(chosen, wal, target_time, target_lsn)


def _with_wal(
    base: CatalogEntry,
    wal: tuple[WalFile, ...],
    target_time: datetime | None,
    target_lsn: str | None,
) -> RestorePlan | Refusal:
    assert base.start_lsn is not None
    assert base.timeline is not None
    size = base.wal_segment_size
    start = lsn_segno(base.start_lsn, size)
    histories = sorted(
        (w for w in wal if w.segno is None and w.timeline > base.timeline), key=lambda w: w.name
    )
    segments = [w for w in wal if w.segno is not None and w.timeline >= base.timeline]
    # Per segment number, recovery follows the newest timeline: keep every timeline's copy
    # (recovery asks for the one on its path), ordered by number then timeline.
    segments.sort(key=lambda w: (w.segno or 0, w.timeline))
    segments = [w for w in segments if (w.segno or 0) >= start]
    if not segments:
        return Refusal(f"no archived WAL from the start of {base.backup_id} on")
    newest = max(w.archived_at for w in segments)
    end_segno = max(w.segno or 0 for w in segments)
    if target_time is not None and target_time > newest:
        return Refusal(
            f"target {target_time.isoformat()} is after the newest archived WAL "
            f"({newest.isoformat()})"
        )
    if target_lsn is not None and lsn_to_int(target_lsn) >= (end_segno + 1) * size:
        return Refusal(f"target LSN {target_lsn} is after the newest archived WAL")
    needed: list[WalFile] = []
    expected = start
    for w in segments:
        segno = w.segno or 0
        if segno > expected:
            return Refusal(
                f"archived WAL has a gap: segment number {expected} is missing "
                f"(next archived is {w.name})"
            )
        needed.append(w)
        expected = max(expected, segno + 1)
    if target_lsn is not None:
        last = lsn_segno(target_lsn, size)
        needed = [w for w in needed if (w.segno or 0) <= last]
    if target_time is not None:
        # Recovery stops at the first commit after the target, so it needs the segments up
        # to the one holding it: those completed after the target. S3 keeps upload times to
        # the second, hence the slack, and two more segments to be sure to see past it.
        slack = target_time + timedelta(seconds=ARCHIVE_TIME_SLACK_SECONDS)
        cut = next((w for w in needed if w.archived_at >= slack), None)
        if cut is not None:
            needed = [w for w in needed if (w.segno or 0) <= (cut.segno or 0) + 2]
    return RestorePlan(base, (*histories, *needed), target_time, target_lsn)
