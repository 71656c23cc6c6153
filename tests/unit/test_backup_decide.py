"""The service's decisions as tables: requests in, commands (or refusals as events) out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lifeboat.backup.commands import Restore, TakeBackup
from lifeboat.backup.decide import (
    Policy,
    decide_backup,
    decide_delete,
    decide_restore,
    decide_schedule,
    decide_verify,
)
from lifeboat.backup.plan import CatalogEntry, NodeState
from lifeboat.common.decision import Publish
from lifeboat.common.events import (
    BackupDeleteRequested,
    BackupFailed,
    BackupKind,
    BackupRequested,
    BackupStarted,
    BackupVerifyRequested,
    RestoreFailed,
    RestoreRequested,
    Role,
    Source,
)

NOW = datetime(2026, 11, 23, 2, 0, 30, tzinfo=UTC)
SRC = Source(service="backup", instance="b-1")
NODES = (
    NodeState("n1", True, Role.PRIMARY, timeline=1),
    NodeState("n2", True, Role.STANDBY, streaming=True, lag_bytes=0, timeline=1),
)
BASE = CatalogEntry("b1", BackupKind.PHYSICAL, NOW - timedelta(hours=1), timeline=1,
                    start_lsn="0/2000028", stop_lsn="0/2000100")  # fmt: skip


def test_a_request_becomes_started_then_take_from_the_standby() -> None:
    request = BackupRequested(cluster="main", source=SRC, kind=BackupKind.PHYSICAL)
    decision = decide_backup(request, NODES, frozenset(), Policy(), NOW, SRC)
    started, take = decision.commands
    assert isinstance(started, Publish)
    assert isinstance(started.event, BackupStarted)
    assert started.event.request_id == request.event_id
    assert isinstance(take, TakeBackup)
    assert take.job.source.node == "n2"
    assert take.verify  # the service's default
    assert request.event_id.hex[:8] in take.job.backup_id
    # Deciding twice gives the same answer, ids included.
    assert decide_backup(request, NODES, frozenset(), Policy(), NOW, SRC) == decision


def test_files_are_filesyncs_and_full_is_taken_like_physical() -> None:
    files = BackupRequested(cluster="main", source=SRC, kind=BackupKind.FILES)
    decision = decide_backup(files, NODES, frozenset(), Policy(), NOW, SRC)
    assert decision.commands == ()  # no backup.failed beside filesync's backup.completed
    assert "filesync" in decision.reason
    full = BackupRequested(cluster="main", source=SRC, kind=BackupKind.FULL)
    _, take = decide_backup(full, NODES, frozenset(), Policy(), NOW, SRC).commands
    assert isinstance(take, TakeBackup)
    assert take.job.kind is BackupKind.FULL
    assert take.job.source.node == "n2"


def test_a_files_snapshot_is_left_to_filesync_to_verify_and_delete() -> None:
    """Not answered "no such backup": filesync lists it and answers for it."""
    snap = "20261123T010000Z-files-uploads-1a2b3c4d"
    verify = BackupVerifyRequested(cluster="main", source=SRC, backup_id=snap)
    assert decide_verify((BASE,), verify, NOW, SRC).commands == ()
    delete = BackupDeleteRequested(cluster="main", source=SRC, backup_id=snap)
    assert decide_delete((BASE,), delete, NOW, SRC).commands == ()
    # its own ids it still answers, listed or not
    unknown = BackupDeleteRequested(cluster="main", source=SRC, backup_id="20261123T010000Z-x")
    assert decide_delete((BASE,), unknown, NOW, SRC).commands != ()


def test_a_request_already_listed_is_not_taken_again() -> None:
    request = BackupRequested(cluster="main", source=SRC, kind=BackupKind.LOGICAL)
    done = frozenset({str(request.event_id)})
    assert decide_backup(request, NODES, done, Policy(), NOW, SRC).commands == ()


@pytest.mark.parametrize(
    ("kind", "nodes", "reason"),
    [
        (BackupKind.LOGICAL, (NodeState("n1", False, error="refused"),), "no node to back up"),
    ],
)
def test_refusals_are_backup_failed_with_the_request_id(
    kind: BackupKind, nodes: tuple[NodeState, ...], reason: str
) -> None:
    request = BackupRequested(cluster="main", source=SRC, kind=kind)
    (only,) = decide_backup(request, nodes, frozenset(), Policy(), NOW, SRC).commands
    assert isinstance(only, Publish)
    assert isinstance(only.event, BackupFailed)
    assert only.event.request_id == request.event_id
    assert reason in only.event.reason


def test_schedules_give_every_worker_the_same_request_id() -> None:
    schedules = {BackupKind.PHYSICAL: "0 2 * * *", BackupKind.LOGICAL: ""}
    after = NOW - timedelta(minutes=1)
    one = decide_schedule("main", schedules, "", after, NOW, SRC)
    other = decide_schedule(
        "main", schedules, "", after, NOW, Source(service="backup", instance="b-2")
    )
    (a,), (b,) = one.commands, other.commands
    assert isinstance(a, Publish)
    assert isinstance(b, Publish)
    assert a.event.event_id == b.event.event_id  # JetStream keeps one of them
    assert isinstance(a.event, BackupRequested)
    assert a.event.kind is BackupKind.PHYSICAL
    assert (
        decide_schedule("main", schedules, "", NOW, NOW + timedelta(minutes=5), SRC).commands == ()
    )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"target": "node", "node": "n2"}, "confirm it"),
        ({"target": "node", "node": "n1", "confirm": True}, "running primary"),
        ({"target": "node", "node": "n9", "confirm": True}, "not a node"),
        ({"target": "elsewhere"}, "unknown restore target"),
        ({"backup_id": "zz"}, "no backup 'zz'"),
    ],
)
def test_restore_refusals(fields: dict[str, object], reason: str) -> None:
    request = RestoreRequested(cluster="main", source=SRC, **fields)
    decision = decide_restore((BASE,), (), NODES, request, "r1", NOW, SRC, frozenset())
    (only,) = decision.commands
    assert isinstance(only, Publish)
    assert isinstance(only.event, RestoreFailed)
    assert reason in only.event.reason
    assert only.event.request_id == request.event_id


def test_restore_of_a_standby_node_on_this_host_is_planned() -> None:
    request = RestoreRequested(
        cluster="main", source=SRC, target="node", node="n2", confirm=True, backup_id="b1"
    )
    decision = decide_restore((BASE,), (), NODES, request, "r1", NOW, SRC, frozenset({"n2"}))
    (only,) = decision.commands
    assert isinstance(only, Restore)
    assert only.plan.backup.backup_id == "b1"
    assert not only.through_agent


def test_restore_of_a_node_on_another_host_goes_through_its_agent() -> None:
    request = RestoreRequested(
        cluster="main", source=SRC, target="node", node="n2", confirm=True, backup_id="b1"
    )
    decision = decide_restore((BASE,), (), NODES, request, "r1", NOW, SRC, frozenset())
    (only,) = decision.commands
    assert isinstance(only, Restore)
    assert only.through_agent
    assert "n2 through its agent" in decision.reason


def test_a_cluster_without_a_physical_backup_asks_for_one_at_once() -> None:
    one = decide_schedule("main", {}, "", NOW, NOW, SRC, first_physical=True)
    other = decide_schedule("main", {}, "", NOW, NOW, SRC, first_physical=True)
    (a,) = one.commands
    assert isinstance(a, Publish)
    assert isinstance(a.event, BackupRequested)
    assert a.event.kind is BackupKind.PHYSICAL
    assert other.commands == one.commands
