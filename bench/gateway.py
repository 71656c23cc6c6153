"""The gateway under load: `uv run python bench/gateway.py --start`.

Prints one JSON object:

- `rps`: `GET /clusters/{cluster}` with 200 concurrent connections from a load generator in
  a separate process (`wrk` when it is installed, else the asyncio generator below in closed
  loop), after a warm-up. Closed loop: each connection sends its next request when the last
  is answered, so throughput is the most the gateway serves, and latency is 200 / rps
  (Little's law): that p99 is `closed_loop_p99_ms`;
- `p99_ms`: the latency at a stated load (`--rate`, default 2,000 requests/s) over the same
  200 connections, from an asyncio generator in its own process that paces each connection
  on a fixed schedule and times each request from when it was due (so a stall counts for
  every request it delays, as wrk2 measures);
- `projection_lag_ms`: from a topology change (the KV write and its `failover.completed`)
  to the API showing the new primary, median and max of several changes;
- `sse_subscribers_complete`: of 100 concurrent SSE subscribers to `node.health`, how many
  received every one of the events published while they listened.

`--start` runs NATS and one gateway of its own on free ports (a cluster file of three nodes,
fed by published `node.health` reports: the gateway is measured, not PostgreSQL); without
it, `--gateway` and `--nats` name a running stack and `--cluster` its cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nats

from lifeboat.common.clusters import ClusterSpec, NodeSpec
from lifeboat.common.events import FailoverCompleted, FailoverKind, NodeHealth, Role, Source
from lifeboat.common.kv import TOPOLOGY_BUCKET, open_bucket
from lifeboat.common.state import Topology
from lifeboat.devstack.launch import launch, service_env
from lifeboat.devstack.procs import free_port
from lifeboat.devstack.throwaway import nats_on_free_ports, write_clusters

SOURCE = Source(service="monitor", instance="bench")
NODES = ("node1", "node2", "node3")


# --- the load generator (a separate process) ----------------------------------------------


async def _load(url: str, connections: int, seconds: float, rate: float) -> dict[str, Any]:
    """`connections` keep-alive connections sending `GET url` for `seconds`.

    `rate` 0 is a closed loop (each connection sends its next request when the last is
    answered). A `rate` paces the whole load at that many requests a second, each connection
    on its own fixed schedule, and times every request from when it was due, not from when
    it was sent: a late answer delays the requests queued behind it and they count as late
    too (no coordinated omission, as wrk2 measures)."""
    target = httpx.URL(url)
    host, port = target.host, target.port or 80
    request = f"GET {target.raw_path.decode()} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    interval = connections / rate if rate else 0.0
    streams = [await asyncio.open_connection(host, port) for _ in range(connections)]
    began = loop.time() + 0.1
    stop = began + seconds

    async def worker(i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal errors
        due = began + i * interval / connections
        while due < stop:
            if interval:
                await asyncio.sleep(max(0.0, due - loop.time()))
            else:
                due = loop.time()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            if head.startswith(b"HTTP/1.1 200"):
                latencies.append(loop.time() - due)
            else:
                errors += 1
            due += interval
        writer.close()

    await asyncio.gather(*(worker(i, r, w) for i, (r, w) in enumerate(streams)))
    took = loop.time() - began
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan")
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / took,
        "p99_ms": p99 * 1000,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
    }


async def _sse(
    base: str, subject: str, subscribers: int, expect: int, timeout: float
) -> dict[str, Any]:
    """`subscribers` SSE readers of `subject`; each counts events until `expect` or timeout.
    Prints `ready` once all are connected, then the counts."""
    counts = [0] * subscribers
    connected = asyncio.Event()
    opened = 0
    limits = httpx.Limits(max_connections=subscribers + 5)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=None) as client:

        async def reader(i: int) -> None:
            nonlocal opened
            async with client.stream("GET", "/events", params={"subject": subject}) as resp:
                opened += 1
                if opened == subscribers:
                    connected.set()
                async for line in resp.aiter_lines():
                    if line.startswith("data:"):
                        counts[i] += 1
                        if counts[i] >= expect:
                            return

        tasks = [asyncio.create_task(reader(i)) for i in range(subscribers)]
        await asyncio.wait_for(connected.wait(), 30)
        await asyncio.sleep(0.5)  # every response has started: the subscriptions exist
        print("ready", flush=True)
        await asyncio.wait(tasks, timeout=timeout)
        for task in tasks:
            task.cancel()
    return {"complete": sum(1 for c in counts if c >= expect), "counts": sorted(set(counts))}


def child(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "load":
        out = asyncio.run(_load(argv[1], int(argv[2]), float(argv[3]), float(argv[4])))

    else:
        out = asyncio.run(_sse(argv[1], argv[2], int(argv[3]), int(argv[4]), float(argv[5])))
    print(json.dumps(out), flush=True)


def _child_argv(*args: str) -> list[str]:
    return [sys.executable, __file__, "--child", *args]


# --- measurements -----------------------------------------------------------------------------


def run_load(url: str, connections: int, seconds: float, loadgen: str) -> dict[str, Any]:
    if loadgen == "wrk" or (loadgen == "auto" and shutil.which("wrk")):
        threads = "2"
        out = subprocess.run(
            [
                "wrk",
                "-t",
                threads,
                "-c",
                str(connections),
                "-d",
                f"{seconds:.0f}s",
                "--latency",
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return {"loadgen": "wrk", **_parse_wrk(out)}
    return run_paced(url, connections, seconds, 0.0)


def run_paced(url: str, connections: int, seconds: float, rate: float) -> dict[str, Any]:
    """The Python generator in its own process (0 `rate`: closed loop)."""
    done = subprocess.run(
        _child_argv("load", url, str(connections), str(seconds), str(rate)),
        capture_output=True,
        text=True,
        check=True,
    )
    return {"loadgen": "python", **json.loads(done.stdout.splitlines()[-1])}


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def _parse_wrk(out: str) -> dict[str, Any]:
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    requests = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: (.*)", out)
    if p99 is None or p50 is None or rps is None or requests is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    return {
        "requests": int(requests[1]),
        "errors": int(errors[1]) if errors else 0,
        "socket_errors": socket[1] if socket else None,
        "rps": float(rps[1]),
        "p99_ms": _ms(p99[1], p99[2]),
        "p50_ms": _ms(p50[1], p50[2]),
    }


def report(cluster: str, node: str, primary: str, lag: int = 0) -> NodeHealth:
    return NodeHealth(
        cluster=cluster,
        node=node,
        source=SOURCE,
        reachable=True,
        role=Role.PRIMARY if node == primary else Role.STANDBY,
        writable=node == primary,
        timeline=1,
        wal_receiver=None if node == primary else "streaming",
        lag_bytes=None if node == primary else lag,
        lag_seconds=None if node == primary else 0.0,
    )


async def feed(nats_url: str, cluster: str, primary: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    kv = await open_bucket(js, TOPOLOGY_BUCKET, history=16)
    topo = Topology(cluster=cluster, primary=primary, epoch=1, synchronous=("node2",))
    await kv.put(cluster, topo.model_dump_json().encode())
    for node in NODES:
        e = report(cluster, node, primary)
        await js.publish(e.subject(), e.model_dump_json().encode())
    await nc.close()


async def projection_lag(nats_url: str, gateway: str, cluster: str, changes: int) -> list[float]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    kv = await open_bucket(js, TOPOLOGY_BUCKET, history=16)
    lags = []
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as api:
        for i in range(changes):
            old = (await api.get(f"/clusters/{cluster}")).json()["topology"]
            new_primary = NODES[(NODES.index(old["primary"]) + 1) % len(NODES)]
            topo = Topology(cluster=cluster, primary=new_primary, epoch=old["epoch"] + 1)
            done = FailoverCompleted(
                cluster=cluster,
                source=Source(service="failover", instance="bench"),
                kind=FailoverKind.AUTOMATIC,
                old_primary=old["primary"],
                new_primary=new_primary,
                reason=f"bench {i}",
                total_seconds=0.0,
                epoch=topo.epoch,
            )
            started = time.perf_counter()
            await kv.put(cluster, topo.model_dump_json().encode())
            await js.publish(done.subject(), done.model_dump_json().encode())
            while (await api.get(f"/clusters/{cluster}")).json()["topology"][
                "primary"
            ] != new_primary:
                await asyncio.sleep(0.001)
            lags.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.05)
    await nc.close()
    return lags


async def publish_health(nats_url: str, cluster: str, primary: str, count: int) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    for i in range(count):
        e = report(cluster, NODES[1 + i % 2], primary, lag=i)
        await js.publish(e.subject(), e.model_dump_json().encode())
        await asyncio.sleep(0.01)
    await nc.close()


def sse_complete(
    nats_url: str, gateway: str, cluster: str, subscribers: int, events: int
) -> dict[str, Any]:
    subject = f"node.health.{cluster}.>"
    proc = subprocess.Popen(
        _child_argv("sse", gateway, subject, str(subscribers), str(events), "30"),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", line
        primary = httpx.get(f"{gateway}/clusters/{cluster}", timeout=10).json()["topology"][
            "primary"
        ]
        asyncio.run(publish_health(nats_url, cluster, primary, events))
        out = json.loads(proc.stdout.readline())
    finally:
        proc.wait(timeout=60)
    return {"sse_subscribers": subscribers, "sse_events": events, **out}


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return round(float(statistics.median(r[key] for r in runs)), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--start", action="store_true", help="NATS and a gateway of its own")
    parser.add_argument("--gateway", default="http://127.0.0.1:8000")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--cluster", default="main")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1, help="gateway workers (--start)")
    parser.add_argument("--rate", type=float, default=2000, help="requests/s for `p99_ms`")
    parser.add_argument("--runs", type=int, default=3, help="load runs; medians are reported")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="lifeboat-bench-gw-"))
    cleanup: list[Any] = []
    try:
        if args.start:
            server = nats_on_free_ports(workdir / "nats", log_file=workdir / "nats.log")
            server.start()
            cleanup.append(server.stop)
            args.nats = server.url
            spec = ClusterSpec(
                name=args.cluster,
                database="app",
                nodes=tuple(NodeSpec(name=n, host="127.0.0.1", port=free_port()) for n in NODES),
            )
            env = service_env(
                nats_url=server.url,
                clusters_file=write_clusters(workdir / "clusters.yaml", spec),
                pg_password="unused",
                extra={"LIFEBOAT_LOG_LEVEL": "WARNING", "LIFEBOAT_WORKERS": str(args.workers)},
            )
            gw = launch("gateway", env, instance="bench-gw", log_file=workdir / "gateway.log")
            cleanup.append(gw.stop)
            gw.wait_ready(60)
            args.gateway = gw.url
            asyncio.run(feed(args.nats, args.cluster, "node1"))
            time.sleep(1.0 if args.workers > 1 else 0.5)
        url = f"{args.gateway}/clusters/{args.cluster}"
        body = httpx.get(url, timeout=10).json()
        assert body["topology"], body
        run_load(url, args.connections, 2, args.loadgen)  # warm up
        closed, paced = [], []
        for _ in range(args.runs):
            closed.append(run_load(url, args.connections, args.seconds, args.loadgen))
            paced.append(run_paced(url, args.connections, args.seconds, args.rate))
        lags = asyncio.run(projection_lag(args.nats, args.gateway, args.cluster, 10))
        sse = sse_complete(args.nats, args.gateway, args.cluster, args.subscribers, args.events)
        out = {
            "p99_ms": _median(paced, "p99_ms"),
            "rps": _median(closed, "rps"),
            "closed_loop_p99_ms": _median(closed, "p99_ms"),
            "paced_rps": _median(paced, "rps"),
            "projection_lag_ms": round(statistics.median(lags), 2),
            "projection_lag_max_ms": round(max(lags), 2),
            "sse_subscribers_complete": sse["complete"],
            "load": {
                "connections": args.connections,
                "seconds": args.seconds,
                "rate": args.rate,
                "closed": closed,
                "paced": paced,
            },
            "sse": sse,
            "gateway_workers": args.workers,
        }
        print(json.dumps(out))
    finally:
        for stop in reversed(cleanup):
            stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
