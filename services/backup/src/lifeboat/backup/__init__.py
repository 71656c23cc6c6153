"""Lifeboat backup service: pg_dump / pg_basebackup and WAL into S3, verified, restorable.

The names below are its public entry points, for the benchmark; everything else is internal.
"""

from lifeboat.backup.catalogue import Catalogue, Listed
from lifeboat.backup.manifest import Manifest
from lifeboat.backup.nodes import Connections
from lifeboat.backup.pipeline import Transfer
from lifeboat.backup.plan import RestorePlan
from lifeboat.backup.restore import RestoreContext, free_port, restore_dumps, restore_physical
from lifeboat.backup.wal import Archiver

__all__ = [
    "Archiver",
    "Catalogue",
    "Connections",
    "Listed",
    "Manifest",
    "RestoreContext",
    "RestorePlan",
    "Transfer",
    "free_port",
    "restore_dumps",
    "restore_physical",
]
