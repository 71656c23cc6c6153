"""The agent's loop: read the node's state and the topology, judge, fence; send events.

Every wait in a round is bounded by the time left before the node's deadline, so a writable
node is fenced on time whether NATS answers, hangs or is gone. Events wait in an outbox while
NATS is unreachable (the usual reason to fence) and go out once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import httpx

from lifeboat.agent.claim import Claim, place_of
from lifeboat.agent.failsafe import AgentView, ask_all
from lifeboat.agent.guard import (
    Confirmed,
    Fence,
    Keep,
    Observation,
    PeerAnswer,
    Verdict,
    judge,
    on_deadline,
)
from lifeboat.agent.guard import members as failsafe_members
from lifeboat.agent.node import (
    NodeState,
    agent_identity,
    agent_lock,
    arm,
    configured_upstream,
    last_confirmation,
    lock_path,
    postmaster,
    read_state,
    record_confirmation,
    stop,
)
from lifeboat.agent.restore import copy_restored, starts_restored, swap_restored
from lifeboat.agent.settings import AgentSettings
from lifeboat.agent.watchdog import Arming, Killed
from lifeboat.common.events import (
    Envelope,
    NodeRejoined,
    NodeRejoinFailed,
    NodeRejoinOrdered,
    NodeRejoinRequested,
    NodeRejoinStarted,
    NodeRestored,
    NodeRestoreFailed,
    NodeRestoreOrdered,
    NodeRestoreStarted,
    NodeSelfFenced,
    NodeStarted,
    NodeStartRequested,
    NodeStopped,
    NodeStopRequested,
    Role,
    Source,
)
from lifeboat.common.kv import (
    LeaseStore,
    TopologyStore,
    Versioned,
    agent_lease_name,
)
from lifeboat.common.state import Topology
from lifeboat.pg.datadir import DataDir
from lifeboat.pg.recovery import HELD_MARKER
from lifeboat.pg.rejoin import rejoin_node, start_node

log = logging.getLogger(__name__)


READ_STATE_SECONDS = 5.0  # a pg_controldata run, when the deadline is not near
START_GRACE_SECONDS = 2.0  # to connect and confirm, for an agent restarted past its bound
# A standby of no primary is asked about once it has been one this long (the leader's own
# repoint or rejoin comes first), and again at most this often while it stays one.
STRAY_AFTER_SECONDS = 10.0
REJOIN_ASK_SECONDS = 60.0


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        data: DataDir,
        source: Source,
        publish: Callable[[Envelope], Awaitable[None]],
        client: httpx.AsyncClient,
    ) -> None:
        self.settings = settings
        self.data = data
        self.source = source
        self.publish = publish
        self.client = client
        self.bound = settings.agent_self_fence_seconds
        # Set once NATS is connected (see app.py); until then every read fails.
        self.store: TopologyStore | None = None
        self.leases: LeaseStore | None = None
        lock = agent_lock(data)
        if lock is None:
            raise RuntimeError(
                f"another agent runs on {data.path}: one agent per data directory (it holds "
                f"{lock_path(data).name} beside it)"
            )
        identity_file, identity = agent_identity(data)
        cluster, node = settings.agent_cluster, settings.agent_node
        self.claim = Claim(
            agent_lease_name(cluster, node),
            f"{cluster}/{node}",
            identity,
            identity_file,
            settings.agent_lease_ttl_seconds,
            place_of(lock_path(data)),
            locked=lock >= 0,
        )
        self.watchdog = Arming(
            data.path, settings.agent_stop_timeout_seconds, enabled=settings.agent_watchdog
        )
        # The grace to connect stops short of stretching the leader's wait (see resume).
        self.confirmed_at = self.watchdog.resume(self._confirmed_before() + self.bound) - self.bound
        self.last_topology: Topology | None = None
        self.last_read_at: float | None = None
        # The start of the last successful read that saw the node in recovery, and which
        # postmaster it saw (guard.Observation.standby_read_at).
        self.standby_read: tuple[float, tuple[int, int] | None] | None = None
        self.read_error: str | None = None
        self.state: NodeState | None = None
        self.verdict: Verdict | None = None
        self.last_round_at: float | None = None
        self.fences = 0
        self.stray_since: float | None = None
        self.rejoin_asked: float | None = None
        self.outbox: deque[Envelope] = deque(maxlen=settings.agent_outbox_size)
        self._queued = asyncio.Event()
        # A rejoin and a restore each stop the node and replace its data directory: one at
        # a time.
        self._node_action = asyncio.Lock()

    def _confirmed_before(self) -> float:
        """When its predecessor last confirmed the node (monotonic), for a restarted agent:
        the bound runs on across restarts, as the leader, which sees only the lease, assumes.
        With no record (a first start), its start counts as the last confirmation. At least
        `START_GRACE_SECONDS` are left to connect and confirm: an agent that was down past
        the bound stops a primary it cannot confirm at once rather than at its deadline.
        While no agent ran, the watchdog kept the predecessor's deadline and SIGKILLed the
        postmaster it armed for 0.5 s past it (this agent reports that kill in a round). If
        that postmaster still runs, `__init__` arms the watchdog again with this agent's
        deadline, cut to at most 0.4 s past the predecessor's (`Arming.resume`: the leader
        counts from the predecessor's lease), and it stops the node 0.5 s past it unless
        this agent confirms it first. Only a node
        the watchdog did not guard (turned off, never armed, killed with the agent) ran
        unguarded meanwhile."""
        now = time.monotonic()
        wall = last_confirmation(self.data)
        if wall is None:
            return now
        since = min(max(0.0, time.time() - wall), self.bound)
        return max(now - since, now - self.bound + START_GRACE_SECONDS)

    @property
    def deadline(self) -> float:
        return self.confirmed_at + self.bound

    async def run(self) -> None:
        interval = self.settings.agent_check_seconds
        while True:
            started = time.monotonic()
            try:
                await self.round()
            except Exception:
                log.exception("agent round failed")
            wake = started + interval
            if self._on_deadline() and self.deadline > time.monotonic():
                wake = min(wake, self.deadline)  # act at the deadline, not after it
            await asyncio.sleep(max(0.0, wake - time.monotonic()))

    async def round(self) -> Verdict:
        # Near the deadline, pg_controldata may not eat into it (its usual bound is 5 s):
        # one that does not answer in time leaves the node writable, and it is stopped on
        # time — the leader's margin beyond the bound is 1 s.
        budget = READ_STATE_SECONDS
        if self._on_deadline():
            budget = min(budget, max(0.5, self.deadline - time.monotonic()))
        state = await asyncio.to_thread(read_state, self.data, budget)
        self.state = state
        if (killed := await asyncio.to_thread(self.watchdog.take_killed)) is not None:
            self._watchdog_killed(killed)
        read_at = time.monotonic()
        topology, error = await self._read(
            self._wait(self.settings.agent_nats_timeout_seconds), check=state.writable
        )
        if error is None:
            in_recovery = state.running and not state.writable
            self.standby_read = (read_at, state.process) if in_recovery else None
        observation = Observation(
            node=self.settings.agent_node,
            now=time.monotonic(),
            state=state,
            topology=topology,
            read_error=error,
            read_at=read_at,
            last_topology=self.last_topology,
            confirmed_at=self.confirmed_at,
            bound=self.bound,
            peers=self.settings.agent_peers,
            standby_read_at=self._promoted_since_read(),
        )
        if (
            error is not None
            and state.writable
            and self.settings.agent_peers
            and self.claim.conflicting(time.monotonic()) is None
        ):
            asked_at = time.monotonic()
            answers = await self._ask_peers(observation)
            observation = replace(
                observation, answers=answers, asked_at=asked_at, now=time.monotonic()
            )
        verdict = judge(observation)
        self._note(verdict)
        match verdict:
            case Confirmed(at):
                self.confirmed_at = max(self.confirmed_at, at)
                wall = time.time() - (time.monotonic() - self.confirmed_at)
                with contextlib.suppress(OSError):  # no record: a restart counts from its start
                    await asyncio.to_thread(record_confirmation, self.data, wall)
                await asyncio.to_thread(
                    self.watchdog.confirmed,
                    None
                    if state.pid is None or state.started is None
                    else (state.pid, state.started),
                    writable=state.writable,
                    deadline=self.deadline,
                )
            case Fence(reason):
                await self._fence(reason, observation)
            case Keep():
                pass
        self._ask_rejoin(state)
        if self.last_topology is not None and await asyncio.to_thread(arm, self.data):
            # Once a topology exists the leader says who is primary: no start is writable
            # before it has.
            log.info("%s: standby.signal left for the next start", self.settings.agent_node)
        self.last_round_at = time.monotonic()
        return verdict

    def _watchdog_killed(self, killed: Killed) -> None:
        why = "the agent was gone" if killed.agent_gone else "the agent did not confirm it"
        reason = (
            f"the watchdog killed postmaster {killed.postmaster} "
            f"{killed.late_seconds:.2f}s past the agent's deadline ({why})"
        )
        log.error("%s: %s", self.settings.agent_node, reason)
        self.queue(
            self._self_fenced(
                reason,
                "stopped (SIGKILL, by the watchdog)",
                round(self.bound + killed.late_seconds, 3),
                self.last_topology,
            )
        )

    def _self_fenced(
        self, reason: str, action: str, unconfirmed_seconds: float, seen: Topology | None
    ) -> NodeSelfFenced:
        """The event for a stop of this node, under the topology it last saw (`seen`)."""
        return NodeSelfFenced(
            cluster=self.settings.agent_cluster,
            node=self.settings.agent_node,
            source=self.source,
            epoch=None if seen is None else seen.epoch,
            primary=None if seen is None else seen.primary,
            reason=reason,
            action=action,
            unconfirmed_seconds=unconfirmed_seconds,
            bound_seconds=self.bound,
        )

    def _ask_rejoin(self, state: NodeState) -> None:
        """A node that runs as a standby of no primary — an old primary started again
        read-only (its container restarted) after a failover that could not rejoin it while
        it was down — is asked back in: `node.rejoin_requested`, as `lifeboat rejoin`
        sends. The leader decides under its lease (a node already streaming is refused);
        the agent only asks, once it has been one for STRAY_AFTER_SECONDS and then at
        most every REJOIN_ASK_SECONDS."""
        t, node = self.last_topology, self.settings.agent_node
        upstream = configured_upstream(self.data.path)
        primary = None
        # Not during an operation: a failover detaches standbys on purpose, and repoints
        # them itself once it has promoted.
        if (
            t is not None
            and t.operation is None
            and t.primary not in (None, node)
            and self.read_error is None
        ):
            primary = self.settings.clusters.cluster(self.settings.agent_cluster).node(t.primary)
        if (
            t is None
            or primary is None
            or state.role is not Role.STANDBY
            or upstream == (primary.host, primary.port)
            or (self.data.path / HELD_MARKER).exists()  # restored data, kept for the operator
        ):
            self.stray_since = None
            return
        now = time.monotonic()
        self.stray_since = self.stray_since or now
        if now - self.stray_since < STRAY_AFTER_SECONDS or (
            self.rejoin_asked is not None and now - self.rejoin_asked < REJOIN_ASK_SECONDS
        ):
            return
        self.rejoin_asked = now
        named = "none" if upstream is None else f"{upstream[0]}:{upstream[1]}"
        reason = (
            f"{node} runs as a standby, but its primary_conninfo names {named}, not the "
            f"primary {primary.name} ({primary.host}:{primary.port}) at epoch {t.epoch}"
        )
        log.warning("%s: asking to be rejoined: %s", node, reason)
        self.queue(
            NodeRejoinRequested(
                cluster=self.settings.agent_cluster,
                node=node,
                source=self.source,
                epoch=t.epoch,
                requested_by=f"agent-{node}",
                reason=reason,
            )
        )

    def _wait(self, most: float) -> float:
        """How long this round may wait on something: at most `most`, and, while the bound
        governs, no later than the deadline (past it, not at all: it is not confirmed)."""
        if not self._on_deadline():
            return most
        return max(0.0, min(most, self.deadline - time.monotonic()))

    def _on_deadline(self) -> bool:
        writable = self.state is not None and self.state.writable
        if on_deadline(self.settings.agent_node, writable, self.last_topology):
            return True
        # Kept on a peer's read since its promotion (guard.promoted_under): the bound governs.
        promoted = self._promoted_since_read()
        return writable and promoted is not None and self.confirmed_at >= promoted

    def _promoted_since_read(self) -> float | None:
        """When the last successful read started, if it saw the postmaster running now in
        recovery (guard.promoted_under)."""
        if self.standby_read is None or self.state is None:
            return None
        at, process = self.standby_read
        return at if process == self.state.process else None

    async def _read(
        self, timeout: float, *, check: bool = False
    ) -> tuple[Topology | None, str | None]:
        """The topology record (see _read_record; `check`: shown current whatever it says —
        the node was writable when this round read its state, or the read authorises an
        order), or why there is none."""
        if self.store is None or self.leases is None:
            return None, "not connected to NATS yet"
        if timeout <= 0:  # the last try's reason stands
            return None, self.read_error or "no time left before the deadline"
        try:
            async with asyncio.timeout(timeout):
                await self._renew()
                found = await self._read_record(check)
        except TimeoutError:
            self.read_error = f"no answer from NATS within {timeout:.2f}s"
            return None, self.read_error
        except Exception as exc:  # connection gone, no responders, ...
            self.read_error = f"{type(exc).__name__}: {exc}"[:300]
            return None, self.read_error
        self.read_error = None
        self.last_read_at = time.monotonic()
        last = self.last_topology
        if found is not None and (last is None or found.value.epoch >= last.epoch):
            self.last_topology = found.value  # the newest: an older one is a store rolled back
        return (None if found is None else found.value), None

    async def _read_record(self, check: bool) -> Versioned[Topology] | None:
        """The topology record. A read that may confirm this node — it is writable, or the
        record names it primary, or there is none — or that authorises an order (`check`)
        counts only as a majority of the NATS servers holds it (kv.TopologyStore.
        read_current): a server cut off from its peers, still believing it leads the
        bucket's stream, answers reads with the record as it was. A standby's read naming
        another primary confirms nothing and is not checked."""
        assert self.store is not None
        cluster, node = self.settings.agent_cluster, self.settings.agent_node
        first = await self.store.read(cluster)
        found = first[0]
        if check or found is None or found.value.primary == node:
            return await self.store.read_current(cluster, node, first)
        return found

    async def _renew(self) -> None:
        """Renew the agent's lease, or take it (claim.py)."""
        assert self.leases is not None
        await self.claim.renew(self.leases, self.bound)

    async def _ask_peers(self, o: Observation) -> tuple[PeerAnswer, ...]:
        timeout = self._wait(self.settings.agent_peer_timeout_seconds)
        if timeout <= 0:
            return tuple(
                PeerAnswer(n, error="no time left before the deadline") for n in failsafe_members(o)
            )
        return await ask_all(self.client, self.settings.agent_peers, failsafe_members(o), timeout)

    def _note(self, verdict: Verdict) -> None:
        previous = self.verdict
        self.verdict = verdict
        if previous is None or type(previous) is not type(verdict):
            level = logging.ERROR if isinstance(verdict, Fence) else logging.INFO
            log.log(level, "%s: %s", self.settings.agent_node, verdict.reason)

    async def _fence(self, reason: str, o: Observation) -> None:
        action = await asyncio.to_thread(stop, self.data, self.settings.agent_stop_timeout_seconds)
        if (killed := await asyncio.to_thread(self.watchdog.take_killed)) is not None:
            # Its SIGKILL came before this stop was done (a slow stop): one event, not two.
            action += (
                f"; the watchdog's SIGKILL came first, {killed.late_seconds:.2f}s past the deadline"
            )
        self.fences += 1
        log.error("%s fenced: %s: %s", self.settings.agent_node, reason, action)
        seen = o.topology if o.read_error is None else self.last_topology
        self.queue(
            self._self_fenced(reason, action, round(max(0.0, o.now - o.confirmed_at), 3), seen)
        )

    async def stop_requested(self, request: NodeStopRequested) -> NodeStopped:
        """The failover leader's fence, carried out here: only under the epoch the topology
        is at, and never for the node it names primary — a stale leader stops nothing. A
        node that is already stopped counts as stopped (a start since is read-only)."""
        if (refusal := await self._request_refusal(request)) is not None:
            return NodeStopped(**self._answering(request), stopped=False, action=refusal)
        action = await asyncio.to_thread(
            stop, self.data, self.settings.agent_requested_stop_timeout_seconds
        )
        await asyncio.to_thread(arm, self.data)
        stopped = postmaster(self.data.path) is None
        level = logging.WARNING if stopped else logging.ERROR
        log.log(level, "%s: stop requested (%s): %s", request.node, request.reason, action)
        return NodeStopped(**self._answering(request), stopped=stopped, action=action)

    async def start_requested(self, request: NodeStartRequested) -> NodeStarted:
        """The failover leader's start of an old primary its manual failover stopped and no
        standby could take over from: in recovery, read-only (`standby.signal` is put there
        first, or the start is refused), only under the epoch the topology is at and while it
        does not name this node primary. The leader gives it its writes back under a new epoch;
        a stale leader starts nothing, and a start can never make the node writable."""

        def answer(started: bool, action: str) -> NodeStarted:
            return NodeStarted(**self._answering(request), started=started, action=action)

        if self._node_action.locked():
            return answer(
                False, "refused: another action on this node runs (start, rejoin, restore)"
            )
        async with self._node_action:  # taken at once: nothing awaited since the check
            if (refusal := await self._request_refusal(request)) is not None:
                return answer(False, refusal)
            if postmaster(self.data.path) is not None:
                return answer(True, "already running")
            if (self.data.path / HELD_MARKER).exists():
                return answer(False, "refused: restored data is held for the operator")
            await asyncio.to_thread(arm, self.data)
            if not (self.data.path / "standby.signal").exists():
                return answer(False, "refused: it would not start in recovery (no standby.signal)")
            try:
                await asyncio.to_thread(start_node, self.data)
            except Exception as exc:
                log.exception("%s: start requested (%s) failed", request.node, request.reason)
                return answer(False, f"{type(exc).__name__}: {exc}"[:500])
        log.warning("%s: started read-only on request (%s)", request.node, request.reason)
        return answer(True, "started read-only")

    async def _request_refusal(self, request: NodeStopRequested | NodeStartRequested) -> str | None:
        """Why the leader's request is not obeyed, if it is not: the topology cannot be read,
        is at another epoch (a stale leader), or names this node primary."""
        topology, error = await self._read(self.settings.agent_nats_timeout_seconds, check=True)
        if error is not None or topology is None:
            return f"refused: the topology cannot be read ({error or 'none yet'})"
        if topology.epoch != request.epoch or topology.primary == request.node:
            return (
                f"refused: the topology is at epoch {topology.epoch} with "
                f"{topology.primary or 'no node'} primary (asked under epoch {request.epoch})"
            )
        return None

    def _answering(self, request: NodeStopRequested | NodeStartRequested) -> dict[str, Any]:
        """What an answer to the leader's request carries of it."""
        return {
            "cluster": request.cluster,
            "node": request.node,
            "source": self.source,
            "epoch": request.epoch,
            "correlation_id": request.event_id,
            "reason": request.reason,
        }

    async def rejoin_ordered(self, order: NodeRejoinOrdered) -> None:
        """The failover leader's rejoin, carried out here (pg_rewind onto the upstream, else a
        fresh clone swapped in once complete): only while the topology is at the order's
        epoch and names its upstream primary, never for the node it names primary. Says
        `node.rejoin_started` first, then `node.rejoined` or `node.rejoin_failed`."""
        assert order.epoch is not None  # app.py dead-letters an order without one
        common = {
            "cluster": order.cluster,
            "node": order.node,
            "source": self.source,
            "epoch": order.epoch,
            "correlation_id": order.event_id,
            "upstream": order.upstream,
        }
        if self._node_action.locked():
            self.queue(NodeRejoinFailed(**common, reason="refused: a restore of this node runs"))
            return
        async with self._node_action:  # taken at once: nothing awaited since the check
            if (refusal := await self._rejoin_refusal(order)) is not None:
                self.queue(NodeRejoinFailed(**common, reason=f"refused: {refusal}"))
                return
            self.queue(NodeRejoinStarted(**common))
            started = time.monotonic()
            try:
                cluster = self.settings.clusters.cluster(order.cluster)  # hosts, ports, user
                method = await asyncio.to_thread(
                    rejoin_node,
                    self.data,
                    cluster.node(order.node),
                    cluster.node(order.upstream),
                    cluster,
                    self.settings.postgres_password(),
                    order.conninfo,
                    order.slot,
                )
            except Exception as exc:
                log.exception("%s: rejoin onto %s failed", order.node, order.upstream)
                self.queue(NodeRejoinFailed(**common, reason=f"{type(exc).__name__}: {exc}"[:500]))
                return
        seconds = round(time.monotonic() - started, 3)
        log.warning("%s: rejoined %s with %s in %.1fs", order.node, order.upstream, method, seconds)
        self.queue(NodeRejoined(**common, method=method, seconds=seconds))

    async def _rejoin_refusal(self, order: NodeRejoinOrdered) -> str | None:
        topology, error = await self._read(self.settings.agent_nats_timeout_seconds, check=True)
        if error is not None or topology is None:
            return f"the topology cannot be read ({error or 'none yet'})"
        if topology.epoch != order.epoch or topology.primary != order.upstream:
            return (
                f"the topology is at epoch {topology.epoch} with {topology.primary or 'no node'} "
                f"primary (ordered under epoch {order.epoch}, onto {order.upstream})"
            )
        if order.node in (topology.primary, order.upstream):
            return f"{order.node} is the primary"
        if order.cluster != self.settings.agent_cluster or order.node != self.settings.agent_node:
            return f"this agent is {self.settings.agent_node}'s of {self.settings.agent_cluster}"
        return None

    async def restore_ordered(self, order: NodeRestoreOrdered) -> None:
        """The backup service's restore into this node, carried out here (restore.py): the
        copy it serves taken beside the data directory, then, checked again that the node is
        not writable and the topology read again, swapped in and started read-only only when
        the topology names this node primary (or there is none yet). Only from a host in
        `LIFEBOAT_AGENT_RESTORE_FROM`, within the order's time, never beside a rejoin. Says
        `node.restore_started` first, then `node.restored` or `node.restore_failed`."""
        common = {
            "cluster": order.cluster,
            "node": order.node,
            "source": self.source,
            "correlation_id": order.event_id,
            "restore_id": order.restore_id,
        }
        if self.claim.lease is None and self.leases is not None:  # an order before a round
            with contextlib.suppress(Exception):  # judged below: held, or refused
                async with asyncio.timeout(self.settings.agent_nats_timeout_seconds):
                    await self._renew()
        mine = (self.settings.agent_cluster, self.settings.agent_node)
        allowed = self.settings.agent_restore_from
        if (order.cluster, order.node) != mine:
            refusal: str | None = f"this agent is {mine[1]}'s of {mine[0]}"
        elif order.host not in allowed:
            # the replication password goes only where the operator said restores come from
            refusal = f"{order.host} is not in LIFEBOAT_AGENT_RESTORE_FROM ({', '.join(allowed)})"
        elif self._node_action.locked():
            refusal = "a rejoin or another restore of this node runs"
        else:  # not holding the lease, it may not be this node's agent at all
            refusal = self.claim.refusal(time.monotonic())
        if refusal is not None:
            self.queue(NodeRestoreFailed(**common, reason=f"refused: {refusal}"))
            return
        async with self._node_action:  # taken at once: nothing awaited since the check
            if (refusal := await asyncio.to_thread(self._writable)) is not None:
                self.queue(NodeRestoreFailed(**common, reason=f"refused: {refusal}"))
                return
            self.queue(NodeRestoreStarted(**common))
            started = time.monotonic()
            try:
                part = await asyncio.to_thread(
                    copy_restored,
                    self.data,
                    host=order.host,
                    port=order.port,
                    user=self.settings.clusters.cluster(order.cluster).replication_user,
                    password=self.settings.replication_secret(),
                    restore_id=order.restore_id,
                    timeout=order.copy_seconds,
                )
                late = time.monotonic() - started > order.copy_seconds
                why = (
                    "the copy outlasted the order"
                    if late
                    else self.claim.refusal(time.monotonic())
                    or await asyncio.to_thread(self._writable)
                )
                if why is not None:
                    await asyncio.to_thread(shutil.rmtree, part, True)
                    raise RuntimeError(f"refused before the swap: {why}; the node is as it was")
                topology, error = await self._read(
                    self.settings.agent_nats_timeout_seconds, check=True
                )
                # A record gone after one was read is a store lost or rolled back, not a
                # cluster nobody has been promoted in.
                start, detail = starts_restored(order.node, topology or self.last_topology, error)
                kept = await asyncio.to_thread(
                    swap_restored, self.data, part, order.restore_id, start
                )
            except Exception as exc:
                log.exception("%s: restore %s failed", order.node, order.restore_id)
                reason = f"{type(exc).__name__}: {exc}"[:500]
                self.queue(NodeRestoreFailed(**common, reason=reason))
                return
        log.warning("%s: restore %s swapped in: %s", order.node, order.restore_id, detail)
        self.queue(
            NodeRestored(
                **common,
                data_dir=str(self.data.path),
                kept=str(kept),
                started=start,
                detail=detail,
                seconds=round(time.monotonic() - started, 3),
            )
        )

    def _writable(self) -> str | None:
        state = read_state(self.data)
        return f"the node is writable ({state.describe()})" if state.writable else None

    def queue(self, event: Envelope) -> None:
        self.outbox.append(event)
        self._queued.set()

    async def run_publishing(self) -> None:
        """Send the outbox in order; while NATS is away, try again every second."""
        while True:
            if not self.outbox:
                self._queued.clear()
                await self._queued.wait()
                continue
            try:
                async with asyncio.timeout(5):
                    await self.publish(self.outbox[0])
            except Exception as exc:
                log.debug("event not sent yet: %s", exc)
                await asyncio.sleep(1)
                continue
            self.outbox.popleft()

    def view(self) -> AgentView:
        state = self.state or NodeState(False, None, "not read yet")
        t = self.last_topology
        now = time.monotonic()
        return AgentView(
            cluster=self.settings.agent_cluster,
            node=self.settings.agent_node,
            running=state.running,
            writable=state.writable,
            role=state.role,
            cluster_state=state.cluster_state,
            epoch=None if t is None else t.epoch,
            primary=None if t is None else t.primary,
            topology_age_seconds=None
            if self.last_read_at is None
            else round(now - self.last_read_at, 3),
            verdict=self.verdict.reason if self.verdict else "no round yet",
        )
