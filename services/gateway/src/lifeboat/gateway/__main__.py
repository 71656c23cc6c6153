"""`python -m lifeboat.gateway` / `lifeboat-gateway`."""

from __future__ import annotations

import uvicorn

from lifeboat.common.log import configure_logging
from lifeboat.common.runtime import serve
from lifeboat.gateway.app import SERVICE, build_app
from lifeboat.gateway.settings import GatewaySettings

# uvloop starves connections once there are more than about 128 of them (wrk, 200
# connections: p99 0.8-1 s against 32 ms with asyncio's own loop, the same trivial app).
LOOP = "asyncio"


def create_app() -> object:
    """The app of one worker (uvicorn's factory when `LIFEBOAT_WORKERS` > 1)."""
    return build_app(GatewaySettings())


def main() -> None:
    settings = GatewaySettings()
    if settings.workers == 1:
        serve(build_app(settings), settings, SERVICE, loop=LOOP)
        return
    configure_logging(
        SERVICE, settings.instance_id, level=settings.log_level, fmt=settings.log_format
    )
    uvicorn.run(
        "lifeboat.gateway.__main__:create_app",
        factory=True,
        host=settings.http_host,
        port=settings.http_port,
        workers=settings.workers,
        loop=LOOP,
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )


if __name__ == "__main__":
    main()
