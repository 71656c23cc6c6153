"""What every `lifeboat` command shares: the consoles, the common options, the gateway client
from the command line's context, `--json` output, and following an operation to its outcome
with a spinner (a backup's bytes from `backup.progress` as it runs)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console

from lifeboat.gateway.client import GatewayClient
from lifeboat.gateway.schemas import OperationRefused, OperationView

# Piped (scripts, tests): wide enough for the status table on one line per member.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
ClusterOpt = Annotated[str, typer.Option("--cluster", "-c", help="cluster name")]
WaitOpt = Annotated[bool, typer.Option("--wait/--no-wait", help="follow it to its outcome")]

# How often the spinner asks about an operation that reports progress (a backup).
PROGRESS_POLL_SECONDS = 2.0


class Refused(Exception):
    """Exit 1 with this line."""


@dataclass
class Context:
    url: str
    token: str | None

    def client(self, **kwargs: Any) -> GatewayClient:
        return GatewayClient(self.url, token=self.token or "", **kwargs)


def context(ctx: typer.Context) -> Context:
    obj = ctx.obj
    assert isinstance(obj, Context)
    return obj


def dump(body: BaseModel | list[BaseModel] | Any) -> None:
    data: Any
    if isinstance(body, BaseModel):
        data = body.model_dump(mode="json")
    elif isinstance(body, list):
        data = [b.model_dump(mode="json") if isinstance(b, BaseModel) else b for b in body]
    else:
        data = body
    print(json.dumps(data, indent=2))


def mb(value: int | None) -> str:
    return "" if value is None else f"{value / 1024 / 1024:.1f}"


def age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def progress_line(view: OperationView) -> str:
    line = f"{view.kind} {view.id}: {view.state}"
    p = view.progress
    if p is not None:
        line += (
            f", {mb(p.raw_bytes)} MB read, {mb(p.stored_bytes)} MB stored "
            f"({p.mb_per_s:.1f} MB/s, {p.seconds:.0f}s)"
        )
    return line


def follow(
    gw: GatewayClient, answer: OperationView | OperationRefused, as_json: bool, wait: bool
) -> None:
    """Print the operation (following it to its outcome with `wait`); Refused or exit 1 when
    it was refused or failed, or is still under way after the client's operation timeout."""
    if isinstance(answer, OperationRefused):
        if as_json:
            dump(answer)
        raise Refused(f"refused: {answer.reason}")
    view = answer
    poll = PROGRESS_POLL_SECONDS if view.kind == "backup" else 30.0
    if wait and not view.done:
        if as_json:
            view = gw.follow(view)
        else:
            with err.status(progress_line(view)) as spinner:

                def update(v: OperationView) -> None:
                    spinner.update(progress_line(v))

                view = gw.follow(view, on_update=update, poll=poll)
    if as_json:
        dump(view)
    else:
        out.print(outcome_line(view), markup=False)
    if view.state in ("failed", "refused"):
        if as_json:
            raise typer.Exit(1)
        raise Refused(f"{view.state}: {view.outcome_reason}")
    if wait and not view.done:
        raise Refused(f"still {view.state} after waiting: follow {view.location}")


def _completed(view: OperationView) -> str:
    o = view.outcome or {}
    match view.kind:
        case "backup":
            return (
                f"{o.get('backup_id')} ({o.get('kind')} from {o.get('node')}, "
                f"{mb(o.get('size_bytes'))} MB stored, {o.get('duration_seconds')}s)"
            )
        case "restore":
            return (
                f"{o.get('backup_id')} into {o.get('data_dir')} on port {o.get('port')} "
                f"({o.get('duration_seconds')}s, recovered to {o.get('recovered_to')})"
            )
        case "backup_verify":
            return (
                f"{o.get('backup_id')} restores in {o.get('restore_seconds')}s: {o.get('detail')}"
            )
        case "backup_delete":
            return f"{o.get('backup_id')} ({o.get('objects')} objects)"
        case "file_sync":
            return (
                f"{view.fileset}: {o.get('files_copied')} copied, {o.get('files_deleted')} "
                f"deleted, {o.get('files_unchanged')} unchanged"
            )
        case "file_check":
            if o.get("type") == "file.references_checked":
                return (
                    f"{view.fileset}: {o.get('referenced')} referenced, {o.get('missing')} "
                    f"missing, {o.get('orphans')} orphans"
                )
            return (
                f"{view.fileset}: {o.get('matching')} matching, {o.get('differing')} differing, "
                f"{o.get('missing_remote')} not in S3, {o.get('missing_local')} not on disk"
            )
        case "file_restore":
            return f"{view.fileset}: {o.get('files_restored')} files into {o.get('destination')}"
    new = o.get("new_primary") or o.get("node")
    took = o.get("total_seconds") or o.get("seconds")
    return f"{new} ({took}s)"


def outcome_line(view: OperationView) -> str:
    if view.state == "completed":
        return f"{view.kind} completed: {_completed(view)} [operation {view.id}]"
    return f"{view.kind} {view.state}: operation {view.id} at {view.location}"
