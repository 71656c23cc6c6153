"""The gateway's backup, restore, WAL and file set endpoints without servers: the projection
filled by hand (the catalogue as the backup service mirrors it into KV), the answering
services played by `answers`, every new command behind `operate`, problems at the edge, and
operations closed by the backup service's `request_id` and by filesync's answers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

from lifeboat.common.events import (
    BackupCompleted,
    BackupDeleted,
    BackupDeleteRefused,
    BackupDeleteRequested,
    BackupKind,
    BackupProgress,
    BackupRequested,
    BackupStarted,
    BackupVerified,
    Envelope,
    FailoverRequested,
    FileReferencesChecked,
    FileRestoreRequested,
    FileStatus,
    FileSynced,
    FileSyncFailed,
    FileVerified,
    RestoreFailed,
    RestoreRequested,
    Source,
    WalState,
    WalStatus,
)
from lifeboat.gateway.client import GatewayClient, GatewayError
from lifeboat.gateway.projection import Projection, Stored
from lifeboat.gateway.schemas import OperationRefused, OperationView
from tests.unit.test_gateway_api import Publish, auth, make_app, projection

BACKUP = Source(service="backup", instance="b1")
FILESYNC = Source(service="filesync", instance="fs1")
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def manifest(backup_id: str, kind: str = "physical", status: str = "unverified") -> dict[str, Any]:
    """A catalogue entry as the backup service's mirror writes it."""
    return {
        "format_version": 1,
        "backup_id": backup_id,
        "cluster": "main",
        "kind": kind,
        "request_id": None,
        "status": "complete",
        "source": {"node": "node2", "role": "standby", "reason": "the freshest standby"},
        "pg_version": "17.2",
        "pg_version_num": 170002,
        "timeline": 3,
        "start_lsn": "0/5000028",
        "stop_lsn": "0/5000138",
        "started_at": NOW.isoformat(),
        "stopped_at": (NOW + timedelta(seconds=4)).isoformat(),
        "duration_seconds": 4.0,
        "raw_bytes": 30_000_000,
        "stored_bytes": 9_000_000,
        "compression": "zstd",
        "compression_level": 3,
        "encryption": None,
        "objects": [{"name": "base.tar", "key": "k", "raw_bytes": 1, "stored_bytes": 1}],
        "databases": [],
        "tables": 2,
        "verification": None,
        "listed_status": status,
    }


@pytest.fixture
def answers() -> dict[str, Publish]:
    return {}


@pytest.fixture
def app(tmp_path: Path, answers: dict[str, Publish]) -> TestClient:
    client = make_app(tmp_path, answers)
    client.headers.update(auth("oncall"))
    return client


@pytest.fixture
def api(app: TestClient) -> GatewayClient:
    return GatewayClient("http://testserver", http=app, token="")


def next_seq(app: TestClient) -> int:
    """The next stream sequence, shared with what the app publishes."""
    return int(next(app.app.state.seq))  # type: ignore[attr-defined]


def published(app: TestClient, type_: str) -> Envelope:
    return projection(app).history("main", types=frozenset({type_}))[-1].event


MUTATIONS = [
    ("POST", "/clusters/main/backups"),
    ("DELETE", "/clusters/main/backups/b1"),
    ("POST", "/clusters/main/backups/b1/verify"),
    ("POST", "/clusters/main/restores"),
    ("POST", "/clusters/main/files/uploads/sync"),
    ("POST", "/clusters/main/files/uploads/check"),
    ("POST", "/clusters/main/files/uploads/restore"),
    ("POST", "/clusters/main/failover"),
]


@pytest.mark.parametrize(("method", "path"), MUTATIONS)
def test_every_new_command_needs_operate(
    tmp_path: Path, answers: dict[str, Publish], method: str, path: str
) -> None:
    client = make_app(tmp_path, answers)
    nobody = client.request(method, path)
    assert nobody.status_code == 401, nobody.text
    assert nobody.headers["content-type"] == "application/problem+json"
    assert nobody.headers["www-authenticate"].startswith("Bearer")
    weak = client.request(method, path, headers=auth("reader"))
    assert weak.status_code == 403
    assert weak.json()["detail"] == "reader has role read; this needs operate or more"


