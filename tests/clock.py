"""Fixed clocks for tests that start the real ``spend-exporter`` in a subprocess.

In-process tests pass ``now=`` (``conftest.Clock``). A subprocess gets its clock from libfaketime (the
Debian package ``faketime``, which ``make test`` installs): preloaded, it starts the process's wall clock
at ``FIXED_NOW`` and lets it tick on from there, so a test's expectations never depend on the day, the
month or the hour the suite happens to run. Every clock ticks at the real rate, so ``time.sleep`` behaves
(faking the wall clock alone breaks it: libfaketime then answers EINVAL). A timed wait on a lock does not:
``Event.wait(t)``, ``Thread.join(t)`` and ``Lock.acquire(timeout=t)`` never time out in such a process
(Python waits with ``sem_clockwait`` on CLOCK_MONOTONIC, for a deadline read from the faked clock). An
exporter started so refreshes the sources due when it starts, and then only when woken: no refresh on its
interval or after a backoff, no refresh timeout, no rebuild of the snapshot when the hour changes.
Go binaries (Prometheus, Alertmanager, promtool) read the clock without libc and ignore it.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
from collections.abc import Mapping

import pytest

# mid-month, mid-day: the previous month, the month so far and the hour are all unambiguous
FIXED_NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")) + sorted(
        glob.glob("/usr/lib/faketime/libfaketime.so.1")
    )
    if not found:
        pytest.fail("libfaketime is missing: install the Debian package faketime (make test-deps does)")
    return found[0]


def fixed_clock_env(env: Mapping[str, str] | None = None, at: dt.datetime = FIXED_NOW) -> dict[str, str]:
    """``env`` (default: this process's environment) for a subprocess whose clock starts at ``at``."""
    out = dict(os.environ if env is None else env)
    preload = [p for p in out.get("LD_PRELOAD", "").split(":") if p and "faketime" not in p]
    out["LD_PRELOAD"] = ":".join([libfaketime(), *preload])
    out["FAKETIME"] = "@" + at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    out["FAKETIME_DONT_RESET"] = "1"  # a child process keeps its parent's clock rather than restarting at ``at``
    # set by a libfaketime already in this process (a whole test run under a shifted clock): inherited, it would
    # start the subprocess's clock not at ``at`` but as far after it as this process has been running
    out.pop("FAKETIME_SHARED", None)
    out["TZ"] = "UTC"
    return out
