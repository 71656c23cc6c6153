"""What the backup decisions ask the executor to do. Plain data, each with what it needs.

`correlation_id` is the id of the request a command answers (the request's own correlation
id, else its event id): every event the executor publishes for it carries it, so a caller
(the gateway's operations) can follow its request to the outcome."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from lifeboat.backup.plan import RestorePlan
from lifeboat.backup.take import Job
from lifeboat.common import decision
from lifeboat.common.decision import Publish
from lifeboat.common.events import BackupKind, RestoreRequested


@dataclass(frozen=True)
class TakeBackup:
    job: Job
    verify: bool
    correlation_id: UUID | None = None


@dataclass(frozen=True)
class VerifyBackup:
    backup_id: str
    request_id: UUID | None = None
    correlation_id: UUID | None = None


@dataclass(frozen=True)
class ExpireBackup:
    backup_id: str
    kind: BackupKind
    reason: str


@dataclass(frozen=True)
class DeleteBackup:
    backup_id: str
    kind: BackupKind
    request_id: UUID | None
    forced: bool
    correlation_id: UUID | None = None


@dataclass(frozen=True)
class PruneWal:
    """Remove archived segments below this number: no retained base backup needs them."""

    below_segno: int


@dataclass(frozen=True)
class RemoveOrphans:
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Restore:
    plan: RestorePlan
    request: RestoreRequested
    restore_id: str
    # Target "node", its data directory on another host: restored here, then copied into the
    # node by its agent (`node.restore_ordered`).
    through_agent: bool = False

    @property
    def correlation_id(self) -> UUID:
        return self.request.correlation_id or self.request.event_id


Command = (
    TakeBackup
    | VerifyBackup
    | ExpireBackup
    | DeleteBackup
    | PruneWal
    | RemoveOrphans
    | Restore
    | Publish
)
Decision = decision.Decision[Command]
