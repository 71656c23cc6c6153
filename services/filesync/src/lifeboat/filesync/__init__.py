"""Lifeboat filesync service: application file directories to S3 and back, checksummed.

The names below are its public entry points, for benchmarks and the dev stack; everything
else is internal.
"""

from lifeboat.common.malloc import bound_malloc
from lifeboat.filesync.check import check
from lifeboat.filesync.index import Index
from lifeboat.filesync.service import SetWorker, Timing
from lifeboat.filesync.store import SetStore, Sizes

__all__ = ["Index", "SetStore", "SetWorker", "Sizes", "Timing", "bound_malloc", "check"]
