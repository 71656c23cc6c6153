"""Keep the resident set near what is actually in use, for services that move bulk data.

Threads each handling buffers of a few MiB (filesync's file reads, backup's parts and chunks)
make glibc's allocator grow one arena per thread and raise its mmap threshold after the first
frees, so freed buffers stay resident: a 10,000-file sync peaked at over 200 MB for ~30 MB of
live data. Two arenas and a fixed mmap threshold (big buffers mapped and unmapped, never
cached in an arena) keep it near 110 MB. The same as `MALLOC_ARENA_MAX=2` and
`MALLOC_MMAP_THRESHOLD_=262144` in the environment, but set by the process itself, so it holds
however the service is started. Glibc only; elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_ARENA_MAX = -8
_M_MMAP_THRESHOLD = -3


def bound_malloc(arenas: int = 2, mmap_threshold: int = 256 * 1024) -> bool:
    """Call before the worker threads start; True when the allocator took both settings."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas)) and bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
