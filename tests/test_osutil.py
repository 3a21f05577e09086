"""Thread priority and heap release used by the refresh path (Linux; elsewhere they must be harmless no-ops)."""

from __future__ import annotations

import os
import platform
import sys
import threading
from pathlib import Path

import pytest

from exporter import osutil
from exporter.osutil import lower_thread_priority


def _nice(tid: int) -> int:
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # field 19: nice


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_lowers_only_the_calling_thread_and_the_threads_it_starts() -> None:
    seen: dict[str, int] = {}

    def child() -> None:
        seen["child"] = _nice(threading.get_native_id())

    def worker() -> None:
        lower_thread_priority(7)
        seen["worker"] = _nice(threading.get_native_id())
        t = threading.Thread(target=child)
        t.start()
        t.join()

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"worker": before + 7, "child": before + 7}
    assert _nice(threading.get_native_id()) == before


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_malloc_trim_is_found_and_called_on_glibc() -> None:
    assert osutil._malloc_trim is not None
    junk = [bytes(1000) for _ in range(10_000)]
    del junk
    osutil.release_freed_memory()
    assert osutil._malloc_trim(0) in (0, 1)  # 1: memory was released, 0: none left to release
