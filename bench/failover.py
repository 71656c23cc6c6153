"""Failover drills, measured: `uv run python bench/failover.py [--runs N] [--scenario NAME]...`.

Uses the stack `make up` runs (gateway on 127.0.0.1:8000, `.lifeboat/`), or starts its own
with --start (ports and data in a temporary directory, stopped afterwards). `--hosts NAME`
(repeatable) runs issue 9's drills on test hosts instead (network namespaces, as root;
lifeboat.devstack.hostdrill), each on stacks of its own; `--compose` the kill-primary drill
on docker-compose.yml's topology started from the file (lifeboat.devstack.composedrill).
Runs the three whole-node drills, or the scenarios named (those of issue 7's fault matrix
included, see lifeboat.devstack.drill.MATRIX). Prints one JSON object: per scenario its runs, RTO
median/max, the longest write unavailability, acknowledged writes lost, split-brain runs,
runs in which a hold or refusal was said (held_runs), runs that ended on another primary,
and what the scenario's fault observed (`detail`: e.g. who finished a failover whose leader
was killed). Each run and each scenario is also written to stderr as it ends.

The baseline in the same run is the detection floor the defaults imply (failure_threshold x
probe_interval): the RTO ratio to it shows what the rest of the path (quorum, lease, fencing,
promotion, client reconnect) costs, independent of how noisy the machine is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from lifeboat.common.clusters import load_clusters
from lifeboat.devstack.composedrill import drill_on_compose
from lifeboat.devstack.drill import DEFAULT_SCENARIOS, MATRIX, SCENARIOS, drill
from lifeboat.devstack.hostdrill import HOST_SCENARIOS, drill_on_hosts
from lifeboat.devstack.throwaway import UpStack, up_stack_env

DETECTION_FLOOR_S = 3 * 1.0  # failure_threshold x probe_interval at their defaults


def store_limited(env: dict[str, str], mib: int) -> dict[str, str]:
    """`env` with a JetStream store limit of `mib` MiB per NATS server (jetstream-full fills
    it). Each stream's max_bytes is reserved from that limit, so the default 1 GiB and
    256 MiB would not fit: an eighth each, the rest left for the buckets and the filler."""
    limit = mib << 20
    return {
        **env,
        "LIFEBOAT_NATS_MAX_FILE_STORE": str(limit),
        "LIFEBOAT_EVENTS_MAX_BYTES": str(limit // 8),
        "LIFEBOAT_HEARTBEATS_MAX_BYTES": str(limit // 8),
    }


def start_stack(workdir: Path, store_mib: int | None = None) -> UpStack:
    """`make up` of its own under `workdir`, on free ports, once the gateway says healthy;
    with `store_mib`, its NATS servers' store limited to that."""
    env = up_stack_env(workdir / "stack")
    if store_mib is not None:
        env = store_limited(env, store_mib)
    stack = UpStack(workdir / "stack", workdir / "stack.log", env)
    stack.start()
    try:
        stack.wait_healthy(timeout=300)  # a shared 2-core machine under load takes > 2 min
    except (TimeoutError, RuntimeError):
        stack.stop()
        raise SystemExit(f"the stack did not come up; see {workdir / 'stack.log'}") from None
    except KeyboardInterrupt:  # Ctrl-C while it starts: the stack runs in a session of its own
        stack.stop()
        raise
    return stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--start", action="store_true", help="start a stack of its own")
    parser.add_argument("--gateway", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        help="a drill to run (repeatable); default: " + ", ".join(DEFAULT_SCENARIOS),
    )
    parser.add_argument(
        "--nats-max-file-store-mib",
        type=int,
        help="with --start: each NATS server's JetStream store limit (jetstream-full needs one)",
    )
    parser.add_argument(
        "--hosts",
        action="append",
        choices=HOST_SCENARIOS,
        help="an issue 9 drill on test hosts (network namespaces, root), on stacks of its own",
    )
    parser.add_argument(
        "--compose",
        action="store_true",
        help="the kill-primary drill on docker-compose.yml's topology, started from the file "
        "on test hosts (network namespaces, root), all runs on one",
    )
    args = parser.parse_args()
    if args.hosts:
        return on_hosts(args.hosts, args.runs)
    if args.compose:
        return on_compose(args.runs)
    stack_dir, stack, workdir = Path(".lifeboat"), None, None
    if args.start:
        workdir = Path(tempfile.mkdtemp(prefix="lifeboat-bench-"))
        workdir.chmod(0o755)
        stack = start_stack(workdir, args.nats_max_file_store_mib)
        stack_dir = stack.dir
        args.gateway = stack.gateway
    try:
        cluster = load_clusters(stack_dir / "clusters.yaml").cluster("main")
        password = (stack_dir / "secrets" / "pg_password").read_text().strip()
        token_file = stack_dir / "secrets" / "lifeboat_token"
        token = token_file.read_text().strip() if token_file.exists() else None
        out: dict[str, Any] = {"baseline_detection_floor_s": DETECTION_FLOOR_S}
        for scenario in args.scenario or DEFAULT_SCENARIOS:
            result = drill(
                args.gateway,
                cluster,
                password,
                scenario,
                args.runs,
                token,
                stack_dir,
                # Each run as it ends: a batch stopped midway keeps what it measured.
                on_run=lambda run, s=scenario: print(  # type: ignore[misc]
                    json.dumps({"run": s, **run}), file=sys.stderr, flush=True
                ),
            )
            summary = result["summary"]
            if summary["rto_median_s"] is not None:
                ratio = summary["rto_median_s"] / DETECTION_FLOOR_S
                summary["rto_to_detection_floor"] = round(ratio, 2)
            if scenario in MATRIX:
                summary["matrix_scenario"] = MATRIX[scenario]
            out[scenario.replace("-", "_")] = summary
            # Each scenario as it ends: a long run that fails later keeps what it measured.
            print(json.dumps({scenario: summary}), file=sys.stderr, flush=True)
        print(json.dumps(out))
    except BaseException:
        if workdir is not None:  # the stack's logs say what went wrong
            print(f"failed; the stack's logs are kept in {workdir}", file=sys.stderr)
            workdir = None
        raise
    finally:
        if stack is not None:
            stack.stop(timeout=120)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def on_hosts(scenarios: list[str], runs: int) -> None:
    """The test-host drills (lifeboat.devstack.hostdrill): each run printed as it ends."""
    workdir = Path(tempfile.mkdtemp(prefix="lifeboat-bench-hosts-"))
    workdir.chmod(0o755)
    out: dict[str, Any] = {}
    for scenario in scenarios:
        result = asyncio.run(
            drill_on_hosts(
                workdir,
                scenario,  # type: ignore[arg-type]
                runs,
                on_run=lambda run, s=scenario: print(  # type: ignore[misc]
                    json.dumps({"run": s, **run}), file=sys.stderr, flush=True
                ),
            )
        )
        out[scenario.replace("-", "_")] = result["summary"]
        print(json.dumps({scenario: result["summary"]}), file=sys.stderr, flush=True)
    print(json.dumps(out))
    shutil.rmtree(workdir, ignore_errors=True)


def on_compose(runs: int) -> None:
    """The compose drill (lifeboat.devstack.composedrill): each run printed as it ends."""
    workdir = Path(tempfile.mkdtemp(prefix="lifeboat-bench-compose-"))
    workdir.chmod(0o755)
    result = asyncio.run(
        drill_on_compose(
            workdir,
            runs,
            on_run=lambda run: print(
                json.dumps({"run": "compose", **run}), file=sys.stderr, flush=True
            ),
        )
    )
    summary = {**result["summary"], "detection_floor_s": DETECTION_FLOOR_S}
    print(json.dumps({"compose_kill_primary": summary}))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
