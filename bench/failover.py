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
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lifeboat.common.clusters import load_clusters
from lifeboat.devstack.drill import drill
from lifeboat.devstack.throwaway import UpStack

DETECTION_FLOOR_S = 3 * 1.0  # failure_threshold x probe_interval at their defaults


def start_stack(workdir: Path) -> UpStack:
    """`make up` of its own under `workdir`, on free ports, once the gateway says healthy."""
    stack = UpStack(workdir / "stack", workdir / "stack.log")
    stack.start()
    try:
        stack.wait_healthy(timeout=120)
    except (TimeoutError, RuntimeError):
        stack.stop()
        raise SystemExit(f"the stack did not come up; see {workdir / 'stack.log'}") from None
    return stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--start", action="store_true", help="start a stack of its own")
    parser.add_argument("--gateway", default="http://127.0.0.1:8000")
    args = parser.parse_args()
    stack_dir, stack, workdir = Path(".lifeboat"), None, None
    if args.start:
        workdir = Path(tempfile.mkdtemp(prefix="lifeboat-bench-"))
        workdir.chmod(0o755)
        stack = start_stack(workdir)
        stack_dir = stack.dir
        args.gateway = stack.gateway
    try:
        cluster = load_clusters(stack_dir / "clusters.yaml").cluster("main")
        password = (stack_dir / "secrets" / "pg_password").read_text().strip()
        token_file = stack_dir / "secrets" / "lifeboat_token"
        token = token_file.read_text().strip() if token_file.exists() else None
        out: dict[str, Any] = {"baseline_detection_floor_s": DETECTION_FLOOR_S}
        for scenario in ("kill-primary", "freeze-primary", "switchover"):
            result = drill(args.gateway, cluster, password, scenario, args.runs, token)
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
        if stack is not None:
            stack.stop(timeout=120)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
