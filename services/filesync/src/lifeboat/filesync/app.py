from __future__ import annotations

from faststream.asgi import AsgiFastStream

from lifeboat.common.health import ComponentHealth
from lifeboat.common.runtime import ServiceRuntime
from lifeboat.common.s3 import check_s3, make_s3_client
from lifeboat.filesync.settings import FilesyncSettings

SERVICE = "filesync"


def build_app(settings: FilesyncSettings) -> AsgiFastStream:
    runtime = ServiceRuntime(SERVICE, settings)
    s3 = make_s3_client(settings)

    async def s3_health() -> ComponentHealth:
        return await check_s3(s3, settings.s3_buckets, runtime.breakers, settings.s3_timeout_seconds)

    runtime.health.add("s3", s3_health)
    return runtime.asgi_app()
