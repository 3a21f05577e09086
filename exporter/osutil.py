"""Linux process tuning: the FOCUS reader process's priority and parent-death signal, glibc's allocator set for
many threads and large buffers, freed heap returned.

All best effort: elsewhere (macOS, musl, a refused call) they do nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from typing import Any

log = logging.getLogger(__name__)

BACKGROUND_NICE = 10
PR_SET_PDEATHSIG = 1


def _libc(name: str, argtypes: list[Any] | None = None, restype: Any = ctypes.c_int) -> Any | None:
    """A C library function (on Linux), or None where there is none by that name."""
    if sys.platform != "linux":
        return None
    try:
        fn = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    if argtypes is not None:
        fn.argtypes = argtypes
    fn.restype = restype
    return fn


def become_background_child(nice: int = BACKGROUND_NICE) -> None:
    """For a helper process the exporter starts: lower its CPU priority (the threads it starts inherit it), and
    have the kernel kill it when the exporter goes away, kill -9 included, so that none outlives the exporter."""
    if sys.platform != "linux":
        return
    try:
        os.nice(nice)
    except OSError:
        log.debug("could not lower the process's priority", exc_info=True)
    prctl = _libc("prctl")
    if prctl is None:
        return
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the exporter died before prctl took effect
        os._exit(1)


_malloc_trim = _libc("malloc_trim", [ctypes.c_size_t])  # glibc only (musl has none)

M_ARENA_MAX = -8  # glibc's mallopt parameters
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20


def tune_malloc(arenas: int = 2) -> bool:
    """glibc's allocator set for a long-running server with many threads and large short-lived buffers.

    - ``M_ARENA_MAX``: glibc makes up to 8 arenas per core, one for each thread that finds the others busy.
      With 50 scrape threads each refresh left its fragments in another arena, and the RSS between refreshes
      crept up by ~8 MB a refresh (the soak in docs/reliability.md); with two it stays level.
    - ``M_MMAP_THRESHOLD`` fixed at 1 MB: by default, freeing a large mmapped block raises the threshold to
      that size (up to 32 MB), after which the 14 MB bodies of a 100k-series exposition came from the heap
      and were not all given back after a snapshot was replaced. Fixed, every block of 1 MB or more is its own
      mapping, returned to the system when freed.

    Call it before the threads start. Returns whether glibc took both (False elsewhere).
    """
    mallopt = _libc("mallopt", [ctypes.c_int, ctypes.c_int])
    if _malloc_trim is None or mallopt is None:  # not glibc
        return False
    return bool(mallopt(M_ARENA_MAX, arenas)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def release_freed_memory() -> None:
    """Return the heap that Python objects freed to the OS. glibc keeps it in its arenas otherwise, so the RSS
    between two refreshes would creep up by the fragments each refresh leaves behind."""
    if _malloc_trim is not None:
        _malloc_trim(0)
