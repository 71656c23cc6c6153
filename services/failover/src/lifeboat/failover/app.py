from __future__ import annotations

from faststream.asgi import AsgiFastStream

from lifeboat.common.runtime import ServiceRuntime, cluster_file_check
from lifeboat.failover.settings import FailoverSettings

SERVICE = "failover"


def build_app(settings: FailoverSettings) -> AsgiFastStream:
    runtime = ServiceRuntime(SERVICE, settings)
    runtime.health.add("clusters", cluster_file_check(settings))
    return runtime.asgi_app()
