"""`lifeboat`: the command line face of the gateway's REST API, and failover drills.

Against the local stack (`make up`) it needs no options: the gateway is on 127.0.0.1:8000
and `.lifeboat/` holds the cluster file and the password the drills use.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from lifeboat.common.clusters import load_clusters
from lifeboat.gateway.drill import SCENARIOS, drill

_MARK = {"healthy": "ok ", "degraded": "DEG", "unhealthy": "BAD"}
LOCAL_STACK = Path(".lifeboat")


def _get(args: argparse.Namespace, path: str) -> httpx.Response:
    return httpx.get(f"{args.gateway.rstrip('/')}{path}", timeout=30)


def _status(args: argparse.Namespace) -> int:
    report = _get(args, "/health").json()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"Lifeboat: {report['status']} (gateway up {report['uptime_seconds']:.0f}s)")
        for c in report["components"]:
            print(f"  [{_MARK.get(c['status'], '?')}] {c['name']:<28} {c['message']}")
    return 0 if report["status"] != "unhealthy" else 1


def _cluster(args: argparse.Namespace) -> int:
    resp = _get(args, f"/clusters/{args.cluster}")
    body = resp.json()
    if resp.status_code != 200 or args.json:
        print(json.dumps(body, indent=2))
        return 0 if resp.status_code == 200 else 1
    topo = body["topology"] or {}
    print(
        f"{args.cluster}: primary {topo.get('primary')} (epoch {topo.get('epoch')}), "
        f"synchronous: {', '.join(topo.get('synchronous') or []) or '-'}"
    )
    for node in body["nodes"]:
        h = node["health"] or {}
        lag = h.get("lag_bytes")
        print(
            f"  {node['name']:<10} {h.get('role', 'unreachable'):<8} "
            f"{'writable' if h.get('writable') else '':<9} lag {lag if lag is not None else '-'}"
        )
    return 0


def _operate(args: argparse.Namespace) -> int:
    if args.command == "rejoin":
        path, payload = f"/clusters/{args.cluster}/nodes/{args.node}/rejoin", {}
    else:
        path = f"/clusters/{args.cluster}/{args.command}"
        payload = {"target": args.target, "reason": args.reason}
    resp = httpx.post(
        f"{args.gateway.rstrip('/')}{path}",
        json={**payload, "requested_by": os.environ.get("USER", "cli")},
        timeout=600,
    )
    body: dict[str, Any] = resp.json()
    print(json.dumps(body, indent=2))
    return 0 if resp.status_code in (200, 202) else 1


def _history(args: argparse.Namespace) -> int:
    for event in _get(args, f"/clusters/{args.cluster}/history?limit={args.limit}").json():
        detail = event.get("reason") or event.get("new_primary") or ""
        print(f"{event['occurred_at']}  {event['type']:<22} {detail}")
    return 0


def _drill(args: argparse.Namespace) -> int:
    clusters_file = Path(os.environ.get("LIFEBOAT_CLUSTERS_FILE", LOCAL_STACK / "clusters.yaml"))
    password_file = Path(
        os.environ.get("LIFEBOAT_PG_PASSWORD_FILE", LOCAL_STACK / "secrets" / "pg_password")
    )
    password = os.environ.get("LIFEBOAT_PG_PASSWORD") or password_file.read_text().strip()
    cluster = load_clusters(clusters_file).cluster(args.cluster)
    result = drill(args.gateway, cluster, password, args.scenario, args.runs)
    if args.json:
        print(json.dumps(result))
    else:
        for i, run in enumerate(result["runs"], 1):
            print(f"run {i}: {json.dumps(run)}")
        print("summary:", json.dumps(result["summary"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lifeboat", description=__doc__)
    parser.add_argument(
        "--gateway",
        default=os.environ.get("LIFEBOAT_GATEWAY_URL", "http://127.0.0.1:8000"),
        help="gateway base URL (default: $LIFEBOAT_GATEWAY_URL or http://127.0.0.1:8000)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="health of NATS, S3, every node and every service")
    status.add_argument("--json", action="store_true")
    cluster = sub.add_parser("cluster", help="topology and nodes of a cluster")
    cluster.add_argument("cluster", nargs="?", default="main")
    cluster.add_argument("--json", action="store_true")
    for name, text in (
        ("failover", "promote a standby now (the primary is fenced)"),
        ("switchover", "planned: hand over without losing a write"),
    ):
        op = sub.add_parser(name, help=text)
        op.add_argument("--cluster", default="main")
        op.add_argument("--target", help="node to promote (default: the best standby)")
        op.add_argument("--reason", required=True)
    rejoin = sub.add_parser("rejoin", help="turn a node back into a standby (pg_rewind)")
    rejoin.add_argument("node")
    rejoin.add_argument("--cluster", default="main")
    history = sub.add_parser("history", help="failovers, switchovers, refusals, fencings")
    history.add_argument("--cluster", default="main")
    history.add_argument("--limit", type=int, default=50)
    dr = sub.add_parser("drill", help="inject a fault and measure RTO, lost writes, split brain")
    dr.add_argument("scenario", choices=SCENARIOS)
    dr.add_argument("--runs", type=int, default=1)
    dr.add_argument("--cluster", default="main")
    dr.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    handlers = {
        "status": _status,
        "cluster": _cluster,
        "failover": _operate,
        "switchover": _operate,
        "rejoin": _operate,
        "history": _history,
        "drill": _drill,
    }
    try:
        return handlers[args.command](args)
    except httpx.HTTPError as exc:
        print(f"lifeboat: cannot reach the gateway at {args.gateway}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
