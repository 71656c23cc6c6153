"""The backup service's decisions, pure: a request (or the clock) and plain data in, commands
out. Each answers one question with the planners in `plan`: what to back up now and from
where, what retention removes, whether a delete may happen, what a restore needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from lifeboat.backup.commands import (
    Command,
    Decision,
    DeleteBackup,
    ExpireBackup,
    PruneWal,
    RemoveOrphans,
    Restore,
    TakeBackup,
    VerifyBackup,
)
from lifeboat.backup.manifest import backup_id
from lifeboat.backup.plan import (
    BASE_BACKUPS,
    CatalogEntry,
    NodeState,
    Refusal,
    RetentionPolicy,
    WalFile,
    choose_source,
    due_slots,
    plan_delete,
    plan_restore,
    plan_retention,
)
from lifeboat.backup.take import Job
from lifeboat.common.decision import Publish, stamped
from lifeboat.common.events import (
    BackupDeleteRefused,
    BackupDeleteRequested,
    BackupFailed,
    BackupKind,
    BackupRequested,
    BackupStarted,
    BackupVerified,
    BackupVerifyRequested,
    Envelope,
    RestoreFailed,
    RestoreRequested,
    Role,
    Source,
)
from lifeboat.objstore.filesets import is_snapshot_id

# A files snapshot is filesync's backup: it lists, verifies and deletes it; this service
# leaves requests naming one alone rather than answer that it knows no such backup.
FILESYNCS = "a files snapshot: filesync answers for it"


def correlation(request: Envelope) -> UUID:
    """The id a caller follows its request by, carried as `correlation_id` by every answer:
    the request's own correlation id (the gateway's operation id), else the request's id."""
    return request.correlation_id or request.event_id


@dataclass(frozen=True)
class Policy:
    prefer_standby: bool = True
    max_source_lag_bytes: int = 64 * 1024 * 1024
    verify_after_backup: bool = True
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)


def decide_backup(
    request: BackupRequested,
    nodes: tuple[NodeState, ...],
    done_requests: frozenset[str],
    policy: Policy,
    now: datetime,
    source: Source,
) -> Decision:
    rid = request.event_id
    cid = correlation(request)
    if str(rid) in done_requests:
        return Decision.nothing(f"request {rid} already produced a listed backup")
    if request.kind is BackupKind.FILES:
        return Decision.nothing("files backups are filesync's: it answers this request")
    choice = choose_source(
        nodes,
        preferred=request.node,
        prefer_standby=policy.prefer_standby,
        max_lag_bytes=policy.max_source_lag_bytes,
    )
    if isinstance(choice, Refusal):
        failed = BackupFailed(
            cluster=request.cluster,
            source=source,
            kind=request.kind,
            request_id=rid,
            correlation_id=cid,
            reason=f"no node to back up from: {choice.reason}",
        )
        return Decision((Publish(stamped(failed, now)),), failed.reason)
    job = Job(
        cluster=request.cluster,
        backup_id=backup_id(request.kind, now, rid),
        kind=request.kind,
        source=choice,
        request_id=rid,
        database=request.database,
        all_databases=request.all_databases,
    )
    started = BackupStarted(
        cluster=request.cluster,
        source=source,
        backup_id=job.backup_id,
        kind=job.kind,
        node=choice.node,
        request_id=rid,
        correlation_id=cid,
        source_role=choice.role,
        source_reason=choice.reason,
    )
    verify = policy.verify_after_backup if request.verify is None else request.verify
    return Decision(
        (Publish(stamped(started, now)), TakeBackup(job, verify, cid)),
        f"{job.kind.value} backup from {choice.node} ({choice.reason})",
    )


def decide_schedule(
    cluster: str,
    schedules: dict[BackupKind, str],
    verify_schedule: str,
    after: datetime,
    now: datetime,
    source: Source,
    *,
    first_physical: bool = False,
) -> Decision:
    """Requests for the slots due since `after`; every instance derives the same ids, so the
    stream's de-duplication keeps one request per slot whatever the number of workers.
    `first_physical`: the cluster has no physical backup yet, so one is asked for now (a new
    stack backs itself up without waiting for the first slot)."""
    commands: list[Command] = []
    if first_physical:
        first = BackupRequested(
            cluster=cluster,
            source=source,
            kind=BackupKind.PHYSICAL,
            reason="no physical backup is listed yet",
            requested_by="schedule",
        )
        commands.append(Publish(stamped(first, now)))
    for kind, expression in sorted(schedules.items()):
        for slot in due_slots(expression, after, now, limit=1):
            request = BackupRequested(
                cluster=cluster,
                source=source,
                kind=kind,
                reason=f"scheduled ({expression})",
                requested_by="schedule",
                scheduled_for=slot,
            )
            commands.append(Publish(stamped(request, slot)))
    for slot in due_slots(verify_schedule, after, now, limit=1):
        verify = BackupVerifyRequested(cluster=cluster, source=source, requested_by="schedule")
        commands.append(Publish(stamped(verify, slot)))
    return Decision(tuple(commands), f"{len(commands)} scheduled request(s) due")


