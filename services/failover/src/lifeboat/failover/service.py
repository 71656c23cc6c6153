"""The failover loop: hold the lease, observe, decide, execute; again every half second."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from datetime import UTC, datetime

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from lifeboat.common.clusters import ClusterSpec
from lifeboat.common.decision import Outcome, Publish, stamped
from lifeboat.common.events import (
    ClusterEvent,
    FailoverFailed,
    FailoverHeld,
    FailoverKind,
    MaintenanceState,
    NodeHealth,
    PhaseTiming,
    Role,
    SwitchoverFailed,
    SyncChanged,
)
from lifeboat.common.kv import LeaseLostError, LeaseStore, TopologyStore, Versioned, open_bucket
from lifeboat.common.lsn import lsn_to_int
from lifeboat.common.reports import ReportBook
from lifeboat.common.runtime import ServiceRuntime
from lifeboat.common.state import Lease
from lifeboat.common.subjects import MAINTENANCE_BUCKET
from lifeboat.failover.agents import Agents
from lifeboat.failover.commands import (
    Command,
    Decision,
    Fence,
    Handover,
    Promote,
    Rejoin,
    Repoint,
)
from lifeboat.failover.cutoff import failed_on_reachable
from lifeboat.failover.decide import Observation, Policy, Request, decide
from lifeboat.failover.executor import Executor
from lifeboat.failover.nodes import NodeActions
from lifeboat.failover.settings import FailoverSettings

log = logging.getLogger(__name__)

_PHASES = {
    Fence: "fence",
    Handover: "handover",
    Promote: "promote",
    Repoint: "repoint",
    Rejoin: "rejoin",
}
# A request nobody could take (no leader) is dropped after this long, and said so.
REQUEST_TTL_SECONDS = 30.0


class ClusterLoop:
    """Everything one failover instance does for one cluster."""

    def __init__(
        self, cluster: ClusterSpec, settings: FailoverSettings, runtime: ServiceRuntime
    ) -> None:
        self.cluster = cluster
        self.settings = settings
        self.runtime = runtime
        self.reports = ReportBook(settings.report_max_age_seconds)
        self.last_primary_lsn: dict[str, int] = {}
        # (primary, epoch, since): giving the topology's primary its writes back, since when.
        self.promoting_back: tuple[str, int, datetime] | None = None
        self.lease: Versioned[Lease] | None = None
        self.leases: LeaseStore | None = None
        self.topologies: TopologyStore | None = None
        self.maintenance: KeyValue | None = None
        self.last_decision = ""
        self._recent_events: dict[tuple[str, str, str], float] = {}
        self._sync_said: tuple[int | None, str, tuple[str, ...], bool] | None = None
        self.requests: deque[tuple[float, Request]] = deque(maxlen=100)
        self._lease_lock = asyncio.Lock()
        self._cut_off_rounds = 0  # rounds in a row this leader could not act (see cutoff)
        # Rejoins in flight, by node: a pg_rewind or a fresh base backup takes seconds to
        # minutes, and the decisions (a failure of the new primary among them) go on meanwhile.
        self.rejoins: dict[str, asyncio.Task[None]] = {}
        self._stepped_down_until = 0.0
        # The lease names this process, not the configured id: two instances started with
        # the same LIFEBOAT_INSTANCE_ID (`--scale failover=2`) must not both believe they lead.
        self.holder = f"{settings.instance_id}#{secrets.token_hex(4)}"
        self.policy = Policy(
            failure_threshold=settings.failure_threshold,
            report_max_age_seconds=settings.report_max_age_seconds,
            maximum_lag_on_failover=settings.maximum_lag_on_failover,
            synchronous_mode=settings.synchronous_mode,
            monitors=settings.monitors,
        )

    @property
    def lease_name(self) -> str:
        return f"failover-{self.cluster.name}"

    def observe(self, report: NodeHealth) -> None:
        self.reports.add(report)
        if report.role is Role.PRIMARY and report.current_lsn:
            lsn = lsn_to_int(report.current_lsn)
            self.last_primary_lsn[report.node] = max(lsn, self.last_primary_lsn.get(report.node, 0))
        back = self.promoting_back
        if report.writable and back and back[0] == report.node and report.occurred_at > back[2]:
            self.promoting_back = None  # it took them: a later restart starts afresh

    def request(self, request: Request) -> None:
        self.requests.append((time.monotonic(), request))

    async def open(self) -> None:
        js = self.runtime.broker.config.connection_state.stream
        if self.leases is None or self.topologies is None:
            self.leases = await LeaseStore.open(js)
            self.topologies = await TopologyStore.open(js)

    async def keep_lease(self) -> None:
        """Renew in the background, so a long action (a rejoin) never lets the lease lapse."""
        interval = self.settings.lease_ttl_seconds / 3
        while True:
            try:
                await self.open()
                await self._hold_lease()
            except Exception as exc:
                log.warning("%s: lease keeper: %s", self.cluster.name, exc)
            await asyncio.sleep(interval)

    async def _hold_lease(self) -> bool:
        async with self._lease_lock:
            return await self._renew_or_acquire()

    async def _renew_or_acquire(self) -> bool:
        assert self.leases is not None
        holder = self.holder
        if self.lease is None and time.monotonic() < self._stepped_down_until:
            return False  # stepped down: another instance's turn
        try:
            if self.lease is not None:
                self.lease = await self.leases.renew(self.lease)
            else:
                self.lease = await self.leases.acquire(
                    self.lease_name, holder, self.settings.lease_ttl_seconds
                )
                if self.lease is not None:
                    log.warning("%s: took the failover lease", self.cluster.name)
                    # Requests heard while another instance led were its to answer: a new
                    # leader does not replay them.
                    self.requests.clear()
        except LeaseLostError as exc:
            log.warning("%s: %s", self.cluster.name, exc)
            self.lease = None
        except Exception as exc:  # NATS away: not leader until it is back
            if self.lease is not None:
                log.warning(
                    "%s: cannot renew the lease (%s): stepping back", self.cluster.name, exc
                )
            self.lease = None
        return self.lease is not None

    async def still_leader(self) -> bool:
        return await self._hold_lease()

    async def tick(self) -> Decision | None:
        await self.open()
        assert self.topologies is not None
        while self.requests and time.monotonic() - self.requests[0][0] > REQUEST_TTL_SECONDS:
            _, dropped = self.requests.popleft()
            log.warning(
                "%s: dropped %s: no leader took it in time", self.cluster.name, dropped.type
            )
        if self.lease is None:
            return None
        request = self.requests.popleft()[1] if self.requests else None
        now = datetime.now(UTC)
        self.reports.forget_silent(now)
        current = await self.topologies.get(self.cluster.name)
        topology = current.value if current else None
        back = self.promoting_back
        if back is not None and (
            topology is None or (topology.primary, topology.epoch) != back[:2]
        ):
            self.promoting_back = back = None
        paused = await self._paused()
        obs = Observation(
            now=now,
            cluster=self.cluster,
            topology=topology,
            reports=self.reports.reports(),
            policy=self.policy,
            source=self.runtime.source,
            last_primary_lsn=dict(self.last_primary_lsn),
            request=request,
            paused=paused,
            promoting_back_since=None if back is None else back[2],
        )
        decision = decide(obs)
        if (
            back is None
            and topology is not None
            and topology.primary is not None
            and topology.operation is None
            and any(
                isinstance(c, Promote) and (c.node, c.epoch) == (topology.primary, topology.epoch)
                for c in decision.commands
            )
        ):
            self.promoting_back = (topology.primary, topology.epoch, now)
        decision = Decision(
            tuple(sent for c in decision.commands if (sent := self._to_send(c)) is not None),
            decision.reason,
        )
        if decision.reason != self.last_decision:
            log.info("%s: %s", self.cluster.name, decision.reason)
            self.last_decision = decision.reason
        if not decision.commands:
            return decision
        executor = Executor(
            self.cluster.name,
            self.topologies,
            NodeActions(
                self.cluster,
                self.settings.postgres_password(),
                self.settings.action_timeout_seconds,
                os_user=self.settings.pg_os_user,
                bindir=self.settings.pg_bindir,
                agents=Agents(
                    self.runtime.broker.config.connection_state.connection,
                    self.runtime.publisher.publish,
                    self.cluster.name,
                    self.runtime.source,
                    self.settings.agent_stop_answer_seconds,
                    self.settings.agent_rejoin_answer_seconds,
                    self.settings.self_fence_margin_seconds,
                    self.settings.agent_self_fence_seconds,
                ),
            ),
            self.runtime.publisher.publish,
            self.still_leader,
            self.runtime.source,
            self_fence_wait=self._self_fence_wait(),
        )
        inline = Decision(
            tuple(c for c in decision.commands if not isinstance(c, Rejoin)), decision.reason
        )
        outcomes = await executor.run(inline, current)
        for done in outcomes:  # said once it is: a change PostgreSQL refused was not
            said = done.command.event if isinstance(done.command, Publish) else None
            if done.ok and isinstance(said, SyncChanged):
                self._sync_said = _sync_change(said)
        # A rejoin comes last in its decision: only once all before it (a switchover's
        # promotion) was done does it start, then beside the loop.
        if all(o.ok for o in outcomes) and len(outcomes) == len(inline.commands):
            for rejoin in (c for c in decision.commands if isinstance(c, Rejoin)):
                running = self.rejoins.get(rejoin.node)
                if running is None or running.done():
                    self.rejoins[rejoin.node] = asyncio.create_task(
                        self._rejoin(executor, rejoin), name=f"rejoin-{rejoin.node}"
                    )
        await self._hold_on_failed_fence(outcomes, decision)
        await self._record_phases(outcomes)
        await self._step_down_if_cut_off(outcomes, now)
        return decision

    def _self_fence_wait(self) -> float:
        """The node agents' bound and its margin; nothing where no agent runs (0)."""
        bound = self.settings.agent_self_fence_seconds
        return bound + self.settings.self_fence_margin_seconds if bound > 0 else 0.0

    async def _step_down_if_cut_off(self, outcomes: list[Outcome[Command]], now: datetime) -> None:
        """Guarantee 7: a leader that reaches NATS but not PostgreSQL must not keep the lease
        (nobody else could act): after `step_down_after` such rounds it releases it, says
        so, and leaves it to the others for `step_down_seconds`."""
        max_age = self.settings.report_max_age_seconds
        reachable = frozenset(
            r.node
            for r in self.reports.reports()
            if r.reachable and (now - r.occurred_at).total_seconds() <= max_age
        )
        faults = failed_on_reachable(outcomes, reachable)
        if faults is None:
            self._cut_off_rounds = 0
            return
        self._cut_off_rounds += 1
        if self._cut_off_rounds < self.settings.step_down_after:
            return
        self._cut_off_rounds = 0
        pause = self.settings.step_down_seconds
        details = "; ".join(o.detail for o in outcomes if not o.ok)[:500]
        why = (
            f"{self.holder} could not act on {', '.join(faults)} for "
            f"{self.settings.step_down_after} rounds although the monitors reach them "
            f"({details}): stepping down for {pause:g}s so another instance can"
        )
        log.error("%s: %s", self.cluster.name, why)
        with contextlib.suppress(Exception):
            await self.runtime.publisher.publish(
                FailoverHeld(
                    cluster=self.cluster.name,
                    source=self.runtime.source,
                    primary=None,
                    reason=why,
                )
            )
        self._stepped_down_until = time.monotonic() + pause
        async with self._lease_lock:
            await self.release()

    async def _rejoin(self, executor: Executor, rejoin: Rejoin) -> None:
        """A rejoin beside the decision loop, under the same lease and epoch guard. One that
        fails is answered (failover.failed naming the node), so an operator's request does
        not stay pending."""
        try:
            outcomes = await executor.run(Decision((rejoin,), f"rejoin {rejoin.node}"), None)
            await self._record_phases(outcomes)
            for outcome in outcomes:
                if not outcome.ok:
                    await self.runtime.publisher.publish(
                        FailoverFailed(
                            cluster=self.cluster.name,
                            source=self.runtime.source,
                            epoch=rejoin.epoch,
                            kind=FailoverKind.MANUAL,
                            target=rejoin.node,
                            reason=f"rejoin of {rejoin.node} failed: {outcome.detail}",
                        )
                    )
        except Exception:
            log.exception("%s: rejoin of %s", self.cluster.name, rejoin.node)

    async def _paused(self) -> MaintenanceState | None:
        """The cluster's maintenance state when paused (KV `lifeboat_maintenance`)."""
        if self.maintenance is None:
            js = self.runtime.broker.config.connection_state.stream
            self.maintenance = await open_bucket(js, MAINTENANCE_BUCKET)
        try:
            entry = await self.maintenance.get(self.cluster.name)
        except KeyNotFoundError:
            return None
        state = MaintenanceState.model_validate_json(entry.value or b"{}")
        return state if state.paused else None

    async def _hold_on_failed_fence(
        self, outcomes: list[Outcome[Command]], decision: Decision
    ) -> None:
        """A fence that failed stopped the decision before any promotion, and a promotion
        refused for a candidate behind its peers promoted nobody: say so and why. A failed
        handover ended the switchover before anything was promoted: the operator is told."""
        for outcome in outcomes:
            command = outcome.command
            if not outcome.ok and isinstance(command, Handover):
                await self.runtime.publisher.publish(
                    SwitchoverFailed(
                        cluster=self.cluster.name,
                        source=self.runtime.source,
                        correlation_id=next(
                            (
                                c.event.correlation_id
                                for c in decision.commands
                                if isinstance(c, Publish)
                            ),
                            None,
                        ),
                        epoch=command.epoch,
                        kind=FailoverKind.SWITCHOVER,
                        target=command.target,
                        reason=f"the handover to {command.target} failed ({outcome.detail}): "
                        f"nobody was promoted, {command.primary} stays the primary",
                    )
                )
            if outcome.ok or not isinstance(command, (Fence, Promote)):
                continue
            if isinstance(command, Fence):
                why = (
                    f"not promoting anyone: {command.node} could not be confirmed unable to "
                    f"commit ({outcome.detail})"
                )
            else:
                why = f"{command.node} not promoted: {outcome.detail}"
            held = FailoverHeld(
                cluster=self.cluster.name,
                source=self.runtime.source,
                epoch=command.epoch,
                primary=command.node,
                reason=why,
            )
            if (said := self._say_now(held)) is not None:
                await self.runtime.publisher.publish(said)

    def _to_send(self, command: Command) -> Command | None:
        """The command, or None for an event not to say now (see _say_now)."""
        if not isinstance(command, Publish):
            return command
        said = self._say_now(command.event)
        return None if said is None else Publish(said)

    def _say_now(self, event: ClusterEvent) -> ClusterEvent | None:
        """Holds and refusals repeat every tick while nothing changes: say them once a while
        (None: not now). An answer to a request is keyed by the request too: each operator
        gets theirs. Said again, a hold's id names the window it is said in: under the id it
        had the first time, the stream would drop it as a copy for two minutes. A change of
        the synchronous set is said once, until another one is said."""
        if isinstance(event, SyncChanged):
            return None if _sync_change(event) == self._sync_said else event
        if not isinstance(event, (FailoverHeld, FailoverFailed, SwitchoverFailed)):
            return event
        key = (event.type, event.reason, str(event.correlation_id))
        now = time.monotonic()
        every = self.settings.repeat_event_after_seconds
        if now - self._recent_events.get(key, -1e9) < every:
            return None
        self._recent_events[key] = now
        window = int(event.occurred_at.timestamp() // every)
        return stamped(event, event.occurred_at, occasion=f"said in window {window}")

    async def _record_phases(self, outcomes: list[Outcome[Command]]) -> None:
        phases = [
            PhaseTiming(phase=_PHASES[type(o.command)], seconds=round(o.seconds, 3))
            for o in outcomes
            if o.ok and type(o.command) in _PHASES
        ]
        if not phases or self.topologies is None:
            return
        current = await self.topologies.get(self.cluster.name)
        if current is None or current.value.operation is None:
            return
        op = current.value.operation
        updated = current.value.model_copy(
            update={"operation": op.model_copy(update={"phases": (*op.phases, *phases)})}
        )
        try:
            await self.topologies.compare_and_set(updated, current.revision)
        except Exception as exc:  # timings are nice to have, never worth failing over
            log.info("phase timings not recorded: %s", exc)

    async def release(self) -> None:
        if self.lease is not None and self.leases is not None:
            try:
                async with asyncio.timeout(2):
                    await self.leases.release(self.lease)
            except Exception as exc:
                log.info("lease not released (%s); it expires by itself", exc)
            self.lease = None


def _sync_change(event: SyncChanged) -> tuple[int | None, str, tuple[str, ...], bool]:
    return (event.epoch, event.primary, event.standbys, event.degraded)


async def run_forever(loops: list[ClusterLoop], interval: float) -> None:
    """Each cluster decides in a task of its own: a node action that takes long on one (a
    handover's clean stop and catch-up, up to 50 s) holds up that cluster's next decision,
    never another cluster's."""
    await asyncio.gather(*(_decide_forever(loop, interval) for loop in loops))


async def _decide_forever(loop: ClusterLoop, interval: float) -> None:
    while True:
        started = time.monotonic()
        try:
            await loop.tick()
        except Exception:
            log.exception("%s: tick failed", loop.cluster.name)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