def test_every_mutating_route_is_among_them(app: TestClient) -> None:
    routes = {
        (method, path)
        for path, item in app.get("/openapi.json").json()["paths"].items()
        for method in item
        if method != "get"
    }
    new = {r for r in routes if "/backups" in r[1] or "/restores" in r[1] or "/files" in r[1]}
    assert len(new) == 7
    paths = app.get("/openapi.json").json()["paths"]
    for method, path in new:
        documented = paths[path][method]["responses"]
        assert {"202", "401", "403", "404", "409", "422"} <= set(documented), path
        assert documented["202"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "OperationView"
        )


def test_a_backup_is_an_operation_closed_by_the_backup_services_request_id(
    app: TestClient, api: GatewayClient, answers: dict[str, Publish]
) -> None:
    def take(request: Envelope) -> list[Envelope]:
        assert isinstance(request, BackupRequested)
        common: dict[str, Any] = {"cluster": "main", "source": BACKUP, "kind": request.kind}
        rid = request.event_id
        return [
            BackupStarted(**common, backup_id="b9", node="node2", request_id=rid),
            BackupCompleted(
                **common,
                backup_id="b9",
                node="node2",
                size_bytes=10,
                duration_seconds=1.5,
                manifest_key="main/backups/b9/manifest.json",
                sha256="0" * 64,
                request_id=rid,
            ),
        ]

    answers["backup.requested"] = take
    resp = app.post("/clusters/main/backups", json={"kind": "logical", "verify": False})
    assert resp.status_code == 202, resp.text
    view = resp.json()
    assert (view["kind"], view["target"], view["state"]) == ("backup", "logical", "completed")
    assert resp.headers["location"] == view["location"] == f"/operations/{view['id']}"
    assert [e["type"] for e in view["events"]] == ["backup.started", "backup.completed"]
    request = published(app, "backup.requested")
    assert isinstance(request, BackupRequested)
    assert str(request.event_id) == str(request.correlation_id) == view["id"]
    assert (request.kind, request.verify, request.requested_by) == (
        BackupKind.LOGICAL,
        False,
        "oncall",
    )

    # No answer yet: pending; progress (a heartbeat) shows; someone else's backup closes
    # nothing; its own completion does, and a verification after it is kept beside it.
    answers.clear()
    pending = api.create_backup("main", "physical", wait_seconds=0)
    assert isinstance(pending, OperationView)
    assert pending.state == "pending"
    p = projection(app)
    progress = BackupProgress(
        cluster="main",
        source=BACKUP,
        backup_id="b10",
        kind=BackupKind.PHYSICAL,
        request_id=pending.id,
        raw_bytes=5_000_000,
        stored_bytes=2_000_000,
        seconds=1.0,
        mb_per_s=5.0,
    )
    p.apply(Stored("heartbeats", 1, progress.subject(), progress))
    running = api.operation(pending.id)
    assert running.state == "running"
    assert running.progress is not None
    assert running.progress.raw_bytes == 5_000_000
    done = BackupCompleted(
        cluster="main",
        source=BACKUP,
        kind=BackupKind.PHYSICAL,
        backup_id="b10",
        node="node2",
        size_bytes=2_000_000,
        duration_seconds=2.0,
        manifest_key="k",
        sha256="0" * 64,
    )
    p.apply(Stored("events", next_seq(app), done.subject(), done))  # scheduled: no request id
    assert api.operation(pending.id).state == "running"
    mine = done.model_copy(update={"request_id": pending.id, "event_id": UUID(int=7)})
    p.apply(Stored("events", next_seq(app), mine.subject(), mine))
    verified = BackupVerified(
        cluster="main", source=BACKUP, backup_id="b10", ok=True, detail="ok", request_id=pending.id
    )
    p.apply(Stored("events", next_seq(app), verified.subject(), verified))
    finished = api.operation(pending.id)
    assert finished.state == "completed"
    assert finished.outcome is not None
    assert finished.outcome["type"] == "backup.completed"
    assert finished.events[-1]["type"] == "backup.verified"

    invalid = app.post("/clusters/main/backups", json={"kind": "physical", "database": "app"})
    assert invalid.status_code == 422
    assert app.post("/clusters/main/backups", json={"kind": "nope"}).status_code == 422
    assert app.post("/clusters/main/backups", json={"node": "node9"}).status_code == 404
    assert app.post("/clusters/nope/backups").status_code == 404


