"""Background refreshes: one worker per source, each refreshing its source when it is due, and one burn worker
per AI source, running the burn rate's light refresh (``refresh_burn``) beside it.

When a source is due, and what a refresh does, is the engine's (``App.due_at``, ``App.refresh``,
with the rules of ``exporter.timing``); the scheduler only runs it, through the ``Refresher``
protocol. Time comes from a clock object so that tests drive it without sleeping:
``run_pending()`` runs every source that is due at the clock's current time.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from exporter.osutil import release_freed_memory
from exporter.timing import utc_now

log = logging.getLogger(__name__)


class Refresher(Protocol):
    """What the scheduler drives: its sources, when each is next due, a refresh, and a snapshot rebuild."""

    def source_names(self) -> Sequence[str]:
        """The sources, in the configuration's order."""
        ...

    def due_at(self, name: str) -> float:
        """Unix time at which the source is next due (now or earlier: due)."""
        ...

    def refresh(self, name: str) -> object:
        """Refresh the source now; logs and records its own failures."""
        ...

    def rebuild_snapshot(self) -> object:
        """Build and publish the exposition again (the clock moved to another hour)."""
        ...


@runtime_checkable
class BurnRefresher(Protocol):
    """A refresher with burn rates: the sources that have one, when each is due, and the light refresh."""

    def burn_sources(self) -> Sequence[str]: ...

    def burn_due_at(self, name: str) -> float:
        """Unix time at which the source's burn refresh is next due (now or earlier: due)."""
        ...

    def refresh_burn(self, name: str) -> object:
        """Fetch and publish the source's burn rate now; logs, backs off and keeps the last data on failure."""
        ...


@runtime_checkable
class HistoryRefresher(Protocol):
    """A refresher with a history to fetch once per source (``exporter.history``)."""

    def history_due(self, name: str) -> bool:
        """The source's history does not reach back as far as it should yet."""
        ...

    def refresh_history(self, name: str) -> object:
        """Fetch what the source's history still needs; logs and records its own failures."""
        ...


class Scheduler:
    """Runs ``refresher.refresh(source)`` for each source when it is due, and ``refresh_burn`` likewise.

    A source's burn worker is a thread of its own: a slow daily refresh never delays the burn rate, and
    the burn refresh (one or two requests) never holds the daily one.
    """

    def __init__(self, refresher: Refresher, now: Callable[[], dt.datetime] = utc_now) -> None:
        self.refresher = refresher
        self.burn: BurnRefresher | None = refresher if isinstance(refresher, BurnRefresher) else None
        self.history: HistoryRefresher | None = refresher if isinstance(refresher, HistoryRefresher) else None
        self.now = now
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._wake: dict[str, threading.Event] = {}

    def run_pending(self) -> list[str]:
        """Refresh every due source, one after another; returns their names. For tests and benchmarks."""
        ran = []
        for name in self.refresher.source_names():
            if self.refresher.due_at(name) <= self.now().timestamp():
                self.refresher.refresh(name)
                ran.append(name)
        return ran

    def run_pending_history(self) -> list[str]:
        """Fetch every source's history that is due, one after another; returns their names. For tests.

        The workers do it right after a source's refresh, in the same thread (one fetch of a source at a time).
        """
        ran = []
        hist = self.history
        for name in self.refresher.source_names():
            if hist is not None and hist.history_due(name):
                hist.refresh_history(name)
                ran.append(name)
        return ran

    def run_pending_burn(self) -> list[str]:
        """Run every burn refresh that is due, one after another; returns their sources. For tests and benchmarks.

        Apart from ``run_pending``, as the burn workers are apart from the source workers.
        """
        ran = []
        burn = self.burn
        for name in burn.burn_sources() if burn else ():
            if burn and burn.burn_due_at(name) <= self.now().timestamp():
                burn.refresh_burn(name)
                ran.append(name)
        return ran

    def start(self) -> None:
        for name in self.refresher.source_names():
            ev = threading.Event()
            self._wake[name] = ev
            t = threading.Thread(target=self._worker, args=(name, ev), name=f"refresh-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        for name in self.burn.burn_sources() if self.burn else ():
            ev = threading.Event()
            self._wake[f"burn:{name}"] = ev
            t = threading.Thread(target=self._burn_worker, args=(name, ev), name=f"burn-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._ticker, name="snapshot-ticker", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for ev in self._wake.values():
            ev.set()
        for t in self._threads:
            t.join(timeout)

    def _worker(self, name: str, wake: threading.Event) -> None:
        while not self._stop.is_set():
            try:
                delay = self.refresher.due_at(name) - self.now().timestamp()
                if delay > 0:
                    # wake at least every minute so a clock jump or a cache change is noticed
                    wake.wait(min(delay, 60.0))
                    wake.clear()
                    continue
                self.refresher.refresh(name)
                if self.history is not None and self.history.history_due(name):
                    self.history.refresh_history(name)  # once, after the first refresh; resumed after a later one
                release_freed_memory()  # a refresh frees a few hundred thousand objects: keep the RSS level
            except Exception:  # the worker must survive anything; the refresher already logs
                log.exception("refresh worker for %s failed; retrying in 60s", name)
                self._stop.wait(60.0)

    def _burn_worker(self, name: str, wake: threading.Event) -> None:
        burn = self.burn
        assert burn is not None
        while not self._stop.is_set():
            try:
                delay = burn.burn_due_at(name) - self.now().timestamp()
                if delay > 0:
                    wake.wait(min(delay, 60.0))
                    wake.clear()
                    continue
                burn.refresh_burn(name)
            except Exception:  # the worker must survive anything; refresh_burn already logs its failures
                log.exception("burn worker for %s failed; retrying in 60s", name)
                self._stop.wait(60.0)

    def _ticker(self) -> None:
        """Rebuild the snapshot when the hour changes: the last hour and month-to-date move with the clock."""
        last = self.now().replace(minute=0, second=0, microsecond=0)
        while not self._stop.wait(15.0):
            hour = self.now().replace(minute=0, second=0, microsecond=0)
            if hour != last:
                last = hour
                try:
                    self.refresher.rebuild_snapshot()
                except Exception:
                    log.exception("snapshot rebuild failed")
