"""The failover decision, pure: one frozen observation in, commands with a reason out.

Given the topology in KV (primary, epoch, synchronous set, any operation under way) and the
latest health report of every monitor about every node, what should happen now? The answer
converges: each call looks at what is, compares it with what the topology says should be,
and asks only for the difference. A restarted or replacement instance therefore finishes an
interrupted failover simply by deciding again.

It is deterministic: `decide(obs) == decide(obs)`. Time comes from `obs.now` only, and every
event is `stamped` with it and an id derived from its content, so a replacement leader that
re-decides a step publishes the same `Nats-Msg-Id` and JetStream drops the repeat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from uuid import UUID

from lifeboat.common.clusters import ClusterSpec
from lifeboat.common.decision import Publish, stamped
from lifeboat.common.events import (
    FailoverCompleted,
    FailoverFailed,
    FailoverHeld,
    FailoverKind,
    FailoverRequested,
    FailoverStarted,
    MaintenanceState,
    NodeHealth,
    NodeRejoinRequested,
    PhaseTiming,
    Role,
    Source,
    SwitchoverCompleted,
    SwitchoverFailed,
    SwitchoverRequested,
    SyncChanged,
)
from lifeboat.common.lsn import int_to_lsn, lsn_to_int
from lifeboat.common.state import Operation, Topology
from lifeboat.failover.commands import (
    Command,
    CreateTopology,
    Decision,
    Detach,
    Fence,
    Handover,
    Promote,
    Rejoin,
    Repoint,
    SetSynchronous,
    StartReadOnly,
    WriteTopology,
)
from lifeboat.failover.sync_names import parse_sync_names

SyncMode = Literal["off", "on", "strict"]
Request = FailoverRequested | SwitchoverRequested | NodeRejoinRequested


@dataclass(frozen=True)
class Policy:
    failure_threshold: int = 3
    report_max_age_seconds: float = 3.0
    maximum_lag_on_failover: int = 1024 * 1024
    synchronous_mode: SyncMode = "on"
    # The monitors configured: a majority of them (not of those reporting) fails a primary.
    monitors: int = 1
    # A manual failover whose target has not caught up with the fenced primary after this
    # long is undone: the old primary takes writes again, and failover.failed says why.
    manual_catch_up_seconds: float = 30.0


@dataclass(frozen=True)
class Observation:
    now: datetime
    cluster: ClusterSpec
    topology: Topology | None
    reports: tuple[NodeHealth, ...]  # the latest report of each monitor about each node
    policy: Policy
    source: Source
    # The last WAL position each node was seen at as a primary: the yardstick for lag once
    # the primary is gone.
    last_primary_lsn: dict[str, int] = field(default_factory=dict)
    request: Request | None = None  # an operator's request to handle now
    # Maintenance (Patroni's pause): no automatic failover; operators' requests still work.
    paused: MaintenanceState | None = None
    # When this leader first gave the topology's primary its writes back at this epoch, if it
    # has not seen it writable since (the service keeps it).
    promoting_back_since: datetime | None = None


@dataclass(frozen=True)
class NodeView:
    """What the live monitors say about one node."""

    name: str
    monitors: frozenset[str]  # live monitors with a fresh report on it
    failing: frozenset[str]  # ... of which see it down for failure_threshold probes
    latest: NodeHealth | None  # the freshest report in which it answered

    @property
    def reachable(self) -> bool:
        return self.latest is not None

    @property
    def role(self) -> Role:
        return self.latest.role if self.latest else Role.UNKNOWN


def node_views(obs: Observation) -> dict[str, NodeView]:
    max_age = obs.policy.report_max_age_seconds
    fresh = [r for r in obs.reports if (obs.now - r.occurred_at).total_seconds() <= max_age]
    views = {}
    for node in obs.cluster.nodes:
        mine = [r for r in fresh if r.node == node.name]
        answered = sorted((r for r in mine if r.reachable), key=lambda r: r.occurred_at)
        latest = answered[-1] if answered else None
        # A node in recovery in one monitor's report and writable in a later one's has been
        # promoted (given its writes back) since: the earlier report no longer fails it.
        writable_at = (
            latest.occurred_at
            if latest is not None and latest.writable and latest.occurred_at <= obs.now
            else None
        )
        views[node.name] = NodeView(
            name=node.name,
            monitors=frozenset(r.source.instance for r in mine),
            failing=frozenset(
                r.source.instance
                for r in mine
                if _failing(r, obs)
                and not (r.reachable and writable_at is not None and r.occurred_at < writable_at)
            ),
            latest=latest,
        )
    return views


def position(report: NodeHealth) -> int | None:
    """The WAL a standby has: the further of what it received and what it replayed.

    A restarted standby reports no received position until its walreceiver runs (NULL), then
    one rounded down to the start of a segment; what it replayed, it has all the same.
    """
    found = [lsn_to_int(lsn) for lsn in (report.receive_lsn, report.replay_lsn) if lsn]
    return max(found) if found else None


def _failing(report: NodeHealth, obs: Observation) -> bool:
    """Down for the threshold, or back in recovery (demoted) for it: either way, no primary.

    Only a report made since the epoch changed can say the primary is in recovery: before it,
    the new primary rightly was a standby.
    """
    threshold = obs.policy.failure_threshold
    if not report.reachable:
        return report.consecutive_failures >= threshold
    since = obs.topology.updated_at if obs.topology else None
    return (
        report.role is Role.STANDBY
        and report.consecutive_read_only >= threshold
        and (since is None or report.occurred_at > since)
    )


def decide(obs: Observation) -> Decision:
    views = node_views(obs)
    if obs.topology is None:
        return _bootstrap(obs, views)
    topo = obs.topology
    if topo.primary is not None and topo.primary not in views:
        return Decision.nothing(
            f"the primary {topo.primary} is not in the cluster file: not acting on it"
        )
    behind = _behind_the_cluster(topo, views)
    if behind is not None:
        return _out_of_date(obs, topo, views, behind)
    fences = tuple(
        Fence(
            name,
            topo.epoch,
            f"{name} accepts writes but the primary at epoch {topo.epoch} is {topo.primary}",
        )
        for name, view in views.items()
        if name != topo.primary
        and view.latest is not None
        and view.role is Role.PRIMARY
        and view.latest.writable
        # A report from before the epoch changed shows the old primary as it rightly was.
        and view.latest.occurred_at > topo.updated_at
    )
    if obs.request is not None and _failed_first(obs, topo, views, obs.request):
        # A dead primary goes before any queued operator request: requests must never
        # starve the automatic failover. The request is answered, not silently dropped.
        failover = _steady(obs, topo, views)
        refusal = _refuse_request(
            obs, topo, obs.request, "the primary failed: the automatic failover goes first"
        )
        decision = Decision(failover.commands + refusal.commands, failover.reason)
    elif obs.request is not None:
        decision = _handle_request(obs, topo, views, obs.request)
    elif topo.operation is not None:
        decision = _continue(obs, topo, topo.operation, views)
    else:
        decision = _steady(obs, topo, views)
    if fences:
        reason = "; ".join(f.reason for f in fences)
        return Decision(fences + decision.commands, f"{reason}; {decision.reason}")
    return decision


def _behind_the_cluster(topo: Topology, views: dict[str, NodeView]) -> str | None:
    """Why the topology is older than what the nodes show, if it is: acting on it (fencing
    the node that is really primary, promoting one that is behind) could lose what the
    newer timeline acknowledged. Only an operator's forced failover moves on from it."""
    limit = topo.newest_timeline()
    if limit is None:
        return None
    recorded = views[topo.primary].latest if topo.primary else None
    if recorded is not None and recorded.role is Role.PRIMARY and recorded.writable:
        # The topology's primary takes writes: it is current, and a node ahead of it was
        # promoted beside it (a restore into a node, a stray `pg_ctl promote`), to be fenced.
        return None
    ahead = sorted(
        (v.latest.timeline, name)
        for name, v in sorted(views.items())
        if v.latest is not None and v.latest.timeline is not None and v.latest.timeline > limit
    )
    if not ahead:
        return None
    nodes = ", ".join(f"{name} (timeline {timeline})" for timeline, name in ahead)
    known = (
        f"recorded on timeline {topo.timeline}"
        if topo.timeline is not None
        else f"its promotion forked timeline {limit} at the latest"
    )
    return (
        f"{nodes} ahead of the topology (epoch {topo.epoch}, primary {topo.primary}, "
        f"{known}): it is older than the "
        "cluster (its store rolled back past a failover, or a node was promoted outside "
        "Lifeboat); not acting on it. Check which node holds the newest data, then "
        "`lifeboat failover --target <it> --force` records it"
    )