def test_the_catalogue_and_wal_come_from_the_kv_mirror(app: TestClient, api: GatewayClient) -> None:
    assert api.backups("main").mirrored is False
    assert app.get("/clusters/main/backups/b1").status_code == 404
    p = projection(app)
    p.set_backups(
        "main",
        [manifest("b2", "logical", "verified"), manifest("b1"), manifest("b0", "physical", "x")],
    )
    listed = api.backups("main")
    assert listed.mirrored is True
    # "b0" has a state this gateway does not know: it is left out, not an error.
    assert [b.backup_id for b in listed.backups] == ["b2", "b1"]
    assert listed.backups[1].node == "node2"
    assert listed.backups[1].source_role == "standby"
    assert [b.backup_id for b in api.backups("main", kind="logical").backups] == ["b2"]
    assert [b.backup_id for b in api.backups("main", status="unverified").backups] == ["b1"]
    assert app.get("/clusters/main/backups", params={"status": "bad"}).status_code == 422
    shown = api.backup("main", "b1")
    assert shown.manifest["compression"] == "zstd"
    assert shown.stop_lsn == "0/5000138"
    with pytest.raises(GatewayError) as missing:
        api.backup("main", "nope")
    assert missing.value.status_code == 404
    assert "lists no backup 'nope'" in missing.value.detail

    assert api.wal("main").known is False
    status = WalStatus(
        cluster="main",
        source=BACKUP,
        state=WalState.STREAMING,
        primary="node1",
        archived_lsn="0/6000000",
        lag_bytes=128,
        lag_seconds=0.4,
    )
    p.set_wal("main", status)
    wal = api.wal("main")
    assert (wal.known, wal.state, wal.primary, wal.lag_seconds) == (True, "streaming", "node1", 0.4)
    fresher = status.model_copy(update={"lag_seconds": 0.1, "occurred_at": datetime.now(UTC)})
    p.apply(Stored("heartbeats", 5, fresher.subject(), fresher))
    assert api.wal("main").lag_seconds == 0.1
    # The KV watch: both keys of lifeboat_backups.
    p._on_backups("main.wal", None)
    p._on_backups("main", b'{"backups": [' + _json(manifest("b5")) + b"]}")
    assert [b.backup_id for b in api.backups("main").backups] == ["b5"]
    assert api.wal("main").lag_seconds == 0.1  # the heartbeat is still there


def files_entry(backup_id: str, hours: float) -> dict[str, Any]:
    """A files snapshot as filesync lists it (KV key `<cluster>.files.<set>`)."""
    at = (NOW + timedelta(hours=hours)).isoformat()
    return {"backup_id": backup_id, "cluster": "main", "kind": "files", "fileset": "uploads",
            "source": {"node": "node1", "role": "mirror"}, "started_at": at, "stopped_at": at,
            "duration_seconds": 0.0, "raw_bytes": 10, "stored_bytes": 10, "files": 2,
            "listed_status": "verified", "verification": None}  # fmt: skip


