"""The agent's one decision, pure: keep the node as it is, count a confirmation, or fence it.

A writable node that the topology does not name primary is fenced at once. The bound: a
writable node that it named is fenced once `bound` seconds have passed since the start of the
last read that confirmed it (the topology named it primary, or, while NATS is unreachable,
every other member's agent answered that its node follows, the failsafe). The failover
leader writes a new epoch before it promotes anyone; a read that starts after that write
sees it, so the old primary's last confirming read started before the write, and the node
is fenced at most `bound` after the write. A leader that waits `bound` (plus a margin for
clock rates and the stop's signal) after its write can rely on the old primary not
committing any more — unless the failsafe holds it up (see `failsafe`).
"""

from __future__ import annotations

from dataclasses import dataclass

from lifeboat.agent.node import NodeState
from lifeboat.common.state import Topology


@dataclass(frozen=True)
class PeerAnswer:
    """One other member's agent, asked directly (failsafe)."""

    node: str
    writable: bool | None = None  # None: it did not answer
    epoch: int | None = None  # the topology it last read, if any
    primary: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Observation:
    node: str
    now: float
    state: NodeState
    # This round's topology read: the record (None: there is none yet), unless it failed.
    topology: Topology | None
    read_error: str | None
    read_at: float  # when the read started
    # The newest topology read successfully (by epoch), and when the node was last confirmed.
    last_topology: Topology | None
    confirmed_at: float
    bound: float
    peers: dict[str, str]  # node -> its agent's address
    # The other members' agents, asked this round when the read failed.
    answers: tuple[PeerAnswer, ...] | None = None
    asked_at: float = 0.0
    # When the last successful read started, if it saw this same postmaster in recovery
    # (a node writable now has been promoted since).
    standby_read_at: float | None = None


@dataclass(frozen=True)
class Keep:
    reason: str


@dataclass(frozen=True)
class Confirmed:
    at: float
    reason: str


@dataclass(frozen=True)
class Fence:
    reason: str


Verdict = Keep | Confirmed | Fence


def deadline(o: Observation) -> float:
    return o.confirmed_at + o.bound


def members(o: Observation) -> tuple[str, ...]:
    """Whom the failsafe must hear from: the topology's members, else every configured peer."""
    known = tuple(o.last_topology.members) if o.last_topology else tuple(o.peers)
    return tuple(sorted(n for n in known if n != o.node))


def failsafe(o: Observation) -> Verdict | None:
    """While NATS is unreachable: a primary keeps serving only while every other member's
    agent answers that its node is not writable and that it saw no other primary.

    The failover leader today promotes nobody before the old primary is confirmed fenced
    (stopped, or fenced over SQL and read back), so a primary kept up by the failsafe is
    never beside a second one it promoted. A forced failover, which accepts an unconfirmed
    fence, is the exception: the promoted standby's agent answers as a primary at the next
    check, and the old primary is fenced then.
    """
    if o.answers is None:
        return None
    last = o.last_topology
    if last is not None and last.primary != o.node:
        return None  # it holds up a primary, never a node the topology named otherwise
    latest = o.last_topology.epoch if o.last_topology else -1
    for a in o.answers:
        if a.writable:
            return Fence(f"failsafe: {a.node} is writable too (its agent says so)")
        if a.primary not in (None, o.node) and a.epoch is not None and a.epoch >= latest:
            seen = f"{a.primary} as primary at epoch {a.epoch}"
            return Fence(f"failsafe: {a.node}'s agent read {seen}")
    wanted = members(o)
    answered = {a.node for a in o.answers if a.writable is not None}
    missing = [n for n in wanted if n not in answered]
    if not wanted or missing:
        return None
    return Confirmed(
        o.asked_at,
        f"failsafe: NATS unreachable ({o.read_error}), every other member's agent answers "
        f"({', '.join(wanted)}) and none is writable",
    )


def on_deadline(node: str, writable: bool, last: Topology | None) -> bool:
    """Whether the bound governs: a writable node that the topology it last read named
    primary (or that has read none). A node writable against the topology it last read is
    fenced at once instead, unless a fresh read names it primary."""
    return writable and (last is None or last.primary == node)


