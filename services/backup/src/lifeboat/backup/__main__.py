"""`python -m lifeboat.backup` / `lifeboat-backup`."""

from __future__ import annotations

from lifeboat.backup.app import SERVICE, build_app
from lifeboat.backup.settings import BackupSettings
from lifeboat.common.malloc import bound_malloc
from lifeboat.common.runtime import serve


def main() -> None:
    bound_malloc()  # before any thread: transfer buffers are freed back, not kept per thread
    settings = BackupSettings()
    serve(build_app(settings), settings, SERVICE)


if __name__ == "__main__":
    main()
