"""Failover drills, measured: `uv run python bench/failover.py [--runs N]`.

Uses the stack `make up` runs (gateway on 127.0.0.1:8000, `.lifeboat/`), or starts its own
with --start (ports and data in a temporary directory, stopped afterwards). Prints one JSON
object: per scenario RTO median/max, acknowledged writes lost, split-brain runs.

The baseline in the same run is the detection floor the defaults imply (failure_threshold x
probe_interval): the RTO ratio to it shows what the rest of the path (quorum, lease, fencing,
promotion, client reconnect) costs, independent of how noisy the machine is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from lifeboat.common.clusters import load_clusters
from lifeboat.devstack.drill import drill
from lifeboat.devstack.procs import free_port

DETECTION_FLOOR_S = 3 * 1.0  # failure_threshold x probe_interval at their defaults


def start_stack(workdir: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFEBOAT_")}
    env.update(
        {
            "LIFEBOAT_STACK_DIR": str(workdir / "stack"),
            "LIFEBOAT_PG_BASE_PORT": str(free_port(below=29000)),
            **{
                k: str(free_port())
                for k in (
                    "LIFEBOAT_NATS_PORT",
                    "LIFEBOAT_NATS_MONITOR_PORT",
                    "LIFEBOAT_GATEWAY_PORT",
                    "LIFEBOAT_MONITOR_PORT",
                    "LIFEBOAT_FAILOVER_PORT",
                    "LIFEBOAT_BACKUP_PORT",
                    "LIFEBOAT_FILESYNC_PORT",
                )
            },
            **{
                k: str(free_port(below=22000))
                for k in (
                    "LIFEBOAT_S3_PORT",
                    "LIFEBOAT_S3_MASTER_PORT",
                    "LIFEBOAT_S3_VOLUME_PORT",
                    "LIFEBOAT_S3_FILER_PORT",
                )
            },
        }
    )
    log = (workdir / "stack.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lifeboat.devstack", "up"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    gateway = f"http://127.0.0.1:{env['LIFEBOAT_GATEWAY_PORT']}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{gateway}/health", timeout=5).json()["status"] == "healthy":
                return proc, env
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(1)
    proc.send_signal(signal.SIGINT)
    raise SystemExit(f"the stack did not come up; see {workdir / 'stack.log'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--start", action="store_true", help="start a stack of its own")
    parser.add_argument("--gateway", default="http://127.0.0.1:8000")
    args = parser.parse_args()
    stack_dir, proc, workdir = Path(".lifeboat"), None, None
    if args.start:
        workdir = Path(tempfile.mkdtemp(prefix="lifeboat-bench-"))
        workdir.chmod(0o755)
        proc, env = start_stack(workdir)
        stack_dir = Path(env["LIFEBOAT_STACK_DIR"])
        args.gateway = f"http://127.0.0.1:{env['LIFEBOAT_GATEWAY_PORT']}"
    try:
        cluster = load_clusters(stack_dir / "clusters.yaml").cluster("main")
        password = (stack_dir / "secrets" / "pg_password").read_text().strip()
        out: dict[str, Any] = {"baseline_detection_floor_s": DETECTION_FLOOR_S}
        for scenario in ("kill-primary", "freeze-primary", "switchover"):
            result = drill(args.gateway, cluster, password, scenario, args.runs)
            s = result["summary"]
            key = scenario.replace("-", "_")
            if scenario == "switchover":
                out[key] = {
                    "unavailable_median_s": s["unavailable_median_s"],
                    "unavailable_max_s": s["unavailable_max_s"],
                    "lost_total": s["lost_total"],
                    "split_brain_runs": s["split_brain_runs"],
                    "runs": s["runs"],
                }
            else:
                out[key] = {
                    "rto_median_s": s["rto_median_s"],
                    "rto_max_s": s["rto_max_s"],
                    "rto_to_detection_floor": round(s["rto_median_s"] / DETECTION_FLOOR_S, 2),
                    "lost_total": s["lost_total"],
                    "split_brain_runs": s["split_brain_runs"],
                    "runs": s["runs"],
                }
        print(json.dumps(out))
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            proc.wait(120)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