def decide_retention(
    entries: tuple[CatalogEntry, ...],
    wal: tuple[WalFile, ...],
    orphans: tuple[str, ...],
    policy: RetentionPolicy,
    now: datetime,
) -> Decision:
    plan = plan_retention(entries, now, policy)
    kinds = {e.backup_id: e.kind for e in entries}
    commands: list[Command] = [ExpireBackup(b, kinds[b], why) for b, why in plan.expire]
    if plan.wal_keep_from_segno is not None and any(
        w.segno is not None and w.segno < plan.wal_keep_from_segno for w in wal
    ):
        commands.append(PruneWal(plan.wal_keep_from_segno))
    if orphans:
        commands.append(RemoveOrphans(orphans))
    return Decision(tuple(commands), f"retention: {len(plan.expire)} expire, keep {plan.keep}")


def decide_delete(
    entries: tuple[CatalogEntry, ...], request: BackupDeleteRequested, now: datetime, source: Source
) -> Decision:
    if is_snapshot_id(request.backup_id):
        return Decision((), FILESYNCS)
    found = plan_delete(entries, request.backup_id, force=request.force)
    if isinstance(found, Refusal):
        refused = BackupDeleteRefused(
            cluster=request.cluster,
            source=source,
            backup_id=request.backup_id,
            request_id=request.event_id,
            correlation_id=correlation(request),
            reason=found.reason,
        )
        return Decision((Publish(stamped(refused, now)),), found.reason)
    return Decision(
        (
            DeleteBackup(
                found.backup_id, found.kind, request.event_id, request.force, correlation(request)
            ),
        ),
        f"delete {found.backup_id} as asked by {request.requested_by}",
    )


def decide_verify(
    entries: tuple[CatalogEntry, ...],
    request: BackupVerifyRequested,
    now: datetime,
    source: Source,
) -> Decision:
    cid = correlation(request)
    if request.backup_id is not None and is_snapshot_id(request.backup_id):
        return Decision((), FILESYNCS)
    if request.backup_id is not None:
        return Decision((VerifyBackup(request.backup_id, request.event_id, cid),), "as asked")
    newest: dict[BackupKind, CatalogEntry] = {}
    for e in sorted(entries, key=lambda e: e.stopped_at):
        newest[e.kind] = e
    if not newest:
        # Still an answer: whoever asked must not wait for one forever.
        nothing = BackupVerified(
            cluster=request.cluster,
            source=source,
            backup_id="",
            ok=False,
            detail=f"no backup of {request.cluster} is listed: nothing to verify",
            request_id=request.event_id,
            correlation_id=cid,
        )
        return Decision((Publish(stamped(nothing, now)),), nothing.detail)
    commands = tuple(VerifyBackup(e.backup_id, request.event_id, cid) for e in newest.values())
    return Decision(commands, "the newest backup of each kind")


def decide_restore(
    entries: tuple[CatalogEntry, ...],
    wal: tuple[WalFile, ...],
    nodes: tuple[NodeState, ...],
    request: RestoreRequested,
    restore_id: str,
    now: datetime,
    source: Source,
    local_nodes: frozenset[str],
) -> Decision:
    def refuse(reason: str) -> Decision:
        failed = RestoreFailed(
            cluster=request.cluster,
            source=source,
            restore_id=restore_id,
            backup_id=request.backup_id,
            request_id=request.event_id,
            correlation_id=correlation(request),
            reason=reason,
        )
        return Decision((Publish(stamped(failed, now)),), reason)

    if request.target not in ("new", "node"):
        return refuse(f"unknown restore target {request.target!r}: use 'new' or 'node'")
    if request.target == "node":
        if request.node is None:
            return refuse("a restore into a node names the node")
        if not request.confirm:
            return refuse(f"restoring into {request.node} replaces its data: confirm it")
        state = next((n for n in nodes if n.name == request.node), None)
        if state is None:
            return refuse(f"{request.node} is not a node of {request.cluster}")
        if state.reachable and state.role is Role.PRIMARY:
            return refuse(f"{request.node} is the running primary: refused")
    plan = plan_restore(
        entries,
        wal,
        backup=request.backup_id,
        target_time=request.target_time,
        target_lsn=request.target_lsn,
    )
    if isinstance(plan, Refusal):
        return refuse(plan.reason)
    if request.target == "node" and plan.backup.kind not in BASE_BACKUPS:
        return refuse(
            f"{plan.backup.backup_id} is a {plan.backup.kind.value} backup: only a physical "
            "or full backup restores into a node"
        )
    remote = request.target == "node" and request.node not in local_nodes
    into = f"{request.node} through its agent" if remote else request.target
    return Decision(
        (Restore(plan, request, restore_id, through_agent=remote),),
        f"restore {plan.backup.backup_id} with {len(plan.wal)} WAL file(s) into {into}",
    )
