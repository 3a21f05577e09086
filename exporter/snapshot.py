"""Builds the immutable snapshot that ``/metrics`` serves.

After each refresh the engine aggregates the store into every family of
DESIGN.md (``exporter.metrics``) and renders them once (``exporter.exposition``),
as text and OpenMetrics, plain and gzip. Each source's part is read from the
store by a few aggregating reads and rendered into its own fragments, so a
refresh of one source re-renders only that source; budgets (which cross
sources, ``exporter.budgets``) and the exporter's own metrics are re-rendered
every time, and are small. The figures' arithmetic is ``exporter.forecast``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import platform
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from exporter import __version__
from exporter.budgets import BudgetFigure, SeriesCost, budget_figures, budget_fragments
from exporter.cardinality import Rows, cost_weight, fold
from exporter.config import Config
from exporter.exposition import MAX_LABEL_VALUE_BYTES, Family, gzipped, render, render_samples, rounded
from exporter.forecast import (
    BASELINE_DAYS,
    FORECAST_DAYS,
    Dates,
    baseline,
    baseline_window,
    days_held,
    month_end,
    recent_window,
    remaining_days,
)
from exporter.metrics import (
    CACHED,
    COST_LABELS,
    EXPORTER_FAMILIES,
    FAMILIES,
    GUARD_FAMILIES,
    GUARD_RESULTS,
    SOURCE_LABELS,
)
from exporter.model import TOKEN_TYPES
from exporter.store import CostWindows, Store

log = logging.getLogger(__name__)


@dataclass
class SourceView:
    """One source's aggregated, rendered part of the snapshot."""

    fragments: dict[str, bytes]
    series: list[SeriesCost]
    overflow: int
    unpriced: list[tuple[str, str, float]]  # provider, model, tokens
    mtd_usd: float  # the sum of the month-to-date samples rendered in ``fragments``


@dataclass
class Snapshot:
    """Immutable exposition, built once per refresh. ``/metrics`` only sends these bytes."""

    text: bytes
    text_gz: bytes
    built_at: float
    series: int
    budgets: list[BudgetFigure] = field(default_factory=list)
    # each source's month-to-date as served: the sum of its spend_cost_month_to_date_usd samples (``/status``)
    mtd_by_source: dict[str, float] = field(default_factory=dict)
    _families: list[Family] = field(repr=False, default_factory=list)
    _om: tuple[bytes, bytes] | None = field(default=None, repr=False)
    _om_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def openmetrics(self) -> tuple[bytes, bytes]:
        """OpenMetrics body and its gzip, rendered on first request and kept."""
        with self._om_lock:
            if self._om is None:
                body = render(self._families, openmetrics=True)
                self._om = (body, gzipped(body))
            return self._om


def _truncate(values: Sequence[str]) -> tuple[str, ...]:
    """Label values cut to ``MAX_LABEL_VALUE_BYTES`` (plus "...")."""
    out = []
    for v in values:
        if len(v) > MAX_LABEL_VALUE_BYTES // 4 and len(v.encode("utf-8", "replace")) > MAX_LABEL_VALUE_BYTES:
            v = v.encode("utf-8", "replace")[:MAX_LABEL_VALUE_BYTES].decode("utf-8", "ignore") + "..."
        out.append(v)
    return tuple(out)


