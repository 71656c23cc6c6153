"""docker-compose.yml, run: the process topology the file describes, started from the file
itself (`lifeboat.devstack.composed`: each service on a test host of its name, with the
file's commands, environment and dependency order), then the kill-primary drill on it
(`lifeboat.devstack.composedrill`, which `bench/failover.py --compose` runs many times).

There is no Docker engine here; this is what proves that the compose file deploys what the
README says — three clustered NATS servers, S3, three PostgreSQL nodes each made and guarded
by its own agent, monitors, failover, backup, filesync and the gateway — and that a killed
primary's container is replaced by a standby without losing an acknowledged write, then
comes back read-only and rejoins.
"""

from __future__ import annotations

import json
from pathlib import Path

import nats
import pytest

from lifeboat.common.kv import TopologyStore
from lifeboat.devstack import netns
from lifeboat.devstack.composed import compose_stack
from lifeboat.devstack.composedrill import CLIENT, NATS, ComposeDrill, writable

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))


async def test_the_compose_file_deploys_and_a_killed_primary_container_fails_over(
    workdir: Path,
) -> None:
    with compose_stack(workdir / "compose", extra_hosts=(CLIENT,)) as stack:
        servers = [f"nats://{stack.address(n)}:4222" for n in NATS]
        nc = await nats.connect(servers=servers, max_reconnect_attempts=-1)
        try:
            drill = ComposeDrill(stack, await TopologyStore.open(nc.jetstream()), workdir)
            first = await drill.settled()
            assert first.primary == "node1"  # pg-node1 is the file's first primary
            result = await drill.kill_primary()
        finally:
            await nc.close()
        assert result["new_primary"] in ("node2", "node3"), result
        assert result["acknowledged"] > 0, result
        assert result["acknowledged_lost"] == 0, result
        assert not result["split_brain"], result
        assert result["rto_seconds"] < 60, result
        assert not writable(stack, "node1")  # back, read-only, streaming from the new one
        print(json.dumps(result))  # the figures, for `pytest -s`
