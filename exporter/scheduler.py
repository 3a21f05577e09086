"""Background refreshes: one worker per source, interval + jitter, backoff, timeout, paid-call cap.

The scheduler decides *what* to fetch (the window) and *when*; the refresh
itself (provider call, normalisation, store, snapshot) is ``App.refresh``.
Time comes from a clock object so that tests drive it without sleeping:
``run_pending()`` runs every source that is due at the clock's current time.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from exporter.model import FetchWindow
from exporter.osutil import release_freed_memory
from exporter.sources.base import SourceBase
from exporter.store import SourceState

if TYPE_CHECKING:
    from exporter.app import App

log = logging.getLogger(__name__)

BACKOFF_BASE = 30.0  # first retry after a failure, doubled each time


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def next_midnight(now: dt.datetime) -> dt.datetime:
    return dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def fetch_window(src: SourceBase, state: SourceState, now: dt.datetime, cold: bool) -> FetchWindow:
    """The days one refresh fetches.

    Cold cache: the previous month and ``history_days`` back, whichever is
    earlier, so baselines and the previous month have data. Warm: from
    ``restatement_days`` before the last day fetched, so every day still open
    to restatement is fetched again and older days, final, never are.
    """
    today = now.date()
    prev_month_start = (today.replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    cold_start = min(prev_month_start, today - dt.timedelta(days=src.history_days))
    if cold or state.fetched_through is None or state.fetched_through > today:
        # fetched "after" today: the clock went back (across a month end, the previous month may be missing)
        start = cold_start
    else:
        start = max(cold_start, min(state.fetched_through, today) - dt.timedelta(days=src.restatement_days))
    return FetchWindow(start=start, end=today, now=now)


def backoff_delay(src: SourceBase, failures: int, retry_after: float | None = None) -> float:
    delay = float(min(BACKOFF_BASE * 2 ** max(failures - 1, 0), src.backoff_max, src.interval))
    if retry_after:
        delay = max(delay, min(retry_after, src.backoff_max))
    return delay


class Scheduler:
    """Runs ``app.refresh(source)`` for each source when it is due."""

    def __init__(
        self,
        app: App,
        now: Callable[[], dt.datetime] = utc_now,
        rng: random.Random | None = None,
    ) -> None:
        self.app = app
        self.now = now
        self.rng = rng or random.Random()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._wake: dict[str, threading.Event] = {}

    # -- planning ----------------------------------------------------------------------
    def due_at(self, name: str) -> float:
        """Unix time at which the source is next due (now or earlier: due)."""
        st = self.app.store.get_state(name)
        if st.config_hash != self.app.config_hash(name):
            return 0.0
        due = float(st.next_refresh or 0.0)
        # further ahead than any interval, backoff or paid-call-cap wait can be: the clock went back
        # (an NTP correction), so refresh now rather than stall until the old clock's time comes round
        src = self.app.source(name)
        now = self.now()
        horizon = max(
            now.timestamp() + max(src.interval, src.backoff_max) * (1 + src.jitter), next_midnight(now).timestamp()
        )
        if due > horizon + 1.0:
            return 0.0
        # a new UTC month: refresh at once rather than up to an interval later, so that the month just closed
        # is final and the provider's own forecast is for the new month (it is the old month's until then)
        month_start = dt.datetime.combine(now.date().replace(day=1), dt.time(), tzinfo=dt.UTC).timestamp()
        if st.last_attempt is not None and st.last_attempt < month_start < due:
            return month_start
        return due

    def next_after_success(self, src: SourceBase, now: dt.datetime) -> float:
        return now.timestamp() + src.interval * (1 + self.rng.uniform(0, src.jitter))

    def next_after_failure(self, src: SourceBase, now: dt.datetime, failures: int, retry_after: float | None) -> float:
        delay = backoff_delay(src, failures, retry_after)
        return now.timestamp() + delay * (1 + self.rng.uniform(0, src.jitter))

    # -- running -----------------------------------------------------------------------
    def run_pending(self) -> list[str]:
        """Refresh every due source, one after another; returns their names. For tests and ``once``."""
        ran = []
        for src in self.app.config.sources:
            if self.due_at(src.name) <= self.now().timestamp():
                self.app.refresh(src.name)
                ran.append(src.name)
        return ran

    def start(self) -> None:
        for src in self.app.config.sources:
            ev = threading.Event()
            self._wake[src.name] = ev
            t = threading.Thread(target=self._worker, args=(src.name, ev), name=f"refresh-{src.name}", daemon=True)
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
                delay = self.due_at(name) - self.now().timestamp()
                if delay > 0:
                    # wake at least every minute so a clock jump or a cache change is noticed
                    wake.wait(min(delay, 60.0))
                    wake.clear()
                    continue
                self.app.refresh(name)
                release_freed_memory()  # a refresh frees a few hundred thousand objects: keep the RSS level
            except Exception:  # the worker must survive anything; App.refresh already logs
                log.exception("refresh worker for %s failed; retrying in 60s", name)
                self._stop.wait(60.0)

    def _ticker(self) -> None:
        """Rebuild the snapshot when the hour changes: the last hour and month-to-date move with the clock."""
        last = self.now().replace(minute=0, second=0, microsecond=0)
        while not self._stop.wait(15.0):
            hour = self.now().replace(minute=0, second=0, microsecond=0)
            if hour != last:
                last = hour
                try:
                    self.app.rebuild_snapshot()
                except Exception:
                    log.exception("snapshot rebuild failed")
