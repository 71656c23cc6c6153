"""`python -m lifeboat.agent` / `lifeboat-agent`."""

from __future__ import annotations

from lifeboat.agent.app import SERVICE, build_app
from lifeboat.agent.settings import AgentSettings
from lifeboat.common.runtime import serve


def main() -> None:
    settings = AgentSettings()  # the node and its data directory come from the environment
    serve(build_app(settings), settings, SERVICE)


if __name__ == "__main__":
    main()
