"""Node-local work on data directories this host manages: clean stops, read-only starts, and
the data directory of a node the cluster file places here (rejoins: `lifeboat.pg.rejoin`).

Runs in a worker thread; the SQL side of the same actions is in `nodes.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

from lifeboat.pg.binaries import find_bindir
from lifeboat.pg.datadir import DataDir
from lifeboat.pg.osuser import OsUser


def stop_cleanly(data: DataDir) -> str:
    """Shut a local node down (fast mode) and return its last checkpoint's location."""
    data.pg("pg_ctl", "-D", str(data.path), "-m", "fast", "-w", "-t", "30", "stop", timeout=40)
    return data.latest_checkpoint()


def in_recovery_at_next_start(data: DataDir) -> None:
    """`standby.signal` in the data directory (owned by PostgreSQL's account): the next start
    is in recovery, read-only, whatever the node was when it stopped."""
    signal_file = data.path / "standby.signal"
    signal_file.touch()
    os.chown(signal_file, data.user.uid, data.user.gid)


def local_data_dir(path: Path, os_user: str | None, bindir: Path | None) -> DataDir:
    return DataDir(path, OsUser.for_postgres(os_user), find_bindir(bindir))
