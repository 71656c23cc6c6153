"""A restored copy taking a node's place in its data directory, run where that directory is:
by the backup service for nodes the cluster file places on its host, by the node's agent for
the others (it copies the restored database from where the backup service serves it).

The node's own directory is touched only once the copy is whole and has recovered: it is
renamed to `<data>.replaced-<restore id>` (kept, never deleted here) and the copy moved in.
If the node then does not start, its own directory goes back and starts again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lifeboat.pg.datadir import DataDir
from lifeboat.pg.recovery import (
    DROPPED_FROM_RESTORES,
    HELD_MARKER,
    LOCAL_TRUST,
    RESTORING_MARKER,
)
from lifeboat.pg.replication import OWN_CONFIG


def swap_in(restored: Path, data_dir: Path, restore_id: str, *, start: bool = True) -> Path:
    """The restored copy takes the node's place, with the node's own settings; returns where
    the node's old directory is kept. The copy comes up read-only: recovered and promoted, it
    is a primary of its own beside the cluster's, and it takes writes only once the failover
    service names it primary (the topology's own primary, restored, is given its writes back;
    another node is for an operator's forced failover to choose). To be started (`start`),
    it keeps the restoring marker until it runs, so that no agent makes it a standby
    meanwhile; else it is armed as a standby of no primary before it takes the node's place,
    and held there (HELD_MARKER), so that whoever starts it brings it up in recovery."""
    kept = data_dir.with_name(f"{data_dir.name}.replaced-{restore_id}")
    for name in OWN_CONFIG:
        if (data_dir / name).exists():
            shutil.copy2(data_dir / name, restored / name)
    hba = restored / "pg_hba.conf"
    if not (data_dir / "pg_hba.conf").exists() and hba.exists():
        # A node without its own (its directory lost): the scratch restore's trust of local
        # connections must not become the node's.
        lines = [line for line in hba.read_text().splitlines() if line != LOCAL_TRUST]
        hba.write_text("\n".join(lines) + "\n")
    auto = restored / "postgresql.auto.conf"
    lines = [
        line
        for line in (auto.read_text().splitlines() if auto.exists() else [])
        if line.split("=", 1)[0].strip() not in DROPPED_FROM_RESTORES
    ]
    lines += ["# lifeboat: restored into this node", "default_transaction_read_only = 'on'"]
    auto.write_text("\n".join(lines) + "\n")
    for stale in ("standby.signal", "recovery.signal", "postmaster.pid", "backup_label.old"):
        (restored / stale).unlink(missing_ok=True)
    (restored / (RESTORING_MARKER if start else "standby.signal")).touch()
    if not start:
        (restored / HELD_MARKER).touch()
    os.rename(data_dir, kept)
    try:
        os.rename(restored, data_dir)
    except BaseException:
        os.rename(kept, data_dir)
        raise
    return kept


def start_swapped(node: DataDir, kept: Path, restore_id: str, log_file: Path) -> None:
    """Start the node on the copy just swapped in; if it does not start, put its own data
    back and start that, and raise saying where the copy is."""
    marker = node.path / RESTORING_MARKER
    try:
        node.start(log_file)
        marker.unlink(missing_ok=True)  # it runs: its agent arms its next start
    except Exception as exc:
        failed = node.path.with_name(f"{node.path.name}.failed-{restore_id}")
        node.stop("immediate")
        os.rename(node.path, failed)
        os.rename(kept, node.path)
        node.start(log_file)
        (failed / RESTORING_MARKER).unlink(missing_ok=True)
        raise RuntimeError(
            f"{node.path} did not start on the restored data ({exc}): its own data is back "
            f"and running, the restored copy is in {failed}"
        ) from exc
