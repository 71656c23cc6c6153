from __future__ import annotations

from faststream.asgi import AsgiFastStream

from lifeboat.common.runtime import ServiceRuntime, cluster_file_check
from lifeboat.monitor.settings import MonitorSettings

SERVICE = "monitor"


def build_app(settings: MonitorSettings) -> AsgiFastStream:
    runtime = ServiceRuntime(SERVICE, settings)
    runtime.health.add("clusters", cluster_file_check(settings))
    return runtime.asgi_app()
