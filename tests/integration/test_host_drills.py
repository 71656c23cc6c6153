"""Issue 9's six drills on test hosts, once each: every PostgreSQL node and its agent in a
network namespace of its own, the controller (3 NATS servers, 3 monitors, failover) on
198.18.0.1, the cluster file in remote mode (`lifeboat.devstack.hoststack`). Each asserts
that no acknowledged write is lost and that two nodes are never writable at once; the
figures come from `lifeboat.devstack.hostdrill`, as in `bench/failover.py --hosts`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

from lifeboat.devstack import netns
from lifeboat.devstack.hostdrill import MONITORS_ON_HOSTS, HostDrill, HostScenario
from lifeboat.devstack.hoststack import host_stack

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))


@contextlib.asynccontextmanager
async def drilled(workdir: Path, scenario: HostScenario) -> AsyncIterator[dict[str, Any]]:
    """One run of `scenario` on a stack of its own; its result, checked for the two
    guarantees every drill keeps."""
    base = workdir / f"{scenario}-{time.monotonic_ns()}"
    with host_stack(base, monitors_on_hosts=scenario in MONITORS_ON_HOSTS) as stack:
        nc = await nats.connect(servers=stack.nats.url.split(","), max_reconnect_attempts=-1)
        try:
            result = await HostDrill(stack, nc).run(scenario, 1)
        finally:
            await nc.close()
        detail = f"{result}\n{stack.tail()}"
        assert result["acknowledged"] > 0, detail
        assert result["acknowledged_lost"] == 0, detail
        assert not result["split_brain"], detail
        yield result


async def test_an_isolated_primary_stops_committing_and_a_standby_is_promoted(
    workdir: Path,
) -> None:
    async with drilled(workdir, "hosts-isolated-primary") as result:
        # Its agent reaches neither NATS nor a peer: stopped within the bound (5 s) and a
        # round, before anyone is promoted.
        assert result["stopped_committing_seconds"] is not None, result
        assert result["stopped_committing_seconds"] < 8, result
        assert result["new_primary"] in ("node2", "node3"), result
        assert result["rto_seconds"] is not None, result
        if result["new_primary"] is None:
            # Found by this drill (see /work/shared/findings-hosts.md): the leader holds, as
            # it cannot confirm the fence, although the agent's bound has stopped node1.
            pytest.xfail(f"the leader holds: {result['detail']['held']}")
        assert result["new_primary"] in ("node2", "node3"), result
        assert result["rto_seconds"] is not None, result


async def test_a_primary_cut_from_the_controller_loses_nothing_and_is_never_beside_another(
    workdir: Path,
) -> None:
    async with drilled(workdir, "hosts-primary-cut-from-controller") as result:
        assert result["detail"]["one_writable_after_heal"], result


async def test_a_partitioned_monitor_alone_fails_nobody_over(workdir: Path) -> None:
    async with drilled(workdir, "hosts-monitor-partitioned") as result:
        assert result["detail"]["failovers_started"] == 0, result
        assert result["detail"]["epoch_after"] == result["detail"]["epoch_before"], result
        assert result["new_primary"] == "node1", result
        assert result["unavailable_seconds"] < 2, result


async def test_a_failover_completes_when_the_kv_leader_dies_in_its_middle(workdir: Path) -> None:
    async with drilled(workdir, "hosts-kv-leader-killed") as result:
        assert result["detail"]["started"], result
        assert result["detail"]["kv_leader"], result
        assert result["new_primary"] in ("node2", "node3"), result
        assert result["detail"]["completed"], result


async def test_the_controller_down_costs_no_write_and_no_failover(workdir: Path) -> None:
    async with drilled(workdir, "hosts-controller-down") as result:
        assert result["detail"]["primary_writable_throughout"], result
        assert result["new_primary"] == "node1", result
        assert result["unavailable_seconds"] < 2, result  # no downtime of writes
        assert result["detail"]["failovers_started"] == 0, result
        assert result["detail"]["events_resumed_seconds"] is not None, result


async def test_a_standby_host_down_then_back_rejoins_by_itself(workdir: Path) -> None:
    async with drilled(workdir, "hosts-standby-down") as result:
        assert result["new_primary"] == "node1", result
        assert result["detail"]["streaming_after_restart_seconds"] is not None, result
        assert result["detail"]["synchronous_again_seconds"] is not None, result
