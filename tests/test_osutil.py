"""The reader process's priority and parent-death signal, and heap release (Linux; elsewhere harmless no-ops)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter import osutil


def _state(pid: int) -> str | None:
    """A process's state letter, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(sys.platform != "linux", reason="nice values and PR_SET_PDEATHSIG are Linux's")
def test_a_background_child_is_niced_and_dies_with_its_parent() -> None:
    """The FOCUS reader's set-up: a parent that is killed with -9 takes its reader with it."""
    child = (
        "import os, time\n"
        "from exporter.osutil import become_background_child\n"
        "become_background_child(7)\n"
        "print(os.getpid(), os.nice(0), flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {child!r}])\ntime.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        pid, nice = map(int, proc.stdout.readline().split())
        assert nice == os.nice(0) + 7
        assert _state(pid) not in (None, "Z")
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while _state(pid) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _state(pid) in (None, "Z")  # gone (or a zombie waiting for a PID 1 that does not reap)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_malloc_trim_is_found_and_called_on_glibc() -> None:
    assert osutil._malloc_trim is not None
    junk = [bytes(1000) for _ in range(10_000)]
    del junk
    osutil.release_freed_memory()
    assert osutil._malloc_trim(0) in (0, 1)  # 1: memory was released, 0: none left to release


def _count(script: str, mode: str) -> int:
    """What ``script`` prints, run in a fresh interpreter (the allocator set as ``mode`` says)."""
    out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


ARENAS = """
import ctypes, re, sys, tempfile, threading
from exporter.osutil import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc(2)
libc = ctypes.CDLL(None)
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]
barrier, keep = threading.Barrier(16), []
def work():
    barrier.wait()
    for _ in range(2000):
        keep.append(bytearray(4096))  # under the mmap threshold: from an arena, concurrently
threads = [threading.Thread(target=work) for _ in range(16)]
for t in threads:
    t.start()
for t in threads:
    t.join()
with tempfile.NamedTemporaryFile("r") as f:
    fp = libc.fopen(f.name.encode(), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    print(len(re.findall(r'<heap nr="[0-9]+">', f.read())))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's")
def test_malloc_arenas_are_capped() -> None:
    """16 threads allocating at once get arenas of their own, unless capped (as ``run`` does at start)."""
    assert _count(ARENAS, "tuned") == 2
    assert _count(ARENAS, "none") > 2  # glibc's default: up to 8 per core


MMAPPED = """
import ctypes, sys
from exporter.osutil import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc()
class MallInfo2(ctypes.Structure):
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(n, ctypes.c_size_t) for n in names.split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
body = bytearray(14 << 20)  # a 100k-series exposition
del body  # a snapshot replaced: by default glibc now raises its mmap threshold to 14 MB
before = libc.mallinfo2().hblks  # blocks that are mappings of their own
body = bytearray(14 << 20)
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_large_buffers_stay_mappings_of_their_own() -> None:
    """After a large buffer is freed, the next one is still mmapped (given back when freed), not heap."""
    assert _count(MMAPPED, "tuned") == 1
    assert _count(MMAPPED, "default") == 0  # glibc's dynamic threshold: from the heap
