"""`lifeboat`: the command line face of the gateway's REST API.

Against the local stack (`make up`) it needs no options: the gateway is on 127.0.0.1:8000
(`LIFEBOAT_GATEWAY_URL` or `--gateway` otherwise). Failover drills are the dev stack's:
`lifeboat-stack drill`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import httpx
from pydantic import BaseModel

from lifeboat.gateway.client import GatewayClient, GatewayError
from lifeboat.gateway.schemas import OperationRefused
from lifeboat.gateway.settings import CliSettings

_MARK = {"healthy": "ok ", "degraded": "DEG", "unhealthy": "BAD"}


def _print_json(body: BaseModel | Any) -> None:
    data = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
    print(json.dumps(data, indent=2))


def _status(args: argparse.Namespace, gw: GatewayClient) -> int:
    report = gw.health()
    if args.json:
        _print_json(report)
    else:
        print(f"Lifeboat: {report.status} (gateway up {report.uptime_seconds:.0f}s)")
        for c in report.components:
            print(f"  [{_MARK.get(c.status, '?')}] {c.name:<28} {c.message}")
    return 0 if report.status != "unhealthy" else 1


def _cluster(args: argparse.Namespace, gw: GatewayClient) -> int:
    status = gw.cluster(args.cluster)
    if args.json:
        _print_json(status)
        return 0
    topo = status.topology
    synchronous = ", ".join(topo.synchronous) if topo else ""
    print(
        f"{args.cluster}: primary {topo.primary if topo else None} "
        f"(epoch {topo.epoch if topo else None}), synchronous: {synchronous or '-'}"
    )
    for node in status.nodes:
        h = node.health
        role = h.role if h else "unreachable"
        lag = h.lag_bytes if h else None
        writable = "writable" if h and h.writable else ""
        print(f"  {node.name:<10} {role:<8} {writable:<9} lag {lag if lag is not None else '-'}")
    return 0


def _operate(args: argparse.Namespace, gw: GatewayClient) -> int:
    if args.command == "rejoin":
        result = gw.rejoin(args.cluster, args.node, requested_by=args.requested_by)
    else:
        result = gw.operate(
            args.command,
            args.cluster,
            reason=args.reason,
            target=args.target,
            requested_by=args.requested_by,
        )
    _print_json(result)
    return 1 if isinstance(result, OperationRefused) else 0


def _history(args: argparse.Namespace, gw: GatewayClient) -> int:
    for event in gw.history(args.cluster, args.limit):
        row = event.model_dump(mode="json")
        detail = row.get("reason") or row.get("new_primary") or ""
        print(f"{row['occurred_at']}  {row['type']:<22} {detail}")
    return 0


def parser(settings: CliSettings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lifeboat", description=__doc__)
    parser.add_argument(
        "--gateway",
        default=settings.gateway_url,
        help=f"gateway base URL (default: $LIFEBOAT_GATEWAY_URL or {settings.gateway_url})",
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
    return parser


def main(argv: list[str] | None = None) -> int:
    settings = CliSettings()
    args = parser(settings).parse_args(argv)
    args.requested_by = settings.requested_by
    handlers = {
        "status": _status,
        "cluster": _cluster,
        "failover": _operate,
        "switchover": _operate,
        "rejoin": _operate,
        "history": _history,
    }
    try:
        with GatewayClient(args.gateway) as gw:
            return handlers[args.command](args, gw)
    except GatewayError as exc:
        _print_json(exc.body)
        return 1
    except httpx.HTTPError as exc:
        print(f"lifeboat: cannot reach the gateway at {args.gateway}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
