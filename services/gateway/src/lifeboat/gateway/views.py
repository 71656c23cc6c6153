"""The API's answers, computed from the projection: pure functions of what it holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from lifeboat.common.clusters import ClusterSpec
from lifeboat.common.events import (
    BackupCompleted,
    BackupFailed,
    BackupVerified,
    FailoverCompleted,
    FailoverOutcome,
    MaintenanceState,
    NodeDown,
    NodeHealth,
    Role,
    SwitchoverCompleted,
    WalStatus,
)
from lifeboat.gateway.projection import Operation, Projection
from lifeboat.gateway.schemas import (
    ClusterStatus,
    ClusterSummary,
    Exposure,
    FailoverRecord,
    MaintenanceView,
    NodeStatus,
    OperationView,
    Sla,
    StandbyExposure,
)


def maintenance_view(cluster: str, state: MaintenanceState | None) -> MaintenanceView:
    if state is None:
        return MaintenanceView(
            cluster=cluster, paused=False, reason="", requested_by="", since=None
        )
    return MaintenanceView(
        cluster=cluster,
        paused=state.paused,
        reason=state.reason,
        requested_by=state.requested_by,
        since=state.since,
    )


def paused(p: Projection, cluster: str) -> bool:
    state = p.maintenance.get(cluster)
    return bool(state and state.paused)


def last_failover(p: Projection, cluster: str) -> FailoverOutcome | None:
    found = [
        e
        for e in (
            p.newest("failover.completed", cluster),
            p.newest("switchover.completed", cluster),
        )
        if isinstance(e, FailoverOutcome)
    ]
    return max(found, key=lambda e: e.occurred_at, default=None)


def cluster_summary(p: Projection, spec: ClusterSpec) -> ClusterSummary:
    topo = p.topologies.get(spec.name)
    return ClusterSummary(
        name=spec.name,
        primary=topo.primary if topo else None,
        epoch=topo.epoch if topo else None,
        paused=paused(p, spec.name),
    )


def cluster_status(p: Projection, spec: ClusterSpec, now: datetime) -> ClusterStatus:
    last = last_failover(p, spec.name)
    state = p.maintenance.get(spec.name)
    return ClusterStatus(
        name=spec.name,
        dsn=spec.client_dsn(),
        topology=p.topologies.get(spec.name),
        nodes=[NodeStatus.of(n, p.reports.latest(spec.name, n.name, now)) for n in spec.nodes],
        paused=paused(p, spec.name),
        maintenance=None if state is None else maintenance_view(spec.name, state),
        last_failover=None if last is None else last.model_dump(mode="json"),
    )


def operation_view(op: Operation) -> OperationView:
    return OperationView(
        id=op.id,
        kind=op.kind,
        cluster=op.cluster,
        target=op.target,
        reason=op.reason,
        requested_by=op.requested_by,
        requested_at=op.requested_at,
        state=op.state,
        done=op.done,
        outcome_reason=op.refusal_reason,
        outcome=None if op.outcome is None else op.outcome.model_dump(mode="json"),
        events=[e.model_dump(mode="json") for e in op.events],
        location=f"/operations/{op.id}",
    )


def _is_streaming(report: NodeHealth | None) -> bool:
    return bool(
        report
        and report.reachable
        and report.role is Role.STANDBY
        and report.wal_receiver == "streaming"
    )


def exposure(p: Projection, spec: ClusterSpec, now: datetime) -> Exposure:
    topo = p.topologies.get(spec.name)
    primary = topo.primary if topo else None
    sync_set = set(topo.synchronous) if topo else set()
    primary_report = p.reports.latest(spec.name, primary, now) if primary else None
    if primary_report is not None:
        sync_set |= {r.name for r in primary_report.replicas if r.sync_state in ("sync", "quorum")}
    standbys = []
    for node in spec.nodes:
        if node.name == primary:
            continue
        report = p.reports.latest(spec.name, node.name, now)
        standbys.append(
            StandbyExposure(
                node=node.name,
                streaming=_is_streaming(report),
                synchronous=node.name in sync_set,
                lag_bytes=report.lag_bytes if report else None,
                lag_seconds=report.lag_seconds if report else None,
            )
        )
    streaming = [s for s in standbys if s.streaming]
    sync_streaming = any(s.synchronous for s in streaming)
    if sync_streaming:
        rpo_bytes: int | None = 0
        rpo_seconds: float | None = 0.0
    elif streaming:
        rpo_bytes = min((s.lag_bytes for s in streaming if s.lag_bytes is not None), default=None)
        rpo_seconds = min(
            (s.lag_seconds for s in streaming if s.lag_seconds is not None), default=None
        )
    else:
        rpo_bytes, rpo_seconds = None, None
    wal = p.newest("wal.status", spec.name)
    backup = p.newest("backup.completed", spec.name)
    verified = _newest_ok_verification(p, spec.name)
    files = {
        name: (now - e.occurred_at).total_seconds()
        for name, e in p.newest_of("file.synced", spec.name).items()
    }
    return Exposure(
        cluster=spec.name,
        primary=primary,
        paused=paused(p, spec.name),
        synchronous_mode=sync_streaming,
        rpo_bytes=rpo_bytes,
        rpo_seconds=rpo_seconds,
        standbys=standbys,
        wal_archive_lag_seconds=wal.lag_seconds if isinstance(wal, WalStatus) else None,
        wal_archive_lag_bytes=wal.lag_bytes if isinstance(wal, WalStatus) else None,
        last_backup_id=backup.backup_id if isinstance(backup, BackupCompleted) else None,
        last_backup_age_seconds=(now - backup.occurred_at).total_seconds() if backup else None,
        last_verified_backup_id=verified.backup_id if verified else None,
        last_verified_backup_age_seconds=(
            (now - verified.occurred_at).total_seconds() if verified else None
        ),
        restore_seconds=verified.restore_seconds if verified else None,
        file_sync_age_seconds=files,
    )


def _newest_ok_verification(p: Projection, cluster: str) -> BackupVerified | None:
    for stored in reversed(p.events):
        e = stored.event
        if isinstance(e, BackupVerified) and e.cluster == cluster and e.ok:
            return e
    return None


def sla(p: Projection, spec: ClusterSpec, days: float, now: datetime) -> Sla:
    start = now - timedelta(days=days)
    events = [s.event for s in p.history(spec.name, since=start, limit=10**9)]
    downs: dict[str, datetime] = {}
    failovers: list[FailoverRecord] = []
    downtime = 0.0
    completed = failed = verifications = verified_ok = 0
    for e in events:
        if isinstance(e, NodeDown):
            downs.setdefault(e.node, e.occurred_at)
        elif isinstance(e, FailoverCompleted | SwitchoverCompleted):
            began = downs.pop(e.old_primary, None) if e.old_primary else None
            rto = e.total_seconds
            if began is not None and isinstance(e, FailoverCompleted):
                rto = max(rto, (e.occurred_at - began).total_seconds())
            downtime += rto
            failovers.append(
                FailoverRecord(
                    type=e.type,
                    kind=e.kind.value,
                    occurred_at=e.occurred_at,
                    old_primary=e.old_primary,
                    new_primary=e.new_primary,
                    rto_seconds=round(rto, 3),
                )
            )
        elif isinstance(e, BackupCompleted):
            completed += 1
        elif isinstance(e, BackupFailed):
            failed += 1
        elif isinstance(e, BackupVerified):
            verifications += 1
            verified_ok += e.ok
    window = max(1.0, (now - start).total_seconds())
    return Sla(
        cluster=spec.name,
        days=days,
        window_start=start,
        availability=round(max(0.0, 1 - downtime / window), 6),
        downtime_seconds=round(downtime, 3),
        failovers=failovers,
        backups_completed=completed,
        backups_failed=failed,
        backup_success_rate=completed / (completed + failed) if completed + failed else None,
        verifications=verifications,
        verification_success_rate=verified_ok / verifications if verifications else None,
    )


def utcnow() -> datetime:
    return datetime.now(UTC)
