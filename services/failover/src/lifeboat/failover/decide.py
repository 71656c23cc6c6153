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

from lifeboat.common.clusters import ClusterSpec
from lifeboat.common.decision import Publish, stamped
from lifeboat.common.events import (
    FailoverCompleted,
    FailoverFailed,
    FailoverHeld,
    FailoverKind,
    FailoverRequested,
    FailoverStarted,
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
from lifeboat.common.lsn import lsn_to_int
from lifeboat.common.state import Operation, Topology
from lifeboat.failover.commands import (
    Command,
    CreateTopology,
    Decision,
    Fence,
    Handover,
    Promote,
    Rejoin,
    Repoint,
    SetSynchronous,
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
        views[node.name] = NodeView(
            name=node.name,
            monitors=frozenset(r.source.instance for r in mine),
            failing=frozenset(r.source.instance for r in mine if _failing(r, obs)),
            latest=answered[-1] if answered else None,
        )
    return views


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
    if obs.request is not None:
        decision = _handle_request(obs, topo, views, obs.request)
    elif topo.operation is not None:
        decision = _continue(obs, topo, topo.operation, views)
    else:
        decision = _steady(obs, topo, views)
    if fences:
        reason = "; ".join(f.reason for f in fences)
        return Decision(fences + decision.commands, f"{reason}; {decision.reason}")
    return decision


def _bootstrap(obs: Observation, views: dict[str, NodeView]) -> Decision:
    writable = [
        v.name for v in views.values() if v.role is Role.PRIMARY and v.latest and v.latest.writable
    ]
    if len(writable) != 1:
        return Decision.nothing(
            f"no topology yet and {len(writable)} writable primaries seen ({writable}): waiting"
        )
    members = {v.name: v.role for v in views.values() if v.reachable}
    topo = Topology(
        cluster=obs.cluster.name, primary=writable[0], members=members, updated_at=obs.now
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


def _steady(obs: Observation, topo: Topology, views: dict[str, NodeView]) -> Decision:
    state, why = _primary_state(obs, topo, views)
    if state == "failed":
        return start_failover(obs, topo, views, FailoverKind.AUTOMATIC, why)
    if state in ("suspect", "unknown"):
        # Not acting is a decision too: say why (the service repeats it only now and then).
        held = FailoverHeld(
            cluster=topo.cluster,
            source=obs.source,
            epoch=topo.epoch,
            primary=topo.primary,
            reason=why,
        )
        return Decision((Publish(stamped(held, obs.now)),), why)
    primary = views[topo.primary or ""].latest
    if primary is not None and primary.role is Role.PRIMARY and not primary.writable:
        # Left read-only by a handover that did not finish: it is still the primary.
        return Decision(
            (Promote(primary.node, topo.epoch),),
            f"{primary.node} is the primary but read-only: taking writes again",
        )
    return _manage_sync(obs, topo, views)


def _refuse(
    obs: Observation, topo: Topology, kind: FailoverKind, target: str | None, reason: str
) -> Decision:
    model = SwitchoverFailed if kind is FailoverKind.SWITCHOVER else FailoverFailed
    event = model(
        cluster=topo.cluster,
        source=obs.source,
        epoch=topo.epoch,
        kind=kind,
        target=target,
        reason=reason,
    )
    return Decision((Publish(stamped(event, obs.now)),), f"refused: {reason}")


def _handle_request(
    obs: Observation, topo: Topology, views: dict[str, NodeView], request: Request
) -> Decision:
    names = {n.name for n in obs.cluster.nodes}
    if isinstance(request, NodeRejoinRequested):
        return _rejoin(obs, topo, views, request.node)
    kind = (
        FailoverKind.SWITCHOVER if isinstance(request, SwitchoverRequested) else FailoverKind.MANUAL
    )
    target = request.target
    if topo.operation is not None:
        op = topo.operation
        return _refuse(obs, topo, kind, target, f"a {op.kind} to {op.new_primary} is under way")
    if target is not None and target not in names:
        return _refuse(
            obs, topo, kind, target, f"no node named {target!r} in cluster {topo.cluster}"
        )
    if target is not None and target == topo.primary:
        return _refuse(obs, topo, kind, target, f"{target} is already the primary")
    reason = f"{kind} requested by {request.requested_by}: {request.reason}"
    if kind is FailoverKind.MANUAL:
        return start_failover(obs, topo, views, kind, reason, target)
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
    commands: list[Command] = [Handover(old, candidate, topo.epoch), *takeover]
    if obs.cluster.node(old).data_dir is not None:
        commands.append(Rejoin(old, candidate, new.epoch))
    return Decision(tuple(commands), f"{reason}: handing {old} over to {candidate}")


def _rejoin(obs: Observation, topo: Topology, views: dict[str, NodeView], node: str) -> Decision:
    def refuse(reason: str) -> Decision:
        return _refuse(obs, topo, FailoverKind.MANUAL, node, f"rejoin of {node} refused: {reason}")

    if node not in {n.name for n in obs.cluster.nodes}:
        return refuse(f"no node named {node!r} in cluster {topo.cluster}")
    if topo.primary is None or node == topo.primary:
        return refuse(f"{node} is the primary")
    if obs.cluster.node(node).data_dir is None:
        return refuse("it is not managed on this host (no data_dir): rejoin it where it runs")
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
) -> tuple[str | None, dict[str, str]]:
    """The standby to promote, or None with the reason each node was passed over.

    With `handover` (a switchover) the old primary stops and the candidate replays all it
    wrote before promotion, so it need not have been synchronous.
    """
    policy = obs.policy
    why_not: dict[str, str] = {}
    eligible: list[tuple[int, int, str]] = []
    reference = obs.last_primary_lsn.get(topo.primary or "")
    received = {
        name: lsn_to_int(v.latest.receive_lsn)
        for name, v in views.items()
        if v.latest is not None and v.latest.receive_lsn
    }
    if reference is None and received:
        reference = max(received.values())
    sync = policy.synchronous_mode != "off" and bool(topo.synchronous) and not handover
    if sync:
        missing = [n for n in topo.synchronous if not views[n].reachable and n != topo.primary]
        if missing:
            return None, {
                n: "synchronous standby unreachable: it may hold acknowledged commits the "
                "others lack"
                for n in missing
            }
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
        elif sync and name not in topo.synchronous:
            why_not[name] = "not a synchronous standby: it may miss acknowledged commits"
        elif name not in received:
            why_not[name] = "reports no received WAL position"
        elif reference is not None and reference - received[name] > policy.maximum_lag_on_failover:
            why_not[name] = (
                f"{reference - received[name]} bytes behind, more than "
                f"maximum_lag_on_failover ({policy.maximum_lag_on_failover})"
            )
        else:
            eligible.append((-received[name], -node.priority, name))
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
) -> Decision:
    candidate, why_not = choose_candidate(obs, topo, views, target)
    if candidate is None:
        why = f"{reason}, but no standby can be promoted: {_why(why_not)}"
        return _refuse(obs, topo, kind, target, why)
    new, commands = _takeover(obs, topo, views, kind, reason, candidate, fence=True)
    return Decision(commands, f"{reason}: promoting {candidate} at epoch {new.epoch}")


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
) -> tuple[Topology, tuple[Command, ...]]:
    """Commit the new epoch with the operation, then fence, promote and repoint under it."""
    op = Operation(
        kind=kind,
        old_primary=topo.primary,
        new_primary=candidate,
        reason=reason,
        started_at=obs.now,
    )
    new = topo.promoted(candidate, op, at=obs.now)
    started = FailoverStarted(
        cluster=topo.cluster,
        source=obs.source,
        epoch=new.epoch,
        kind=kind,
        old_primary=topo.primary,
        candidate=candidate,
        reason=reason,
    )
    commands: list[Command] = [WriteTopology(new), Publish(stamped(started, obs.now))]
    if fence and topo.primary is not None:
        commands.append(Fence(topo.primary, new.epoch, f"{reason}: {candidate} takes over"))
    commands.append(Promote(candidate, new.epoch))
    commands += [
        Repoint(n.name, candidate, new.epoch)
        for n in obs.cluster.nodes
        if n.name not in (candidate, topo.primary) and views[n.name].role is Role.STANDBY
    ]
    return new, tuple(commands)