def _bootstrap(obs: Observation, views: dict[str, NodeView]) -> Decision:
    writable = [
        v.name for v in views.values() if v.role is Role.PRIMARY and v.latest and v.latest.writable
    ]
    if len(writable) != 1:
        return Decision.nothing(
            f"no topology yet and {len(writable)} writable primaries seen ({writable}): waiting"
        )
    members = {v.name: v.role for v in views.values() if v.reachable}
    latest = views[writable[0]].latest
    topo = Topology(
        cluster=obs.cluster.name,
        primary=writable[0],
        members=members,
        updated_at=obs.now,
        timeline=latest.timeline if latest else None,
    )
    return Decision((CreateTopology(topo),), f"first topology: {writable[0]} is the primary")


def _primary_state(
    obs: Observation, topo: Topology, views: dict[str, NodeView]
) -> tuple[Literal["healthy", "unknown", "suspect", "failed"], str]:
    if topo.primary is None:
        return "failed", "the topology names no primary"
    view = views[topo.primary]
    live = len(view.monitors)
    if live == 0:
        return (
            "unknown",
            f"no monitor reported on {topo.primary} in the last "
            f"{obs.policy.report_max_age_seconds:g}s",
        )
    # A majority of the configured monitors: a minority cut off with the primary's other
    # side must never be able to fail it over on its own. More reporting than configured
    # (a monitor restarted under a new id) never lowers the bar.
    quorum = max(obs.policy.monitors, live)
    down = len(view.failing)
    if 2 * down > quorum:
        what = "in recovery" if view.role is Role.STANDBY else "unreachable"
        return "failed", (
            f"{topo.primary} {what} for {obs.policy.failure_threshold} probes "
            f"by {down} of {quorum} monitors"
        )
    if down:
        return "suspect", (
            f"{down} of {quorum} monitors see {topo.primary} down ({live} reporting): "
            "no majority, keeping it"
        )
    return "healthy", f"{topo.primary} is healthy"


def _hold(obs: Observation, topo: Topology, why: str) -> Decision:
    """Not acting is a decision too: say why (the service repeats it only now and then)."""
    held = FailoverHeld(
        cluster=topo.cluster, source=obs.source, epoch=topo.epoch, primary=topo.primary, reason=why
    )
    return Decision((Publish(stamped(held, obs.now)),), why)


# How long a leader tries to give a primary that started again read-only its writes back
# (a promotion waits up to 15 s): one that cannot take them gives way to a failover.
BACK_SECONDS = 30.0


def _back_read_only(
    obs: Observation, topo: Topology, views: dict[str, NodeView]
) -> Decision | None:
    """The primary started again in recovery, read-only, as its node agent leaves every
    start (a reboot, a container restart, a crash): it holds every commit it acknowledged,
    so it takes writes again under its epoch, unless a standby has WAL it lacks, a recorded
    synchronous standby cannot be asked (it may hold commits a copy of the primary's data
    lacks), or it is on a newer timeline than the recorded one (an older one it may show:
    pg_control keeps the timeline of the last checkpoint, which a promotion's spreads over
    minutes). Tried for BACK_SECONDS, a failover after. Its promotion forks a timeline: the
    topology forgets the recorded one, and records the new one once the primary shows it,
    as after a failover."""
    view = views[topo.primary or ""]
    report = view.latest
    since = obs.promoting_back_since
    if (
        report is None
        or report.role is not Role.STANDBY
        or report.occurred_at <= topo.updated_at
        or (since is not None and (obs.now - since).total_seconds() > BACK_SECONDS)
        or (topo.timeline is not None and (report.timeline or 0) > topo.timeline)
    ):
        return None
    have = position(report)
    others = [v for v in views.values() if v.name != view.name and v.latest is not None]
    if have is None or any((position(v.latest) or 0) > have for v in others if v.latest):
        return None
    if any(v.role is Role.PRIMARY for v in others):
        return None  # a writable node beside it is fenced first; then the failure decides
    if obs.policy.synchronous_mode != "off" and any(
        views[n].latest is None for n in topo.synchronous if n in views
    ):
        return None
    why = (
        f"{view.name}, the primary at epoch {topo.epoch}, started again read-only at "
        f"{int_to_lsn(have)} with every standby's WAL: taking writes again, no failover"
    )
    held = FailoverHeld(
        cluster=topo.cluster, source=obs.source, epoch=topo.epoch, primary=topo.primary, reason=why
    )
    # Checked again at the promotion: nobody it is promoted over has WAL it lacks. Its
    # promotion forks a timeline: written first, so that a leader that dies between the two
    # leaves no record of a timeline the node has left.
    peers = tuple(v.name for v in others if v.role is Role.STANDBY)
    return Decision(
        (
            WriteTopology(_forking(topo, report)),
            Promote(view.name, topo.epoch, peers, synchronous=_recorded_wait(obs, topo)),
            Publish(stamped(held, obs.now)),
        ),
        why,
    )