def judge(o: Observation) -> Verdict:
    fresh = o.read_error is None
    t = o.topology if fresh else o.last_topology
    went_back = ""
    if fresh and t is not None and o.last_topology is not None and t.epoch < o.last_topology.epoch:
        # Epochs only grow: an older record than one read before is a store rolled back (or
        # restored). Enforcing it would stop the primary the cluster has, and leave none; the
        # newer record read before stands, while the leader holds on the nodes ahead of the
        # topology (guarantee 12) until an operator records the primary again.
        went_back = f" (the topology read went back to epoch {t.epoch}: a store rolled back?)"
        t = o.last_topology
    elif fresh and t is None and o.last_topology is not None:
        # Gone after one was read (deleted by hand, a store lost): not "nobody promoted yet",
        # which would confirm every writable node; the record read before stands.
        went_back = " (the topology record is gone: the one read before stands)"
        t = o.last_topology
    if fresh and t is None:
        # Only the failover creates the record, naming the primary it finds; until then
        # nobody has been promoted, so nothing can be beside this node.
        return Confirmed(o.read_at, "no topology yet: nobody has been promoted")
    if fresh and t is not None and t.primary == o.node:
        return Confirmed(o.read_at, f"named primary at epoch {t.epoch}{went_back}")
    cannot_read = "" if fresh else f"; the topology cannot be read ({o.read_error})"
    which = "the topology" if fresh else "the topology last read"
    named = (
        ""
        if t is None
        else f"{which} names {t.primary or 'no node'} primary at epoch {t.epoch}{went_back}"
    )
    if not o.state.writable:
        return Keep(f"{o.state.describe()}{cannot_read}" + (f"; {named}" if named else ""))
    verdict = failsafe(o)
    if verdict is not None:
        return verdict
    if t is not None and t.primary != o.node:
        promoted = promoted_under(o, t)
        if promoted is not None:
            return promoted
        # A switchover hands the old primary over (read-only, stopped when it is local, its
        # last WAL replayed by the target) under the old epoch, before the new one is
        # written: stopping it now takes nothing from the switchover.
        return Fence(f"writable, but {named}{cannot_read}")
    unconfirmed = o.now - o.confirmed_at
    if o.now >= deadline(o):
        return Fence(
            f"writable, and not confirmed primary for {unconfirmed:.1f}s (the bound is "
            f"{o.bound:g}s){cannot_read}"
            + (f"; failsafe: {_failsafe_gap(o)}" if o.peers or o.answers is not None else "")
        )
    return Keep(f"writable, unconfirmed for {unconfirmed:.1f}s{cannot_read}")


def promoted_under(o: Observation, last: Topology) -> Confirmed | None:
    """A node promoted since its last read, which it cannot repeat, when another member's
    agent has read a newer record naming it primary: the leader writes that record before
    it promotes, so this is the new primary whose first read after the promotion failed. It
    counts as confirmed as of that last read (its lease was renewed then, which is what the
    leader counts from), so the bound runs from there. Without such an answer it may be a
    promotion outside the leader (`pg_ctl promote`), fenced at once."""
    if o.read_error is None or o.standby_read_at is None or o.now >= o.standby_read_at + o.bound:
        return None
    answers = [a for a in o.answers or () if a.epoch is not None]
    if not answers or any(a.writable for a in o.answers or ()):
        return None
    newest = max(a.epoch or 0 for a in answers)
    named = [a for a in answers if a.epoch == newest]
    if newest <= last.epoch or any(a.primary != o.node for a in named):
        return None  # nobody read a newer record, or the newest names another node
    return Confirmed(
        o.standby_read_at,
        f"promoted since its last read (which named {last.primary or 'no node'} at epoch "
        f"{last.epoch}); the topology cannot be read ({o.read_error}), and "
        f"{', '.join(a.node for a in named)} read it named primary at epoch {newest}",
    )


def _failsafe_gap(o: Observation) -> str:
    """Why the failsafe did not hold, for the fence's reason."""
    answers = {a.node: a for a in o.answers or ()}
    gaps = []
    for node in members(o):
        a = answers.get(node)
        if node not in o.peers:
            gaps.append(f"no agent address for {node}")
        elif a is None or a.writable is None:
            gaps.append(f"{node}'s agent did not answer ({a.error if a else 'not asked'})")
    return "; ".join(gaps) or "no other member"
