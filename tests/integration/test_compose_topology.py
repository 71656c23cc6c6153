"""docker-compose.yml, run: the process topology the file describes, started from the file
itself (`lifeboat.devstack.composed`: each service on a test host of its name, with the
file's commands, environment and dependency order), then the kill-primary drill on it
(`lifeboat.devstack.composedrill`, which `bench/failover.py --compose` runs many times).

There is no Docker engine here; this is what proves that the compose file deploys what the
README says — three clustered NATS servers, S3, three PostgreSQL nodes each made and guarded
by its own agent, monitors, failover, backup, filesync and the gateway — and that a killed
primary's container is replaced by a standby without losing an acknowledged write, then
comes back read-only and rejoins. Then a restore into that node, asked of the backup
service: it restores beside itself and the node's agent copies the restore in (its data
directory is in its own container), leaving it stopped as the topology names another primary.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from lifeboat.common.bus import encode
from lifeboat.common.events import (
    BackupKind,
    BackupRequested,
    ClusterEvent,
    RestoreRequested,
    Source,
)
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
            restored = await restore_into(nc, "node1")
        finally:
            await nc.close()
        assert result["new_primary"] in ("node2", "node3"), result
        assert result["acknowledged"] > 0, result
        assert result["acknowledged_lost"] == 0, result
        assert not result["split_brain"], result
        assert result["rto_seconds"] < 60, result
        assert not writable(stack, "node1")  # back, read-only, streaming from the new one
        print(json.dumps(result))  # the figures, for `pytest -s`
        done = restored["restore.completed"]
        assert done["data_dir"] == restored["node.restored"]["data_dir"], restored
        assert restored["node.restored"]["started"] is False, restored
        assert not writable(stack, "node1")


SRC = Source(service="test", instance="compose-test")


async def restore_into(nc: NatsClient, node: str, timeout: float = 240) -> dict[str, Any]:
    """A physical backup, then a restore of it into `node`: the events that answered, by type
    (a failure raises with its reason)."""
    seen: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on(msg: Msg) -> None:
        seen.put_nowait(json.loads(msg.data))

    for subject in ("backup.*.main", "restore.*.main", f"node.*.main.{node}"):
        await nc.subscribe(subject, cb=on)
    got: dict[str, Any] = {}

    async def ask(event: ClusterEvent, done: str) -> dict[str, Any]:
        body, headers = encode(event)
        await nc.jetstream().publish(event.subject(), body, headers=headers)
        async with asyncio.timeout(timeout):
            while True:
                e = await seen.get()
                got.setdefault(e["type"], e)
                if e.get("request_id") != str(event.event_id):
                    continue
                assert not e["type"].endswith("failed"), e.get("reason")
                if e["type"] == done:
                    return e

    backup = BackupRequested(cluster="main", source=SRC, kind=BackupKind.PHYSICAL, verify=False)
    backup_id = (await ask(backup, "backup.completed"))["backup_id"]
    await ask(
        RestoreRequested(
            cluster="main", source=SRC, backup_id=backup_id, target="node", node=node,
            confirm=True,
        ),
        "restore.completed",
    )  # fmt: skip
    return got