def _recorded_wait(obs: Observation, topo: Topology) -> tuple[str, ...]:
    """Whom the primary's commits wait for as it takes its writes back: the recorded set.
    Reset to none instead, a commit acknowledged before the next round set it again would
    be on no standby while the record still names one as holding them all."""
    return topo.synchronous if obs.policy.synchronous_mode != "off" else ()


def _pause_said(pause: MaintenanceState) -> str:
    return (
        f"automatic failover is paused (by {pause.requested_by}: "
        f"{pause.reason or 'no reason given'})"
    )


def _forking(topo: Topology, report: NodeHealth | None) -> Topology:
    """The topology as the promotion of `report`'s node leaves it: no timeline recorded
    (the promotion forks the next), `forked_from` the newest the record or the node knows.
    The same on every try, so a promotion retried round after round writes it once."""
    known = (topo.timeline, topo.forked_from, report.timeline if report else None)
    fork = max((t for t in known if t is not None), default=None)
    return topo.model_copy(update={"timeline": None, "forked_from": fork})


def _steady(obs: Observation, topo: Topology, views: dict[str, NodeView]) -> Decision:
    if topo.primary is not None and (back := _back_read_only(obs, topo, views)) is not None:
        return back
    state, why = _primary_state(obs, topo, views)
    if state == "failed" and obs.paused is not None:
        return _hold(obs, topo, f"{why}, but {_pause_said(obs.paused)}: not failing over")
    if state == "failed":
        return start_failover(obs, topo, views, FailoverKind.AUTOMATIC, why)
    if state in ("suspect", "unknown"):
        return _hold(obs, topo, why)
    primary = views[topo.primary or ""].latest
    if primary is not None and primary.role is Role.PRIMARY and not primary.writable:
        # Left read-only by a handover that did not finish: it is still the primary, and the
        # standbys the switchover detached from it follow it again.
        return Decision(
            (
                Promote(primary.node, topo.epoch, synchronous=_recorded_wait(obs, topo)),
                *_repoints(views, primary.node, topo.epoch),
            ),
            f"{primary.node} is the primary but read-only: taking writes again",
        )
    if (
        primary is not None
        and primary.role is Role.PRIMARY
        and primary.timeline is not None
        and (topo.timeline is None or primary.timeline > topo.timeline)
        and primary.occurred_at > topo.updated_at
    ):
        # Recorded alone: another write in the same decision would race this one's revision.
        return Decision(
            (WriteTopology(topo.model_copy(update={"timeline": primary.timeline})),),
            f"{primary.node} is the primary on timeline {primary.timeline}: recorded",
        )
    return _manage_sync(obs, topo, views)


def _correlation(obs: Observation) -> UUID | None:
    """The id a caller follows its request by: the request's own correlation id, else the
    request itself (the gateway's operation id is the request's event id)."""
    if obs.request is None:
        return None
    return obs.request.correlation_id or obs.request.event_id


def _refuse(
    obs: Observation, topo: Topology, kind: FailoverKind, target: str | None, reason: str
) -> Decision:
    model = SwitchoverFailed if kind is FailoverKind.SWITCHOVER else FailoverFailed
    event = model(
        cluster=topo.cluster,
        source=obs.source,
        correlation_id=_correlation(obs),
        epoch=topo.epoch,
        kind=kind,
        target=target,
        reason=reason,
    )
    return Decision((Publish(stamped(event, obs.now)),), f"refused: {reason}")


def _failed_first(
    obs: Observation, topo: Topology, views: dict[str, NodeView], request: Request
) -> bool:
    """A switchover or rejoin asked while the primary has failed and nothing is under way:
    the failover comes first. (A manual failover is a failover: it is handled as asked.)"""
    if isinstance(request, FailoverRequested) or topo.operation is not None:
        return False
    return _primary_state(obs, topo, views)[0] == "failed"


def _refuse_request(obs: Observation, topo: Topology, request: Request, reason: str) -> Decision:
    if isinstance(request, NodeRejoinRequested):
        return _refuse(obs, topo, FailoverKind.MANUAL, request.node, reason)
    kind = (
        FailoverKind.SWITCHOVER if isinstance(request, SwitchoverRequested) else FailoverKind.MANUAL
    )
    return _refuse(obs, topo, kind, request.target, reason)


