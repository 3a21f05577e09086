"""Linux process tuning for the refresh path: lower the CPU priority of background threads, return freed heap.

Both are best effort: elsewhere (macOS, musl, a refused call) they do nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

BACKGROUND_NICE = 10


def lower_thread_priority(nice: int = BACKGROUND_NICE) -> None:
    """Lower the calling thread's CPU priority. On Linux the nice value is per thread, and threads started by a
    thread inherit it."""
    if sys.platform != "linux":
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError:
        log.debug("could not lower a thread's priority", exc_info=True)


def _load_malloc_trim() -> Callable[[int], int] | None:
    if sys.platform != "linux":
        return None
    try:
        fn = ctypes.CDLL(None).malloc_trim  # glibc only (musl has none)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn  # type: ignore[no-any-return]


_malloc_trim = _load_malloc_trim()


def release_freed_memory() -> None:
    """Return the heap that Python objects freed to the OS. glibc keeps it in its arenas otherwise, so the RSS
    between two refreshes would creep up by the fragments each refresh leaves behind."""
    if _malloc_trim is not None:
        _malloc_trim(0)
