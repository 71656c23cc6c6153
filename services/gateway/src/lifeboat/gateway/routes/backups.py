"""Backups, restores and the WAL archive, fronting the backup service.

Commands publish `backup.requested`, `backup.verify_requested`, `backup.delete_requested` and
`restore.requested` as operations (see `operations`); the backup service answers with the
request's id as `request_id`, which closes them; filesync answers for files snapshots. Reads
come from the catalogue the backup service (database kinds, WAL status) and filesync (files
snapshots) mirror into KV `lifeboat_backups`: the gateway never talks to S3.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from lifeboat.common.clusters import ClusterSpec
from lifeboat.common.events import (
    BackupDeleteRequested,
    BackupKind,
    BackupRequested,
    BackupVerifyRequested,
    RestoreRequested,
)
from lifeboat.gateway import views
from lifeboat.gateway.auth import Operator, Reader
from lifeboat.gateway.deps import ClusterDep, Gateway, GatewayDep, require_node
from lifeboat.gateway.problems import Problem, invalid, responses
from lifeboat.gateway.routes import files
from lifeboat.gateway.routes.operations import COMMAND, command
from lifeboat.gateway.schemas import (
    BackupCreate,
    BackupDetail,
    BackupList,
    FileRestoreBody,
    RestoreBody,
    WaitBody,
    WalView,
)

router = APIRouter(prefix="/clusters", tags=["backups"])
READ = responses(401, 403, 404, 422)
ListedStatus = Literal["verified", "unverified", "failed_verification"]


def require_backup(gw: Gateway, spec: ClusterSpec, backup_id: str) -> None:
    """404 unless the mirrored catalogue lists `backup_id` (once there is a catalogue:
    before the backup service mirrored one, the service itself decides)."""
    if not gw.projection.catalogued(spec.name):
        return
    if views.find_backup(gw.projection, spec.name, backup_id) is None:
        raise Problem(
            404,
            "Not Found",
            f"cluster {spec.name} lists no backup {backup_id!r}",
            cluster=spec.name,
            backup_id=backup_id,
        )


@router.post("/{cluster}/backups", status_code=202, responses=COMMAND)
async def create_backup(
    who: Operator, spec: ClusterDep, gw: GatewayDep, body: BackupCreate | None = None
) -> JSONResponse:
    """Take a backup now (`physical` by default; `logical`, `files`, `full`)."""
    body = body or BackupCreate()
    if body.node is not None:
        require_node(spec, body.node)
    if body.kind is not BackupKind.LOGICAL and (body.database or body.all_databases):
        raise invalid("body.database", "database and all_databases are for logical backups")
    return await command(
        gw,
        who,
        spec,
        BackupRequested,
        body.wait_seconds,
        kind=body.kind,
        reason=body.reason,
        database=body.database,
        all_databases=body.all_databases,
        node=body.node,
        verify=body.verify,
    )


@router.get("/{cluster}/backups", responses=READ)
async def list_backups(
    spec: ClusterDep,
    gw: GatewayDep,
    _: Reader,
    kind: Annotated[BackupKind | None, Query(description="only this kind")] = None,
    status: Annotated[ListedStatus | None, Query(description="only in this state")] = None,
) -> BackupList:
    """The listed backups, newest first, as the backup service last mirrored them."""
    return views.backup_list(gw.projection, spec.name, kind, status)


@router.get("/{cluster}/backups/{backup_id}", responses=READ)
async def show_backup(spec: ClusterDep, backup_id: str, gw: GatewayDep, _: Reader) -> BackupDetail:
    """One backup: its summary and manifest, and its latest verification."""
    entry = views.find_backup(gw.projection, spec.name, backup_id)
    if entry is None:
        raise Problem(
            404,
            "Not Found",
            f"cluster {spec.name} lists no backup {backup_id!r}",
            cluster=spec.name,
            backup_id=backup_id,
        )
    return views.backup_detail(entry)


@router.delete("/{cluster}/backups/{backup_id}", status_code=202, responses=COMMAND)
async def delete_backup(
    who: Operator,
    spec: ClusterDep,
    backup_id: str,
    gw: GatewayDep,
    force: bool = Query(False, description="delete even the last good backup"),
    wait_seconds: float = Query(5.0, ge=0, le=30, description="how long to wait for a refusal"),
) -> JSONResponse:
    """Delete a backup; 409 with the reason when the backup service refuses (the last good
    backup, without `force`)."""
    require_backup(gw, spec, backup_id)
    return await command(
        gw, who, spec, BackupDeleteRequested, wait_seconds, backup_id=backup_id, force=force
    )


@router.post("/{cluster}/backups/{backup_id}/verify", status_code=202, responses=COMMAND)
async def verify_backup(
    who: Operator,
    spec: ClusterDep,
    backup_id: str,
    gw: GatewayDep,
    body: WaitBody | None = None,
) -> JSONResponse:
    """Verify a backup by restoring it into a scratch instance and checking it."""
    require_backup(gw, spec, backup_id)
    wait = (body or WaitBody()).wait_seconds
    return await command(gw, who, spec, BackupVerifyRequested, wait, backup_id=backup_id)


def check_restore(gw: Gateway, spec: ClusterSpec, body: RestoreBody) -> None:
    """What the edge can tell about a restore request before the backup service sees it."""
    if body.target_time is not None and body.target_lsn is not None:
        raise invalid("body.target_lsn", "give target_time or target_lsn, not both")
    if body.node is not None:
        require_node(spec, body.node)
        if not body.confirm:
            raise invalid("body.confirm", f"restoring into {body.node} replaces its data")
        if body.data_dir is not None or body.port is not None:
            raise invalid("body.data_dir", "data_dir and port are for a restore into a new one")
        topo = gw.projection.topologies.get(spec.name)
        if topo is not None and topo.primary == body.node:
            raise Problem(
                409,
                "Conflict",
                f"{body.node} is the primary of {spec.name}: restore into a standby or a new one",
                type_="https://lifeboat.dev/problems/refused",
                reason="the primary",
                cluster=spec.name,
                node=body.node,
            )
    if body.data_dir is not None:
        path = PurePosixPath(body.data_dir)
        if not path.is_absolute() or ".." in path.parts:
            raise invalid("body.data_dir", "must be an absolute path without '..'")
    if body.backup_id is not None:
        require_backup(gw, spec, body.backup_id)


@router.post("/{cluster}/restores", status_code=202, responses=COMMAND)
async def restore(
    who: Operator, spec: ClusterDep, gw: GatewayDep, body: RestoreBody | None = None
) -> JSONResponse:
    """Restore a backup (the newest fitting one, replaying WAL up to `target_time` or
    `target_lsn` for point-in-time recovery) into a new data directory and port, or with
    `node` and `confirm` into that node. A `files` backup is restored by filesync: into
    `data_dir`, or with `node` and `confirm` over that node's copy of the set."""
    body = body or RestoreBody()
    listed = views.find_backup(gw.projection, spec.name, body.backup_id) if body.backup_id else None
    if listed is not None and listed.get("kind") == "files":
        return await restore_files(who, spec, gw, body, listed)
    check_restore(gw, spec, body)
    return await command(
        gw,
        who,
        spec,
        RestoreRequested,
        body.wait_seconds,
        backup_id=body.backup_id,
        target="node" if body.node else "new",
        target_time=body.target_time,
        target_lsn=body.target_lsn,
        data_dir=body.data_dir,
        port=body.port,
        node=body.node,
        confirm=body.confirm,
    )


async def restore_files(
    who: Operator, spec: ClusterSpec, gw: Gateway, body: RestoreBody, listed: dict[str, Any]
) -> JSONResponse:
    """A files backup is its set's snapshot: restored by filesync, into `data_dir` (a new
    directory) or with `node` and `confirm` over that node's copy of the set."""
    if body.target_time is not None or body.target_lsn is not None:
        raise invalid("body.target_time", "a files backup is restored as of its snapshot")
    if body.port is not None:
        raise invalid("body.port", "a files backup is restored into a directory")
    fs = await files.fileset_spec(str(listed.get("fileset")), spec)
    wanted = FileRestoreBody(
        destination=body.data_dir,
        snapshot_id=body.backup_id,
        node=body.node,
        confirm=body.confirm,
        wait_seconds=body.wait_seconds,
    )
    return await files.restore(who, spec, fs, gw, wanted)


@router.get("/{cluster}/wal", responses=READ)
async def wal(spec: ClusterDep, gw: GatewayDep, _: Reader) -> WalView:
    """Continuous WAL archiving: the source, what is archived, the lag (the RPO from S3)."""
    return views.wal_view(gw.projection, spec.name, views.utcnow())
