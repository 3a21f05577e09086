"""``spend-exporter backfill``: the cache's history as OpenMetrics for ``promtool tsdb create-blocks-from openmetrics``.

The samples are the live exporter's own: for each UTC day the snapshot is built by ``SnapshotBuilder`` at that
day, on the cache seen through ``AsOfStore`` (only the days before it), so there is no second implementation
of any figure. At every moment of day D+1 the samples are what ``/metrics`` serves then: ``spend_cost_daily_usd``
is day D, month to date runs through D, and so on (docs/backfill.md).

Samples are ``STEP`` seconds apart, on a grid of multiples of ``STEP`` from the Unix epoch, so that every
query of the shipped dashboards finds a sample within Prometheus's lookback delta, at any zoom; each series
carries the ``job`` and ``instance`` labels of the live scrape, so the backfilled range and the live range
are one series. The output is streamed: the figures of each day go to a temporary SQLite file beside the
output, which is then read back grouped by family and series, as OpenMetrics requires (the samples of a
series together, in timestamp order), with ``# EOF`` at the end.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from exporter.config import Config
from exporter.exposition import Family, escape_label_value
from exporter.metrics import EXPORTER_FAMILIES, GUARD_FAMILIES, SERIES_COST_FAMILIES
from exporter.pricing import PriceTable
from exporter.snapshot import SnapshotBuilder
from exporter.sources import SOURCES
from exporter.store import CostWindows, Store

STEP = 300  # seconds between samples: Prometheus's default lookback delta (5m), so no query falls between two
DAY = dt.timedelta(days=1)
DEFAULT_JOB = "spend-exporter"  # the scrape job of prometheus/prometheus.yml (alert SpendExporterDown matches it)
DEFAULT_INSTANCE = "exporter:9877"  # the target of that job in the shipped docker-compose stack

BACKFILLED = (
    *SERIES_COST_FAMILIES,
    "spend_ai_tokens_month_to_date",
    "spend_ai_requests_month_to_date",
    "spend_ai_price_ratio",
    "spend_budget_limit_usd",
    "spend_budget_spent_usd",
    "spend_budget_forecast_usd",
    "spend_budget_warning_ratio",
    "spend_account_info",
    "spend_cost_shared_month_to_date_usd",
    "spend_cost_shared_previous_month_usd",
    "spend_cost_direct_month_to_date_usd",
    "spend_cost_direct_previous_month_usd",
    "spend_ai_key_cost_month_to_date_usd",
    "spend_ai_key_info",
)
"""Families written with history: what the exporter computes from the days in the cache."""

NOT_BACKFILLED: dict[str, str] = {
    "spend_ai_cost_last_hour_usd": "hourly usage is kept for one day only",
    "spend_ai_burn_rate_usd_per_hour": "minute usage is not kept",
    "spend_ai_burn_window_end_timestamp_seconds": "minute usage is not kept",
    "spend_customer_revenue_monthly_usd": "revenue_file holds this month's revenue only, not its history",
    "spend_provider_forecast_month_end_usd": "the provider's forecast is fetched as of now; past ones are not kept",
    **{
        spec.name: "describes the exporter process and its refreshes, which did not run then"
        for spec in EXPORTER_FAMILIES
    },
    **{spec.name: "the guard's actions happen live" for spec in GUARD_FAMILIES},
}
"""Every other family, and why it has no history (docs/backfill.md lists the same)."""


class AsOfStore(Store):
    """The cache as it stood on a day: its reads see only the days before ``before``.

    ``SnapshotBuilder`` reads the store only through these methods (every one is overridden or filtered here;
    tests/test_backfill.py holds the builder's figures on it equal to a build on a cache that holds only those
    days). Hourly usage and the provider's forecast are not history: they read as empty.
    """

    def __init__(self, store: Store) -> None:
        self._file = store._file  # the same connection and lock: a view, not a copy
        self.before = dt.date.max

    def _last(self, day: dt.date) -> dt.date:
        return min(day, self.before - DAY)

    def cost_days(self, source: str, before: dt.date) -> tuple[dt.date | None, dt.date | None]:
        return super().cost_days(source, min(before, self.before))

    def has_costs(self, source: str) -> bool:
        return self.cost_days(source, self.before)[0] is not None

    def cost_by_series(self, source: str, w: CostWindows) -> list[tuple[Any, ...]]:
        return super().cost_by_series(source, replace(w, today=self._last(w.today)))

    def usage_by_series(
        self, source: str, month_start: dt.date, since: dt.date, through: dt.date
    ) -> list[tuple[Any, ...]]:
        return super().usage_by_series(source, month_start, since, self._last(through))

    def hourly_by_series(self, source: str, hour: float) -> list[tuple[Any, ...]]:
        return []

    def ai_cost_by_model(
        self, source: str, providers: Iterable[str], first: dt.date, last: dt.date, *, by_day: bool = False
    ) -> list[tuple[Any, ...]]:
        return super().ai_cost_by_model(source, providers, first, self._last(last), by_day=by_day)

    def usage_by_model(
        self, source: str, first: dt.date, last: dt.date, *, by_day: bool = False
    ) -> list[tuple[Any, ...]]:
        return super().usage_by_model(source, first, self._last(last), by_day=by_day)

    def key_usage_by_series(
        self, source: str, month_start: dt.date, since: dt.date, through: dt.date
    ) -> list[tuple[Any, ...]]:
        return super().key_usage_by_series(source, month_start, since, self._last(through))

    def provider_forecasts(self, source: str) -> list[tuple[str, str, float]]:
        return []

    def close(self) -> None:  # the store it views owns the file
        pass


@dataclass(frozen=True)
class SourceDays:
    """The days ``source`` holds costs for, and the days of a range it holds none for (as (first, last) runs)."""

    source: str
    first: dt.date | None
    last: dt.date | None
    held: int
    missing: list[tuple[dt.date, dt.date]] = field(default_factory=list)

    def describe(self) -> str:
        if self.first is None:
            return f"source {self.source}: the cache holds no cost days"
        out = f"source {self.source}: the cache holds {self.first}..{self.last} ({self.held} days with costs)"
        if self.missing:
            n = sum((b - a).days + 1 for a, b in self.missing)
            runs = ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in self.missing[:5])
            more = f" and {len(self.missing) - 5} more runs" if len(self.missing) > 5 else ""
            out += f"; {n} days of the range have none: {runs}{more}"
        return out


def source_days(store: Store, source: str, first: dt.date, last: dt.date) -> SourceDays:
    """What ``source`` holds, and its days from ``first`` through ``last`` without a cost row."""
    days = [dt.date.fromisoformat(r[0]) for r in store.query("SELECT DISTINCT day FROM cost WHERE source=?", (source,))]
    if not days:
        return SourceDays(source, None, None, 0, [(first, last)] if first <= last else [])
    held = set(days)
    missing: list[tuple[dt.date, dt.date]] = []
    d = first
    while d <= last:
        if d not in held:
            start = d
            while d + DAY <= last and d + DAY not in held:
                d += DAY
            missing.append((start, d))
        d += DAY
    return SourceDays(source, min(days), max(days), len(held), missing)


def history_fetch_plan(config: Config, store: Store, first: dt.date, last: dt.date) -> list[str]:
    """What the history fetch still owes (``exporter.history.plan_history``, calling nothing): per source, the days,
    queries, requests and dollars, paid calls capped as in a refresh. The backfill itself makes no API call:
    ``spend-exporter run`` fetches the history after its first refresh, and the backfill then has the days.
    ``first``/``last``: the days the range needs; ``last`` + 1 is today."""
    from exporter.history import plan_history

    lines = []
    for p in plan_history(config, last + dt.timedelta(days=1), store):
        if p.first is None or p.last is None:
            lines.append(f"history fetch, source {p.source}: complete, nothing to fetch")
            continue
        usd = "billed by the data each query scans" if p.usd is None else f"${p.usd:,.2f}"
        cap = f"; at most ${p.cap_usd:,.2f} a day: {p.days_to_finish} day(s)" if p.cap_usd else ""
        short = f" (the range needs {first}: beyond the source's reach)" if p.first > first else ""
        lines.append(
            f"history fetch, source {p.source} ({p.provider}): {p.first}..{p.last} still to fetch{short}, "
            f"{p.queries} queries, at least {p.requests} API requests, {usd}{cap}; `spend-exporter run` fetches "
            "it after its first refresh (the backfill itself makes no API call)"
        )
    return lines


@dataclass(frozen=True)
class Range:
    """The samples' time range: [since, until), unix seconds, and their spacing (``check_step``)."""

    since: int
    until: int
    step: int = STEP

    def days(self) -> Iterator[dt.date]:
        """The UTC days with samples (on day D+1 the figures are those of a build at D+1, daily = day D)."""
        d = dt.datetime.fromtimestamp(self.since, dt.UTC).date()
        while _midnight(d) < self.until:
            yield d
            d += DAY

    def timestamps(self, day: dt.date) -> list[int]:
        """The sample times of ``day``: the ``step`` grid, and a closing sample 1 s before ``until`` so that the
        live range's first scrape, up to a step after ``until``, still finds the backfill."""
        start, end = max(_midnight(day), self.since), min(_midnight(day + DAY), self.until)
        first = -(-start // self.step) * self.step
        ts = list(range(first, end, self.step))
        if end == self.until and self.until - 1 >= start and (not ts or ts[-1] < self.until - 1):
            ts.append(self.until - 1)
        return ts


def check_step(seconds: float) -> int:
    """``--step``: whole minutes from 1 to 60 that divide a day, so every day starts on a sample."""
    step = int(seconds)
    if step != seconds or step % 60 or not 60 <= step <= 3600 or 86400 % step:
        raise ValueError(f"{seconds:g}s: whole minutes from 1m to 1h that divide a day (1m, 2m, 5m, 10m, 15m, 30m, 1h)")
    return step


def _midnight(d: dt.date) -> int:
    return int(dt.datetime.combine(d, dt.time(), dt.UTC).timestamp())


def default_range(store: Store, sources: Iterable[str], now: dt.datetime) -> Range:
    """From the day after the oldest day held (its figures are the first there are) until ``now``."""
    oldest = [r[0] for s in sources for r in store.query("SELECT MIN(day) FROM cost WHERE source=?", (s,)) if r[0]]
    first = dt.date.fromisoformat(min(oldest)) + DAY if oldest else now.date()
    return Range(_midnight(first), int(now.timestamp()))


@dataclass
class Result:
    """What a backfill wrote."""

    series: int = 0
    samples: int = 0
    days: int = 0
    families: dict[str, int] = field(default_factory=dict)  # family → series


class Backfill:
    """Builds the snapshot of each day of a ``Range`` and writes the backfilled families as OpenMetrics."""

    def __init__(
        self,
        config: Config,
        store: Store,
        job: str = DEFAULT_JOB,
        instance: str = DEFAULT_INSTANCE,
        labels: dict[str, str] | None = None,
    ) -> None:
        """``job``, ``instance`` and ``labels``: the target labels the live scrape adds (``target_labels``)."""
        self.config = config
        self.store = store
        self.asof = AsOfStore(store)
        self.sources = [s.name for s in config.sources]
        meta = {s.name: (SOURCES[s.type].provider, SOURCES[s.type].api, s.interval) for s in config.sources}
        self._overrides = {m: {str(k): float(p) for k, p in prices.items()} for m, prices in config.pricing.items()}
        self.builder = SnapshotBuilder(config, self.asof, meta, prices=PriceTable.load(self._overrides))
        target = {"job": job, "instance": instance, **(labels or {})}
        self.target = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in target.items())

    def families_at(self, day: dt.date) -> list[Family]:
        """The backfilled families as the live exporter served them during ``day`` (a build at its noon on the
        cache before it; the figures are the same all day)."""
        self.asof.before = day
        noon = dt.datetime.combine(day, dt.time(12), dt.UTC)
        self.builder.prices = PriceTable.load(self._overrides, at=noon)  # the list prices of that day
        self.builder.invalidate()
        snap = self.builder.build(noon, self.sources)
        wanted = set(BACKFILLED)
        return [f for f in snap._families if f.name in wanted]

    def estimate(self, rng: Range) -> tuple[int, int, int]:
        """(series, samples, bytes) of ``write(rng)``, from the series of its last day (``--dry-run``)."""
        days = list(rng.days())
        if not days:
            return 0, 0, 0
        lines = [ln for f in self.families_at(days[-1]) for frag in f.fragments for ln in frag.splitlines()]
        samples = len(lines) * sum(len(rng.timestamps(d)) for d in days)
        per_line = (sum(len(ln) for ln in lines) / len(lines) + len(self.target) + 14) if lines else 0
        return len(lines), samples, int(samples * per_line)

    def write(
        self,
        rng: Range,
        out: TextIO,
        tmpdir: str | Path | None = None,
        progress: Callable[[dt.date], None] | None = None,
    ) -> Result:
        """Write the OpenMetrics of ``rng`` to ``out``; a temporary file in ``tmpdir`` holds the day figures."""
        result = Result()
        with tempfile.TemporaryDirectory(prefix=".spend-backfill-", dir=tmpdir) as tmp:
            db = sqlite3.connect(Path(tmp) / "days.sqlite")
            try:
                db.execute("PRAGMA journal_mode=OFF")
                db.execute("PRAGMA synchronous=OFF")
                db.execute(
                    "CREATE TABLE v (sid INTEGER, day INTEGER, value TEXT, PRIMARY KEY (sid, day)) WITHOUT ROWID"
                )
                headers: dict[str, bytes] = {}
                sids: dict[str, dict[str, int]] = {name: {} for name in BACKFILLED}
                days: list[dt.date] = []
                next_sid = 0
                for i, day in enumerate(rng.days()):
                    days.append(day)
                    rows = []
                    for fam in self.families_at(day):
                        headers.setdefault(fam.name, fam.header(openmetrics=True))
                        ids = sids[fam.name]
                        for frag in fam.fragments:
                            for line in frag.decode("utf-8").splitlines():
                                key, _, value = line.rpartition(" ")
                                sid = ids.get(key)
                                if sid is None:
                                    sid = ids[key] = next_sid
                                    next_sid += 1
                                rows.append((sid, i, value))
                    db.executemany("INSERT INTO v VALUES (?,?,?)", rows)
                    if progress:
                        progress(day)
                stamps = [[f" {t}\n" for t in rng.timestamps(d)] for d in days]
                result.days = len(days)
                for name in BACKFILLED:
                    if name in headers:
                        out.write(headers[name].decode("utf-8"))
                    ids = sids[name]
                    result.families[name] = len(ids)
                    for key, sid in sorted(ids.items()):
                        prefix = _with_target(key, self.target)
                        for day_i, value in db.execute("SELECT day, value FROM v WHERE sid=? ORDER BY day", (sid,)):
                            lead = f"{prefix} {value}"
                            ts = stamps[day_i]
                            if ts:
                                out.write(lead + lead.join(ts))
                                result.samples += len(ts)
                    result.series += len(ids)
                out.write("# EOF\n")
            finally:
                db.close()
        return result


LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def target_labels(pairs: Iterable[str], extra: Iterable[str] = ()) -> dict[str, str]:
    """``--label NAME=VALUE`` options: the other labels the live scrape adds (Kubernetes: namespace, pod, ...).
    ``extra``: the extra labels of ``attribution.labels``, which the cost families carry already."""
    from exporter.metrics import BUDGET_LABELS, COST_LABELS, SOURCE_LABELS

    taken = {"job", "instance", "token_type", "account_name", *COST_LABELS, *BUDGET_LABELS, *SOURCE_LABELS, *extra}
    out: dict[str, str] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise ValueError(f"{pair!r}: expected NAME=VALUE with a Prometheus label name")
        if name in taken:
            raise ValueError(f"{name!r}: the exporter's own label (or --job/--instance), not a target label")
        out[name] = value
    return out


def _with_target(key: str, target: str) -> str:
    """``name{labels}`` (or ``name``) with the scrape's ``job`` and ``instance`` labels first."""
    name, brace, rest = key.partition("{")
    return f"{name}{{{target},{rest}" if brace else f"{name}{{{target}}}"


def parse_when(value: str) -> int:
    """A ``--since``/``--until`` value as unix seconds: ``YYYY-MM-DD`` is 00:00 UTC of that day (``--until``:
    exclusive, so the day itself is not written); an RFC 3339 time (``2026-12-07T09:30:00Z``) or unix seconds
    are taken as they are."""
    v = value.strip()
    if v.isdigit():
        return int(v)
    try:
        if len(v) == 10:
            return _midnight(dt.date.fromisoformat(v))
        t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is neither YYYY-MM-DD, an RFC 3339 time nor unix seconds") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp())