def _handle_request(
    obs: Observation, topo: Topology, views: dict[str, NodeView], request: Request
) -> Decision:
    names = {n.name for n in obs.cluster.nodes}
    if isinstance(request, NodeRejoinRequested):
        return _rejoin(obs, topo, views, request)
    kind = (
        FailoverKind.SWITCHOVER if isinstance(request, SwitchoverRequested) else FailoverKind.MANUAL
    )
    target = request.target
    forced = isinstance(request, FailoverRequested) and request.force
    if topo.operation is not None and not forced:
        op = topo.operation
        return _refuse(obs, topo, kind, target, f"a {op.kind} to {op.new_primary} is under way")
    if target is not None and target not in names:
        return _refuse(
            obs, topo, kind, target, f"no node named {target!r} in cluster {topo.cluster}"
        )
    if target is not None and target == topo.primary:
        return _refuse(obs, topo, kind, target, f"{target} is already the primary")
    reason = f"{kind} requested by {request.requested_by}: {request.reason}"
    if isinstance(request, FailoverRequested):
        budget = request.data_loss_budget_bytes if request.force else None
        if request.force and budget is None:
            return _refuse(
                obs, topo, kind, target, "force needs data_loss_budget_bytes: the loss accepted"
            )
        decision = start_failover(obs, topo, views, kind, reason, target, budget=budget)
        stuck = topo.operation
        if stuck is None or stuck.old_primary in (None, topo.primary):
            return decision
        # A forced failover out of an operation that is stuck (its old primary gone for good,
        # its candidate unable to catch up): the old primary is fenced too, accepted.
        why = f"{reason}: superseding the {stuck.kind}"
        first = Fence(stuck.old_primary, topo.epoch, why, True)
        return Decision((first, *decision.commands), decision.reason)
    state, why = _primary_state(obs, topo, views)
    old = topo.primary
    if state != "healthy" or old is None or not views[old].reachable:
        return _refuse(
            obs, topo, kind, target, f"a switchover needs a healthy primary ({why}): use a failover"
        )
    candidate, why_not = choose_candidate(obs, topo, views, target, handover=True)
    if candidate is None:
        return _refuse(obs, topo, kind, target, f"no standby can take over: {_why(why_not)}")
    new, takeover = _takeover(obs, topo, views, kind, reason, candidate, fence=False)
    # The other standbys stop streaming from the old primary before the new epoch: where its
    # data directory is not the controller's it runs on, read-only, until its agent stops it,
    # and WAL it writes meanwhile (a checkpoint, the shutdown's) must not reach a standby
    # that is to follow the new primary, whose history forks before it. The old primary
    # follows the new one: rejoined here, or by its agent on its own host.
    commands: list[Command] = [
        Handover(old, candidate, topo.epoch),
        *(Detach(name, topo.epoch, old) for name in _standbys_beside(views, candidate, old)),
        *takeover,
        Rejoin(old, candidate, new.epoch),
    ]
    return Decision(tuple(commands), f"{reason}: handing {old} over to {candidate}")


def _adopt(
    obs: Observation,
    topo: Topology,
    views: dict[str, NodeView],
    target: str,
    reason: str,
    budget: int | None,
) -> Decision:
    """An operator's way out of a topology older than the cluster: record the node that is
    already the writable primary on the newest timeline, under a new epoch, and let the
    operation repoint the rest. Nobody is promoted; a topology primary that still takes
    writes is fenced, as the operator forced it."""
    report = views[target].latest
    newest = max(
        (v.latest.timeline for v in views.values() if v.latest and v.latest.timeline),
        default=None,
    )
    if (
        report is None
        or report.role is not Role.PRIMARY
        or not report.writable
        or report.timeline != newest
    ):
        return _refuse(
            obs,
            topo,
            FailoverKind.MANUAL,
            target,
            f"the topology is older than the cluster, and {target} is not the writable "
            f"primary on its newest timeline ({newest}): name the node that is",
        )
    op = Operation(
        kind=FailoverKind.MANUAL,
        old_primary=topo.primary,
        new_primary=target,
        reason=f"{reason}: recording {target}, the primary on timeline {newest}",
        started_at=obs.now,
        correlation_id=_correlation(obs),
        data_loss_budget_bytes=budget,
    )
    new = topo.promoted(target, op, at=obs.now).model_copy(update={"timeline": newest})
    others = [v.name for v in views.values() if v.name != target and v.latest and v.latest.writable]
    if others:  # two writable nodes on a cluster nobody can vouch for: an operator's call
        return _refuse(
            obs,
            topo,
            FailoverKind.MANUAL,
            target,
            f"{', '.join(others)} also take writes: stop them first, then record {target}",
        )
    return Decision((WriteTopology(new),), op.reason)


def _out_of_date(
    obs: Observation, topo: Topology, views: dict[str, NodeView], why: str
) -> Decision:
    """A topology older than the cluster: act on nothing, answer every request; only an
    operator's forced failover naming the writable primary on the newest timeline records it
    (even when it is the topology's own primary)."""
    held = _hold(obs, topo, why)
    request = obs.request
    if request is None:
        return held
    if isinstance(request, FailoverRequested) and request.force:
        if request.target is None or request.target not in views:
            return _refuse_request(obs, topo, request, f"{why}; a forced failover names its node")
        reason = f"manual requested by {request.requested_by}: {request.reason}"
        return _adopt(obs, topo, views, request.target, reason, request.data_loss_budget_bytes)
    refusal = _refuse_request(obs, topo, request, why)
    return Decision(held.commands + refusal.commands, why)


def _rejoin(
    obs: Observation, topo: Topology, views: dict[str, NodeView], request: NodeRejoinRequested
) -> Decision:
    node = request.node

    def refuse(reason: str) -> Decision:
        return _refuse(obs, topo, FailoverKind.MANUAL, node, f"rejoin of {node} refused: {reason}")

    if node not in {n.name for n in obs.cluster.nodes}:
        return refuse(f"no node named {node!r} in cluster {topo.cluster}")
    candidate = views[topo.primary].latest if topo.primary in views else None
    op = topo.operation
    if (
        op is not None
        and (node != op.old_primary or op.kind is FailoverKind.MANUAL)
        and not (candidate is not None and candidate.role is Role.PRIMARY and candidate.writable)
    ):
        # Before the candidate takes writes another standby is detached on purpose: a rejoin
        # now would tear down a member the operation may still need. Once it does, or for
        # the old primary (fenced), a rejoin onto it is what the operation does itself —
        # but not a manual failover's: its target may still lack commits only the old
        # primary has (it waits for it to catch up), and rewound or cloned onto the target
        # they would be gone.
        return refuse(
            f"a {op.kind} to {op.new_primary} is under way and {op.new_primary} takes no "
            "writes yet: ask again once it does"
        )
    if request.epoch is not None and request.epoch != topo.epoch:
        return refuse(f"asked under epoch {request.epoch}, the topology is at {topo.epoch}")
    if topo.primary is None or node == topo.primary:
        return refuse(f"{node} is the primary")
    view = views[node]
    if (
        view.role is Role.STANDBY
        and view.latest is not None
        and view.latest.upstream == topo.primary
    ):
        return refuse(f"it already streams from {topo.primary}")
    return Decision(
        (Rejoin(node, topo.primary, topo.epoch),),
        f"rejoining {node} as a standby of {topo.primary}",
    )


