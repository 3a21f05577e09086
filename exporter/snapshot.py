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
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter import __version__
from exporter.allocation import Allocated, allocate, allocation_fragments
from exporter.attribution import decode_labels
from exporter.budgets import BudgetFigure, KeySeriesCost, SeriesCost, budget_figures, budget_fragments
from exporter.cardinality import OTHER, Rows, cost_weight, fold
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
from exporter.keycost import key_costs
from exporter.metrics import (
    CACHED,
    COST_LABELS,
    EXPORTER_FAMILIES,
    FAMILIES,
    GUARD_FAMILIES,
    GUARD_RESULTS,
    KEY_LABELS,
    NOT_FROM_BILLING,
    SERIES_COST_FAMILIES,
    SOURCE_LABELS,
)
from exporter.model import TOKEN_TYPES
from exporter.pricing import PriceTable
from exporter.revenue import RevenueFile
from exporter.store import CostWindows, Store

log = logging.getLogger(__name__)

# spend_ai_tokens_month_to_date's token_type values: cache_write there is 5-minute plus 1-hour writes
EXPOSED_TOKEN_TYPES = ("input", "output", "cache_read", "cache_write")
RATIO_DAYS = 7  # spend_ai_price_ratio: billed cost ÷ list-price estimate over this many complete days


