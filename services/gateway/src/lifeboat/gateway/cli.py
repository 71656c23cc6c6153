"""`lifeboat`: the command line face of the gateway's REST API (typer + rich).

Against the local stack (`make up`) it needs no options: the gateway is on 127.0.0.1:8000
and its token in `.lifeboat/secrets/lifeboat_token`. Elsewhere: `LIFEBOAT_GATEWAY_URL` and
`LIFEBOAT_TOKEN` / `LIFEBOAT_TOKEN_FILE`, a config file (`~/.config/lifeboat/cli.toml`), or
`--gateway` / `--token`. Every command takes `--json`. Errors are one line on stderr and a
non-zero exit: 1 refused or failed, 2 the gateway cannot be reached. Failover drills are the
dev stack's: `lifeboat-stack drill`.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import click
import httpx
import typer
from rich.table import Table

from lifeboat.gateway import clibackup
from lifeboat.gateway.auth import Role, hash_token
from lifeboat.gateway.client import GatewayError
from lifeboat.gateway.cliutil import (
    ClusterOpt,
    Context,
    JsonOpt,
    Refused,
    WaitOpt,
    age,
    context,
    dump,
    err,
    follow,
    mb,
    out,
    outcome_line,
)
from lifeboat.gateway.schemas import (
    ClusterStatus,
    HealthReport,
)
from lifeboat.gateway.settings import CliSettings

app = typer.Typer(
    name="lifeboat",
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
events_app = typer.Typer(help="live events", no_args_is_help=True)
token_app = typer.Typer(help="API tokens", no_args_is_help=True)
app.add_typer(events_app, name="events")
app.add_typer(token_app, name="token")
app.add_typer(clibackup.backup_app, name="backup")
app.add_typer(clibackup.files_app, name="files")
app.command("restore")(clibackup.restore)
app.command("wal")(clibackup.wal)

_MARK = {"healthy": "ok ", "degraded": "DEG", "unhealthy": "BAD"}


@app.callback()
def _main(
    ctx: typer.Context,
    gateway: Annotated[
        str | None, typer.Option(help="gateway base URL (default: $LIFEBOAT_GATEWAY_URL)")
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="API token (default: $LIFEBOAT_TOKEN, its file)")
    ] = None,
) -> None:
    settings = CliSettings()
    ctx.obj = Context(url=gateway or settings.gateway_url, token=token or settings.resolve_token())


# --- status -----------------------------------------------------------------------------


def status_table(status: ClusterStatus) -> Table:
    """One cluster like `patronictl list`."""
    topo = status.topology
    title = f"Cluster: {status.name}"
    if topo is not None:
        title += f" (epoch {topo.epoch})"
    if status.paused:
        title += " [bold yellow]PAUSED[/]"
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in ("Member", "Host", "Role", "State", "TL", "Lag MB", "Lag s", "Sync", "Location"):
        table.add_column(column, justify="right" if column in ("TL", "Lag MB", "Lag s") else "left")
    sync = set(topo.synchronous) if topo else set()
    for node in status.nodes:
        h = node.health
        is_primary = topo is not None and topo.primary == node.name
        if h is None:
            role, state = ("Leader" if is_primary else "Replica"), "no fresh report"
        elif not h.reachable:
            role, state = ("Leader" if is_primary else "Replica"), "unreachable"
        elif h.role.value == "primary":
            role = "Leader" if is_primary else "Primary?"
            state = "running" if h.writable else "read-only"
        else:
            role = "Sync Standby" if node.name in sync else "Replica"
            state = h.wal_receiver or "not streaming"
        table.add_row(
            node.name,
            f"{node.host}:{node.port}",
            role,
            state,
            "" if h is None or h.timeline is None else str(h.timeline),
            "" if is_primary else mb(h.lag_bytes if h else None),
            "" if is_primary or h is None or h.lag_seconds is None else f"{h.lag_seconds:.1f}",
            "yes" if node.name in sync else "",
            node.location,
        )
    return table


def status_footer(status: ClusterStatus) -> list[str]:
    lines = []
    if status.maintenance is not None and status.maintenance.paused:
        m = status.maintenance
        lines.append(f"Maintenance mode: on since {m.since} by {m.requested_by}: {m.reason}")
    if status.topology is not None and status.topology.operation is not None:
        op = status.topology.operation
        lines.append(f"Under way: {op.kind.value} to {op.new_primary}: {op.reason}")
    last = status.last_failover
    if last is not None:
        lines.append(
            f"Last failover: {last.get('occurred_at')} {last.get('type')} "
            f"{last.get('old_primary')} -> {last.get('new_primary')} "
            f"({last.get('total_seconds')}s): {last.get('reason')}"
        )
    return lines


@app.command()
def status(
    ctx: typer.Context,
    cluster: Annotated[str | None, typer.Argument(help="one cluster (default: all)")] = None,
    watch: Annotated[
        float | None, typer.Option("--watch", "-w", help="redraw every this many seconds")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Each cluster's members like `patronictl list`: role, state, timeline, lag, sync."""
    with context(ctx).client() as gw:

        def draw() -> list[ClusterStatus]:
            names = [cluster] if cluster else [c.name for c in gw.clusters()]
            return [gw.cluster(n) for n in names]

        if as_json:
            found = draw()
            dump(found if cluster is None else found[0])
            return
        if watch is None:
            for s in draw():
                out.print(status_table(s))
                for line in status_footer(s):
                    out.print(line)
            return
        while True:  # until Ctrl-C
            found = draw()
            out.clear()
            out.print(datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))
            for s in found:
                out.print(status_table(s))
                for line in status_footer(s):
                    out.print(line)
            time.sleep(watch)