def test_files_snapshots_are_listed_and_restored_beside_the_database_kinds(
    app: TestClient, api: GatewayClient
) -> None:
    p = projection(app)
    p._on_backups("main.files.uploads", _json({"backups": [files_entry("f2", 2)]}))
    assert api.backups("main").mirrored is True  # a files catalogue alone counts
    p.set_backups("main", [manifest("b1")])
    p._on_backups(
        "main.files.uploads", _json({"backups": [files_entry("f2", 2), files_entry("f0", -2)]})
    )
    assert [b.backup_id for b in api.backups("main").backups] == ["f2", "b1", "f0"]
    assert [b.backup_id for b in api.backups("main", kind="files").backups] == ["f2", "f0"]
    assert api.backup("main", "f2").status == "verified"
    # restored by filesync, as of the snapshot; a point in time is refused, not ignored
    view = api.restore("main", backup_id="f2", data_dir="/srv/files", wait_seconds=0)
    assert isinstance(view, OperationView)
    request = published(app, "file.restore_requested")
    assert isinstance(request, FileRestoreRequested)
    assert (request.fileset, request.snapshot_id, request.destination) == (
        "uploads", "f2", "/srv/files")  # fmt: skip
    pitr = app.post("/clusters/main/restores", json={"backup_id": "f2", "target_lsn": "0/1"})
    assert pitr.status_code == 422
    # into the primary's node is fine for files (its copy of the set), with confirm
    in_place = {"backup_id": "f2", "node": "node1", "confirm": True, "wait_seconds": 0}
    assert app.post("/clusters/main/restores", json=in_place).status_code == 202
    p._on_backups("main.files.uploads", None)
    assert [b.backup_id for b in api.backups("main").backups] == ["b1"]


def _json(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry).encode()


def test_deleting_and_verifying_a_backup(
    app: TestClient, api: GatewayClient, answers: dict[str, Publish]
) -> None:
    projection(app).set_backups("main", [manifest("b1")])

    def refuse(request: Envelope) -> list[Envelope]:
        assert isinstance(request, BackupDeleteRequested)
        if request.force:
            return [
                BackupDeleted(
                    cluster="main",
                    source=BACKUP,
                    backup_id=request.backup_id,
                    kind=BackupKind.PHYSICAL,
                    request_id=request.event_id,
                    forced=True,
                )
            ]
        return [
            BackupDeleteRefused(
                cluster="main",
                source=BACKUP,
                backup_id=request.backup_id,
                reason="b1 is the last good physical backup; deleting it needs force",
                request_id=request.event_id,
            )
        ]

    answers["backup.delete_requested"] = refuse
    resp = app.delete("/clusters/main/backups/b1")
    assert resp.status_code == 409
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["reason"] == resp.json()["detail"]
    assert "needs force" in resp.json()["reason"]
    assert resp.json()["operation"]["kind"] == "backup_delete"
    refused = api.delete_backup("main", "b1")
    assert isinstance(refused, OperationRefused)
    assert "needs force" in refused.reason
    forced = api.delete_backup("main", "b1", force=True)
    assert isinstance(forced, OperationView)
    assert forced.state == "completed"
    assert app.delete("/clusters/main/backups/nope").status_code == 404

    answers["backup.verify_requested"] = lambda r: [
        BackupVerified(
            cluster="main",
            source=BACKUP,
            backup_id="b1",
            ok=False,
            detail="restore failed: checksum mismatch",
            request_id=r.event_id,
        )
    ]
    failed = app.post("/clusters/main/backups/b1/verify").json()
    assert (failed["kind"], failed["target"], failed["state"]) == ("backup_verify", "b1", "failed")
    assert failed["outcome_reason"] == "restore failed: checksum mismatch"
    assert app.post("/clusters/main/backups/nope/verify").status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"node": "node2"}, 422, "body.confirm"),
        ({"node": "node2", "confirm": True, "port": 5999}, 422, "body.data_dir"),
        ({"target_time": NOW.isoformat(), "target_lsn": "0/1"}, 422, "body.target_lsn"),
        ({"target_lsn": "yesterday"}, 422, "body.target_lsn"),
        ({"target_time": "2026-12-01T09:00:00"}, 422, "body.target_time"),  # no zone
        ({"data_dir": "relative/dir"}, 422, "body.data_dir"),
        ({"port": 0}, 422, "body.port"),
        ({"node": "node9", "confirm": True}, 404, None),
        ({"node": "node1", "confirm": True}, 409, None),  # the primary
        ({"backup_id": "nope"}, 404, None),
    ],
)
def test_a_restore_is_checked_at_the_edge(
    app: TestClient, body: dict[str, Any], status: int, field: str | None
) -> None:
    projection(app).set_backups("main", [manifest("b1")])
    resp = app.post("/clusters/main/restores", json=body)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    if field is not None:
        assert field in [e["field"] for e in resp.json()["errors"]]


