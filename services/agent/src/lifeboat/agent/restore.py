"""The backup service's restore into this node: copy the recovered database it serves, then
swap it into the data directory (lifeboat.pg.swap). The copy and the swap run in worker
threads: the copy takes as long as a base backup.

The copy is made beside the data directory while the node runs on; the node is stopped only
for the swap, which the agent does only once it has checked again that the node is not
writable and read the topology again (the copy may have taken hours). A copy cut short is
removed and the node's data is left as it was.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from psycopg.conninfo import make_conninfo
from pydantic import SecretStr

from lifeboat.common.state import Topology
from lifeboat.pg.datadir import DataDir
from lifeboat.pg.swap import start_swapped, swap_in
from lifeboat.pg.tools import ToolError


def starts_restored(node: str, topology: Topology | None, error: str | None) -> tuple[bool, str]:
    """Whether the restored node is started, and why: only when the topology names it
    primary with no operation under way (or there is no topology yet). Running, any other
    node would be a primary beside the cluster's; it is left stopped, armed as a standby."""
    if error is not None:
        return False, f"left stopped: the topology cannot be read ({error})"
    if topology is None:
        return True, "started read-only: no topology yet"
    if topology.primary == node and topology.operation is None:
        return True, f"started read-only: named primary at epoch {topology.epoch}"
    op = topology.operation
    busy = "" if op is None else f" (an operation making {op.new_primary} primary under way)"
    return False, (
        f"left stopped: the topology names {topology.primary or 'no node'} primary at epoch "
        f"{topology.epoch}{busy}, and started it would be a primary beside it; a start "
        "brings it up in recovery, read-only, and it is not rejoined unless an operator asks"
    )


def copy_restored(
    data: DataDir,
    *,
    host: str,
    port: int,
    user: str,
    password: SecretStr | None,
    restore_id: str,
    timeout: float,
) -> Path:
    """pg_basebackup from the served copy beside the data directory; returns where. What an
    earlier copy cut short (an agent killed meanwhile) left beside it is removed first."""
    for stale in data.path.parent.glob(f"{data.path.name}.restore-*"):
        shutil.rmtree(stale, ignore_errors=True)
    part = data.path.with_name(f"{data.path.name}.restore-{restore_id}")
    part.mkdir(mode=0o700)
    data.user.own(part)
    source = make_conninfo("", host=host, port=port, user=user, application_name="lifeboat-restore")
    env = None if password is None else {"PGPASSWORD": password.get_secret_value()}
    try:
        # -w: never a password prompt, with or without a terminal
        data.pg(
            "pg_basebackup", "-w", "-D", str(part), "-d", source, "-X", "stream", "-c", "fast",
            env=env, timeout=timeout,
        )  # fmt: skip
    except ToolError:
        shutil.rmtree(part, ignore_errors=True)
        raise
    return part


def swap_restored(data: DataDir, part: Path, restore_id: str, start: bool) -> Path:
    """Stop the node, swap the copy in, and start it when `start`; returns where the node's
    own directory is kept. A node not started is armed as a standby and held (swap_in):
    whoever starts it next (a reboot, a container restart) brings it up in recovery, never
    writable beside the cluster's primary, and its agent does not have it rejoined."""
    log_file = data.path.parent / "postgres.log"
    was_running = data.running()
    try:
        data.stop("fast")
        kept = swap_in(part, data.path, restore_id, start=start)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        if was_running and not data.running():
            data.start(log_file)  # as it was
        raise
    if start:
        start_swapped(data, kept, restore_id, log_file)
    return kept
