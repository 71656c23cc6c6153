"""`python -m lifeboat.filesync` / `lifeboat-filesync`."""

from __future__ import annotations

from lifeboat.common.malloc import bound_malloc
from lifeboat.common.runtime import serve
from lifeboat.filesync.app import SERVICE, build_app
from lifeboat.filesync.settings import FilesyncSettings


def main() -> None:
    bound_malloc()
    settings = FilesyncSettings()
    serve(build_app(settings), settings, SERVICE)


if __name__ == "__main__":
    main()
