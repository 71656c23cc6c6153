"""File sets, fronting filesync: their state from `file.status` heartbeats and `file.*`
events, and the commands `sync`, `check` and `restore` as operations (see `operations`).

filesync's answers carry no request id: an operation is closed by the first answer of its
kind about its set after it was asked (`file.synced`, `file.verified` or
`file.references_checked`, `file.restored`, or `file.sync_failed` saying which).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from lifeboat.common.clusters import ClusterSpec, FileSetSpec
from lifeboat.common.events import (
    ClusterEvent,
    FileCheckRequested,
    FileRestoreRequested,
    FileSyncRequested,
)
from lifeboat.gateway import views
from lifeboat.gateway.auth import Operator, Principal, Reader
from lifeboat.gateway.deps import ClusterDep, Gateway, GatewayDep
from lifeboat.gateway.problems import Problem, invalid, responses
from lifeboat.gateway.routes.operations import COMMAND, command
from lifeboat.gateway.schemas import (
    FileCheckBody,
    FileRestoreBody,
    FilesView,
    FileSyncBody,
    WaitBody,
)

router = APIRouter(prefix="/clusters", tags=["files"])


async def fileset_spec(fileset: str, spec: ClusterDep) -> FileSetSpec:
    """The file set named in the path, or 404 naming the cluster's."""
    for fs in spec.filesets:
        if fs.name == fileset:
            return fs
    known = ", ".join(f.name for f in spec.filesets) or "none"
    raise Problem(
        404,
        "Not Found",
        f"cluster {spec.name} has no file set {fileset!r} (known: {known})",
        cluster=spec.name,
        fileset=fileset,
    )


FileSetDep = Annotated[FileSetSpec, Depends(fileset_spec)]


@router.get("/{cluster}/files", responses=responses(401, 403, 404))
async def files(spec: ClusterDep, gw: GatewayDep, _: Reader) -> FilesView:
    """Each file set: every copy's state, the last sync and failure, pending changes,
    whether it is paused (mass-deletion guard), the last check."""
    return views.files_view(gw.projection, spec, views.utcnow())


async def _ask(
    gw: Gateway,
    who: Principal,
    spec: ClusterSpec,
    fs: FileSetSpec,
    event: type[ClusterEvent],
    body: WaitBody,
    **fields: Any,
) -> JSONResponse:
    """Ask filesync for `event` about the set, as an operation (see `operations.command`)."""
    return await command(gw, who, spec, event, body.wait_seconds, fileset=fs.name, **fields)


@router.post("/{cluster}/files/{fileset}/sync", status_code=202, responses=COMMAND)
async def sync(
    who: Operator,
    spec: ClusterDep,
    fs: FileSetDep,
    gw: GatewayDep,
    body: FileSyncBody | None = None,
) -> JSONResponse:
    """A pass now (a paused set resumes with `confirm_deletions`)."""
    body = body or FileSyncBody()
    return await _ask(
        gw, who, spec, fs, FileSyncRequested, body, confirm_deletions=body.confirm_deletions
    )


@router.post("/{cluster}/files/{fileset}/check", status_code=202, responses=COMMAND)
async def check(
    who: Operator,
    spec: ClusterDep,
    fs: FileSetDep,
    gw: GatewayDep,
    body: FileCheckBody | None = None,
) -> JSONResponse:
    """Compare the set's files with S3 (like `rclone check`), and its rows with its files."""
    body = body or FileCheckBody()
    return await _ask(gw, who, spec, fs, FileCheckRequested, body, references=body.references)


@router.post("/{cluster}/files/{fileset}/restore", status_code=202, responses=COMMAND)
async def restore(
    who: Operator,
    spec: ClusterDep,
    fs: FileSetDep,
    gw: GatewayDep,
    body: FileRestoreBody | None = None,
) -> JSONResponse:
    """Restore the set (as it is in S3, or as of a snapshot) into `destination`, or over its
    root in place with `confirm`."""
    body = body or FileRestoreBody()
    placed = [p.node for p in fs.placement]
    if body.node is not None and body.node not in placed:
        raise Problem(
            404,
            "Not Found",
            f"file set {fs.name} is not placed on {body.node!r} (placed: {', '.join(placed)})",
            cluster=spec.name,
            fileset=fs.name,
            node=body.node,
        )
    if body.destination is not None:
        path = PurePosixPath(body.destination)
        if not path.is_absolute() or ".." in path.parts:
            raise invalid("body.destination", "must be an absolute path without '..'")
    elif not body.confirm:
        raise invalid("body.confirm", f"restoring over {fs.name}'s root replaces its files")
    return await _ask(
        gw,
        who,
        spec,
        fs,
        FileRestoreRequested,
        body,
        destination=body.destination,
        snapshot_id=body.snapshot_id,
        node=body.node,
        confirm=body.confirm,
    )