def test_a_restore_is_published_as_asked_and_an_early_refusal_is_409(
    app: TestClient, api: GatewayClient, answers: dict[str, Publish]
) -> None:
    view = api.restore(
        "main",
        backup_id="b1",
        target_lsn="0/3000060",
        data_dir="/srv/r1",
        port=6001,
        wait_seconds=0,
    )
    assert isinstance(view, OperationView)
    assert (view.kind, view.target, view.state) == ("restore", "new", "pending")
    request = published(app, "restore.requested")
    assert isinstance(request, RestoreRequested)
    assert (request.target, request.backup_id, request.target_lsn) == ("new", "b1", "0/3000060")
    assert (request.data_dir, request.port, request.requested_by) == ("/srv/r1", 6001, "oncall")
    into = api.restore("main", node="node2", confirm=True, wait_seconds=0)
    assert isinstance(into, OperationView)
    assert into.target == "node2"
    node_request = published(app, "restore.requested")
    assert isinstance(node_request, RestoreRequested)
    assert (node_request.target, node_request.confirm) == ("node", True)

    answers["restore.requested"] = lambda r: [
        RestoreFailed(
            cluster="main",
            source=BACKUP,
            reason="node2's data directory is not on this host",
            request_id=r.event_id,
        )
    ]
    refused = app.post("/clusters/main/restores", json={"node": "node2", "confirm": True})
    assert refused.status_code == 409
    assert refused.json()["reason"] == "node2's data directory is not on this host"


def test_the_failover_route_passes_force_and_the_budget(app: TestClient) -> None:
    resp = app.post(
        "/clusters/main/failover",
        json={
            "reason": "dc lost",
            "force": True,
            "data_loss_budget_bytes": 1048576,
            "wait_seconds": 0,
        },
    )
    assert resp.status_code == 202, resp.text
    request = published(app, "failover.requested")
    assert isinstance(request, FailoverRequested)
    assert (request.force, request.data_loss_budget_bytes) == (True, 1048576)
    assert str(request.correlation_id) == resp.json()["id"]
    plain = app.post("/clusters/main/failover", json={"reason": "x", "wait_seconds": 0})
    assert plain.status_code == 202
    request = published(app, "failover.requested")
    assert isinstance(request, FailoverRequested)
    assert (request.force, request.data_loss_budget_bytes) == (False, None)
    bad = app.post("/clusters/main/failover", json={"reason": "x", "data_loss_budget_bytes": -1})
    assert bad.status_code == 422


def _status(fileset: str, node: str, state: str, **fields: Any) -> FileStatus:
    mode = "mirror" if node == "node1" else "pull"
    return FileStatus(
        cluster="main",
        fileset=fileset,
        node=node,
        source=FILESYNC,
        mode=mode,
        state=state,
        files=10,
        bytes=1000,
        **fields,
    )


