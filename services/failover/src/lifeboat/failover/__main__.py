"""`python -m lifeboat.failover` / `lifeboat-failover`."""

from __future__ import annotations

from lifeboat.common.runtime import serve
from lifeboat.failover.app import SERVICE, build_app
from lifeboat.failover.settings import FailoverSettings


def main() -> None:
    settings = FailoverSettings()
    serve(build_app(settings), settings, SERVICE)


if __name__ == "__main__":
    main()
