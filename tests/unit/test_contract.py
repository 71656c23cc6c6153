"""The subject contract and every event model, with plain data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from lifeboat.common import events as ev
from lifeboat.common import subjects as s

SRC = ev.Source(service="test", instance="t-1")
BASE = {"cluster": "main", "source": SRC}
NODE = {**BASE, "node": "node1"}
FILES = {**BASE, "fileset": "uploads"}
OUTCOME = {
    **BASE,
    "kind": ev.FailoverKind.AUTOMATIC,
    "old_primary": "node1",
    "new_primary": "node2",
    "reason": "primary unreachable for 3 probes by 2/3 monitors",
    "phases": [{"phase": "promote", "seconds": 0.4}],
    "total_seconds": 1.2,
    "epoch": 7,
}

SAMPLES: dict[str, dict[str, Any]] = {
    "node.health": {**NODE, "reachable": True, "latency_ms": 1.5, "role": "primary"},
    "node.down": {**NODE, "reason": "connection refused"},
    "node.up": {**NODE, "role": "standby"},
    "node.role_changed": {**NODE, "previous": "standby", "current": "primary"},
    "node.lag": {**NODE, "level": "warning", "lag_seconds": 31.0},
    "node.admission_changed": {
        **NODE,
        "accepting": False,
        "reason": "sorry, too many clients already",
    },
    "node.fenced": {**NODE, "reason": "stale epoch", "epoch": 3},
    "node.self_fenced": {
        **NODE,
        "reason": "writable, but the topology names node2 primary at epoch 4",
        "action": "stopped (fast)",
        "epoch": 4,
        "primary": "node2",
        "unconfirmed_seconds": 0.4,
        "bound_seconds": 5.0,
    },
    "node.stop_requested": {
        **NODE,
        "epoch": 5,
        "reason": "node1 accepts writes but the primary at epoch 5 is node2",
    },
    "node.stopped": {
        **NODE,
        "epoch": 5,
        "correlation_id": "6f1c2a4e-8a43-4a53-9d7e-2c1e1d3b9f10",
        "stopped": True,
        "action": "stopped (fast)",
        "reason": "node1 accepts writes but the primary at epoch 5 is node2",
    },
    "node.start_requested": {
        **NODE,
        "epoch": 5,
        "reason": "manual: node2 did not catch up with node1 within 31s",
    },
    "node.started": {
        **NODE,
        "epoch": 5,
        "correlation_id": "0b7e4d2a-51c3-4f8e-9a61-3d2f7c9e8a14",
        "started": True,
        "action": "started read-only",
        "reason": "manual: node2 did not catch up with node1 within 31s",
    },
    "node.rejoin_requested": {**NODE, "requested_by": "drill"},
    "node.rejoined": {**NODE, "method": "pg_rewind", "upstream": "node2", "seconds": 2.5},
    "node.rejoin_ordered": {
        **NODE,
        "epoch": 5,
        "upstream": "node2",
        "conninfo": "user=replicator passfile=/var/lib/postgresql/.pgpass host=db2 port=5432 "
        "application_name=node1",
        "slot": "lifeboat_node1",
        "reason": "operator asked",
    },
    "node.rejoin_started": {
        **NODE,
        "epoch": 5,
        "correlation_id": "6f1c2a4e-8a43-4a53-9d7e-2c1e1d3b9f10",
        "upstream": "node2",
    },
    "node.rejoin_failed": {
        **NODE,
        "epoch": 5,
        "correlation_id": "6f1c2a4e-8a43-4a53-9d7e-2c1e1d3b9f10",
        "upstream": "node2",
        "reason": "refused: the topology is at epoch 6 with node3 primary",
    },
    "node.restore_ordered": {
        **NODE,
        "correlation_id": "6f1c2a4e-8a43-4a53-9d7e-2c1e1d3b9f10",
        "restore_id": "r-20261202-1204-node1",
        "host": "backup",
        "port": 40321,
    },
    "node.restore_started": {
        **NODE,
        "correlation_id": "6f1c2a4e-8a43-4a53-9d7e-2c1e1d3b9f10",
        "restore_id": "r-20261202-1204-node1",
    },
    "node.restored": {
        **NODE,
        "correlation_id": "6f1c2a4e-8a43-4a53-9d7e-2c1e1d3b9f10",
        "restore_id": "r-20261202-1204-node1",
        "data_dir": "/var/lib/postgresql/data",
        "kept": "/var/lib/postgresql/data.replaced-r-20261202-1204-node1",
        "started": True,
        "detail": "started read-only: the topology names node1 primary at epoch 5",
        "seconds": 41.2,
    },
    "node.restore_failed": {
        **NODE,
        "correlation_id": "6f1c2a4e-8a43-4a53-9d7e-2c1e1d3b9f10",
        "restore_id": "r-20261202-1204-node1",
        "reason": "refused: node1 is writable",
    },
    "failover.requested": {
        **BASE,
        "target": "node2",
        "reason": "planned maintenance",
        "correlation_id": "6f1c2a4e-8a43-4a53-9d7e-2c1e1d3b9f10",
        "force": True,
        "data_loss_budget_bytes": 1048576,
    },
    "failover.started": {
        **BASE,
        "kind": "manual",
        "old_primary": "node1",
        "candidate": "node2",
        "reason": "x",
        "positions": {"node1": "0/5000000", "node2": "0/4FFFF00"},
        "data_loss_budget_bytes": 1048576,
    },
    "failover.completed": OUTCOME,
    "failover.failed": {**BASE, "kind": "automatic", "reason": "no standby within max lag"},
    "failover.held": {**BASE, "primary": "node1", "reason": "no monitor majority"},
    "failover.sync_changed": {
        **BASE,
        "primary": "node1",
        "standbys": ["node2"],
        "reason": "node3 stopped streaming",
    },
    "switchover.requested": {**BASE, "target": "node3", "reason": "kernel upgrade"},
    "switchover.completed": {**OUTCOME, "kind": "switchover"},
    "switchover.failed": {
        **BASE,
        "kind": "switchover",
        "target": "node1",
        "reason": "is primary",
        "correlation_id": "6f1c2a4e-8a43-4a53-9d7e-2c1e1d3b9f10",
    },
    "maintenance.paused": {**BASE, "reason": "kernel upgrade", "requested_by": "oncall"},
    "maintenance.resumed": {**BASE, "requested_by": "oncall"},
    "service.heartbeat": {
        "source": {"service": "backup", "instance": "backup-1"},
        "service": "backup",
        "version": "0.1.0",
        "ready": True,
        "breakers": {"s3": "closed"},
    },
    "backup.requested": {**BASE, "kind": "logical"},
    "backup.started": {**BASE, "backup_id": "b1", "kind": "physical", "node": "node2"},
    "backup.completed": {
        **BASE,
        "backup_id": "b1",
        "kind": "logical",
        "node": "node1",
        "size_bytes": 10,
        "duration_seconds": 1.0,
        "manifest_key": "main/b1/manifest.json",
        "sha256": "ab" * 32,
    },
    "backup.failed": {**BASE, "kind": "logical", "reason": "pg_dump exited 1"},
    "backup.verified": {**BASE, "backup_id": "b1", "ok": True, "detail": "restored 3 tables"},
    "backup.expired": {**BASE, "backup_id": "b0", "reason": "older than 7 days"},
    "wal.archived": {
        **BASE,
        "segment": "000000010000000000000003",
        "timeline": 1,
        "size_bytes": 16777216,
    },
    "restore.requested": {**BASE, "backup_id": "b1", "target": "scratch"},
    "restore.started": {**BASE, "restore_id": "r1", "backup_id": "b1", "target": "scratch"},
    "restore.completed": {
        **BASE,
        "restore_id": "r1",
        "backup_id": "b1",
        "target": "scratch",
        "duration_seconds": 2.5,
    },
    "restore.failed": {**BASE, "backup_id": "b1", "reason": "checksum mismatch"},
    "backup.progress": {
        **BASE,
        "backup_id": "b1",
        "kind": "physical",
        "raw_bytes": 1000,
        "stored_bytes": 300,
        "seconds": 2.0,
        "mb_per_s": 0.5,
    },
    "backup.verify_requested": {**BASE, "backup_id": "b1", "requested_by": "cli"},
    "backup.delete_requested": {**BASE, "backup_id": "b1", "force": False},
    "backup.deleted": {**BASE, "backup_id": "b1", "kind": "logical", "objects": 2},
    "backup.delete_refused": {**BASE, "backup_id": "b1", "reason": "the last good backup"},
    "wal.status": {
        **BASE,
        "state": "streaming",
        "primary": "node1",
        "timeline": 1,
        "lag_bytes": 0,
        "lag_seconds": 0.2,
    },
    "wal.source_changed": {
        **BASE,
        "previous": "node1",
        "primary": "node2",
        "timeline": 2,
        "slot": "lifeboat_archiver",
        "reason": "failover.completed",
    },
    "wal.slot_limited": {
        **BASE,
        "node": "node1",
        "slot": "lifeboat_archiver",
        "wal_status": "lost",
        "reason": "max_slot_wal_keep_size reached",
    },
    "file.sync_requested": FILES,
    "file.synced": {
        **FILES,
        "files_copied": 2,
        "files_unchanged": 5,
        "bytes_copied": 100,
        "duration_seconds": 0.2,
    },
    "file.sync_failed": {**FILES, "reason": "directory missing"},
    "file.verified": {**FILES, "matching": 7, "differences": ["a.txt: size differs"]},
    "file.restore_requested": FILES,
    "file.restored": {
        **FILES,
        "destination": "/srv/uploads",
        "files_restored": 7,
        "bytes_restored": 700,
    },
    "file.sync_paused": {**FILES, "reason": "root missing", "files_missing": 7, "files_total": 7},
    "file.status": {
        **FILES,
        "node": "node1",
        "mode": "mirror",
        "state": "in_sync",
        "files": 7,
        "bytes": 700,
    },
    "file.check_requested": FILES,
    "file.references_checked": {
        **FILES,
        "referenced": 3,
        "files": 3,
        "missing": 1,
        "orphans": 1,
        "missing_sample": ["a.jpg"],
        "orphan_sample": ["b.jpg"],
    },
    "file.snapshot_taken": {
        **FILES,
        "snapshot_id": "20261201T000000Z-files-uploads-ab12cd34",
        "files": 7,
        "bytes": 700,
        "manifest_key": "main/uploads/snapshots/s1.json",
        "taken_at": "2026-12-01T02:00:05Z",
    },
    "file.snapshot_requested": {
        "source": SRC,
        "cluster": "main",
        "request_id": "6f1c2a52-2f5c-4b7e-9d59-0c1f3e2a7b10",
        "filesets": ["uploads"],
    },
    "deadletter": {
        "source": SRC,
        "consumer": "backup-backup-requested",
        "original_subject": "backup.requested.main",
        "reason": "bad",
        "payload": "{",
    },
}


def test_every_topic_has_one_event_model_and_a_sample() -> None:
    names = {t.name for t in s.ALL_TOPICS}
    assert names == set(ev.EVENT_TYPES)
    assert names == set(SAMPLES)
    assert len(names) == len(s.ALL_TOPICS), "two topics share a name"


@pytest.mark.parametrize("type_name", sorted(SAMPLES))
def test_event_round_trips_through_json(type_name: str) -> None:
    model = ev.EVENT_TYPES[type_name]
    event = model.model_validate(SAMPLES[type_name])
    wire = event.model_dump_json()
    assert json.loads(wire)["type"] == type_name  # readable in `nats stream view`
    assert model.model_validate_json(wire) == event
    assert event.occurred_at.utcoffset() is not None


@pytest.mark.parametrize("type_name", sorted(SAMPLES))
def test_event_subject_is_in_the_stream_and_matches_its_topic(type_name: str) -> None:
    event = ev.EVENT_TYPES[type_name].model_validate(SAMPLES[type_name])
    subject = event.subject()
    assert subject.startswith(type_name + ".")
    kept = s.HEARTBEAT_STREAM_SUBJECTS if event.topic.heartbeat else s.STREAM_SUBJECTS
    assert f"{event.topic.name}.>" in kept
    tokens = subject.split(".")
    pattern = event.topic.pattern().split(".")
    assert len(tokens) == len(pattern)
    assert all(p in ("*", t) for p, t in zip(pattern, tokens, strict=True))


def test_heartbeats_are_kept_apart_from_the_history() -> None:
    """node.health (every second, every monitor, every node) must never evict a failover."""
    assert "node.health.>" in s.HEARTBEAT_STREAM_SUBJECTS
    assert "node.health.>" not in s.STREAM_SUBJECTS
    assert "failover.completed.>" in s.STREAM_SUBJECTS
    assert "node.fenced.>" in s.STREAM_SUBJECTS
    assert not set(s.STREAM_SUBJECTS) & set(s.HEARTBEAT_STREAM_SUBJECTS)
    assert len(s.STREAM_SUBJECTS) + len(s.HEARTBEAT_STREAM_SUBJECTS) == len(s.ALL_TOPICS)


def test_subjects_read_as_documented() -> None:
    assert s.NODE_HEALTH.subject(cluster="main", node="node1") == "node.health.main.node1"
    assert s.FAILOVER_REQUESTED.subject(cluster="main") == "failover.requested.main"
    assert s.NODE_HEALTH.pattern(cluster="main") == "node.health.main.*"
    assert s.BACKUP_COMPLETED.pattern() == "backup.completed.*"
    assert s.STREAM_NAME == "LIFEBOAT_EVENTS"


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "*", ">", "-lead", "x" * 64, "ü"])
def test_names_that_would_break_a_subject_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a valid name"):
        s.NODE_HEALTH.subject(cluster=bad, node="node1")
    with pytest.raises(ValidationError):
        ev.NodeDown(cluster=bad, node="n1", reason="x", source=SRC)


def test_topic_refuses_missing_or_unknown_parameters() -> None:
    with pytest.raises(ValueError, match="needs exactly"):
        s.NODE_HEALTH.subject(cluster="main")
    with pytest.raises(ValueError, match="no parameter"):
        s.FAILOVER_REQUESTED.pattern(node="x")


def test_events_are_strict() -> None:
    with pytest.raises(ValidationError, match="extra"):
        ev.NodeUp.model_validate({**NODE, "role": "primary", "surprise": 1})
    with pytest.raises(ValidationError):
        ev.NodeHealth.model_validate({**NODE, "reachable": True, "type": "node.down"})
    with pytest.raises(ValidationError):
        ev.NodeHealth.model_validate({**NODE, "reachable": True, "occurred_at": "2026-01-01T00:00"})
    event = ev.NodeUp(**NODE, role="primary")
    with pytest.raises(ValidationError):
        event.role = ev.Role.STANDBY  # type: ignore[misc]


def test_committed_asyncapi_document_matches_the_models(tmp_path: Path) -> None:
    """docs/asyncapi.yaml is generated from the models; `make docs` refreshes it."""
    out = tmp_path / "asyncapi.yaml"
    faststream = Path(sys.executable).parent / "faststream"
    subprocess.run(
        [
            str(faststream),
            "docs",
            "gen",
            "lifeboat.common.asyncapi:app",
            "--yaml",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    committed = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"
    assert yaml.safe_load(out.read_text()) == yaml.safe_load(committed.read_text()), (
        "docs/asyncapi.yaml is stale: run `make docs`"
    )
