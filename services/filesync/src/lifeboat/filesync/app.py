from __future__ import annotations

from faststream.asgi import AsgiFastStream

from lifeboat.common.runtime import ServiceRuntime
from lifeboat.filesync.settings import FilesyncSettings
from lifeboat.objstore.health import s3_check

SERVICE = "filesync"


def build_app(settings: FilesyncSettings) -> AsgiFastStream:
    runtime = ServiceRuntime(SERVICE, settings)
    runtime.health.add("s3", s3_check(settings, runtime.breakers))
    return runtime.asgi_app()