def choose_candidate(
    obs: Observation,
    topo: Topology,
    views: dict[str, NodeView],
    target: str | None = None,
    *,
    handover: bool = False,
    budget: int | None = None,
    members: tuple[str, ...] | None = None,
) -> tuple[str | None, dict[str, str]]:
    """The standby to promote, or None with the reason each node was passed over.

    In synchronous mode only the recorded synchronous set (`members`, the topology's unless
    given) may hold every acknowledged commit: every one of them must answer, the candidate
    is the most advanced of them, and an empty set means nobody (not "asynchronous": see
    Topology.promoted). With `handover` (a switchover) the old primary stops and the
    candidate replays all it wrote before promotion, so it need not have been synchronous.
    With a `budget` (a forced manual failover) the operator accepted losing up to that many
    bytes: any standby that close qualifies.
    """
    policy = obs.policy
    why_not: dict[str, str] = {}
    eligible: list[tuple[int, int, str]] = []
    sync_set = topo.synchronous if members is None else members
    standbys = {
        name: v.latest for name, v in views.items() if v.latest is not None and name != topo.primary
    }
    has = {name: p for name, r in standbys.items() if (p := position(r)) is not None}
    reference = obs.last_primary_lsn.get(topo.primary or "")
    if reference is None and has:
        reference = max(has.values())
    # The newest timeline any node is seen on: a standby left on an older one did not follow
    # a promotion, and whatever it has is not the history the cluster went on with.
    timeline = _newest_timeline(views)
    forced = budget is not None
    sync = policy.synchronous_mode != "off" and not handover and not forced
    if sync:
        if not sync_set:
            return None, {
                n.name: "no standby is recorded as holding every acknowledged commit (the "
                "synchronous set is empty)"
                for n in obs.cluster.nodes
                if n.name != topo.primary
            }
        missing = [n for n in sync_set if not views[n].reachable and n != topo.primary]
        if missing:
            return None, {
                n: "synchronous standby unreachable: it may hold acknowledged commits the "
                "others lack"
                for n in missing
            }
    limit = policy.maximum_lag_on_failover if budget is None else budget
    for node in obs.cluster.nodes:
        name = node.name
        view = views[name]
        if name == topo.primary:
            continue
        if target is not None and name != target:
            continue
        if view.latest is None:
            why_not[name] = "unreachable"
        elif view.role is not Role.STANDBY:
            why_not[name] = f"not a standby ({view.role})"
        elif not node.can_be_promoted:
            why_not[name] = "tagged nofailover"
        elif sync and name not in sync_set:
            why_not[name] = "not a synchronous standby: it may miss acknowledged commits"
        elif name not in has:
            why_not[name] = "reports no WAL position (neither received nor replayed)"
        elif (
            timeline is not None
            and view.latest.timeline is not None
            and view.latest.timeline < timeline
            # A standby with no walreceiver reports its last restartpoint's timeline, which
            # lags a promotion it followed; one of the synchronous set was recorded once it
            # streamed from the primary of its epoch, so it is on that primary's timeline.
            and not (sync and name in sync_set)
        ):
            why_not[name] = f"on timeline {view.latest.timeline}, the cluster is on {timeline}"
        elif reference is not None and reference - has[name] > limit:
            what = "the accepted data-loss budget" if forced else "maximum_lag_on_failover"
            why_not[name] = f"{reference - has[name]} bytes behind, more than {what} ({limit})"
        else:
            eligible.append((-has[name], -node.priority, name))
    if target is not None and target not in {n.name for n in obs.cluster.nodes}:
        why_not[target] = "no such node in the cluster"
    if not eligible:
        return None, why_not
    return sorted(eligible)[0][2], why_not


def start_failover(
    obs: Observation,
    topo: Topology,
    views: dict[str, NodeView],
    kind: FailoverKind,
    reason: str,
    target: str | None = None,
    *,
    budget: int | None = None,
    members: tuple[str, ...] | None = None,
) -> Decision:
    """Choose a candidate (among `members`, the recorded synchronous set unless given) and
    take over under a new epoch, or refuse with the reason for every node."""
    candidate, why_not = choose_candidate(obs, topo, views, target, budget=budget, members=members)
    if candidate is None:
        why = f"{reason}, but no standby can be promoted: {_why(why_not)}"
        return _refuse(obs, topo, kind, target, why)
    old = views[topo.primary].latest if topo.primary else None
    chosen = views[candidate].latest
    if (
        kind is FailoverKind.MANUAL
        and budget is None
        and old is not None
        and old.role is Role.PRIMARY
        and chosen is not None
        and chosen.wal_receiver != "streaming"
    ):
        # The primary still answers, so the candidate must catch up with it once it is
        # fenced: one that does not stream from it never will.
        return _refuse(
            obs,
            topo,
            kind,
            target,
            f"{reason}, but {candidate} does not stream from {topo.primary}: it could not "
            "catch up with every acknowledged commit",
        )
    new, commands = _takeover(
        obs, topo, views, kind, reason, candidate, fence=True, budget=budget, members=members
    )
    return Decision(commands, f"{reason}: promoting {candidate} at epoch {new.epoch}")


def _newest_timeline(views: dict[str, NodeView]) -> int | None:
    """The newest timeline any node reports."""
    return max(
        (r.timeline for v in views.values() if (r := v.latest) and r.timeline is not None),
        default=None,
    )


def _why(why_not: dict[str, str]) -> str:
    return "; ".join(f"{n}: {w}" for n, w in sorted(why_not.items())) or "no standbys"


