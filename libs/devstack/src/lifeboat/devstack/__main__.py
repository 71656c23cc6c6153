"""`python -m lifeboat.devstack up` (what `make up` runs)."""

from __future__ import annotations

import argparse
import sys

from lifeboat.devstack.stack import up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lifeboat-stack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run NATS, S3, a PostgreSQL cluster and all services until Ctrl-C")
    args = parser.parse_args(argv)
    if args.command == "up":
        return up()
    return 1


if __name__ == "__main__":
    sys.exit(main())