@dataclass
class SourceView:
    """One source's aggregated, rendered part of the snapshot."""

    fragments: dict[str, bytes]
    series: list[SeriesCost]
    overflow: int
    unpriced: list[tuple[str, str, float]]  # provider, model, tokens
    mtd_usd: float  # the sum of the month-to-date samples rendered in ``fragments``
    price_ratios: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (provider, account, model)
    key_series: list[KeySeriesCost] = field(default_factory=list)  # API keys' shares, for api_key_id budgets


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
        prices: PriceTable | None = None,
    ) -> None:
        """``source_meta``: source name → (provider label, API name, interval seconds).
        ``prices``: the AI list prices (``PriceTable.load()`` with the configuration's ``pricing:`` when None)."""
        self.config = config
        self.store = store
        self.source_meta = source_meta
        self.prices = prices if prices is not None else PriceTable.load(_overrides(config))
        self._ratios: dict[tuple[str, str, str], float] = {}
        self._views: dict[str, tuple[dt.date, SourceView]] = {}
        self._lock = threading.Lock()
        self._unpriced_logged: set[tuple[str, str]] = set()
        self._empty_pools_logged: set[str] = set()
        self._unsplit_logged: set[tuple[str, str, str, str]] = set()
        self._truncated: dict[str, int] = {}
        self._burn: dict[str, tuple[dict[str, bytes], int]] = {}  # source → burn fragments, series folded
        self._revenue = RevenueFile(config.revenue_file) if config.revenue_file else None
        # the spend_cost_* families' labels: COST_LABELS, then the extra labels of attribution.labels
        self.cost_labels = (*COST_LABELS, *config.attribution.label_names)
        self._decoded: dict[str, tuple[str, ...]] = {}
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

    def set_burn(self, source: str, fragments: dict[str, bytes], overflow: int) -> None:
        """The burn families' samples of ``source`` (rendered by ``exporter.burn``), used by every build from now."""
        with self._lock:
            self._burn[source] = (fragments, overflow)

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
        newest, oldest = self.store.cost_days(source, dates.today)
        cost_rows = self._cost_rows(source, dates, newest, oldest)
        # AI usage, month to date; series with usage last month read 0 in a new month rather than vanish (as costs)
        n_tt = len(TOKEN_TYPES)
        raw_usage = self.store.usage_by_series(source, dates.month_start, dates.prev_month_start, dates.today)
        hourly, unpriced = self._priced(source, dates, raw_usage)
        usage_rows: Rows = [
            (
                _truncate(r[:5]),
                {tt: float(r[5 + i]) for i, tt in enumerate(TOKEN_TYPES)} | {"requests": float(r[5 + n_tt])},
            )
            for r in raw_usage
        ]

        series = [
            SeriesCost(
                labels=labels,  # type: ignore[arg-type]  # COST_LABELS, then the extra labels
                mtd=vals.get("spend_cost_month_to_date_usd", 0.0),
                forecast=vals.get("spend_cost_forecast_month_end_usd"),
                previous=vals.get("spend_cost_previous_month_usd"),
            )
            for labels, vals in cost_rows
        ]
        cap = self.config.max_series_per_source
        cost_rows, over1 = fold(cost_rows, cap, cost_weight)
        usage_rows, over2 = fold(usage_rows, cap, lambda v: sum(v.values()))
        hourly_rows, over3 = fold([(k, {"v": v}) for k, v in hourly.items()], cap, lambda v: v["v"])
        key_series, key_rows, over4 = self._key_costs(source, dates)
        overflow = over1 + over2 + over3 + over4

        frags: dict[str, bytes] = {}
        for fam in SERIES_COST_FAMILIES:
            frags[fam] = render_samples(
                fam, self.cost_labels, sorted((lab, rounded(v[fam])) for lab, v in cost_rows if fam in v)
            )
        frags["spend_ai_tokens_month_to_date"] = render_samples(
            "spend_ai_tokens_month_to_date",
            (*COST_LABELS, "token_type"),
            sorted(((*lab, tt), _exposed_tokens(v, tt)) for lab, v in usage_rows for tt in EXPOSED_TOKEN_TYPES),
        )
        frags["spend_ai_requests_month_to_date"] = render_samples(
            "spend_ai_requests_month_to_date", COST_LABELS, sorted((lab, v["requests"]) for lab, v in usage_rows)
        )
        frags["spend_ai_cost_last_hour_usd"] = render_samples(
            "spend_ai_cost_last_hour_usd", COST_LABELS, sorted((lab, rounded(v["v"])) for lab, v in hourly_rows)
        )

        ratios = self._price_ratios(source, newest)
        frags["spend_ai_price_ratio"] = render_samples(
            "spend_ai_price_ratio",
            ("provider", "account_id", "model"),
            sorted((_truncate(k), round(v, 6)) for k, v in ratios.items()),
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
        frags["spend_ai_key_cost_month_to_date_usd"] = render_samples(
            "spend_ai_key_cost_month_to_date_usd", KEY_LABELS, sorted((lab, round(v, 2)) for lab, v in key_rows)
        )
        # past the cap, the names of the keys that cost most this month are kept
        spent: dict[tuple[str, str, str], float] = defaultdict(float)
        for k in key_series:
            spent[(k.labels[0], k.labels[1], k.api_key_id)] += k.mtd
        keys, over5 = fold(
            [(_truncate(k), {"v": spent.get(k[:3], 0.0)}) for k in self.store.api_keys(source)], cap, lambda v: v["v"]
        )
        frags["spend_ai_key_info"] = render_samples(
            "spend_ai_key_info",
            ("provider", "account_id", "api_key_id", "api_key_name"),
            sorted((lab[:4], 1.0) for lab, _v in keys if lab[1] != OTHER),
        )
        return SourceView(
            fragments=frags,
            series=series,
            overflow=overflow + over5,
            unpriced=[(p, m, t) for (p, m), t in sorted(unpriced.items())],
            mtd_usd=math.fsum(rounded(v["spend_cost_month_to_date_usd"]) for _, v in cost_rows),
            price_ratios=ratios,
            key_series=key_series,
        )

    def _key_costs(
        self, source: str, dates: Dates
    ) -> tuple[list[KeySeriesCost], list[tuple[tuple[str, ...], float]], int]:
        """The API keys' shares of this month's billed AI cost (``exporter.keycost``): the unfolded series (for
        budgets), the ``spend_ai_key_cost_month_to_date_usd`` samples under the cardinality cap, and how many
        series were folded."""
        # keys with usage last month read 0 in a new month rather than vanish (as costs and tokens)
        usage = self.store.key_usage_by_series(source, dates.month_start, dates.prev_month_start, dates.today)
        if not usage:
            return [], [], 0
        providers = {r[0] for r in usage}
        billed = {
            (p, a, m): c
            for p, a, m, c in self.store.ai_cost_by_model(source, providers, dates.month_start, dates.today)
        }

        def estimate(provider: str, model: str, tokens: Any) -> tuple[float, int]:
            e = self.prices.estimate(provider, model, tokens)
            return e.usd, e.unpriced_tokens

        kc = key_costs(usage, billed, estimate)
        # a model the price table cannot price is logged once as unpriced (_priced); its keys get no figure
        for p, a, m in sorted(kc.unsplit):
            if (source, p, a, m) not in self._unsplit_logged:
                self._unsplit_logged.add((source, p, a, m))
                log.warning(
                    "source %s: the billed cost of model %r in %s account %s is not split across API keys: "
                    "their usage has no tokens to price",
                    source,
                    m,
                    p,
                    a,
                )
        rows, over = fold(
            [(_truncate(k), {"v": v}) for k, v in kc.by_key().items()],
            self.config.max_series_per_source,
            lambda v: v["v"],
        )
        return kc.series, [(lab[:4], v["v"]) for lab, v in rows], over

    def _cost_rows(self, source: str, dates: Dates, newest: dt.date | None, oldest: dt.date | None) -> Rows:
        """The cost families of each series of ``source``, unfolded (``Store.cost_days``: its newest and oldest)."""
        store = self.store
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
        n_extra = len(self.cost_labels) - len(COST_LABELS)
        decoded = self._decoded
        for r in store.cost_by_series(source, windows):
            mtd, has_mtd, mtd_complete, daily, bsum, bsq, recent, last7, prev, has_prev = r[5:15]
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
            if n_extra:
                extra = decoded.get(r[15])
                if extra is None:
                    extra = decode_labels(r[15], n_extra)
                    if len(decoded) < 200_000:
                        decoded[r[15]] = extra
                rows.append((_truncate((*r[:5], *extra)), vals))
            else:
                rows.append((_truncate(r[:5]), vals))
        return rows

    def _priced(
        self, source: str, dates: Dates, usage: list[tuple[Any, ...]]
    ) -> tuple[dict[tuple[str, ...], float], dict[tuple[str, str], float]]:
        """The last complete hour's cost per series, and this month's tokens of unpriced models by (provider, model).

        Series seen in the last day get 0 when the hour has no usage; a series with tokens the price
        table cannot price has no figure (never a cost of 0). ``usage``: ``Store.usage_by_series`` rows.
        """
        estimate = self.prices.estimate
        n_tt = len(TOKEN_TYPES)
        hourly: dict[tuple[str, ...], float] = {}
        for r in self.store.hourly_by_series(source, dates.last_complete_hour.timestamp()):
            est = estimate(r[0], r[4], dict(zip(TOKEN_TYPES, r[5 : 5 + n_tt], strict=True)))
            if not est.unpriced_tokens:
                hourly[_truncate(r[:5])] = est.usd
        unpriced: dict[tuple[str, str], float] = {}
        for r in usage:
            est = estimate(r[0], r[4], dict(zip(TOKEN_TYPES, r[5 : 5 + n_tt], strict=True)))
            if est.unpriced_tokens:
                key = (_truncate(r[:1])[0], _truncate(r[4:5])[0])
                unpriced[key] = unpriced.get(key, 0.0) + est.unpriced_tokens
                if (source, r[4]) not in self._unpriced_logged:
                    self._unpriced_logged.add((source, r[4]))
                    log.warning(
                        "source %s: model %r of %s has tokens the price table (%s) cannot price; they are not "
                        "priced (add the model under pricing: in the config)",
                        source,
                        r[4],
                        r[0],
                        self.prices.version,
                    )
        return hourly, unpriced

    def _price_ratios(self, source: str, newest: dt.date | None) -> dict[tuple[str, str, str], float]:
        """Billed cost ÷ list-price estimate per (provider, account_id, model), over the last ``RATIO_DAYS``
        complete days that have costs (a cost API that lags does not read as a discount).

        Only days on which the model has both costs and usage count (usage kept for fewer days than costs,
        or the other way round, does not read as a price), and only where the estimate is above 0 and no
        token of the model in the window is unpriced.
        """
        if newest is None:  # the newest complete day with costs (Store.cost_days)
            return {}
        first = newest - dt.timedelta(days=RATIO_DAYS - 1)
        usage = self.store.usage_by_model(source, first, newest, by_day=True)
        if not usage:
            return {}  # a source without AI usage: its (maybe many) cost rows are not read
        providers = {r[0] for r in usage}
        billed_days = self.store.ai_cost_by_model(source, providers, first, newest, by_day=True)
        billed: dict[tuple[str, str, str, str], float] = {(p, a, m, d): c for p, a, m, d, c in billed_days}
        n_tt = len(TOKEN_TYPES)
        tokens: dict[tuple[str, str, str], dict[str, int]] = {}
        cost: dict[tuple[str, str, str], float] = defaultdict(float)
        for r in usage:
            if (r[0], r[1], r[2], r[3]) not in billed:
                continue
            key = (r[0], r[1], r[2])
            cost[key] += billed[(r[0], r[1], r[2], r[3])]
            acc = tokens.setdefault(key, dict.fromkeys(TOKEN_TYPES, 0))
            for tt, n in zip(TOKEN_TYPES, r[4 : 4 + n_tt], strict=True):
                acc[tt] += n or 0
        out: dict[tuple[str, str, str], float] = {}
        for key, counts in tokens.items():
            est = self.prices.estimate(key[0], key[2], counts)
            if est.usd > 0 and not est.unpriced_tokens:
                out[key] = cost[key] / est.usd
        return out

    def load_price_ratios(self, now: dt.datetime, sources: Iterable[str]) -> None:
        """The price ratios as a build at ``now`` would give them, without building (a start on a saved snapshot)."""
        dates = Dates(now)
        ratios: dict[tuple[str, str, str], float] = {}
        for s in sources:
            ratios.update(self._price_ratios(s, self.store.cost_days(s, dates.today)[0]))
        with self._lock:
            self._ratios = ratios

    def price_ratio(self, provider: str, account_id: str, model: str) -> float | None:
        """``spend_ai_price_ratio`` of the latest build: billed cost ÷ list-price estimate; None where unknown."""
        with self._lock:
            return self._ratios.get((provider, account_id, model))

    # -- whole snapshot ----------------------------------------------------------------
    def build(self, now: dt.datetime, sources: Iterable[str]) -> Snapshot:
        dates = Dates(now)
        names = list(sources)
        views = {s: self._view(s, dates) for s in names}
        with self._lock:
            burn = {s: self._burn[s] for s in names if s in self._burn}
        families: list[Family] = []
        n_series = 0
        for name, mtype, help_, _labels in FAMILIES:
            fam = Family(name, mtype, help_ if name in NOT_FROM_BILLING else f"{help_} {self._cached_note}")
            for s in names:
                frag = views[s].fragments.get(name) or (burn[s][0].get(name) if s in burn else None)
                if frag:
                    fam.fragments.append(frag)
                    n_series += frag.count(b"\n")
            families.append(fam)
        all_series = [s for v in views.values() for s in v.series]
        key_series = [k for v in views.values() for k in v.key_series]
        extra = self.config.attribution.label_names
        allocated = self._allocated(all_series, names)
        budgets = budget_figures(
            self.config.budgets,
            all_series,
            allocated.pooled,
            allocated.shares_by_team(),
            key_series=key_series,
            extra_names=extra,
        )
        allocation_frags = allocation_fragments(allocated)
        for fam in families:
            if fam.name in allocation_frags:
                fam.fragments = [allocation_frags[fam.name]]
                n_series += allocation_frags[fam.name].count(b"\n")
        budget_frags = budget_fragments(budgets)
        for fam in families:
            if fam.name in budget_frags:
                fam.fragments = [budget_frags[fam.name]]
                n_series += budget_frags[fam.name].count(b"\n")
        if self._revenue is not None:
            revenue = render_samples(
                "spend_customer_revenue_monthly_usd",
                ("customer_id",),
                sorted((_truncate((c,)), float(usd)) for c, usd in self._revenue.current().items()),
            )
            for fam in families:
                if fam.name == "spend_customer_revenue_monthly_usd":
                    fam.fragments = [revenue]
                    n_series += revenue.count(b"\n")
        ratios: dict[tuple[str, str, str], float] = {}
        for s in names:
            ratios.update(views[s].price_ratios)
        with self._lock:
            self._ratios = ratios
        exporter_frags = self._exporter_fragments(names, views, {s: b[1] for s, b in burn.items()})
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

    def _allocated(self, series: list[SeriesCost], sources: list[str]) -> Allocated:
        """The shared-cost pools split over ``series``; without pools, every team's spend is direct (the allocated
        total's recording rule and the allocation dashboard read it). A pool that takes no series is logged once
        (its shares read 0), once every source has refreshed: before, its line items may be yet to come."""
        pools = self.config.allocation.shared
        allocated = allocate(pools, series, self.config.attribution.label_names)
        if not pools or not all(self.store.get_state(s).last_success for s in sources):
            return allocated
        for name in allocated.empty:
            if name not in self._empty_pools_logged:
                self._empty_pools_logged.add(name)
                log.warning(
                    "allocation.shared pool %r takes no cost line item (none matches, or an earlier pool takes them): "
                    "its shares are 0; check its match",
                    name,
                )
        return allocated

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

    def _exporter_fragments(
        self, sources: list[str], views: dict[str, SourceView], burn_overflow: dict[str, int]
    ) -> dict[str, bytes]:
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
            "spend_exporter_series_overflow",
            ("source",),
            [((s,), float(views[s].overflow + burn_overflow.get(s, 0))) for s in sources],
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


def _exposed_tokens(v: dict[str, float], token_type: str) -> float:
    """A series' tokens as ``spend_ai_tokens_month_to_date`` shows them: cache_write is 5-minute plus 1-hour."""
    if token_type == "cache_write":
        return v["cache_write"] + v["cache_write_1h"]
    return v[token_type]


def _overrides(config: Config) -> dict[str, dict[str, float]]:
    """``pricing:`` of the configuration as ``PriceTable.load`` takes it."""
    return {m: {str(k): float(p) for k, p in prices.items()} for m, prices in config.pricing.items()}
