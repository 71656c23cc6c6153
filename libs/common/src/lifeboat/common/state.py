"""Shared cluster state kept in JetStream KV: the topology and the leases."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, NonNegativeInt

from lifeboat.common.events import FailoverKind, PhaseTiming, Role, utcnow
from lifeboat.common.subjects import Name

# Records in KV outlive a version: a field a newer writer added is ignored by an older
# reader (an agent not yet upgraded), where forbidding it made every read fail, and an agent
# that cannot read the topology stops its primary.
_RECORD = ConfigDict(frozen=True, extra="ignore")


class Operation(BaseModel):
    """A failover or switchover under way: written with the new epoch before any node is
    touched, so whoever holds the lease next finishes it instead of starting over."""

    model_config = _RECORD

    kind: FailoverKind
    old_primary: Name | None
    new_primary: Name
    reason: str
    started_at: AwareDatetime = Field(default_factory=utcnow)
    phases: tuple[PhaseTiming, ...] = ()
    # The operator's request this operation answers (its correlation id): every event of the
    # operation carries it, so a caller can follow its own request.
    correlation_id: UUID | None = None
    # The synchronous set when the operation began: the standbys that may hold acknowledged
    # commits of the old primary. The candidate is (re)chosen among them, by positions read
    # after the fence; the new topology's own set starts empty (see Topology.promoted).
    synchronous: tuple[Name, ...] = ()
    # An operator accepted losing up to this many bytes of acknowledged commits (a forced
    # manual failover); None: nothing acknowledged may be lost.
    data_loss_budget_bytes: NonNegativeInt | None = None


class Topology(BaseModel):
    """Who is primary in a cluster, under which epoch. The epoch is the fencing token."""

    model_config = _RECORD

    cluster: Name
    primary: Name | None
    epoch: NonNegativeInt = 0
    members: dict[Name, Role] = Field(default_factory=dict)
    # Standbys named in the primary's synchronous_standby_names: only they may be promoted
    # in synchronous mode, because only they may hold every acknowledged commit.
    synchronous: tuple[Name, ...] = ()
    operation: Operation | None = None
    updated_at: AwareDatetime = Field(default_factory=utcnow)
    # The primary's timeline at this epoch, once it was seen there. A node on a newer one
    # means this topology is older than the cluster (the store rolled back past a failover,
    # or a node was promoted outside Lifeboat): nobody acts on it then.
    timeline: NonNegativeInt | None = None
    # Until then: the newest timeline known when this epoch was written. Its promotion forks
    # the next one from it, so a node on a later one than that shows the topology older than
    # the cluster even when the store lost the record of the epoch's own timeline.
    forked_from: NonNegativeInt | None = None

    def newest_timeline(self) -> int | None:
        """The newest timeline this topology knows its cluster may be on: the recorded one,
        else the one its promotion forks (None: it knows none)."""
        if self.timeline is not None:
            return self.timeline
        return None if self.forked_from is None else self.forked_from + 1

    def promoted(
        self,
        new_primary: str,
        operation: Operation | None = None,
        at: datetime | None = None,
        *,
        seen: int | None = None,
    ) -> Topology:
        """The topology after `new_primary` takes over, one epoch later; `seen`: the newest
        timeline a node reports now (it forks from the newer of that and what this one knows).

        Its synchronous set is empty on purpose, and empty does not mean asynchronous: no
        standby is yet known to hold the new primary's acknowledged commits (nor, until it
        streams from the new primary, everything the old timeline acknowledged), so in
        synchronous mode nobody is promotable until the set is widened from what the new
        primary reports. The old set stays in the operation (`Operation.synchronous`).
        """
        members = {
            name: Role.PRIMARY if name == new_primary else Role.STANDBY for name in self.members
        }
        members[new_primary] = Role.PRIMARY
        return Topology(
            cluster=self.cluster,
            primary=new_primary,
            epoch=self.epoch + 1,
            members=members,
            synchronous=(),
            operation=operation,
            updated_at=at or utcnow(),
            forked_from=max(
                (t for t in (self.newest_timeline(), seen) if t is not None), default=None
            ),
        )


class Lease(BaseModel):
    model_config = _RECORD

    name: Name
    holder: str
    ttl_seconds: int
    acquired_at: AwareDatetime
    renewed_at: AwareDatetime
    # A node agent's lease: its bound T, within which it stops its writable node once it
    # cannot renew (see kv.agent_lease_name).
    guard_seconds: float | None = None