def _takeover(
    obs: Observation,
    topo: Topology,
    views: dict[str, NodeView],
    kind: FailoverKind,
    reason: str,
    candidate: str,
    *,
    fence: bool,
    budget: int | None = None,
    members: tuple[str, ...] | None = None,
) -> tuple[Topology, tuple[Command, ...]]:
    """Commit the new epoch with the operation, then fence, detach, promote and repoint.
    The operation records who may hold acknowledged commits: `members` when given (an
    operation that chooses again keeps the set it started with), else the recorded set."""
    recorded = topo.synchronous if members is None else members
    op = Operation(
        kind=kind,
        old_primary=topo.primary,
        new_primary=candidate,
        reason=reason,
        started_at=obs.now,
        synchronous=recorded if obs.policy.synchronous_mode != "off" else (),
        data_loss_budget_bytes=budget,
        correlation_id=_correlation(obs),
    )
    new = topo.promoted(candidate, op, at=obs.now, seen=_newest_timeline(views))
    started = FailoverStarted(
        cluster=topo.cluster,
        source=obs.source,
        correlation_id=op.correlation_id,
        epoch=new.epoch,
        kind=kind,
        old_primary=topo.primary,
        candidate=candidate,
        reason=reason,
        positions=_positions(views, topo.primary),
        data_loss_budget_bytes=budget,
    )
    commands: list[Command] = [WriteTopology(new), Publish(stamped(started, obs.now))]
    standbys = _standbys_beside(views, candidate, topo.primary)
    accepted = budget is not None  # forced: an unconfirmed fence is the operator's call
    why = f"{reason}: {candidate} takes over"
    # A manual failover from a primary that still runs: killed at once, it could no longer
    # send a lagging target the commits another standby acknowledged, and the failover
    # would be stuck. Fenced over SQL it keeps streaming; a local one is stopped once the
    # target is promoted.
    live = (
        fence
        and kind is FailoverKind.MANUAL
        and not accepted
        and topo.primary is not None
        and views[topo.primary].role is Role.PRIMARY
    )
    if fence and topo.primary is not None:
        commands.append(Fence(topo.primary, new.epoch, why, accepted, keep_running=live))
        commands += [Detach(name, new.epoch, topo.primary) for name in standbys]
    commands.append(_promote(obs, new, op, candidate))
    commands += [Repoint(name, candidate, new.epoch) for name in standbys]
    if live and topo.primary is not None and obs.cluster.node(topo.primary).data_dir is not None:
        commands.append(Fence(topo.primary, new.epoch, f"{why}: stopped after the promotion"))
    return new, tuple(commands)


def _standbys_beside(views: dict[str, NodeView], candidate: str, old: str | None) -> list[str]:
    """The standbys other than the candidate (and the old primary), in the cluster's order."""
    return [n for n, v in views.items() if n not in (candidate, old) and v.role is Role.STANDBY]


def _positions(views: dict[str, NodeView], primary: str | None) -> dict[str, str]:
    """Each answering node's WAL position as last reported, for the record."""
    out = {}
    for name, view in sorted(views.items()):
        r = view.latest
        if r is None:
            continue
        lsn = r.current_lsn if name == primary else None
        if lsn is None and (p := position(r)) is not None:
            lsn = int_to_lsn(p)
        if lsn is not None:
            out[name] = lsn
    return out


def _promote(obs: Observation, topo: Topology, op: Operation, candidate: str) -> Promote:
    """Promote `candidate`, checked against the standbys that may hold acknowledged commits
    (read by the executor right before, after the fence)."""
    others = tuple(n.name for n in obs.cluster.nodes if n.name not in (candidate, op.old_primary))
    if op.kind is FailoverKind.SWITCHOVER:
        # Handed over: it replayed everything the old primary acknowledged. The standbys it
        # goes on with must be able to follow it: it has what each of them has.
        peers: tuple[str, ...] = others
    elif op.data_loss_budget_bytes is not None:
        peers = ()  # a loss accepted
    else:
        peers = tuple(n for n in op.synchronous if n not in (candidate, op.old_primary))
    synchronous = _strict_wait(obs, candidate)
    switchover = op.kind is FailoverKind.SWITCHOVER
    old = None if switchover else op.old_primary
    return Promote(candidate, topo.epoch, peers, old, synchronous, peers_optional=switchover)


def _strict_wait(obs: Observation, primary: str) -> tuple[str, ...]:
    """In strict mode, whom a newly promoted primary's commits wait for from the first one
    (strict never stops blocking); none otherwise."""
    if obs.policy.synchronous_mode != "strict":
        return ()
    return tuple(
        sorted(n.name for n in obs.cluster.nodes if n.name != primary and n.can_be_promoted)
    )


def _continue(
    obs: Observation, topo: Topology, op: Operation, views: dict[str, NodeView]
) -> Decision:
    primary = topo.primary
    assert primary is not None
    view = views[primary]
    if view.latest is None:
        state, why = _primary_state(obs, topo, views)
        if state == "failed":
            again = start_failover(obs, topo, views, op.kind, f"{why} during the {op.kind}")
            old = op.old_primary
            if old in (None, primary) or {p.phase for p in op.phases} & {"fence", "handover"}:
                return again
            # The instance that started the operation may have died before fencing the
            # original primary: fence it too, before anyone else is promoted.
            first = Fence(old, topo.epoch, f"{op.kind}: {primary} failed too", _forced(op))
            return Decision((first, *again.commands), again.reason)
        return Decision.nothing(f"{op.kind} to {primary}: waiting for it to answer")
    if view.role is Role.STANDBY:
        return _resume_promotion(obs, topo, op, views)
    old = op.old_primary
    if (
        old not in (None, primary)
        and views[old].role is Role.PRIMARY
        and obs.cluster.node(old).data_dir is not None
    ):
        # Left running, fenced over SQL, so that the target could catch up (a manual
        # failover): stopped now that the target is promoted, also when the decision that
        # was to stop it did not get that far (a refused promotion, a leader that died).
        stop = Fence(old, topo.epoch, f"{op.kind}: {primary} is promoted, {old} still runs")
        return Decision((stop,), f"{op.kind}: stopping {old} beside {primary}")
    repoints = _repoints(views, primary, topo.epoch)
    if repoints:
        names = ", ".join(r.node for r in repoints)
        return Decision(repoints, f"{op.kind}: repointing {names} to {primary}")
    total = max(0.0, (obs.now - op.started_at).total_seconds())
    outcome = SwitchoverCompleted if op.kind is FailoverKind.SWITCHOVER else FailoverCompleted
    done = outcome(
        cluster=topo.cluster,
        source=obs.source,
        correlation_id=op.correlation_id,
        epoch=topo.epoch,
        kind=op.kind,
        old_primary=op.old_primary,
        new_primary=primary,
        reason=op.reason,
        phases=(*op.phases, PhaseTiming(phase="converged", seconds=total)),
        total_seconds=total,
    )
    finished = topo.model_copy(update={"operation": None, "updated_at": obs.now})
    # Published before the write that ends the operation: a leader that dies between the two
    # leaves the operation recorded, and whoever finishes it publishes again under the same
    # id (one operation per epoch), which the stream's duplicate window keeps once. The
    # other order lost the event with such a leader.
    once = stamped(done, obs.now, key=f"{topo.cluster}|{topo.epoch}|{primary}")
    return Decision(
        (Publish(once), WriteTopology(finished)),
        f"{op.kind} to {primary} complete in {total:.2f}s",
    )