def test_file_sets_show_their_state_and_their_commands_close_on_filesyncs_answers(
    app: TestClient, api: GatewayClient, answers: dict[str, Publish]
) -> None:
    p = projection(app)

    def put(event: Envelope, stream: str = "events") -> None:
        p.apply(Stored(stream, next_seq(app), event.subject(), event))  # type: ignore[arg-type]

    view = api.files("main")
    assert [f.name for f in view.filesets] == ["uploads", "docs"]
    assert [(n.node, n.mode, n.state) for n in view.filesets[0].nodes] == [
        ("node1", "mirror", None),
        ("node2", "pull", None),
    ]
    synced = FileSynced(
        cluster="main",
        fileset="uploads",
        source=FILESYNC,
        files_copied=3,
        files_unchanged=7,
        bytes_copied=300,
        duration_seconds=0.2,
    )
    put(synced)
    put(_status("uploads", "node1", "in_sync", pending=2), "heartbeats")
    put(_status("uploads", "node2", "paused", detail="12 of 20 files gone"), "heartbeats")
    uploads = api.files("main").filesets[0]
    assert uploads.last_sync is not None
    assert uploads.last_sync["files_copied"] == 3
    assert (uploads.pending, uploads.paused, uploads.paused_reason) == (
        2,
        True,
        "12 of 20 files gone",
    )
    assert uploads.nodes[0].state == "in_sync"

    # sync: closed by the next file.synced of that set (filesync names no request).
    sync = api.file_command("main", "uploads", "sync", wait_seconds=0)
    assert isinstance(sync, OperationView)
    assert (sync.kind, sync.fileset, sync.state) == ("file_sync", "uploads", "pending")
    later = {"occurred_at": datetime.now(UTC) + timedelta(seconds=1)}
    put(synced.model_copy(update={"fileset": "docs", **later, "event_id": UUID(int=1)}))
    assert api.operation(sync.id).state == "pending"
    put(synced.model_copy(update={**later, "event_id": UUID(int=2)}))
    assert api.operation(sync.id).state == "completed"

    # check: the reference set closes on file.references_checked, the other on file.verified.
    verified = FileVerified(cluster="main", fileset="docs", source=FILESYNC, matching=4, **later)
    refs = FileReferencesChecked(
        cluster="main",
        fileset="docs",
        source=FILESYNC,
        referenced=4,
        files=4,
        missing=0,
        orphans=1,
        **later,
    )
    check_docs = api.file_command("main", "docs", "check", wait_seconds=0)
    check_uploads = api.file_command("main", "uploads", "check", wait_seconds=0)
    assert isinstance(check_docs, OperationView)
    assert isinstance(check_uploads, OperationView)
    put(verified)
    assert api.operation(check_docs.id).state == "running"
    put(refs)
    docs_done = api.operation(check_docs.id)
    assert docs_done.state == "completed"
    assert docs_done.outcome is not None
    assert docs_done.outcome["type"] == "file.references_checked"
    put(verified.model_copy(update={"fileset": "uploads", "event_id": UUID(int=3)}))
    assert api.operation(check_uploads.id).state == "completed"

    # restore: checked at the edge, failed by filesync's `restore: ` failure.
    assert app.post("/clusters/main/files/uploads/restore").status_code == 422
    relative = app.post("/clusters/main/files/uploads/restore", json={"destination": "x"})
    assert relative.status_code == 422
    elsewhere = app.post(
        "/clusters/main/files/docs/restore", json={"destination": "/tmp/d", "node": "node2"}
    )
    assert elsewhere.status_code == 404
    restore = api.file_command(
        "main", "uploads", "restore", destination="/srv/copy", wait_seconds=0
    )
    assert isinstance(restore, OperationView)
    request = published(app, "file.restore_requested")
    assert isinstance(request, FileRestoreRequested)
    assert (request.destination, request.requested_by) == ("/srv/copy", "oncall")
    put(
        FileSyncFailed(
            cluster="main", fileset="uploads", source=FILESYNC, reason="check: boom", **later
        )
    )
    assert api.operation(restore.id).state == "pending"  # a check's failure, not a restore's
    put(
        FileSyncFailed(
            cluster="main",
            fileset="uploads",
            source=FILESYNC,
            reason="restore: no such snapshot",
            **later,
        )
    )
    failed = api.operation(restore.id)
    assert (failed.state, failed.outcome_reason) == ("failed", "restore: no such snapshot")

    # A sync asked of a paused set: its heartbeat says so.
    paused = api.file_command("main", "uploads", "sync", wait_seconds=0)
    assert isinstance(paused, OperationView)
    put(_status("uploads", "node1", "paused", detail="guard", **later), "heartbeats")
    assert api.operation(paused.id).state == "failed"

    # A filesync that names the request it answers: exactly that operation, never another.
    first = api.file_command("main", "uploads", "sync", wait_seconds=0)
    second = api.file_command("main", "uploads", "sync", wait_seconds=0)
    assert isinstance(first, OperationView)
    assert isinstance(second, OperationView)
    answer = synced.model_copy(update={**later, "event_id": UUID(int=4)})
    put(answer.model_copy(update={"correlation_id": second.id}))
    assert (api.operation(first.id).state, api.operation(second.id).state) == (
        "pending",
        "completed",
    )
    put(answer.model_copy(update={"correlation_id": UUID(int=99), "event_id": UUID(int=5)}))
    assert api.operation(first.id).state == "pending"  # someone else's request

    missing = app.post("/clusters/main/files/nope/sync")
    assert missing.status_code == 404
    assert missing.json()["detail"] == "cluster main has no file set 'nope' (known: uploads, docs)"


