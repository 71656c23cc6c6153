"""Shared cluster state kept in JetStream KV: the topology and the leases."""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, NonNegativeInt

from lifeboat.common.events import Role, utcnow
from lifeboat.common.subjects import Name


class Topology(BaseModel):
    """Who is primary in a cluster, under which epoch. The epoch is the fencing token."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster: Name
    primary: Name | None
    epoch: NonNegativeInt = 0
    members: dict[Name, Role] = Field(default_factory=dict)
    updated_at: AwareDatetime = Field(default_factory=utcnow)

    def promoted(self, new_primary: str) -> Topology:
        """The topology after `new_primary` takes over, one epoch later."""
        members = {
            name: Role.PRIMARY if name == new_primary else Role.STANDBY for name in self.members
        }
        members[new_primary] = Role.PRIMARY
        return Topology(
            cluster=self.cluster, primary=new_primary, epoch=self.epoch + 1, members=members
        )


class Lease(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name
    holder: str
    ttl_seconds: int
    acquired_at: AwareDatetime
    renewed_at: AwareDatetime
