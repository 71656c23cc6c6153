from __future__ import annotations

from faststream.asgi import AsgiFastStream

from lifeboat.common.health import ComponentHealth
from lifeboat.common.runtime import ServiceRuntime, cluster_file_check
from lifeboat.common.s3 import check_s3, make_s3_client
from lifeboat.backup.settings import BackupSettings

SERVICE = "backup"


def build_app(settings: BackupSettings) -> AsgiFastStream:
    runtime = ServiceRuntime(SERVICE, settings)
    s3 = make_s3_client(settings)

    async def s3_health() -> ComponentHealth:
        return await check_s3(s3, settings.s3_buckets, runtime.breakers, settings.s3_timeout_seconds)

    runtime.health.add("s3", s3_health)
    runtime.health.add("clusters", cluster_file_check(settings))
    return runtime.asgi_app()
