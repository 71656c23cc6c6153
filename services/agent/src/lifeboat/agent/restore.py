"""The backup service's restore into this node: copy the recovered database it serves, then
swap it into the data directory (lifeboat.pg.swap). Runs in a worker thread: the copy takes
as long as a base backup.

The copy is made beside the data directory while the node runs on; the node is stopped only
for the swap. A copy cut short is removed and the node's data is left as it was.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from psycopg.conninfo import make_conninfo
from pydantic import SecretStr

from lifeboat.common.state import Topology
from lifeboat.pg.datadir import DataDir
from lifeboat.pg.swap import start_swapped, swap_in
from lifeboat.pg.tools import ToolError


def starts_restored(node: str, topology: Topology | None, error: str | None) -> tuple[bool, str]:
    """Whether the restored node is started, and why: only when the topology names it
    primary (or there is none yet). Running, any other node would be a writable node the
    topology does not name, which its agent stops at once."""
    if error is not None:
        return False, f"left stopped: the topology cannot be read ({error})"
    if topology is None:
        return True, "started read-only: no topology yet"
    if topology.primary == node:
        return True, f"started read-only: named primary at epoch {topology.epoch}"
    return False, (
        f"left stopped: the topology names {topology.primary or 'no node'} primary at epoch "
        f"{topology.epoch}, and started it would be a primary beside it"
    )


@dataclass(frozen=True)
class Copied:
    kept: Path  # the node's own data directory, put aside
    started: bool


def restore_from(
    data: DataDir,
    *,
    host: str,
    port: int,
    user: str,
    password: SecretStr | None,
    restore_id: str,
    start: bool,
    refusal: Callable[[], str | None],
) -> Copied:
    """pg_basebackup from the served copy beside the data directory, then the swap; the node
    is started on it when `start` (else left stopped, its data swapped in). `refusal` is
    asked again right before the node is stopped for the swap: the copy takes as long as a
    base backup, and the node may have been promoted meanwhile."""
    part = data.path.with_name(f"{data.path.name}.restore-{restore_id}")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(mode=0o700)
    data.user.own(part)
    source = make_conninfo("", host=host, port=port, user=user, application_name="lifeboat-restore")
    env = None if password is None else {"PGPASSWORD": password.get_secret_value()}
    try:
        data.pg(
            "pg_basebackup",
            "-D",
            str(part),
            "-d",
            source,
            "-X",
            "stream",
            "-c",
            "fast",
            env=env,
            timeout=24 * 3600,
        )
    except ToolError:
        shutil.rmtree(part, ignore_errors=True)
        raise
    log_file = data.path.parent / "postgres.log"
    was_running = data.running()
    try:
        if (why := refusal()) is not None:
            raise RuntimeError(f"refused before the swap: {why}; its data is left as it was")
        data.stop("fast")
        kept = swap_in(part, data.path, restore_id)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        if was_running and not data.running():
            data.start(log_file)  # as it was
        raise
    if start:
        start_swapped(data, kept, restore_id, log_file)
    return Copied(kept, start)