def _resume_promotion(
    obs: Observation, topo: Topology, op: Operation, views: dict[str, NodeView]
) -> Decision:
    """The candidate is still a standby: fence (if not recorded), detach, choose, promote."""
    primary = topo.primary
    assert primary is not None
    # Whoever resumes the operation fences the old primary before promoting, unless the
    # operation records that it was fenced (or handed over): the instance that started it
    # may have died between the topology write and the fence.
    commands: list[Command] = []
    phases = {p.phase for p in op.phases}
    old = op.old_primary
    stuck = _cannot_catch_up(obs, op, views, _promote(obs, topo, op, primary).peers)
    if stuck is not None:
        # Retrying the same candidate would hold for ever: choose again among the standbys
        # that may hold every acknowledged commit, under a new epoch that fences this one
        # (a report may predate its promotion) before anyone else is promoted.
        again = start_failover(obs, topo, views, op.kind, stuck, members=op.synchronous)
        first = (
            []
            if phases & {"fence", "handover"} or old in (None, primary)
            else [Fence(old, topo.epoch, f"{op.kind}: {stuck}", _forced(op))]
        )
        return Decision((*first, *again.commands), again.reason)
    if op.kind is not FailoverKind.SWITCHOVER and old not in (None, primary):
        if not phases & {"fence", "handover"}:
            commands.append(Fence(old, topo.epoch, f"{op.kind}: {primary} takes over", _forced(op)))
        commands += [
            Detach(v.name, topo.epoch, old)
            for v in views.values()
            if v.name not in (primary, old)
            and v.role is Role.STANDBY
            and v.latest is not None
            and v.latest.configured_upstream == old
        ]
        age = (obs.now - op.started_at).total_seconds()
        old_view = views[old] if old is not None else None
        if (
            op.kind is FailoverKind.MANUAL
            and age > obs.policy.manual_catch_up_seconds
            and old_view is not None
        ):
            if old_view.role is Role.PRIMARY or _holds_the_most(obs, topo, old_view, views):
                return _undo_manual(obs, topo, op, age, views)
            if old_view.latest is None and not _forced(op) and not _forked_since(topo, views):
                # Stopped (killed by the fence when it was not confirmed over SQL, or by its
                # agent once the topology named the target): it holds every commit it
                # acknowledged, nobody else can take them over, and left stopped the
                # cluster would have no primary until an operator acts. (Said with the
                # configured wait, not the age: a hold said again in the same words is
                # rate-limited.)
                why = (
                    f"{op.new_primary} did not catch up with {old} within "
                    f"{obs.policy.manual_catch_up_seconds:g}s and {old} is stopped"
                )
                if obs.paused is not None:
                    # An operator may have stopped it on purpose (maintenance): a stop the
                    # fence made and one made by hand look the same from here.
                    return _hold(
                        obs, topo, f"{why}, but {_pause_said(obs.paused)}: not starting {old}"
                    )
                why += f": starting {old} again read-only, to give it its writes back"
                start = StartReadOnly(old, topo.epoch, f"{op.kind}: {why}")
                return Decision((start, *_hold(obs, topo, why).commands), why)
    # Promoted before at this epoch and back in recovery (a crash, a start), its promotion
    # forks a timeline past the one the epoch's first write expected: recorded first.
    forking = _forking(topo, views[primary].latest)
    if forking != topo:
        commands.append(WriteTopology(forking))
    commands.append(_promote(obs, topo, op, primary))
    return Decision(tuple(commands), f"{op.kind}: promoting {primary}")


def _repoints(views: dict[str, NodeView], primary: str, epoch: int) -> tuple[Repoint, ...]:
    """Every standby whose primary_conninfo does not name `primary`, pointed at it."""
    return tuple(
        Repoint(v.name, primary, epoch)
        for v in views.values()
        if v.name != primary
        and v.role is Role.STANDBY
        and v.latest is not None
        and v.latest.configured_upstream != primary
    )


def _forced(op: Operation) -> bool:
    """A forced failover accepted an unconfirmed fence when it started; whoever resumes it
    (a new leader) accepts it too, or it would hold for ever on the fence it was forced past."""
    return op.data_loss_budget_bytes is not None


def _cannot_catch_up(
    obs: Observation, op: Operation, views: dict[str, NodeView], peers: tuple[str, ...]
) -> str | None:
    """Why the operation's candidate can never be promoted, if it cannot: a peer that may
    hold acknowledged commits reports more WAL than it has, and it receives none (its
    upstream, the old primary, is gone or it was detached). The executor refuses to promote
    it, rightly, each time; only another candidate can end the failover."""
    candidate = views[op.new_primary].latest
    if (
        candidate is None
        or candidate.role is not Role.STANDBY
        or candidate.wal_receiver == "streaming"
        or candidate.occurred_at <= op.started_at
        or (have := position(candidate)) is None
    ):
        return None
    for peer in peers:
        report = views[peer].latest
        if (
            report is not None
            and report.occurred_at > op.started_at
            and (theirs := position(report)) is not None
            and theirs > have
        ):
            return (
                f"{op.new_primary} has {int_to_lsn(have)} and receives no WAL, {peer} has "
                f"{int_to_lsn(theirs)}: choosing again"
            )
    return None


def _forked_since(topo: Topology, views: dict[str, NodeView]) -> bool:
    """A node reports a timeline newer than the one the operation began on: someone was
    promoted since (the candidate, perhaps back in recovery after a crash), and whatever it
    committed is on that timeline only."""
    began = topo.timeline if topo.timeline is not None else topo.forked_from
    return began is not None and any(
        (v.latest.timeline or 0) > began for v in views.values() if v.latest is not None
    )


