"""Shared cluster state kept in JetStream KV: the topology and the leases."""

from __future__ import annotations

from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, NonNegativeInt

from lifeboat.common.events import FailoverKind, PhaseTiming, Role, utcnow
from lifeboat.common.subjects import Name


class Operation(BaseModel):
    """A failover or switchover under way: written with the new epoch before any node is
    touched, so whoever holds the lease next finishes it instead of starting over."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: FailoverKind
    old_primary: Name | None
    new_primary: Name
    reason: str
    started_at: AwareDatetime = Field(default_factory=utcnow)
    phases: tuple[PhaseTiming, ...] = ()


class Topology(BaseModel):
    """Who is primary in a cluster, under which epoch. The epoch is the fencing token."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster: Name
    primary: Name | None
    epoch: NonNegativeInt = 0
    members: dict[Name, Role] = Field(default_factory=dict)
    # Standbys named in the primary's synchronous_standby_names: only they may be promoted
    # in synchronous mode, because only they may hold every acknowledged commit.
    synchronous: tuple[Name, ...] = ()
    operation: Operation | None = None
    updated_at: AwareDatetime = Field(default_factory=utcnow)

    def promoted(
        self, new_primary: str, operation: Operation | None = None, at: datetime | None = None
    ) -> Topology:
        """The topology after `new_primary` takes over, one epoch later."""
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
        )


class Lease(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name
    holder: str
    ttl_seconds: int
    acquired_at: AwareDatetime
    renewed_at: AwareDatetime
