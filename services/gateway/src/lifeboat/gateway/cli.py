"""`lifeboat`: the command line face of the gateway's REST API."""

from __future__ import annotations

import argparse
import json
import os
import sys

import httpx

_MARK = {"healthy": "ok ", "degraded": "DEG", "unhealthy": "BAD"}


def _status(base_url: str, as_json: bool) -> int:
    try:
        resp = httpx.get(f"{base_url.rstrip('/')}/health", timeout=15)
    except httpx.HTTPError as exc:
        print(f"lifeboat: cannot reach the gateway at {base_url}: {exc}", file=sys.stderr)
        return 2
    report = resp.json()
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(f"Lifeboat: {report['status']} (gateway up {report['uptime_seconds']:.0f}s)")
        for c in report["components"]:
            print(f"  [{_MARK.get(c['status'], '?')}] {c['name']:<28} {c['message']}")
    return 0 if report["status"] != "unhealthy" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lifeboat", description=__doc__)
    parser.add_argument(
        "--gateway",
        default=os.environ.get("LIFEBOAT_GATEWAY_URL", "http://127.0.0.1:8000"),
        help="gateway base URL (default: $LIFEBOAT_GATEWAY_URL or http://127.0.0.1:8000)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="health of NATS, S3, every node and every service")
    status.add_argument("--json", action="store_true", help="print the raw health report")
    args = parser.parse_args(argv)
    if args.command == "status":
        return _status(args.gateway, args.json)
    return 2


if __name__ == "__main__":
    sys.exit(main())
