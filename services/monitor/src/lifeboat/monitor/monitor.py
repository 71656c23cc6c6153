"""The probing loop: every interval, probe every node of every cluster at once, then report.

Probing never waits for NATS: events go to a bounded outbox that a separate task publishes,
so a monitor cut off from NATS keeps probing and catches up when NATS is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from lifeboat.common.clusters import ClustersFile, ClusterSpec, NodeSpec
from lifeboat.common.events import (
    ClusterEvent,
    NodeAdmissionChanged,
    NodeDown,
    NodeHealth,
    NodeLag,
    NodeRoleChanged,
    NodeUp,
    Role,
    Source,
)
from lifeboat.common.lsn import lsn_to_int
from lifeboat.monitor.probe import NodeProber, ProbeResult
from lifeboat.monitor.transitions import (
    AdmissionChanged,
    CameUp,
    LagChanged,
    NodeState,
    Observed,
    RoleChanged,
    Thresholds,
    Transition,
    WentDown,
    step,
)

log = logging.getLogger(__name__)

Publish = Callable[[ClusterEvent], Awaitable[None]]
Key = tuple[str, str]  # (cluster, node)


def replication_lag(
    standby: ProbeResult, primary: ProbeResult | None, name: str
) -> tuple[int | None, float | None]:
    """Bytes the standby has yet to replay, and seconds, as the primary sees them.

    The primary reports no replay lag once a standby has caught up, so a quiet primary never
    looks like lag.
    """
    if primary is None or not primary.reachable or primary.current_lsn is None:
        return None, None
    lag_bytes = None
    if standby.replay_lsn is not None:
        lag_bytes = max(0, lsn_to_int(primary.current_lsn) - lsn_to_int(standby.replay_lsn))
    seen = next((r for r in primary.replicas if r.name == name), None)
    if seen is None:
        return lag_bytes, None
    return lag_bytes, seen.replay_lag_seconds or 0.0


def upstream_name(cluster: ClusterSpec, sender: str | None) -> str | None:
    if sender is None:
        return None
    for node in cluster.nodes:
        if sender == f"{node.host}:{node.port}":
            return node.name
    return sender


class Monitor:
    def __init__(
        self,
        clusters: ClustersFile,
        probers: dict[Key, NodeProber],
        source: Source,
        publish: Publish,
        *,
        interval: float,
        thresholds: Thresholds,
        location: str,
        outbox_size: int,
    ) -> None:
        self.clusters = clusters
        self.probers = probers
        self.source = source
        self._publish = publish
        self.interval = interval
        self.thresholds = thresholds
        self.location = location
        self.states: dict[Key, NodeState] = {key: NodeState() for key in probers}
        self.outbox: deque[ClusterEvent] = deque(maxlen=outbox_size)
        self._wake = asyncio.Event()
        self.last_round_at: float | None = None
        self.last_round_seconds: float | None = None
        self.rounds = 0
        self.publish_failures = 0

    async def run_probing(self) -> None:
        """Fixed-rate rounds: a slow round does not push the schedule back."""
        next_at = time.monotonic()
        while True:
            started = time.monotonic()
            await self.round()
            self.last_round_at = time.monotonic()
            self.last_round_seconds = self.last_round_at - started
            self.rounds += 1
            next_at += self.interval
            now = time.monotonic()
            if next_at < now:  # fell behind: skip, don't burst
                next_at = now
            await asyncio.sleep(next_at - now)

    async def round(self) -> None:
        keys = list(self.probers)
        results = await asyncio.gather(*(self.probers[k].probe() for k in keys))
        by_key = dict(zip(keys, results, strict=True))
        for cluster in self.clusters.clusters:
            primaries = [
                by_key[(cluster.name, n.name)]
                for n in cluster.nodes
                if by_key[(cluster.name, n.name)].role is Role.PRIMARY
            ]
            primary = primaries[0] if len(primaries) == 1 else None
            for node in cluster.nodes:
                self._report(cluster, node, by_key[(cluster.name, node.name)], primary)
        self._wake.set()

    def _report(
        self, cluster: ClusterSpec, node: NodeSpec, result: ProbeResult, primary: ProbeResult | None
    ) -> None:
        key = (cluster.name, node.name)
        lag_bytes, lag_seconds = (None, None)
        if result.role is Role.STANDBY:
            lag_bytes, lag_seconds = replication_lag(result, primary, node.name)
        state, transitions = step(
            self.states[key],
            Observed(
                result.reachable,
                result.role,
                result.writable,
                lag_seconds,
                lag_bytes,
                result.error,
                result.refusing_connections,
            ),
            self.thresholds,
        )
        self.states[key] = state
        common = {"cluster": cluster.name, "node": node.name, "source": self.source}
        self.outbox.append(
            NodeHealth(
                **common,
                monitor_location=self.location,
                reachable=result.reachable,
                consecutive_failures=state.consecutive_failures,
                consecutive_read_only=state.consecutive_read_only,
                latency_ms=result.latency_ms,
                role=result.role,
                writable=result.writable,
                timeline=result.timeline,
                current_lsn=result.current_lsn,
                receive_lsn=result.receive_lsn,
                replay_lsn=result.replay_lsn,
                upstream=upstream_name(cluster, result.sender),
                configured_upstream=upstream_name(cluster, result.configured_upstream),
                wal_receiver=result.wal_receiver,
                lag_bytes=lag_bytes,
                lag_seconds=lag_seconds,
                synchronous_standby_names=result.synchronous_standby_names,
                replicas=result.replicas,
                slots=result.slots,
                error=result.error,
                refusing_connections=result.refusing_connections,
            )
        )
        for transition in transitions:
            self.outbox.append(_transition_event(transition, common))
            log.info("%s/%s: %s", cluster.name, node.name, transition)

    async def run_publishing(self) -> None:
        while True:
            if not self.outbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            event = self.outbox[0]
            try:
                await self._publish(event)
            except Exception as exc:  # NATS away: keep the event, probing goes on
                self.publish_failures += 1
                if self.publish_failures == 1 or self.publish_failures % 30 == 0:
                    log.warning("cannot publish (%s); %d event(s) waiting", exc, len(self.outbox))
                await asyncio.sleep(0.5)
                continue
            self.publish_failures = 0
            with contextlib.suppress(IndexError):
                if self.outbox[0] is event:
                    self.outbox.popleft()

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.probers.values()))


def _transition_event(t: Transition, common: dict[str, object]) -> ClusterEvent:
    match t:
        case WentDown(reason):
            return NodeDown.model_validate({**common, "reason": reason})
        case CameUp(role):
            return NodeUp.model_validate({**common, "role": role})
        case RoleChanged(previous, current):
            return NodeRoleChanged.model_validate(
                {**common, "previous": previous, "current": current}
            )
        case AdmissionChanged(refusal):
            return NodeAdmissionChanged.model_validate(
                {**common, "accepting": refusal is None, "reason": refusal}
            )
        case LagChanged(level, seconds, lag_bytes):
            return NodeLag.model_validate(
                {**common, "level": level, "lag_seconds": seconds, "lag_bytes": lag_bytes}
            )
