"""`lifeboat backup create|list|show|delete|verify`, `lifeboat restore`, `lifeboat wal` and
`lifeboat files status|sync|check|restore`: the backup service and filesync through the
gateway. Commands follow their operation to its outcome (`--no-wait` to return at once)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from lifeboat.gateway.cliutil import (
    ClusterOpt,
    JsonOpt,
    WaitOpt,
    age,
    context,
    dump,
    follow,
    mb,
    out,
)
from lifeboat.gateway.schemas import BackupDetail, BackupList

backup_app = typer.Typer(help="backups (the backup service)", no_args_is_help=True)
files_app = typer.Typer(help="application file sets (filesync)", no_args_is_help=True)

BackupArg = Annotated[str, typer.Argument(help="the backup's id (see `lifeboat backup list`)")]
SetArg = Annotated[str, typer.Argument(help="the file set's name")]


# --- backups ----------------------------------------------------------------------------------


@backup_app.command("create")
def backup_create(
    ctx: typer.Context,
    kind: Annotated[str, typer.Option(help="physical, logical, files or full")] = "physical",
    cluster: ClusterOpt = "main",
    node: Annotated[str | None, typer.Option(help="take it from this node")] = None,
    verify: Annotated[
        bool | None, typer.Option("--verify/--no-verify", help="test-restore it afterwards")
    ] = None,
    reason: Annotated[str, typer.Option(help="why: recorded on the events")] = "on demand",
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Take a backup now."""
    with context(ctx).client() as gw:
        answer = gw.create_backup(cluster, kind, reason=reason, node=node, verify=verify)
        follow(gw, answer, as_json, wait)


def backups_table(listed: BackupList) -> Table:
    table = Table(title=f"Backups: {listed.cluster}", title_justify="left")
    for column in ("Backup", "Kind", "Status", "Node", "Finished", "Stored MB", "Raw MB", "s"):
        table.add_column(
            column, justify="right" if column in ("Stored MB", "Raw MB", "s") else "left"
        )
    for b in listed.backups:
        table.add_row(
            b.backup_id,
            b.kind.value,
            b.status,
            b.node or "",
            b.stopped_at.strftime("%Y-%m-%d %H:%M:%S"),
            mb(b.stored_bytes),
            mb(b.raw_bytes),
            f"{b.duration_seconds:.1f}",
        )
    return table


