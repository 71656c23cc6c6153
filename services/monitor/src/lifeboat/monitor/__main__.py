"""`python -m lifeboat.monitor` / `lifeboat-monitor`."""

from __future__ import annotations

from lifeboat.common.runtime import serve
from lifeboat.monitor.app import SERVICE, build_app
from lifeboat.monitor.settings import MonitorSettings


def main() -> None:
    settings = MonitorSettings()
    serve(build_app(settings), settings, SERVICE)


if __name__ == "__main__":
    main()