def _holds_the_most(
    obs: Observation, topo: Topology, view: NodeView, views: dict[str, NodeView]
) -> bool:
    """`view`'s node, the old primary, runs in recovery (started again read-only) with all it
    last reported writing and at least the WAL of every other node that answers, none of
    them on a newer timeline. (A standby that does not answer cannot have WAL it lacks: it
    was sent only what the primary had flushed.)"""
    report = view.latest
    have = None if report is None else position(report)
    if report is None or have is None or view.role is not Role.STANDBY:
        return False
    if have < obs.last_primary_lsn.get(view.name, 0) or _forked_since(topo, views):
        return False
    return all(
        (position(v.latest) or 0) <= have and (v.latest.timeline or 0) <= (report.timeline or 0)
        for v in views.values()
        if v.name != view.name and v.latest is not None
    )


def _undo_manual(
    obs: Observation, topo: Topology, op: Operation, age: float, views: dict[str, NodeView]
) -> Decision:
    """The target never caught up with the fenced primary: give the primary back its
    writes under a new epoch, and say why. Nobody was promoted; nothing is lost. The
    standbys detached for the promotion follow it again (left detached, they would stream
    from nobody, and synchronous mode would have no standby to count). A primary that was
    stopped and started again read-only is promoted only if, read just before, it has the
    WAL of every standby, and its promotion forks a timeline (recorded as after a failover)."""
    old = op.old_primary
    assert old is not None
    reason = (
        f"{op.new_primary} did not catch up with {old} within {age:.0f}s: {old} stays the primary"
    )
    back = topo.promoted(old, None, at=obs.now).model_copy(update={"synchronous": ()})
    peers: tuple[str, ...] = ()
    if views[old].role is Role.STANDBY:
        back = _forking(back, views[old].latest)
        peers = tuple(v.name for v in views.values() if v.name != old and v.role is Role.STANDBY)
    failed = FailoverFailed(
        cluster=topo.cluster,
        source=obs.source,
        epoch=back.epoch,
        kind=op.kind,
        target=op.new_primary,
        reason=reason,
    )
    again = _repoints(views, old, back.epoch)
    # Said once the record names it again, before the promotion: one that fails leaves the
    # read-only primary to `_back_read_only`, and the operator still hears why.
    return Decision(
        (
            WriteTopology(back),
            Publish(stamped(failed, obs.now)),
            Promote(old, back.epoch, peers, synchronous=_strict_wait(obs, old)),
            *again,
        ),
        reason,
    )


def _caught_up(report: NodeHealth, standbys: tuple[str, ...]) -> bool:
    """One of `standbys` has flushed everything the primary had written at this report."""
    if not standbys:
        return True
    if not report.current_lsn:
        return False
    current = lsn_to_int(report.current_lsn)
    return any(
        r.name in standbys and r.flush_lsn and lsn_to_int(r.flush_lsn) >= current
        for r in report.replicas
    )


def _manage_sync(obs: Observation, topo: Topology, views: dict[str, NodeView]) -> Decision:
    primary = topo.primary
    assert primary is not None
    report = views[primary].latest
    if report is None or report.role is not Role.PRIMARY:
        return Decision.nothing(f"{primary} is healthy")
    mode = obs.policy.synchronous_mode
    actual = parse_sync_names(report.synchronous_standby_names)
    promotable = {n.name for n in obs.cluster.nodes if n.can_be_promoted}
    streaming = tuple(
        sorted(r.name for r in report.replicas if r.state == "streaming" and r.name in promotable)
    )
    degraded = False
    if mode == "off":
        desired: tuple[str, ...] = ()
    elif streaming:
        desired = streaming
    elif mode == "strict":
        desired = actual or topo.synchronous  # commits wait until a standby is back
    else:
        desired, degraded = (), True
    if desired == actual and desired == topo.synchronous:
        return Decision.nothing(f"{primary} is healthy")
    # The recorded set, when not empty, must name every standby that may hold an
    # acknowledged commit (a failover needs all of them to answer and takes the most
    # advanced). So: a standby joins the record before PostgreSQL waits for it; it leaves
    # the record only once PostgreSQL no longer waits for it and one it waits for has
    # everything written so far (a commit it alone acknowledged is then on that one too).
    # An empty record promotes nobody; it is filled the same careful way, once PostgreSQL
    # waits for the new set and one of them has caught up (commits acknowledged while
    # nobody was waited for are then on it).
    commands: list[Command] = []
    recorded = topo.synchronous
    if mode == "strict" and not streaming:
        pass  # keep the record: nobody streams, nobody is added
    elif recorded and set(desired) - set(recorded):
        recorded = tuple(sorted(set(recorded) | set(desired)))
        commands.append(WriteTopology(topo.model_copy(update={"synchronous": recorded})))
    if not desired and recorded and desired != actual:
        # PostgreSQL is about to stop waiting for any standby: from then on a commit may be
        # acknowledged that no standby has, so first the record says nobody holds them all
        # (an empty record promotes nobody).
        recorded = ()
        commands.append(WriteTopology(topo.model_copy(update={"synchronous": ()})))
    if desired != actual:
        commands.append(SetSynchronous(primary, desired, topo.epoch))
    elif recorded != desired and not (mode == "strict" and not streaming):
        if not _caught_up(report, desired):
            return Decision.nothing(
                f"waiting for {', '.join(desired)} to catch up before recording the synchronous set"
            )
        recorded = desired
        commands.append(WriteTopology(topo.model_copy(update={"synchronous": desired})))
    if not commands:
        return Decision.nothing(f"{primary} is healthy")
    if degraded:
        reason = "no standby is streaming: commits no longer wait for one (synchronous mode on)"
    elif desired:
        reason = f"synchronous standbys: {', '.join(desired)}"
    else:
        reason = "synchronous replication off"
    changed = SyncChanged(
        cluster=topo.cluster,
        source=obs.source,
        epoch=topo.epoch,
        primary=primary,
        standbys=desired,
        degraded=degraded,
        reason=reason,
    )
    # Decided on this report: a set lost and found again within the stream's duplicate
    # window is said each time, not dropped as a copy of the first. The same change decided
    # again (until a report shows it, and when the record follows) the service says once.
    commands.append(Publish(stamped(changed, obs.now, occasion=str(report.event_id))))
    return Decision(tuple(commands), reason)
