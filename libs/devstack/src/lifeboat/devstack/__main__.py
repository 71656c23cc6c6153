"""`python -m lifeboat.devstack` / `lifeboat-stack`: `up` runs the local stack (what `make up`
runs); `drill` injects a fault into it and measures RTO, lost writes and split brain."""

from __future__ import annotations

import argparse
import json
import sys

import httpx

from lifeboat.common.clusters import ClusterFileError
from lifeboat.common.secrets import MissingSecretError
from lifeboat.devstack.drill import SCENARIOS, DrillSettings, drill
from lifeboat.devstack.stack import up


def _drill(args: argparse.Namespace) -> int:
    settings = DrillSettings()
    gateway = args.gateway or settings.gateway_url
    try:
        cluster = settings.cluster(args.cluster)
        password = settings.postgres_password()
    except (ClusterFileError, KeyError, MissingSecretError) as exc:
        print(f"drill: {exc} (is the stack `make up` runs up?)", file=sys.stderr)
        return 2
    try:
        result = drill(
            gateway, cluster, password, args.scenario, args.runs, settings.gateway_token()
        )
    except httpx.HTTPError as exc:
        print(f"drill: cannot reach the gateway at {gateway}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        for i, run in enumerate(result["runs"], 1):
            print(f"run {i}: {json.dumps(run)}")
        print("summary:", json.dumps(result["summary"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lifeboat-stack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run NATS, S3, a PostgreSQL cluster and all services until Ctrl-C")
    dr = sub.add_parser(
        "drill", help="inject a fault into the running stack; measure RTO, lost writes, split brain"
    )
    dr.add_argument("scenario", choices=SCENARIOS)
    dr.add_argument("--runs", type=int, default=1)
    dr.add_argument("--cluster", default="main")
    dr.add_argument("--json", action="store_true")
    dr.add_argument(
        "--gateway", help="gateway base URL (default: $LIFEBOAT_GATEWAY_URL or 127.0.0.1:8000)"
    )
    args = parser.parse_args(argv)
    if args.command == "up":
        return up()
    if args.command == "drill":
        return _drill(args)
    return 1


if __name__ == "__main__":
    sys.exit(main())