@app.command()
def cluster(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="cluster name")] = "main",
    as_json: JsonOpt = False,
) -> None:
    """One cluster's status (the same as `status NAME`)."""
    status(ctx, name, None, as_json)


@app.command()
def health(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Health of NATS, S3, every node and every service."""
    with context(ctx).client() as gw:
        report: HealthReport = gw.health()
    if as_json:
        dump(report)
    else:
        out.print(f"Lifeboat: {report.status} (gateway up {report.uptime_seconds:.0f}s)")
        for c in report.components:
            out.print(f"  [{_MARK.get(c.status, '?')}] {c.name:<28} {c.message}", markup=False)
    if report.status == "unhealthy":
        raise typer.Exit(1)


# --- operations ---------------------------------------------------------------------------


def _operate(
    ctx: typer.Context,
    op: str,
    cluster: str,
    target: str | None,
    reason: str,
    wait: bool,
    as_json: bool,
    **failover: Any,
) -> None:
    with context(ctx).client() as gw:
        answer = gw.submit(op, cluster, reason=reason, target=target, **failover)  # type: ignore[arg-type]
        follow(gw, answer, as_json, wait)


TargetOpt = Annotated[str | None, typer.Option(help="node to promote (default: the best standby)")]
ReasonOpt = Annotated[str, typer.Option(help="why: recorded on the events")]


@app.command()
def failover(
    ctx: typer.Context,
    reason: ReasonOpt,
    cluster: ClusterOpt = "main",
    target: TargetOpt = None,
    force: Annotated[
        bool, typer.Option(help="even when the best standby is behind (writes may be lost)")
    ] = False,
    data_loss_budget_bytes: Annotated[
        int | None, typer.Option(help="with --force: lose at most this much WAL", min=0)
    ] = None,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Promote a standby now (the primary is fenced)."""
    _operate(
        ctx,
        "failover",
        cluster,
        target,
        reason,
        wait,
        as_json,
        force=force or None,
        data_loss_budget_bytes=data_loss_budget_bytes,
    )


@app.command()
def switchover(
    ctx: typer.Context,
    reason: ReasonOpt,
    cluster: ClusterOpt = "main",
    target: TargetOpt = None,
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Planned: hand the primary role over without losing a write."""
    _operate(ctx, "switchover", cluster, target, reason, wait, as_json)


@app.command()
def rejoin(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(help="the node to turn back into a standby")],
    cluster: ClusterOpt = "main",
    wait: WaitOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Turn a node back into a standby of the primary (pg_rewind, or a fresh copy)."""
    with context(ctx).client() as gw:
        follow(gw, gw.submit_rejoin(cluster, node), as_json, wait)


@app.command()
def operation(
    ctx: typer.Context,
    operation_id: Annotated[str, typer.Argument(help="the id a command answered with")],
    wait: Annotated[float, typer.Option(help="seconds to wait for it to finish")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """An operation's state and outcome."""
    with context(ctx).client() as gw:
        view = gw.operation(operation_id, wait=wait)
    if as_json:
        dump(view)
    else:
        out.print(outcome_line(view), markup=False)
        if view.outcome_reason:
            out.print(f"reason: {view.outcome_reason}", markup=False)


@app.command()
def pause(
    ctx: typer.Context,
    cluster: ClusterOpt = "main",
    reason: Annotated[str, typer.Option(help="why")] = "maintenance",
    as_json: JsonOpt = False,
) -> None:
    """Switch automatic failover off (manual operations still work)."""
    with context(ctx).client() as gw:
        view = gw.pause(cluster, reason)
    dump(view) if as_json else out.print(f"{cluster}: paused ({view.reason})", markup=False)


@app.command()
def resume(
    ctx: typer.Context,
    cluster: ClusterOpt = "main",
    reason: Annotated[str, typer.Option(help="why")] = "resumed",
    as_json: JsonOpt = False,
) -> None:
    """Switch automatic failover back on."""
    with context(ctx).client() as gw:
        view = gw.resume(cluster, reason)
    dump(view) if as_json else out.print(f"{cluster}: automatic failover on", markup=False)


# --- reading ---------------------------------------------------------------------------------


def _detail(row: dict[str, Any]) -> str:
    for key in ("reason", "new_primary", "backup_id", "node"):
        if row.get(key):
            return str(row[key])
    return ""


@app.command()
def history(
    ctx: typer.Context,
    cluster: ClusterOpt = "main",
    limit: Annotated[int, typer.Option(help="at most this many")] = 50,
    kind: Annotated[list[str] | None, typer.Option(help="event types (repeatable)")] = None,
    before: Annotated[int | None, typer.Option(help="page back: events before this seq")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Failovers, switchovers, refusals, holds, fencings, rejoins, maintenance."""
    with context(ctx).client() as gw:
        page = gw.history(cluster, limit, before=before, kinds=kind)
    if as_json:
        dump(page)
        return
    for entry in page.events:
        row = entry.event
        by = row.get("requested_by")
        who = f" (by {by})" if by else ""
        out.print(f"{row['occurred_at']}  {row['type']:<22} {_detail(row)}{who}", markup=False)
    if page.next_before is not None:
        out.print(f"(more: --before {page.next_before})", markup=False)


@events_app.command("tail")
def events_tail(
    ctx: typer.Context,
    subject: Annotated[str, typer.Option(help="NATS subject pattern")] = ">",
    since: Annotated[str | None, typer.Option(help="a stream sequence or an ISO time")] = None,
    count: Annotated[int | None, typer.Option(help="stop after this many")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Follow live events (Server-Sent Events), resumable with --since."""
    seen = 0
    with context(ctx).client() as gw:
        for seq, event in gw.events(subject, since):
            if as_json:
                print(json.dumps({"seq": seq, **event}), flush=True)
            else:
                where = "/".join(str(event[k]) for k in ("cluster", "node") if event.get(k))
                out.print(
                    f"{seq:>8} {event['occurred_at']} {event['type']:<22} {where} {_detail(event)}",
                    markup=False,
                )
            seen += 1
            if count is not None and seen >= count:
                return


@app.command()
def exposure(ctx: typer.Context, cluster: ClusterOpt = "main", as_json: JsonOpt = False) -> None:
    """What would be lost right now if the primary's host vanished."""
    with context(ctx).client() as gw:
        e = gw.exposure(cluster)
    if as_json:
        dump(e)
        return
    rpo = "unknown" if e.rpo_bytes is None else f"{e.rpo_bytes} bytes, {e.rpo_seconds or 0:.1f}s"
    out.print(
        f"{e.cluster}: primary {e.primary}, "
        f"synchronous {'yes' if e.synchronous_mode else 'no'}, RPO now {rpo}",
        markup=False,
    )
    for s in e.standbys:
        out.print(
            f"  {s.node:<10} {'streaming' if s.streaming else 'NOT streaming':<14} "
            f"{'sync' if s.synchronous else 'async':<6} lag {mb(s.lag_bytes) or '-'} MB "
            f"{'' if s.lag_seconds is None else f'{s.lag_seconds:.1f}s'}",
            markup=False,
        )
    archive = (
        "unknown" if e.wal_archive_lag_seconds is None else f"{e.wal_archive_lag_seconds:.1f}s"
    )
    out.print(f"  WAL archive lag {archive}", markup=False)
    out.print(
        f"  last backup {e.last_backup_id or '-'} {age(e.last_backup_age_seconds)}", markup=False
    )
    restore = "" if e.restore_seconds is None else f", restores in {e.restore_seconds:.1f}s"
    out.print(
        f"  last verified backup {e.last_verified_backup_id or '-'} "
        f"{age(e.last_verified_backup_age_seconds)}{restore}",
        markup=False,
    )
    for name, seconds in sorted(e.file_sync_age_seconds.items()):
        out.print(f"  file set {name} synced {age(seconds)}", markup=False)


@app.command()
def sla(
    ctx: typer.Context,
    cluster: ClusterOpt = "main",
    days: Annotated[float, typer.Option(help="the window")] = 30,
    as_json: JsonOpt = False,
) -> None:
    """Availability, failovers and their RTO, backup and verification rates."""
    with context(ctx).client() as gw:
        s = gw.sla(cluster, days)
    if as_json:
        dump(s)
        return

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v * 100:.2f}%"

    out.print(
        f"{s.cluster}, last {s.days:g} days: availability {s.availability * 100:.4f}% "
        f"({s.downtime_seconds:.1f}s without a primary)",
        markup=False,
    )
    for f in s.failovers:
        out.print(
            f"  {f.occurred_at} {f.kind:<10} {f.old_primary} -> {f.new_primary} "
            f"RTO {f.rto_seconds:.1f}s",
            markup=False,
        )
    out.print(
        f"  backups {s.backups_completed} ok, {s.backups_failed} failed "
        f"({pct(s.backup_success_rate)}); verifications {s.verifications} "
        f"({pct(s.verification_success_rate)} ok)",
        markup=False,
    )


@token_app.command("hash")
def token_hash(
    name: Annotated[str, typer.Option(help="who the token is for (recorded on events)")],
    role: Annotated[str, typer.Option(help="read, operate or admin")] = "read",
    scheme: Annotated[str, typer.Option(help="sha256 (random tokens) or scrypt")] = "sha256",
    token: Annotated[
        str | None, typer.Option(help="the token (default: a new random one, printed)")
    ] = None,
) -> None:
    """A `name:role:hash` line for LIFEBOAT_TOKENS (and a new token unless given)."""
    import secrets

    Role.parse(role)
    plain = token or secrets.token_urlsafe(32)
    if token is None:
        err.print(f"token: {plain}", markup=False)
    print(f"{name}:{role}:{hash_token(plain, scheme=scheme)}")


def main(argv: list[str] | None = None) -> int:
    command = typer.main.get_command(app)
    url = "the gateway"
    try:
        with contextlib.suppress(Exception):  # a broken config: the command says so
            url = CliSettings().gateway_url
        command.main(args=argv, prog_name="lifeboat", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        return 130
    except KeyboardInterrupt:
        return 130
    except Refused as exc:
        err.print(f"lifeboat: {exc}", markup=False)
        return 1
    except GatewayError as exc:
        err.print(f"lifeboat: {exc}", markup=False)
        return 1
    except httpx.HTTPError as exc:
        where = _gateway_of(argv) or url
        err.print(f"lifeboat: cannot reach the gateway at {where}: {exc}", markup=False)
        return 2
    return 0


def _gateway_of(argv: list[str] | None) -> str | None:
    args = sys.argv[1:] if argv is None else argv
    for i, arg in enumerate(args):
        if arg == "--gateway" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--gateway="):
            return arg.split("=", 1)[1]
    return None


if __name__ == "__main__":
    sys.exit(main())
