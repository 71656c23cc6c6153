from __future__ import annotations

from faststream.asgi import AsgiFastStream

from lifeboat.backup.settings import BackupSettings
from lifeboat.common.runtime import ServiceRuntime, cluster_file_check
from lifeboat.objstore.health import s3_check

SERVICE = "backup"


def build_app(settings: BackupSettings) -> AsgiFastStream:
    runtime = ServiceRuntime(SERVICE, settings)
    runtime.health.add("s3", s3_check(settings, runtime.breakers))
    runtime.health.add("clusters", cluster_file_check(settings))
    return runtime.asgi_app()
