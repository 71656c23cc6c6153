"""`python -m lifeboat.gateway` / `lifeboat-gateway`."""

from __future__ import annotations

from lifeboat.common.runtime import serve
from lifeboat.gateway.app import SERVICE, build_app
from lifeboat.gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    serve(build_app(settings), settings, SERVICE)


if __name__ == "__main__":
    main()
