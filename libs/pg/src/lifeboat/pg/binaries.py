"""Where the PostgreSQL server binaries are (initdb, pg_ctl, pg_basebackup, pg_rewind, ...)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path


class PostgresNotFoundError(RuntimeError):
    pass


def find_bindir(configured: Path | None = None) -> Path:
    """`configured` if given, else initdb on PATH, pg_config's bindir, or the newest
    /usr/lib/postgresql/<major>/bin (Debian keeps the server binaries off PATH)."""
    if configured is not None:
        return configured
    if initdb := shutil.which("initdb"):
        return Path(os.path.realpath(initdb)).parent
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    raise PostgresNotFoundError(
        "PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) were not found. Install "
        "them, e.g. `apt-get install postgresql` on Debian/Ubuntu or `brew install postgresql` "
        "on macOS, or point LIFEBOAT_PG_BINDIR at their directory."
    )
