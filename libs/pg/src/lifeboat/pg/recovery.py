"""Turning a restored base backup into a node that recovers to a target, then opens.

The restored copy keeps the source's configuration but for what must differ on the new node:
its port and sockets, no upstream to stream from, WAL fetched by `restore_command`, and the
recovery target. Those go last in postgresql.auto.conf, which wins over postgresql.conf.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lifeboat.pg.replication import MANAGED

# In a data directory while a restore swaps it in and starts it: a node agent leaves no
# standby.signal there meanwhile (see lifeboat.agent.node.arm), so the copy starts as the
# restore made it. Removed once it runs.
RESTORING_MARKER = "lifeboat.restoring"
# In a node's data directory that a restore left stopped on the restored data, armed as a
# standby of no primary: its agent does not ask to have it rejoined (a rejoin rewinds or
# clones it, and the restored data is gone). An operator's `lifeboat rejoin` still does.
HELD_MARKER = "lifeboat.restored-held"

# Settings of the source that must not follow it to a restored copy, and of the scratch
# restore that must not follow the copy into a node (lifeboat.pg.swap): the node's own apply.
DROPPED_FROM_RESTORES = (
    *MANAGED,
    "port",
    "unix_socket_directories",
    "listen_addresses",
    "restore_command",
    "archive_mode",
    "archive_command",
    "recovery_target",
    "recovery_target_time",
    "recovery_target_lsn",
    "recovery_target_timeline",
    "recovery_target_action",
)


@dataclass(frozen=True)
class RecoveryTarget:
    """Where recovery stops: a time, an LSN, or neither (the end of the WAL it is given).

    The backup's own point sets no `recovery_target` either: with `recovery_target =
    'immediate'` PostgreSQL (13 and later) stops only at a record read after consistency,
    and when the backup's WAL ends right at it (a backup from an idle standby: nothing
    written after it) recovery ends "before configured recovery target was reached",
    FATAL, and the restore fails. A restore to the backup's own point is given no archived
    WAL (RestorePlan.wal is empty), so without a target recovery replays the WAL the backup
    holds (past consistency, never short of it: PostgreSQL will not open before the
    backup's end) and promotes."""

    time: datetime | None = None
    lsn: str | None = None

    def settings(self) -> dict[str, str]:
        if self.time is not None:
            return {"recovery_target_time": self.time.isoformat(sep=" ")}
        if self.lsn is not None:
            return {"recovery_target_lsn": self.lsn}
        return {}


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def configure_recovery(
    data_dir: Path,
    *,
    port: int,
    socket_dir: Path,
    restore_command: str,
    target: RecoveryTarget,
    listen_addresses: str = "",
    extra: dict[str, str] | None = None,
) -> None:
    """Make `data_dir` (a base backup just extracted) recover to `target`, then promote."""
    auto = data_dir / "postgresql.auto.conf"
    kept = [
        line
        for line in (auto.read_text().splitlines() if auto.exists() else [])
        if line.split("=", 1)[0].strip() not in DROPPED_FROM_RESTORES
    ]
    settings = {
        "port": str(port),
        "unix_socket_directories": str(socket_dir),
        "listen_addresses": listen_addresses,
        "restore_command": restore_command,
        "archive_mode": "off",
        "recovery_target_timeline": "latest",
        "recovery_target_action": "promote",
        **target.settings(),
        **(extra or {}),
    }
    kept.append("# lifeboat: restored copy")
    kept += [f"{k} = {_quote(v)}" for k, v in settings.items()]
    auto.write_text("\n".join(kept) + "\n")
    # recovery.signal first: a node agent leaves standby.signal in a data directory that has
    # neither (see lifeboat.agent.node.arm).
    (data_dir / "recovery.signal").touch()
    for stale in ("standby.signal", "postmaster.pid", "postmaster.opts"):
        (data_dir / stale).unlink(missing_ok=True)


# A scratch copy reachable only through its private socket directory answers its owner
# without a password: restores and verification must not need the source's credentials.
LOCAL_TRUST = "local all all trust"


def trust_local_only(data_dir: Path) -> None:
    (data_dir / "pg_hba.conf").write_text(LOCAL_TRUST + "\n")
