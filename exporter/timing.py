"""When to refresh and what to fetch: the timing rules, as pure functions of a source's settings, its state and now.

The engine (``App``) applies them when a refresh ends (``next_after_success``/``next_after_failure``) and
when asked when a source is next due (``due_at``); the scheduler only runs what is due.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Protocol

from exporter.model import FetchWindow
from exporter.store import SourceState

BACKOFF_BASE = 30.0  # first retry after a failure, doubled each time
COLD_DAYS = 35  # a cold refresh's days besides the previous month (baselines 28 + 7); the history, the rest


class Timing(Protocol):
    """A source's timing settings (every source type has them, with the defaults of the configuration)."""

    @property
    def interval(self) -> float: ...
    @property
    def jitter(self) -> float: ...
    @property
    def backoff_max(self) -> float: ...
    @property
    def restatement_days(self) -> int: ...


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def next_midnight(now: dt.datetime) -> dt.datetime:
    return dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def fetch_window(src: Timing, state: SourceState, now: dt.datetime, cold: bool) -> FetchWindow:
    """The days one refresh fetches.

    Cold cache: the previous month and ``COLD_DAYS`` back, whichever is
    earlier, so baselines and the previous month have data (the older days
    are the history's: ``exporter.history``). Warm: from
    ``restatement_days`` before the last day fetched, so every day still open
    to restatement is fetched again and older days, final, never are.
    """
    today = now.date()
    prev_month_start = (today.replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    cold_start = min(prev_month_start, today - dt.timedelta(days=COLD_DAYS))
    if cold or state.fetched_through is None or state.fetched_through > today:
        # fetched "after" today: the clock went back (across a month end, the previous month may be missing)
        start = cold_start
    else:
        start = max(cold_start, min(state.fetched_through, today) - dt.timedelta(days=src.restatement_days))
    return FetchWindow(start=start, end=today, now=now)


def backoff_delay(src: Timing, failures: int, retry_after: float | None = None) -> float:
    delay = float(min(BACKOFF_BASE * 2 ** max(failures - 1, 0), src.backoff_max, src.interval))
    if retry_after:
        delay = max(delay, min(retry_after, src.backoff_max))
    return delay


def next_after_success(src: Timing, now: dt.datetime, rng: random.Random) -> float:
    return now.timestamp() + src.interval * (1 + rng.uniform(0, src.jitter))


def next_after_failure(
    src: Timing, now: dt.datetime, failures: int, retry_after: float | None, rng: random.Random
) -> float:
    delay = backoff_delay(src, failures, retry_after)
    return now.timestamp() + delay * (1 + rng.uniform(0, src.jitter))


def due_at(src: Timing, state: SourceState, config_hash: str, now: dt.datetime) -> float:
    """Unix time at which the source is next due (now or earlier: due); ``config_hash``: its settings' now."""
    if state.config_hash != config_hash:
        return 0.0
    due = float(state.next_refresh or 0.0)
    # further ahead than any interval, backoff or paid-call-cap wait can be: the clock went back
    # (an NTP correction), so refresh now rather than stall until the old clock's time comes round
    horizon = max(
        now.timestamp() + max(src.interval, src.backoff_max) * (1 + src.jitter), next_midnight(now).timestamp()
    )
    if due > horizon + 1.0:
        return 0.0
    # a new UTC month: refresh at once rather than up to an interval later, so that the month just closed
    # is final and the provider's own forecast is for the new month (it is the old month's until then)
    month_start = dt.datetime.combine(now.date().replace(day=1), dt.time(), tzinfo=dt.UTC).timestamp()
    if state.last_attempt is not None and state.last_attempt < month_start < due:
        return month_start
    return due
