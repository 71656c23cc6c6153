"""Which events the history lists by default: the decisions about a cluster."""

from __future__ import annotations

from lifeboat.common import subjects

HISTORY_TOPICS = (
    subjects.FAILOVER_REQUESTED,
    subjects.FAILOVER_STARTED,
    subjects.FAILOVER_COMPLETED,
    subjects.FAILOVER_FAILED,
    subjects.FAILOVER_HELD,
    subjects.SWITCHOVER_REQUESTED,
    subjects.SWITCHOVER_COMPLETED,
    subjects.SWITCHOVER_FAILED,
    subjects.NODE_FENCED,
    subjects.NODE_REJOIN_REQUESTED,
    subjects.NODE_REJOINED,
    subjects.MAINTENANCE_PAUSED,
    subjects.MAINTENANCE_RESUMED,
)
HISTORY_TYPES = frozenset(t.name for t in HISTORY_TOPICS)
