"""Replication rules in one place: slot names, a standby's primary_conninfo, its settings.

Lifeboat owns a few settings in postgresql.auto.conf (`MANAGED`); a node turned into a
standby keeps everything else it had, its own port, sockets and access rules above all.
"""

from __future__ import annotations

from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

MANAGED = (
    "primary_conninfo",
    "primary_slot_name",
    "synchronous_standby_names",
    "default_transaction_read_only",
)
# A node's own configuration files: pg_rewind and pg_basebackup bring the source's along.
OWN_CONFIG = ("postgresql.conf", "pg_hba.conf", "pg_ident.conf")
# What streaming replication, failover and pg_rewind need of every node's postgresql.conf.
SERVER_SETTINGS = (
    "wal_level = replica",
    "max_wal_senders = 10",
    "max_replication_slots = 10",
    "wal_keep_size = '128MB'",
    "wal_log_hints = on",
    "hot_standby = on",
    "hot_standby_feedback = on",
    "wal_receiver_status_interval = '1s'",
)


def replication_slot(node: str) -> str:
    """The physical replication slot a standby streams through: its node name, as slot names
    allow only lower-case letters, digits and underscores."""
    return node.lower().replace("-", "_")


def standby_conninfo(template: str, *, host: str, port: int, application_name: str) -> str:
    """`template`'s conninfo (replication user, passfile, TLS) pointed at a new upstream; the
    application name is the standby's node name, which pg_stat_replication then shows."""
    params = conninfo_to_dict(template)
    params.update(host=host, port=str(port), application_name=application_name)
    return make_conninfo("", **params)


def write_standby_config(data_dir: Path, conninfo: str, slot: str) -> list[Path]:
    """Make `data_dir` a standby of `conninfo` through `slot`; returns the files written."""
    auto = data_dir / "postgresql.auto.conf"
    kept = [
        line
        for line in (auto.read_text().splitlines() if auto.exists() else [])
        if line.split("=", 1)[0].strip() not in MANAGED
    ]
    quoted = conninfo.replace("'", "''")
    kept += [f"primary_conninfo = '{quoted}'", f"primary_slot_name = '{slot}'"]
    auto.write_text("\n".join(kept) + "\n")
    signal = data_dir / "standby.signal"
    signal.touch()
    return [auto, signal]
