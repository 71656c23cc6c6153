"""Whether the leader itself cannot act: its node actions fail on nodes that the monitors
reach. It reaches NATS (it holds the lease) but not PostgreSQL, so while it keeps the lease
nobody can fence, promote or repoint; it must give the lease to an instance that can.

Pure, so the rule is tested on plain data: a round counts against the leader only when
every node action it tried failed, at least one on a node a monitor reached just now, and
not because a guard refused it or a candidate was behind (those are answers, not faults).
"""

from __future__ import annotations

from collections.abc import Sequence

from lifeboat.common.decision import Outcome, Refused
from lifeboat.failover.commands import (
    Command,
    Detach,
    Fence,
    Handover,
    Promote,
    Rejoin,
    Repoint,
    SetSynchronous,
)
from lifeboat.failover.nodes import CandidateBehindError


def node_of(command: Command) -> str | None:
    """The PostgreSQL node a command acts on (None: KV or events only)."""
    match command:
        case Fence(node=node) | Promote(node=node) | Detach(node=node) | Repoint(node=node):
            return node
        case Rejoin(node=node):
            return node
        case Handover(primary=node) | SetSynchronous(primary=node):
            return node
    return None


def failed_on_reachable(
    outcomes: Sequence[Outcome[Command]], reachable: frozenset[str]
) -> tuple[str, ...] | None:
    """None if the round says nothing against the leader (no node action, or one that
    worked); else the nodes, reachable by the monitors, on which its actions failed."""
    tried = [o for o in outcomes if node_of(o.command) is not None]
    if not tried or any(o.ok for o in tried):
        return None
    faults = sorted(
        {
            node
            for o in tried
            if (node := node_of(o.command)) in reachable
            and not isinstance(o.error, (Refused, CandidateBehindError))
        }
    )
    return tuple(faults) or None
