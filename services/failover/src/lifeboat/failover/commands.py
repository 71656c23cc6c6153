"""What the failover decision asks the executor to do. Plain data, each with its reason."""

from __future__ import annotations

from dataclasses import dataclass

from lifeboat.common import decision
from lifeboat.common.decision import Publish
from lifeboat.common.state import Topology


@dataclass(frozen=True)
class CreateTopology:
    topology: Topology


@dataclass(frozen=True)
class WriteTopology:
    """Compare-and-swap the topology; the epoch in it is what every later command carries."""

    topology: Topology


@dataclass(frozen=True)
class Fence:
    node: str
    epoch: int
    reason: str
    # A forced failover: the operator accepts a fence that cannot be confirmed (a remote
    # primary that is gone, say), with the data-loss budget the request states.
    accepted: bool = False
    # A manual failover's primary, still running: once the SQL fence is confirmed a local
    # node is left running (read-only, its commits waiting), so the target can still
    # receive every commit it acknowledged; a later Fence stops it after the promotion.
    keep_running: bool = False


@dataclass(frozen=True)
class Promote:
    """Promote `node`, but only if, read just before (after the fence), it has at least the
    WAL of every one of `peers` (the other standbys that may hold acknowledged commits) and,
    when it still answers, of the fenced `old_primary`; it is given a bounded time to catch
    up, else the promotion is refused and the next decision chooses again.

    `synchronous`: names the new primary's commits wait for from the start (strict mode).
    `peers_optional` (a switchover: the target has every acknowledged commit; its peers need
    only be able to follow it): a peer that cannot be read is passed over."""

    node: str
    epoch: int
    peers: tuple[str, ...] = ()
    old_primary: str | None = None
    synchronous: tuple[str, ...] = ()
    peers_optional: bool = False


@dataclass(frozen=True)
class Detach:
    """Stop a standby streaming from the old primary (empty primary_conninfo) before the
    promotion: it can then neither receive WAL the new primary lacks nor help the old one
    acknowledge a commit. It is repointed once the new primary takes writes. Only while it
    still names `upstream`: a repeat after the repoint (a stale report) changes nothing."""

    node: str
    epoch: int
    upstream: str


@dataclass(frozen=True)
class Repoint:
    node: str
    upstream: str
    epoch: int


@dataclass(frozen=True)
class Handover:
    """Switchover's first step: the primary stops taking writes, and the target replays all
    it wrote. Runs under the old epoch; nothing is promoted if it fails."""

    primary: str
    target: str
    epoch: int


@dataclass(frozen=True)
class Rejoin:
    """Turn a node into a standby of `upstream` (pg_rewind, or a fresh pg_basebackup when
    rewinding is impossible): here when its data directory is, else by its node agent."""

    node: str
    upstream: str
    epoch: int


@dataclass(frozen=True)
class StartReadOnly:
    """Start a stopped node in recovery (an old primary a manual failover stopped, which
    nobody could take over from), so that it can be given its writes back once it reports."""

    node: str
    epoch: int
    reason: str


@dataclass(frozen=True)
class SetSynchronous:
    primary: str
    standbys: tuple[str, ...]
    epoch: int


Command = (
    CreateTopology
    | WriteTopology
    | Fence
    | Handover
    | Promote
    | Detach
    | Repoint
    | Rejoin
    | StartReadOnly
    | SetSynchronous
    | Publish
)


Decision = decision.Decision[Command]