def test_operations_of_every_kind_are_rebuilt_from_the_history(app: TestClient) -> None:
    rebuilt = Projection()
    app.post("/clusters/main/backups", json={"wait_seconds": 0})
    app.post("/clusters/main/files/uploads/sync", json={"wait_seconds": 0})
    for stored in projection(app).events:
        rebuilt.apply(stored)
    kinds = sorted(o.kind for o in rebuilt.operations.values())
    assert kinds == ["backup", "file_sync"]
    assert all(o.requested_by == "oncall" for o in rebuilt.operations.values())


def test_the_openapi_document_is_sound(app: TestClient) -> None:
    """Without an OpenAPI validator at hand: every component is a valid JSON Schema (2020-12,
    which OpenAPI 3.1 uses), every `$ref` resolves, every operation has an id and answers."""
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

    doc = app.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    components = doc["components"]["schemas"]
    for schema in components.values():
        Draft202012Validator.check_schema(schema)  # raises, naming what is wrong

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in components, ref
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["responses"], (method, path)


def test_the_cli_says_each_outcome_in_one_line(app: TestClient, api: GatewayClient) -> None:
    from lifeboat.gateway.cliutil import outcome_line, progress_line

    pending = api.create_backup("main", wait_seconds=0)
    assert isinstance(pending, OperationView)
    assert progress_line(pending) == f"backup {pending.id}: pending"
    progress = BackupProgress(
        cluster="main",
        source=BACKUP,
        backup_id="b1",
        kind=BackupKind.PHYSICAL,
        request_id=pending.id,
        raw_bytes=50 * 1024 * 1024,
        stored_bytes=10 * 1024 * 1024,
        seconds=2.0,
        mb_per_s=26.2,
    )
    projection(app).apply(Stored("heartbeats", 1, progress.subject(), progress))
    running = api.operation(pending.id)
    assert progress_line(running).endswith("running, 50.0 MB read, 10.0 MB stored (26.2 MB/s, 2s)")
    done = BackupCompleted(
        cluster="main",
        source=BACKUP,
        kind=BackupKind.PHYSICAL,
        backup_id="b1",
        node="node2",
        size_bytes=10 * 1024 * 1024,
        duration_seconds=2.5,
        manifest_key="k",
        sha256="0" * 64,
        correlation_id=pending.id,
    )
    projection(app).apply(Stored("events", next_seq(app), done.subject(), done))
    line = outcome_line(api.operation(pending.id))
    assert line.startswith("backup completed: b1 (physical from node2, 10.0 MB stored, 2.5s)")
    assert "\n" not in line