@backup_app.command("list")
def backup_list(
    ctx: typer.Context,
    cluster: ClusterOpt = "main",
    kind: Annotated[str | None, typer.Option(help="only this kind")] = None,
    status: Annotated[
        str | None, typer.Option(help="verified, unverified or failed_verification")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The listed backups, newest first."""
    with context(ctx).client() as gw:
        listed = gw.backups(cluster, kind=kind, status=status)
    if as_json:
        dump(listed)
        return
    if not listed.mirrored:
        out.print(f"{cluster}: the backup service has not listed any backup yet", markup=False)
        return
    out.print(backups_table(listed))


def _show(b: BackupDetail) -> None:
    lines = [
        f"{b.backup_id}: {b.kind.value} backup of {b.cluster}, {b.status}",
        f"  from {b.node} ({b.source_role}), PostgreSQL {b.pg_version}, timeline {b.timeline}",
        f"  {b.started_at} .. {b.stopped_at} ({b.duration_seconds:.1f}s)",
        f"  {mb(b.raw_bytes)} MB read, {mb(b.stored_bytes)} MB stored"
        f"{', encrypted' if b.encrypted else ''}",
    ]
    if b.start_lsn or b.stop_lsn:
        lines.append(f"  WAL {b.start_lsn} .. {b.stop_lsn}")
    if b.databases:
        lines.append(f"  databases: {', '.join(b.databases)} ({b.tables} tables)")
    v = b.verification
    if v is not None:
        verdict = "ok" if v.ok else "FAILED"
        lines.append(
            f"  verified {v.verified_at}: {verdict}, restores in {v.restore_seconds:.1f}s: "
            f"{v.detail}"
        )
    for line in lines:
        out.print(line, markup=False)


@backup_app.command("show")
def backup_show(
    ctx: typer.Context, backup_id: BackupArg, cluster: ClusterOpt = "main", as_json: JsonOpt = False
) -> None:
    """One backup: its manifest and its latest verification."""
    with context(ctx).client() as gw:
        detail = gw.backup(cluster, backup_id)
    dump(detail) if as_json else _show(detail)


@backup_app.command("delete")
def backup_delete(
    ctx: typer.Context,
    backup_id: BackupArg,
    cluster: ClusterOpt = "main",
    force: Annotated[bool, typer.Option(help="delete even the last good backup")] = False,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Delete a backup (refused for the last good one without --force)."""
    with context(ctx).client() as gw:
        follow(gw, gw.delete_backup(cluster, backup_id, force=force), as_json, wait)


@backup_app.command("verify")
def backup_verify(
    ctx: typer.Context,
    backup_id: BackupArg,
    cluster: ClusterOpt = "main",
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Verify a backup by restoring it into a scratch instance and checking it."""
    with context(ctx).client() as gw:
        follow(gw, gw.verify_backup(cluster, backup_id), as_json, wait)


def restore(
    ctx: typer.Context,
    cluster: ClusterOpt = "main",
    backup: Annotated[
        str | None, typer.Option(help="backup id (default: the newest fitting)")
    ] = None,
    target_time: Annotated[
        str | None, typer.Option("--time", help="recover to this ISO time (PITR)")
    ] = None,
    target_lsn: Annotated[str | None, typer.Option("--lsn", help="recover to this LSN")] = None,
    data_dir: Annotated[str | None, typer.Option(help="new: this empty directory")] = None,
    port: Annotated[int | None, typer.Option(help="new: this port (default: a free one)")] = None,
    node: Annotated[str | None, typer.Option(help="replace this node's data")] = None,
    confirm: Annotated[bool, typer.Option(help="required with --node")] = False,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Restore a backup into a new data directory and port (or, with --node --confirm, into
    that node), replaying WAL up to --time or --lsn."""
    with context(ctx).client() as gw:
        answer = gw.restore(
            cluster,
            backup_id=backup,
            target_time=target_time,
            target_lsn=target_lsn,
            data_dir=data_dir,
            port=port,
            node=node,
            confirm=confirm,
        )
        follow(gw, answer, as_json, wait)


def wal(ctx: typer.Context, cluster: ClusterOpt = "main", as_json: JsonOpt = False) -> None:
    """Continuous WAL archiving: where from, how far, how far behind."""
    with context(ctx).client() as gw:
        w = gw.wal(cluster)
    if as_json:
        dump(w)
        return
    if not w.known:
        out.print(f"{cluster}: no WAL archiving status yet", markup=False)
        return
    lag = "unknown" if w.lag_seconds is None else f"{w.lag_seconds:.1f}s"
    lines = [
        f"{cluster}: WAL archiving {w.state} from {w.primary} (timeline {w.timeline}), "
        f"reported {age(w.age_seconds)}",
        f"  primary at {w.primary_lsn}, archived to {w.archived_lsn} ({w.last_segment})",
        f"  lag {lag}, {mb(w.lag_bytes) or '?'} MB; spool {mb(w.spool_bytes)} MB",
    ]
    if w.error:
        lines.append(f"  error: {w.error}")
    for line in lines:
        out.print(line, markup=False)


# --- file sets ------------------------------------------------------------------------------


@files_app.command("status")
def files_status(
    ctx: typer.Context, cluster: ClusterOpt = "main", as_json: JsonOpt = False
) -> None:
    """Each file set: last sync, pending changes, paused or not, last check."""
    with context(ctx).client() as gw:
        view = gw.files(cluster)
    if as_json:
        dump(view)
        return
    if not view.filesets:
        out.print(f"{cluster}: no file sets configured", markup=False)
        return
    table = Table(title=f"File sets: {cluster}", title_justify="left")
    for column in ("Set", "Copies", "Last sync", "Pending", "Paused", "Last check"):
        table.add_column(column)
    for fs in view.filesets:
        copies = ", ".join(f"{n.node} {n.mode} {n.state or '?'}" for n in fs.nodes)
        check = fs.last_check
        checked = (
            "never"
            if check is None
            else f"{check.get('matching')} ok, {check.get('differing', 0)} differ"
        )
        table.add_row(
            fs.name,
            copies,
            age(fs.last_sync_age_seconds),
            str(fs.pending),
            f"yes: {fs.paused_reason}" if fs.paused else "no",
            checked,
        )
    out.print(table)


def _files(
    ctx: typer.Context,
    cluster: str,
    fileset: str,
    action: Literal["sync", "check", "restore"],
    wait: bool,
    as_json: bool,
    **fields: Any,
) -> None:
    """Ask for `action` on the set and follow its operation to the outcome."""
    with context(ctx).client() as gw:
        follow(gw, gw.file_command(cluster, fileset, action, **fields), as_json, wait)


@files_app.command("sync")
def files_sync(
    ctx: typer.Context,
    fileset: SetArg,
    cluster: ClusterOpt = "main",
    confirm_deletions: Annotated[
        bool, typer.Option(help="let this pass delete more than the guard allows")
    ] = False,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """A pass now."""
    _files(ctx, cluster, fileset, "sync", wait, as_json, confirm_deletions=confirm_deletions)


@files_app.command("check")
def files_check(
    ctx: typer.Context,
    fileset: SetArg,
    cluster: ClusterOpt = "main",
    references: Annotated[
        bool, typer.Option("--references/--no-references", help="also check rows against files")
    ] = True,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Compare the set with S3 (and its rows with its files)."""
    _files(ctx, cluster, fileset, "check", wait, as_json, references=references)


@files_app.command("restore")
def files_restore(
    ctx: typer.Context,
    fileset: SetArg,
    cluster: ClusterOpt = "main",
    destination: Annotated[
        str | None, typer.Option(help="an absolute directory (default: the set's root)")
    ] = None,
    snapshot: Annotated[str | None, typer.Option(help="as of this snapshot")] = None,
    node: Annotated[str | None, typer.Option(help="the copy to restore on")] = None,
    confirm: Annotated[bool, typer.Option(help="required to replace the live files")] = False,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Restore the set from S3 into a directory (or over its root with --confirm)."""
    _files(
        ctx,
        cluster,
        fileset,
        "restore",
        wait,
        as_json,
        destination=destination,
        snapshot_id=snapshot,
        node=node,
        confirm=confirm or None,
    )
