"""Backup planning as tables of plain data with a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lifeboat.backup.plan import (
    CatalogEntry,
    NodeState,
    Refusal,
    RestorePlan,
    RetentionPolicy,
    SourceChoice,
    WalFile,
    choose_source,
    due_slots,
    plan_delete,
    plan_restore,
    plan_retention,
)
from lifeboat.backup.walnames import parse_segment, segment_name
from lifeboat.common.events import BackupKind, Role

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SEG = 16 * 1024 * 1024
P, S = Role.PRIMARY, Role.STANDBY


def node(name: str, role: Role, *, up: bool = True, streaming: bool = True, lag: int = 0,
         tags: frozenset[str] = frozenset()) -> NodeState:  # fmt: skip
    return NodeState(name, up, role, streaming and role is S, lag, 1, tags)


@pytest.mark.parametrize(
    ("nodes", "kwargs", "expected"),
    [
        ((node("n1", P), node("n2", S, lag=10), node("n3", S, lag=5)), {}, ("n3", S)),
        ((node("n1", P), node("n2", S, streaming=False)), {}, ("n1", P)),
        ((node("n1", P), node("n2", S, up=False)), {}, ("n1", P)),
        ((node("n1", P), node("n2", S, lag=10**9)), {}, ("n1", P)),
        ((node("n1", P), node("n2", S, tags=frozenset({"nobackup"}))), {}, ("n1", P)),
        ((node("n1", P), node("n2", S)), {"prefer_standby": False}, ("n1", P)),
        ((node("n1", P), node("n2", S)), {"preferred": "n1"}, ("n1", P)),
        ((node("n1", P, up=False), node("n2", S, streaming=False)), {}, None),
        ((node("n1", P), node("n2", P)), {"prefer_standby": False}, None),
        ((node("n1", P),), {"preferred": "n9"}, None),
    ],
)
def test_source_is_a_healthy_standby_else_the_primary(
    nodes: tuple[NodeState, ...], kwargs: dict[str, object], expected: tuple[str, Role] | None
) -> None:
    choice = choose_source(nodes, max_lag_bytes=1024 * 1024, **kwargs)  # type: ignore[arg-type]
    if expected is None:
        assert isinstance(choice, Refusal)
        return
    assert isinstance(choice, SourceChoice), choice
    assert (choice.node, choice.role) == expected
    assert choice.reason
    if choice.role is P and "prefer_standby" not in kwargs and "preferred" not in kwargs:
        assert "n2" in choice.reason  # says why the standby was passed over


def test_due_slots_fire_once_per_slot_and_only_the_latest_after_an_outage() -> None:
    after = NOW.replace(hour=1, minute=59)
    assert due_slots("0 2 * * *", after, NOW) == [NOW.replace(hour=2, minute=0)]
    assert due_slots("0 2 * * *", NOW.replace(hour=2, minute=0), NOW) == []
    assert due_slots("", after, NOW) == []
    assert due_slots("not a cron", after, NOW) == []
    week = due_slots("0 * * * *", NOW - timedelta(days=7), NOW, limit=1)
    assert week == [NOW]


def entry(i: int, kind: BackupKind = BackupKind.PHYSICAL, *, days: float, good: bool = True,
          lsn_seg: int = 0) -> CatalogEntry:  # fmt: skip
    return CatalogEntry(
        f"b{i}",
        kind,
        NOW - timedelta(days=days),
        good=good,
        timeline=1,
        start_lsn=f"0/{lsn_seg * SEG:X}",
        stop_lsn=f"0/{lsn_seg * SEG + 100:X}",
    )


def test_retention_keeps_young_ones_and_the_newest_three() -> None:
    entries = tuple(entry(i, days=i * 2, lsn_seg=100 - i) for i in range(8))  # 0..14 days
    plan = plan_retention(entries, NOW, RetentionPolicy())
    # 0, 2, 4, 6 days are young; b4 (8 days) and older go although they are beyond 3.
    assert [b for b, _ in plan.expire] == ["b4", "b5", "b6", "b7"]
    assert "older than 7 days" in plan.expire[0][1]
    assert plan.wal_keep_from_segno == 100 - 3  # the oldest retained base backup's start


def test_retention_keeps_the_minimum_count_even_when_all_are_old() -> None:
    entries = tuple(entry(i, days=30 + i, lsn_seg=50 - i) for i in range(5))
    plan = plan_retention(entries, NOW, RetentionPolicy())
    assert plan.keep == ("b0", "b1", "b2")
    assert plan.wal_keep_from_segno == 48


def test_retention_never_drops_the_last_good_backup() -> None:
    entries = (
        entry(0, days=20, good=False),
        entry(1, days=21, good=False),
        entry(2, days=22, good=False),
        entry(3, days=23),
        entry(4, days=24),
    )
    plan = plan_retention(entries, NOW, RetentionPolicy())
    assert "b3" in plan.keep
    assert [b for b, _ in plan.expire] == ["b4"]


def test_retention_counts_each_kind_apart_and_keeps_wal_without_physical() -> None:
    entries = tuple(entry(i, BackupKind.LOGICAL, days=10 + i) for i in range(4))
    plan = plan_retention(entries, NOW, RetentionPolicy())
    assert [b for b, _ in plan.expire] == ["b3"]
    assert plan.wal_keep_from_segno is None


@pytest.mark.parametrize(
    ("backup", "force", "refused"),
    [("b0", False, False), ("b1", False, False), ("b9", False, True)],
)
def test_delete_on_request(backup: str, force: bool, refused: bool) -> None:
    entries = (entry(0, days=1), entry(1, days=2))
    assert isinstance(plan_delete(entries, backup, force=force), Refusal) is refused


def test_delete_of_the_last_good_backup_needs_force() -> None:
    entries = (entry(0, days=1), entry(1, days=2, good=False))
    assert isinstance(plan_delete(entries, "b0", force=False), Refusal)
    assert isinstance(plan_delete(entries, "b0", force=True), CatalogEntry)
    assert isinstance(plan_delete(entries, "b1", force=False), CatalogEntry)


def wal(tli: int, segno: int, minutes: float) -> WalFile:
    name = segment_name(tli, segno, SEG)
    return WalFile(name, f"c/wal/{name}.zst", tli, segno, NOW + timedelta(minutes=minutes))


def test_segment_names_round_trip() -> None:
    assert segment_name(1, 0x1FF, SEG) == "0000000100000001000000FF"
    assert parse_segment("0000000200000001000000FF", SEG) == (2, 0x1FF)
    assert parse_segment("00000002.history", SEG) is None


BASES = (
    CatalogEntry("old", BackupKind.PHYSICAL, NOW, timeline=1, start_lsn="0/2000028",
                 stop_lsn="0/2000100"),
    CatalogEntry("new", BackupKind.PHYSICAL, NOW + timedelta(minutes=10), timeline=1,
                 start_lsn="0/6000028", stop_lsn="0/6000100"),
    CatalogEntry("dump", BackupKind.LOGICAL, NOW + timedelta(minutes=20)),
)  # fmt: skip
ARCHIVE = tuple(wal(1, n, n) for n in range(2, 14))


def test_pitr_picks_the_newest_base_backup_before_the_target_and_the_wal_after_it() -> None:
    plan = plan_restore(BASES, ARCHIVE, target_time=NOW + timedelta(minutes=4, seconds=30))
    assert isinstance(plan, RestorePlan), plan
    assert plan.backup.backup_id == "old"
    assert [w.segno for w in plan.wal] == [2, 3, 4, 5, 6, 7]  # 5 holds it, then two more
    plan = plan_restore(BASES, ARCHIVE, target_time=NOW + timedelta(minutes=11))
    assert isinstance(plan, RestorePlan)
    assert plan.backup.backup_id == "new"
    assert plan.wal[0].segno == 6


def test_pitr_by_lsn_stops_at_the_segment_holding_it() -> None:
    plan = plan_restore(BASES, ARCHIVE, target_lsn="0/4800000")
    assert isinstance(plan, RestorePlan)
    assert (plan.backup.backup_id, [w.segno for w in plan.wal]) == ("old", [2, 3, 4])


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"target_time": NOW - timedelta(minutes=1)}, "before the oldest backup"),
        ({"target_time": NOW + timedelta(hours=1)}, "after the newest archived WAL"),
        ({"target_lsn": "0/F0000000"}, "after the newest archived WAL"),
        ({"target_lsn": "0/1000000"}, "before the oldest backup"),
        ({"target_lsn": "nonsense"}, "not an LSN"),
        ({"backup": "nope"}, "no backup 'nope'"),
        ({"backup": "dump", "target_time": NOW + timedelta(minutes=30)}, "logical"),
        ({"backup": "new", "target_time": NOW + timedelta(minutes=1)}, "before new ended"),
    ],
)
def test_restore_refusals_say_why(kwargs: dict[str, object], reason: str) -> None:
    plan = plan_restore(BASES, ARCHIVE, **kwargs)  # type: ignore[arg-type]
    assert isinstance(plan, Refusal)
    assert reason in plan.reason


def test_pitr_refuses_a_gap_in_the_archive() -> None:
    holey = tuple(w for w in ARCHIVE if w.segno != 4)
    plan = plan_restore(BASES, holey, target_time=NOW + timedelta(minutes=7))
    assert isinstance(plan, Refusal)
    assert "gap" in plan.reason


def test_pitr_across_a_timeline_switch_takes_history_and_both_timelines() -> None:
    history = WalFile("00000002.history", "k", 2, None, NOW + timedelta(minutes=5))
    archive = (*ARCHIVE[:4], history, wal(2, 5, 5.5), wal(2, 6, 6.5), wal(2, 7, 7.5))
    plan = plan_restore(BASES, archive, target_time=NOW + timedelta(minutes=6))
    assert isinstance(plan, RestorePlan), plan
    assert plan.wal[0].name == "00000002.history"
    assert [(w.timeline, w.segno) for w in plan.wal[1:]] == [
        (1, 2), (1, 3), (1, 4), (1, 5), (2, 5), (2, 6), (2, 7)
    ]  # fmt: skip


def test_restore_without_target_is_the_backup_itself() -> None:
    plan = plan_restore(BASES, ARCHIVE, backup="dump")
    assert isinstance(plan, RestorePlan)
    assert (plan.target_time, plan.target_lsn) == (None, None)
    assert plan.wal == ()
    newest = plan_restore(BASES, ARCHIVE)
    assert isinstance(newest, RestorePlan)
    assert newest.backup.backup_id == "new"


def test_a_full_backup_restores_the_database_to_the_moment_of_its_files() -> None:
    full = CatalogEntry("full", BackupKind.FULL, NOW, timeline=1, start_lsn="0/2000028",
                        stop_lsn="0/2000100", files_lsn="0/5000060")  # fmt: skip
    plan = plan_restore((full,), ARCHIVE, backup="full")
    assert isinstance(plan, RestorePlan), plan
    assert plan.target_lsn == full.files_lsn  # its restore point, not the base backup's end
    assert [w.segno for w in plan.wal] == [2, 3, 4, 5]
    # a full backup is a base backup: point-in-time restores and the WAL it needs are kept
    later = plan_restore((full,), ARCHIVE, target_time=NOW + timedelta(minutes=6))
    assert isinstance(later, RestorePlan)
    assert later.backup.backup_id == "full"
    kept = plan_retention((full,), NOW + timedelta(days=30), RetentionPolicy())
    assert kept.wal_keep_from_segno == 2
