"""The history in the cache: how far back each source's days are fetched, in which queries, and what that costs.

A source's first refresh fetches the recent days (``timing.fetch_window``); its history, the days before them back
to ``history_days`` or as far as its API serves (``SourceSpec.reach_months`` / ``reach_days``), is fetched once
afterwards by ``App.refresh_history``, newest first, in queries of at most ``SourceSpec.query_days`` days. Each
query's days are stored with the day from which the history is complete (``Store.replace(history_from=...)``), in
one transaction: a history stopped by an error or by the paid-call cap resumes where it stopped and never loses
what it stored. Days once fetched are final: later refreshes fetch only the restatement window.

``plan_history`` is the dry run: the queries, requests and dollars the history still needs, calling nothing.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from exporter.config import Config
from exporter.sources import SOURCES
from exporter.sources.base import SourceBase, SourceSpec
from exporter.store import Store

RECENT_DAYS = 70
"""Days the snapshot reads (baselines 28 + 7, the previous month up to 62): the store's ``cost_recent`` copy."""


def reach_start(spec: SourceSpec, today: dt.date) -> dt.date | None:
    """The oldest day the source type's API serves at daily granularity on ``today``; None: no limit."""
    first: dt.date | None = None
    if spec.reach_months is not None:
        m = today.year * 12 + today.month - 1 - spec.reach_months
        first = dt.date(m // 12, m % 12 + 1, 1)
    if spec.reach_days is not None:
        by_days = today - dt.timedelta(days=spec.reach_days)
        first = by_days if first is None else max(first, by_days)
    return first


def history_start(config: Config, src: SourceBase, today: dt.date) -> dt.date:
    """The oldest day of ``src`` the cache should hold: ``history_days`` back (the source's own if shorter),
    but no further than its API serves."""
    days = min(src.history_days or config.history_days, config.history_days)
    start = today - dt.timedelta(days=days)
    reach = reach_start(SOURCES[src.type], today)
    return start if reach is None else max(start, reach)


def chunks(first: dt.date, last: dt.date, query_days: int | None) -> list[tuple[dt.date, dt.date]]:
    """``first``..``last`` in spans of at most ``query_days`` days (None: one span), the newest first."""
    if last < first:
        return []
    if query_days is None:
        return [(first, last)]
    out = []
    end = last
    while end >= first:
        start = max(first, end - dt.timedelta(days=query_days - 1))
        out.append((start, end))
        end = start - dt.timedelta(days=1)
    return out


Span = tuple[dt.date, dt.date]


def owed(config: Config, src: SourceBase, today: dt.date, fetched_from: dt.date | None) -> list[Span]:
    """The queries of ``src``'s history still to fetch, newest first, given the day from which it is complete
    (None: nothing fetched yet, so the whole of it through ``today``)."""
    last = today if fetched_from is None else fetched_from - dt.timedelta(days=1)
    return chunks(history_start(config, src, today), last, SOURCES[src.type].query_days)


@dataclass(frozen=True)
class HistoryPlan:
    """What fetching one source's history still takes (``plan_history``)."""

    source: str
    provider: str
    first: dt.date | None
    """The oldest and newest days still to fetch (None: the history is complete)."""
    last: dt.date | None
    queries: int
    requests: int
    """API requests at least: one per query and listing; a listing of many pages makes more, each counted."""
    usd: float | None
    """``requests`` at the API's price; None: billed by the data each query scans (capped all the same)."""
    cap_usd: float | None
    """The source's ``max_api_cost_usd_per_day``: a history costing more takes more than a day."""

    @property
    def days_to_finish(self) -> int:
        """UTC days the paid-call cap spreads the history over (1 when it fits in one day's cap, or has no cap)."""
        if not self.usd or not self.cap_usd:
            return 1
        return max(1, math.ceil(self.usd / self.cap_usd - 1e-9))


def plan_history(config: Config, today: dt.date, store: Store | None = None) -> list[HistoryPlan]:
    """For each source of ``config``, the history still to fetch on ``today`` and its paid calls, calling nothing.

    With ``store`` (the cache, opened shared beside a running exporter or not), only what it does not hold yet;
    without, the whole history of a fresh install (the first refresh's days included).
    """
    out = []
    for src in config.sources:
        spec = SOURCES[src.type]
        fetched_from = store.history_state(src.name)[0] if store is not None else None
        spans = owed(config, src, today, fetched_from)
        requests = len(spans) * src.history_requests_per_query()
        price = src.history_request_usd(spec.request_usd)
        out.append(
            HistoryPlan(
                source=src.name,
                provider=spec.provider,
                first=spans[-1][0] if spans else None,
                last=spans[0][1] if spans else None,
                queries=len(spans),
                requests=requests,
                usd=None if price is None else round(requests * price, 2),
                cap_usd=src.max_api_cost_usd_per_day,
            )
        )
    return out