def _continue(
    obs: Observation, topo: Topology, op: Operation, views: dict[str, NodeView]
) -> Decision:
    primary = topo.primary
    assert primary is not None
    view = views[primary]
    if view.latest is None:
        state, why = _primary_state(obs, topo, views)
        if state == "failed":
            return start_failover(obs, topo, views, op.kind, f"{why} during the {op.kind}")
        return Decision.nothing(f"{op.kind} to {primary}: waiting for it to answer")
    if view.role is Role.STANDBY:
        # Whoever resumes the operation fences the old primary before promoting, unless the
        # operation records that it was fenced (or handed over): the instance that started it
        # may have died between the topology write and the fence.
        fence: tuple[Command, ...] = ()
        phases = {p.phase for p in op.phases}
        if op.old_primary not in (None, primary) and not phases & {"fence", "handover"}:
            fence = (Fence(op.old_primary, topo.epoch, f"{op.kind}: {primary} takes over"),)
        return Decision((*fence, Promote(primary, topo.epoch)), f"{op.kind}: promoting {primary}")
    repoints = tuple(
        Repoint(v.name, primary, topo.epoch)
        for v in views.values()
        if v.name != primary
        and v.role is Role.STANDBY
        and v.latest is not None
        and v.latest.configured_upstream != primary
    )
    if repoints:
        names = ", ".join(r.node for r in repoints)
        return Decision(repoints, f"{op.kind}: repointing {names} to {primary}")
    total = max(0.0, (obs.now - op.started_at).total_seconds())
    outcome = SwitchoverCompleted if op.kind is FailoverKind.SWITCHOVER else FailoverCompleted
    done = outcome(
        cluster=topo.cluster,
        source=obs.source,
        epoch=topo.epoch,
        kind=op.kind,
        old_primary=op.old_primary,
        new_primary=primary,
        reason=op.reason,
        phases=(*op.phases, PhaseTiming(phase="converged", seconds=total)),
        total_seconds=total,
    )
    finished = topo.model_copy(update={"operation": None, "updated_at": obs.now})
    return Decision(
        (WriteTopology(finished), Publish(stamped(done, obs.now))),
        f"{op.kind} to {primary} complete in {total:.2f}s",
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
        desired = topo.synchronous or actual  # commits wait until a standby is back
    else:
        desired, degraded = (), True
    if desired == actual and desired == topo.synchronous:
        return Decision.nothing(f"{primary} is healthy")
    commands: list[Command] = []
    keep = tuple(n for n in topo.synchronous if n in desired)
    if keep != topo.synchronous:  # narrow the promotable set before PostgreSQL stops waiting
        commands.append(WriteTopology(topo.model_copy(update={"synchronous": keep})))
    if desired != actual:
        commands.append(SetSynchronous(primary, desired, topo.epoch))
    if desired != keep:  # widen it only once PostgreSQL waits for them
        commands.append(WriteTopology(topo.model_copy(update={"synchronous": desired})))
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
    commands.append(Publish(stamped(changed, obs.now)))
    return Decision(tuple(commands), reason)
