"""Monitor cost: `uv run python bench/monitor.py [--nodes 100] [--seconds 15]`.

One monitor probes N node entries (spread over a real 3-node cluster it starts) at a 1 s
interval and publishes every report to a real nats-server. Baseline in the same run: the
same with 10 nodes. Prints JSON: round duration (median, p95, max), whether every round fit
its interval, and CPU seconds per node-probe, for both sizes; cost grows linearly when the
per-probe CPU stays flat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from lifeboat.common.clusters import ClustersFile, ClusterSpec, NodeSpec
from lifeboat.common.runtime import ServiceRuntime
from lifeboat.common.settings import ServiceSettings
from lifeboat.devstack.postgres import PgCluster
from lifeboat.devstack.procs import eventually
from lifeboat.devstack.throwaway import local_ha
from lifeboat.monitor import Monitor, NodeProber, Thresholds


async def measure(pg: PgCluster, nats_url: str, count: int, seconds: float) -> dict[str, Any]:
    real = pg.spec().nodes
    nodes = tuple(
        NodeSpec(name=f"n{i:03d}", host=real[i % 3].host, port=real[i % 3].port)
        for i in range(count)
    )
    spec = ClusterSpec(name=f"bench{count}", database="app", nodes=nodes)
    runtime = ServiceRuntime("monitor", ServiceSettings(nats_url=nats_url, instance_id="bench"))
    await runtime.connect()
    probers = {
        (spec.name, n.name): NodeProber(spec.node_dsn(n, pg.passwords.superuser), 1.0)
        for n in nodes
    }
    monitor = Monitor(
        ClustersFile(clusters=(spec,)),
        probers,
        runtime.source,
        runtime.publisher.publish,
        interval=1.0,
        thresholds=Thresholds(),
        location="bench",
        outbox_size=100_000,
    )
    publishing = asyncio.create_task(monitor.run_publishing())
    await monitor.round()  # connect everything first
    durations, cpu0, wall0 = [], time.process_time(), time.monotonic()
    next_at = time.monotonic()
    while time.monotonic() - wall0 < seconds:
        started = time.monotonic()
        await monitor.round()
        durations.append(time.monotonic() - started)
        next_at += 1.0
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    cpu = time.process_time() - cpu0
    await eventually(
        lambda: not monitor.outbox, timeout=120, what="the outbox to drain", interval=0.1
    )
    publishing.cancel()
    await monitor.close()
    await runtime.broker.stop()
    durations.sort()
    return {
        "nodes": count,
        "rounds": len(durations),
        "round_median_s": round(statistics.median(durations), 4),
        "round_p95_s": round(durations[int(0.95 * (len(durations) - 1))], 4),
        "round_max_s": round(durations[-1], 4),
        "every_round_within_interval": durations[-1] < 1.0,
        "cpu_ms_per_probe": round(1000 * cpu / (count * len(durations)), 3),
    }


async def main_async(nodes: int, seconds: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="lifeboat-bench-"))
    try:
        with local_ha(work) as stack:  # NATS of its own and a 3-node cluster, no services
            baseline = await measure(stack.pg, stack.nats_url, 10, seconds)
            measured = await measure(stack.pg, stack.nats_url, nodes, seconds)
        return {
            "baseline": baseline,
            "measured": measured,
            "cpu_per_probe_ratio": round(
                measured["cpu_ms_per_probe"] / max(baseline["cpu_ms_per_probe"], 1e-9), 2
            ),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args.nodes, args.seconds))))


if __name__ == "__main__":
    main()