class SnapshotBuilder:
    """Aggregates the store into families; keeps each source's view until it refreshes again."""

    def __init__(
        self,
        config: Config,
        store: Store,
        source_meta: dict[str, tuple[str, str, float]],
        price: Callable[[str, str, int], float | None] | None = None,
    ) -> None:
        """``source_meta``: source name → (provider label, API name, interval seconds)."""
        self.config = config
        self.store = store
        self.source_meta = source_meta
        self._price = price
        self._views: dict[str, tuple[dt.date, SourceView]] = {}
        self._lock = threading.Lock()
        self._unpriced_logged: set[tuple[str, str]] = set()
        self._truncated: dict[str, int] = {}
        apis = sorted({m[1] for m in source_meta.values()})
        self._cached_note = CACHED.format(apis=", ".join(apis) if apis else "the billing APIs")

    def count_truncated(self, source: str, n: int) -> None:
        """Add ``n`` label values the engine truncated while ingesting ``source`` (a counter: never reset)."""
        if n <= 0:
            return
        with self._lock:
            self._truncated[source] = self._truncated.get(source, 0) + n
        log.warning(
            "source %s: %d label values longer than %d bytes were truncated; they end in '...'",
            source,
            n,
            MAX_LABEL_VALUE_BYTES,
        )

    def invalidate(self, source: str | None = None) -> None:
        with self._lock:
            if source is None:
                self._views.clear()
            else:
                self._views.pop(source, None)

    # -- per source -------------------------------------------------------------------
    def _view(self, source: str, dates: Dates) -> SourceView:
        with self._lock:
            cached = self._views.get(source)
            if cached is not None and cached[0] == dates.last_complete_hour:
                return cached[1]
        view = self._build_view(source, dates)
        with self._lock:
            self._views[source] = (dates.last_complete_hour, view)  # type: ignore[assignment]
        return view

    def _build_view(self, source: str, dates: Dates) -> SourceView:
        cost_rows = self._cost_rows(source, dates)
        # AI usage, month to date; series with usage last month read 0 in a new month rather than vanish (as costs)
        usage_rows: Rows = [
            (_truncate(r[:5]), {tt: float(r[5 + i]) for i, tt in enumerate(TOKEN_TYPES)} | {"requests": float(r[9])})
            for r in self.store.usage_by_series(source, dates.month_start, dates.prev_month_start, dates.today)
        ]
        hourly, unpriced = self._priced(source, dates, usage_rows)

        series = [
            SeriesCost(
                labels=labels,  # type: ignore[arg-type]
                mtd=vals.get("spend_cost_month_to_date_usd", 0.0),
                forecast=vals.get("spend_cost_forecast_month_end_usd"),
            )
            for labels, vals in cost_rows
        ]
        cap = self.config.max_series_per_source
        cost_rows, over1 = fold(cost_rows, cap, cost_weight)
        usage_rows, over2 = fold(usage_rows, cap, lambda v: sum(v.values()))
        hourly_rows, over3 = fold([(k, {"v": v}) for k, v in hourly.items()], cap, lambda v: v["v"])
        overflow = over1 + over2 + over3

        frags: dict[str, bytes] = {}
        for fam in (
            "spend_cost_month_to_date_usd",
            "spend_cost_daily_usd",
            "spend_cost_daily_baseline_usd",
            "spend_cost_daily_baseline_stddev_usd",
            "spend_cost_previous_month_usd",
            "spend_cost_forecast_month_end_usd",
        ):
            frags[fam] = render_samples(
                fam, COST_LABELS, sorted((lab, rounded(v[fam])) for lab, v in cost_rows if fam in v)
            )
        frags["spend_ai_tokens_month_to_date"] = render_samples(
            "spend_ai_tokens_month_to_date",
            (*COST_LABELS, "token_type"),
            sorted(((*lab, tt), v[tt]) for lab, v in usage_rows for tt in TOKEN_TYPES),
        )
        frags["spend_ai_requests_month_to_date"] = render_samples(
            "spend_ai_requests_month_to_date", COST_LABELS, sorted((lab, v["requests"]) for lab, v in usage_rows)
        )
        frags["spend_ai_cost_last_hour_usd"] = render_samples(
            "spend_ai_cost_last_hour_usd", COST_LABELS, sorted((lab, rounded(v["v"])) for lab, v in hourly_rows)
        )

        # provider forecasts and accounts
        mtd_by_account: dict[tuple[str, str], float] = {}
        for s in series:
            key = (s.labels[0], s.labels[1])
            mtd_by_account[key] = mtd_by_account.get(key, 0.0) + s.mtd
        frags["spend_provider_forecast_month_end_usd"] = render_samples(
            "spend_provider_forecast_month_end_usd",
            ("provider", "account_id"),
            sorted(
                ((prov, acct), rounded(mtd_by_account.get((prov, acct), 0.0) + rem))
                for prov, acct, rem in self.store.provider_forecasts(source)
            ),
        )
        accounts = []
        for prov, acct, name in self.store.accounts(source):
            labels = _truncate((prov, acct, name))
            accounts.append((labels, 1.0))
        frags["spend_account_info"] = render_samples(
            "spend_account_info", ("provider", "account_id", "account_name"), sorted(accounts)
        )
        return SourceView(
            fragments=frags,
            series=series,
            overflow=overflow,
            unpriced=[(p, m, t) for (p, m), t in sorted(unpriced.items())],
            mtd_usd=math.fsum(rounded(v["spend_cost_month_to_date_usd"]) for _, v in cost_rows),
        )

    def _cost_rows(self, source: str, dates: Dates) -> Rows:
        """The cost families of each series of ``source``, unfolded."""
        store = self.store
        newest, oldest = store.cost_days(source, dates.today)
        if newest is None and not store.has_costs(source):
            return []
        d = newest or dates.today - dt.timedelta(days=1)
        windows = CostWindows(
            today=dates.today,
            month_start=dates.month_start,
            day=d,
            baseline=baseline_window(d),
            recent=recent_window(d),
            previous_month=(dates.prev_month_start, dates.prev_month_end),
        )
        # days of history the source actually holds, so a new source's baseline is not diluted
        base_n = days_held(windows.baseline, oldest, BASELINE_DAYS)
        last_n = days_held(windows.recent, oldest, FORECAST_DAYS, least=1)
        in_month = d >= dates.month_start
        remaining = remaining_days(d, dates.month_start, dates.days_in_month)
        rows: Rows = []
        for r in store.cost_by_series(source, windows):
            mtd, has_mtd, mtd_complete, daily, bsum, bsq, recent, last7, prev, has_prev = r[5:]
            # every series the source exports has a month-to-date, 0 until this month has cost: the
            # series carries on across 00:00 UTC on the 1st instead of vanishing until new data arrives
            vals: dict[str, float] = {"spend_cost_month_to_date_usd": mtd}
            if newest is not None and recent:
                vals["spend_cost_daily_usd"] = daily
                base = baseline(bsum, bsq, base_n)
                if base is not None:
                    vals["spend_cost_daily_baseline_usd"], vals["spend_cost_daily_baseline_stddev_usd"] = base
            if has_prev:
                vals["spend_cost_previous_month_usd"] = prev
            if newest is not None and (has_mtd or recent):
                complete = mtd_complete if in_month else 0.0
                vals["spend_cost_forecast_month_end_usd"] = month_end(complete, remaining, last7, last_n)
            rows.append((_truncate(r[:5]), vals))
        return rows

    def _priced(
        self, source: str, dates: Dates, usage_rows: Rows
    ) -> tuple[dict[tuple[str, ...], float], dict[tuple[str, str], float]]:
        """The last complete hour's cost per series, and this month's tokens of unpriced models by (provider, model).

        Series seen in the last day get 0 when the hour has no usage; a series with tokens of a model
        missing from the price table has no figure.
        """
        hourly: dict[tuple[str, ...], float] = {}
        unpriced: dict[tuple[str, str], float] = {}
        for r in self.store.hourly_by_series(source, dates.last_complete_hour.timestamp()):
            labels = _truncate(r[:5])
            total = 0.0
            priced = True
            for i, tt in enumerate(TOKEN_TYPES):
                tokens = int(r[5 + i])
                if not tokens:
                    continue
                c = self._price(labels[4], tt, tokens) if self._price else None
                if c is None:
                    priced = False
                else:
                    total += c
            if priced:
                hourly[labels] = total
        for labels, v in usage_rows:
            if self._price is None:
                break
            model = labels[4]
            missing = sum(v[tt] for tt in TOKEN_TYPES if v[tt] and self._price(model, tt, int(v[tt])) is None)
            if missing:
                unpriced[(labels[0], model)] = unpriced.get((labels[0], model), 0.0) + missing
                if (source, model) not in self._unpriced_logged:
                    self._unpriced_logged.add((source, model))
                    log.warning(
                        "source %s: model %r is not in the price table; its tokens are not priced", source, model
                    )
        return hourly, unpriced

    # -- whole snapshot ----------------------------------------------------------------
    def build(self, now: dt.datetime, sources: Iterable[str]) -> Snapshot:
        dates = Dates(now)
        names = list(sources)
        views = {s: self._view(s, dates) for s in names}
        families: list[Family] = []
        n_series = 0
        for name, mtype, help_, _labels in FAMILIES:
            fam = Family(name, mtype, f"{help_} {self._cached_note}")
            for s in names:
                frag = views[s].fragments.get(name)
                if frag:
                    fam.fragments.append(frag)
                    n_series += frag.count(b"\n")
            families.append(fam)
        budgets = budget_figures(self.config.budgets, [s for v in views.values() for s in v.series])
        budget_frags = budget_fragments(budgets)
        for fam in families:
            if fam.name in budget_frags:
                fam.fragments = [budget_frags[fam.name]]
                n_series += budget_frags[fam.name].count(b"\n")
        exporter_frags = self._exporter_fragments(names, views)
        for name, mtype, help_, _labels in EXPORTER_FAMILIES:
            frag = exporter_frags[name]
            families.append(Family(name, mtype, help_, [frag] if frag else []))
            n_series += frag.count(b"\n")
        if self.config.guard.rules:
            for (name, mtype, help_, _labels), frag in zip(GUARD_FAMILIES, self._guard_fragments(), strict=True):
                families.append(Family(name, mtype, help_, [frag] if frag else []))
                n_series += frag.count(b"\n")
        text = render(families)
        return Snapshot(
            text=text,
            text_gz=gzipped(text),
            built_at=time.time(),
            series=n_series,
            budgets=budgets,
            mtd_by_source={s: views[s].mtd_usd for s in names},
            _families=families,
        )

    def _guard_fragments(self) -> tuple[bytes, bytes]:
        """The ``spend_guard_*`` families from the guard's record in the cache. Every configured rule has every
        result, 0 until it happens, so that ``increase()`` sees the first one."""
        counts: dict[tuple[str, str, str], float] = {
            (r.name, r.action, res): 0.0 for r in self.config.guard.rules for res in GUARD_RESULTS
        }
        for rule, action, result, n in self.store.guard_counts():
            counts[(rule, action, result)] = float(n)
        total, active = GUARD_FAMILIES
        return (
            render_samples(total.name, total.labels, sorted(counts.items())),
            render_samples(active.name, active.labels, [(k, 1.0) for k in self.store.guard_in_force()]),
        )

    def _exporter_fragments(self, sources: list[str], views: dict[str, SourceView]) -> dict[str, bytes]:
        """The exporter's own families, from one read of each source's state and of the API counters."""
        per_source: dict[str, list[tuple[tuple[str, ...], float]]] = {
            name: [] for name, _, _, labels in EXPORTER_FAMILIES if labels == ("source", "provider")
        }
        for s in sources:
            provider, _api, interval = self.source_meta[s]
            st = self.store.get_state(s)
            labels = (s, provider)
            per_source["spend_exporter_source_up"].append((labels, 1.0 if st.up else 0.0))
            if st.last_success:
                per_source["spend_exporter_source_last_success_timestamp_seconds"].append((labels, st.last_success))
            if st.data_through:
                per_source["spend_exporter_source_data_through_timestamp_seconds"].append((labels, st.data_through))
            if st.last_duration is not None:
                per_source["spend_exporter_source_refresh_duration_seconds"].append(
                    (labels, round(st.last_duration, 6))
                )
            per_source["spend_exporter_source_interval_seconds"].append((labels, interval))
            per_source["spend_exporter_source_records_skipped"].append((labels, float(st.skipped_records)))
        out = {name: render_samples(name, SOURCE_LABELS, rows) for name, rows in per_source.items()}

        totals = self.store.api_totals()
        out["spend_exporter_api_requests_total"] = render_samples(
            "spend_exporter_api_requests_total",
            ("source", "operation", "status"),
            [((s, op, st), float(n)) for s, op, st, n, _ in totals],
        )
        cost: dict[str, float] = {s: 0.0 for s in sources}
        for s, _, _, _, c in totals:
            cost[s] = cost.get(s, 0.0) + c
        out["spend_exporter_api_cost_usd_total"] = render_samples(
            "spend_exporter_api_cost_usd_total", ("source",), sorted(((s,), rounded(c)) for s, c in cost.items())
        )
        with self._lock:
            truncated = dict(self._truncated)
        out["spend_exporter_label_values_truncated_total"] = render_samples(
            "spend_exporter_label_values_truncated_total",
            ("source",),
            [((s,), float(truncated.get(s, 0))) for s in sources],
        )
        out["spend_exporter_series_overflow"] = render_samples(
            "spend_exporter_series_overflow", ("source",), [((s,), float(views[s].overflow)) for s in sources]
        )
        out["spend_exporter_unpriced_tokens"] = render_samples(
            "spend_exporter_unpriced_tokens",
            ("source", "provider", "model"),
            [((s, p, m), t) for s in sources for p, m, t in views[s].unpriced],
        )
        out["spend_exporter_cache_persistent"] = render_samples(
            "spend_exporter_cache_persistent", (), [((), 1.0 if self.store.persistent else 0.0)]
        )
        out["spend_exporter_build_info"] = render_samples(
            "spend_exporter_build_info", ("version", "pythonversion"), [((__version__, platform.python_version()), 1.0)]
        )
        return out
