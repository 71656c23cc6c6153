"""The API's answers, computed from the projection: pure functions of what it holds."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from lifeboat.common.clusters import ClusterSpec
from lifeboat.common.events import (
    BackupCompleted,
    BackupFailed,
    BackupVerified,
    FailoverCompleted,
    FailoverOutcome,
    FileReferencesChecked,
    FileStatus,
    FileSynced,
    FileSyncFailed,
    FileSyncPaused,
    FileVerified,
    MaintenanceState,
    NodeDown,
    NodeHealth,
    Role,
    SwitchoverCompleted,
    WalStatus,
)
from lifeboat.gateway.projection import Operation, Projection
from lifeboat.gateway.schemas import (
    BackupDetail,
    BackupList,
    BackupSummary,
    ClusterStatus,
    ClusterSummary,
    Exposure,
    FailoverRecord,
    FileSetNode,
    FileSetView,
    FilesView,
    MaintenanceView,
    NodeStatus,
    OperationProgress,
    OperationView,
    Sla,
    StandbyExposure,
    WalView,
)

log = logging.getLogger(__name__)


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
        fileset=op.fileset,
        progress=None
        if op.progress is None
        else OperationProgress.model_validate(
            op.progress.model_dump(include=set(OperationProgress.model_fields))
        ),
    )


# --- backups, WAL, files ------------------------------------------------------------------


def backup_summary(entry: dict[str, Any]) -> BackupSummary:
    """A mirrored manifest as its summary (unknown fields are the detail's)."""
    source = entry.get("source") or {}
    encryption = entry.get("encryption")
    return BackupSummary.model_validate(
        {
            **{k: v for k, v in entry.items() if k in BackupSummary.model_fields},
            "status": entry.get("listed_status", "unverified"),
            "node": source.get("node"),
            "source_role": source.get("role"),
            "encrypted": encryption is not None,
        }
    )


def find_backup(p: Projection, cluster: str, backup_id: str) -> dict[str, Any] | None:
    return next((b for b in p.listed(cluster) if b.get("backup_id") == backup_id), None)


def backup_detail(entry: dict[str, Any]) -> BackupDetail:
    summary = backup_summary(entry)
    return BackupDetail.model_validate({**summary.model_dump(), "manifest": entry})


def _summaries(entries: list[dict[str, Any]]) -> list[BackupSummary]:
    """Every entry this gateway can read (one a newer backup service wrote differently is
    left out, and logged, rather than failing the list)."""
    found = []
    for entry in entries:
        try:
            found.append(backup_summary(entry))
        except ValidationError as exc:
            log.warning("unreadable catalogue entry %s: %s", entry.get("backup_id"), exc)
    return found


def backup_list(
    p: Projection, cluster: str, kind: str | None = None, status: str | None = None
) -> BackupList:
    listed = _summaries(p.listed(cluster))
    return BackupList(
        cluster=cluster,
        mirrored=p.catalogued(cluster),
        backups=[
            b
            for b in listed
            if (kind is None or b.kind == kind) and (status is None or b.status == status)
        ],
    )


def wal_view(p: Projection, cluster: str, now: datetime) -> WalView:
    """The newer of the mirrored status (KV) and the newest wal.status heartbeat."""
    candidates = [p.wal.get(cluster), p.newest("wal.status", cluster)]
    found = [w for w in candidates if isinstance(w, WalStatus)]
    status = max(found, key=lambda w: w.occurred_at, default=None)
    if status is None:
        return WalView(cluster=cluster, known=False)
    return WalView(
        cluster=cluster,
        known=True,
        state=status.state.value,
        primary=status.primary,
        timeline=status.timeline,
        primary_lsn=status.primary_lsn,
        archived_lsn=status.archived_lsn,
        last_segment=status.last_segment,
        lag_bytes=status.lag_bytes,
        lag_seconds=status.lag_seconds,
        spool_bytes=status.spool_bytes,
        error=status.error,
        reported_at=status.occurred_at,
        age_seconds=max(0.0, (now - status.occurred_at).total_seconds()),
    )


def _json(event: Any) -> dict[str, Any] | None:
    return None if event is None else dict(event.model_dump(mode="json"))


def files_view(p: Projection, spec: ClusterSpec, now: datetime) -> FilesView:
    sets = []
    for fs in spec.filesets:
        nodes = []
        for placement in fs.placement:
            beat = p.file_status.get((spec.name, fs.name, placement.node))
            if beat is None:
                nodes.append(FileSetNode(node=placement.node, mode=placement.mode))
                continue
            nodes.append(
                FileSetNode(
                    node=placement.node,
                    mode=placement.mode,
                    state=beat.state,
                    files=beat.files,
                    bytes=beat.bytes,
                    pending=beat.pending,
                    detail=beat.detail,
                    reported_at=beat.occurred_at,
                )
            )
        synced = p.newest("file.synced", spec.name, fs.name)
        failed = p.newest("file.sync_failed", spec.name, fs.name)
        paused_event = p.newest("file.sync_paused", spec.name, fs.name)
        beats = [
            b
            for b in (p.file_status.get((spec.name, fs.name, n.node)) for n in fs.placement)
            if isinstance(b, FileStatus)
        ]
        paused_beat = next((b for b in beats if b.state == "paused"), None)
        # Paused: its heartbeat says so, or it paused after its last sync (no heartbeat yet).
        paused = paused_beat is not None or (
            not beats
            and isinstance(paused_event, FileSyncPaused)
            and (synced is None or paused_event.occurred_at > synced.occurred_at)
        )
        reason = (
            paused_beat.detail
            if paused_beat is not None
            else (paused_event.reason if isinstance(paused_event, FileSyncPaused) else None)
        )
        sets.append(
            FileSetView(
                name=fs.name,
                nodes=nodes,
                last_sync=_json(synced if isinstance(synced, FileSynced) else None),
                last_sync_age_seconds=None
                if synced is None
                else max(0.0, (now - synced.occurred_at).total_seconds()),
                last_failure=_json(failed if isinstance(failed, FileSyncFailed) else None),
                pending=sum(b.pending for b in beats),
                paused=paused,
                paused_reason=reason if paused else None,
                last_check=_json(
                    c
                    if isinstance(c := p.newest("file.verified", spec.name, fs.name), FileVerified)
                    else None
                ),
                last_references=_json(
                    r
                    if isinstance(
                        r := p.newest("file.references_checked", spec.name, fs.name),
                        FileReferencesChecked,
                    )
                    else None
                ),
            )
        )
    return FilesView(cluster=spec.name, filesets=sets)


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
