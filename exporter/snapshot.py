"""Builds the immutable snapshot that ``/metrics`` serves.

After each refresh the engine aggregates the store into every family of
DESIGN.md and renders them once, as text and OpenMetrics, plain and gzip.
Each source's part is aggregated by one SQL query and rendered into its own
fragments, so a refresh of one source re-renders only that source; budgets
(which cross sources) and the exporter's own metrics are re-rendered every
time, and are small.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter import __version__
from exporter.collector import (
    MAX_LABEL_VALUE_BYTES,
    Family,
    gzipped,
    render,
    render_samples,
)
from exporter.config import Budget, Config
from exporter.model import TOKEN_TYPES
from exporter.store import Store

log = logging.getLogger(__name__)

COST_LABELS = ("provider", "account_id", "service_name", "team", "model")
OTHER = "__other__"
BASELINE_DAYS = 28
FORECAST_DAYS = 7

CACHED = "Cached: refreshed in the background from {apis}, never at scrape time."

# name, type, help, labels
FAMILIES: list[tuple[str, str, str, tuple[str, ...]]] = [
    (
        "spend_cost_month_to_date_usd",
        "gauge",
        "Cost in USD of the current UTC calendar month through the newest data.",
        COST_LABELS,
    ),
    ("spend_cost_daily_usd", "gauge", "Cost in USD of the newest complete UTC day.", COST_LABELS),
    (
        "spend_cost_daily_baseline_usd",
        "gauge",
        "Mean daily cost in USD over the 28 days before the newest complete UTC day.",
        COST_LABELS,
    ),
    (
        "spend_cost_daily_baseline_stddev_usd",
        "gauge",
        "Standard deviation of the daily cost in USD over the 28 days before the newest complete UTC day.",
        COST_LABELS,
    ),
    ("spend_cost_previous_month_usd", "gauge", "Cost in USD of the last complete UTC calendar month.", COST_LABELS),
    (
        "spend_cost_forecast_month_end_usd",
        "gauge",
        "Forecast month-end cost in USD: month-to-date plus remaining days times the mean of the last 7 complete days.",
        COST_LABELS,
    ),
    (
        "spend_ai_tokens_month_to_date",
        "gauge",
        "AI model tokens used this UTC month, by token type.",
        (*COST_LABELS, "token_type"),
    ),
    ("spend_ai_requests_month_to_date", "gauge", "AI model requests this UTC month.", COST_LABELS),
    (
        "spend_ai_cost_last_hour_usd",
        "gauge",
        "Estimated AI cost in USD of the last complete UTC hour: hourly usage times the price table.",
        COST_LABELS,
    ),
    ("spend_budget_limit_usd", "gauge", "Monthly budget limit in USD.", ("budget", "team")),
    ("spend_budget_spent_usd", "gauge", "Month-to-date spend in USD matching the budget.", ("budget", "team")),
    ("spend_budget_forecast_usd", "gauge", "Forecast month-end spend in USD matching the budget.", ("budget", "team")),
    (
        "spend_budget_warning_ratio",
        "gauge",
        "Share of the budget at which the warning alert fires.",
        ("budget", "team"),
    ),
    (
        "spend_provider_forecast_month_end_usd",
        "gauge",
        "The provider's own forecast of month-end cost in USD (month-to-date plus its forecast of the rest).",
        ("provider", "account_id"),
    ),
    (
        "spend_account_info",
        "gauge",
        "Account, project or subscription names; always 1.",
        ("provider", "account_id", "account_name"),
    ),
]

EXPORTER_FAMILIES: list[tuple[str, str, str, tuple[str, ...]]] = [
    ("spend_exporter_source_up", "gauge", "1 if the source's last refresh succeeded, else 0.", ("source", "provider")),
    (
        "spend_exporter_source_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the source's last successful refresh.",
        ("source", "provider"),
    ),
    (
        "spend_exporter_source_data_through_timestamp_seconds",
        "gauge",
        "Unix time of the end of the newest billing bucket held for the source.",
        ("source", "provider"),
    ),
    (
        "spend_exporter_source_refresh_duration_seconds",
        "gauge",
        "Duration of the source's last refresh in seconds.",
        ("source", "provider"),
    ),
    (
        "spend_exporter_source_interval_seconds",
        "gauge",
        "The source's configured refresh interval.",
        ("source", "provider"),
    ),
    (
        "spend_exporter_source_records_skipped",
        "gauge",
        "Records the last refresh skipped (an amount in a currency with no rate or not a finite number, "
        "or an unparsable row).",
        ("source", "provider"),
    ),
    (
        "spend_exporter_label_values_truncated_total",
        "counter",
        f"Label values longer than {MAX_LABEL_VALUE_BYTES} bytes that were cut short (ending in ...) as records were "
        "ingested.",
        ("source",),
    ),
    (
        "spend_exporter_api_requests_total",
        "counter",
        "Billing API requests the exporter made, by operation and status.",
        ("source", "operation", "status"),
    ),
    (
        "spend_exporter_api_cost_usd_total",
        "counter",
        "What the exporter's own paid API calls cost in USD (Cost Explorer: $0.01 each).",
        ("source",),
    ),
    (
        "spend_exporter_series_overflow",
        "gauge",
        "Series folded into __other__ by max_series_per_source.",
        ("source",),
    ),
    (
        "spend_exporter_unpriced_tokens",
        "gauge",
        "Tokens this month of AI models missing from the price table (not priced in spend_ai_cost_last_hour_usd).",
        ("source", "provider", "model"),
    ),
    (
        "spend_exporter_cache_persistent",
        "gauge",
        "1 while the cache is kept in its file at cache_path; 0 when it could not be written and runs in memory "
        "(what is fetched is lost at the next restart).",
        (),
    ),
    ("spend_exporter_build_info", "gauge", "Build information; always 1.", ("version", "pythonversion")),
]


@dataclass(frozen=True)
class Dates:
    """The calendar a snapshot is built for, from ``now`` (UTC)."""

    now: dt.datetime

    @property
    def today(self) -> dt.date:
        return self.now.date()

    @property
    def month_start(self) -> dt.date:
        return self.today.replace(day=1)

    @property
    def prev_month_end(self) -> dt.date:
        return self.month_start - dt.timedelta(days=1)

    @property
    def prev_month_start(self) -> dt.date:
        return self.prev_month_end.replace(day=1)

    @property
    def days_in_month(self) -> int:
        return calendar.monthrange(self.today.year, self.today.month)[1]

    @property
    def last_complete_hour(self) -> dt.datetime:
        return self.now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)


@dataclass
class SeriesCost:
    """One cost series, unfolded: what budgets are computed from."""

    labels: tuple[str, str, str, str, str]
    mtd: float
    forecast: float | None


@dataclass
class SourceView:
    """One source's aggregated, rendered part of the snapshot."""

    fragments: dict[str, bytes]
    series: list[SeriesCost]
    overflow: int
    unpriced: list[tuple[str, str, float]]  # provider, model, tokens
    mtd_usd: float  # the sum of the month-to-date samples rendered in ``fragments``


@dataclass(frozen=True)
class BudgetFigure:
    """One budget as the snapshot computed it (``/status`` shows the same figures as ``/metrics``)."""

    name: str
    team: str
    amount_usd: float
    spent_usd: float
    forecast_usd: float
    warning_ratio: float


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


def _clean(v: float) -> float:
    v = round(v, 6)
    return 0.0 if v == 0 else v


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
        store = self.store
        today = dates.today.isoformat()
        row = store.query("SELECT MAX(day), MIN(day) FROM cost WHERE source=? AND day < ?", (source, today))
        newest = dt.date.fromisoformat(row[0][0]) if row and row[0][0] else None
        oldest = dt.date.fromisoformat(row[0][1]) if row and row[0][1] else None
        cost_rows: list[tuple[tuple[str, ...], dict[str, float]]] = []
        if newest is not None or store.query("SELECT 1 FROM cost WHERE source=? LIMIT 1", (source,)):
            d = newest or dates.today - dt.timedelta(days=1)
            b0 = d - dt.timedelta(days=BASELINE_DAYS)
            b1 = d - dt.timedelta(days=1)
            l0 = d - dt.timedelta(days=FORECAST_DAYS - 1)
            lower = min(dates.prev_month_start, b0)
            p = {
                "src": source,
                "lower": lower.isoformat(),
                "today": today,
                "ms": dates.month_start.isoformat(),
                "d": d.isoformat(),
                "b0": b0.isoformat(),
                "b1": b1.isoformat(),
                "l0": l0.isoformat(),
                "p0": dates.prev_month_start.isoformat(),
                "p1": dates.prev_month_end.isoformat(),
            }
            # the store holds one row per day and series, so c is the day's total; the index
            # cost_series hands the rows over grouped by series, so this needs no sort
            sql = """
            WITH per_day AS (
                SELECT provider, account_id, service_name, team, model, day, cost_usd AS c
                FROM cost WHERE source = :src AND day >= :lower AND day <= :today
            )
            SELECT provider, account_id, service_name, team, model,
                SUM(CASE WHEN day >= :ms THEN c ELSE 0 END),
                MAX(day >= :ms),
                SUM(CASE WHEN day >= :ms AND day <= :d THEN c ELSE 0 END),
                SUM(CASE WHEN day = :d THEN c ELSE 0 END),
                SUM(CASE WHEN day BETWEEN :b0 AND :b1 THEN c ELSE 0 END),
                SUM(CASE WHEN day BETWEEN :b0 AND :b1 THEN c * c ELSE 0 END),
                MAX(day BETWEEN :b0 AND :d),
                SUM(CASE WHEN day BETWEEN :l0 AND :d THEN c ELSE 0 END),
                SUM(CASE WHEN day BETWEEN :p0 AND :p1 THEN c ELSE 0 END),
                MAX(day BETWEEN :p0 AND :p1)
            FROM per_day
            GROUP BY provider, account_id, service_name, team, model
            """
            with store._lock:
                cur = store._conn.execute(sql, p)
                raw = cur.fetchall()
            # days of history the source actually holds, so a new source's baseline is not diluted
            base_n = BASELINE_DAYS
            last_n = FORECAST_DAYS
            if oldest is not None:
                base_n = max(0, min(BASELINE_DAYS, (b1 - max(oldest, b0)).days + 1))
                last_n = max(1, min(FORECAST_DAYS, (d - max(oldest, l0)).days + 1))
            in_month = d >= dates.month_start
            remaining = dates.days_in_month - d.day if in_month else dates.days_in_month
            for r in raw:
                labels = _truncate(r[:5])
                mtd, has_mtd, mtd_complete, daily, bsum, bsq, recent, last7, prev, has_prev = r[5:]
                # every series the source exports has a month-to-date, 0 until this month has cost: the
                # series carries on across 00:00 UTC on the 1st instead of vanishing until new data arrives
                vals: dict[str, float] = {"spend_cost_month_to_date_usd": mtd}
                if newest is not None and recent:
                    vals["spend_cost_daily_usd"] = daily
                    if base_n > 0:
                        mean = bsum / base_n
                        var = max(bsq / base_n - mean * mean, 0.0)
                        vals["spend_cost_daily_baseline_usd"] = mean
                        vals["spend_cost_daily_baseline_stddev_usd"] = math.sqrt(var)
                if has_prev:
                    vals["spend_cost_previous_month_usd"] = prev
                if newest is not None and (has_mtd or recent):
                    complete = mtd_complete if in_month else 0.0
                    vals["spend_cost_forecast_month_end_usd"] = complete + remaining * (last7 / last_n)
                if vals:
                    cost_rows.append((labels, vals))

        # AI usage, month to date
        usage_rows: list[tuple[tuple[str, ...], dict[str, float]]] = []
        for r in store.query(
            "SELECT provider, account_id, service_name, team, model, "
            "SUM(CASE WHEN day >= :ms THEN input ELSE 0 END), SUM(CASE WHEN day >= :ms THEN output ELSE 0 END), "
            "SUM(CASE WHEN day >= :ms THEN cache_read ELSE 0 END), "
            "SUM(CASE WHEN day >= :ms THEN cache_write ELSE 0 END), "
            "SUM(CASE WHEN day >= :ms THEN requests ELSE 0 END) FROM usage "
            "WHERE source = :s AND day >= :p0 AND day <= :today "
            "GROUP BY provider, account_id, service_name, team, model",
            # series with usage last month read 0 in a new month rather than vanish (as costs)
            {
                "s": source,
                "ms": dates.month_start.isoformat(),
                "p0": dates.prev_month_start.isoformat(),
                "today": today,
            },
        ):
            labels = _truncate(r[:5])
            usage_rows.append(
                (labels, {tt: float(r[5 + i]) for i, tt in enumerate(TOKEN_TYPES)} | {"requests": float(r[9])})
            )

        # AI last complete hour: series seen in the last day get 0 when the hour has no usage
        hour = dates.last_complete_hour.timestamp()
        hourly: dict[tuple[str, ...], float] = {}
        unpriced: dict[tuple[str, str], float] = {}
        for r in store.query(
            "SELECT provider, account_id, service_name, team, model, "
            "SUM(CASE WHEN hour = :h THEN input ELSE 0 END), SUM(CASE WHEN hour = :h THEN output ELSE 0 END), "
            "SUM(CASE WHEN hour = :h THEN cache_read ELSE 0 END), SUM(CASE WHEN hour = :h THEN cache_write ELSE 0 END) "
            "FROM hourly WHERE source = :s AND hour > :h - 86400 AND hour <= :h "
            "GROUP BY provider, account_id, service_name, team, model",
            {"h": hour, "s": source},
        ):
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

        series = [
            SeriesCost(
                labels=labels,  # type: ignore[arg-type]
                mtd=vals.get("spend_cost_month_to_date_usd", 0.0),
                forecast=vals.get("spend_cost_forecast_month_end_usd"),
            )
            for labels, vals in cost_rows
        ]
        cap = self.config.max_series_per_source
        cost_rows, over1 = _fold(cost_rows, cap, _cost_weight)
        usage_rows, over2 = _fold(usage_rows, cap, lambda v: sum(v.values()))
        hourly_rows, over3 = _fold([(k, {"v": v}) for k, v in hourly.items()], cap, lambda v: v["v"])
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
                fam, COST_LABELS, sorted((lab, _clean(v[fam])) for lab, v in cost_rows if fam in v)
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
            "spend_ai_cost_last_hour_usd", COST_LABELS, sorted((lab, _clean(v["v"])) for lab, v in hourly_rows)
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
                ((prov, acct), _clean(mtd_by_account.get((prov, acct), 0.0) + rem))
                for prov, acct, rem in store.query(
                    "SELECT provider, account_id, remaining_usd FROM forecasts WHERE source=?", (source,)
                )
            ),
        )
        accounts = []
        for prov, acct, name in store.query(
            "SELECT provider, account_id, account_name FROM accounts WHERE source=?", (source,)
        ):
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
            mtd_usd=math.fsum(_clean(v["spend_cost_month_to_date_usd"]) for _, v in cost_rows),
        )

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
        budget_frags, budgets = self._budgets(views)
        for fam in families:
            if fam.name in budget_frags:
                fam.fragments = [budget_frags[fam.name]]
                n_series += budget_frags[fam.name].count(b"\n")
        exporter_frags = self._exporter_fragments(names, views)
        for name, mtype, help_, _labels in EXPORTER_FAMILIES:
            frag = exporter_frags[name]
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

    def _budgets(self, views: dict[str, SourceView]) -> tuple[dict[str, bytes], list[BudgetFigure]]:
        rows: dict[str, list[tuple[tuple[str, ...], float]]] = {
            "spend_budget_limit_usd": [],
            "spend_budget_spent_usd": [],
            "spend_budget_forecast_usd": [],
            "spend_budget_warning_ratio": [],
        }
        all_series = [s for v in views.values() for s in v.series]
        figures = []
        for b in self.config.budgets:
            spent = 0.0
            forecast = 0.0
            for s in all_series:
                if budget_matches(b, s.labels):
                    spent += s.mtd
                    forecast += s.forecast if s.forecast is not None else s.mtd
            labels = (b.name, b.team or "")
            rows["spend_budget_limit_usd"].append((labels, b.amount_usd))
            rows["spend_budget_spent_usd"].append((labels, _clean(spent)))
            rows["spend_budget_forecast_usd"].append((labels, _clean(forecast)))
            rows["spend_budget_warning_ratio"].append((labels, b.warning_ratio))
            figures.append(BudgetFigure(b.name, b.team or "", b.amount_usd, spent, forecast, b.warning_ratio))
        return {k: render_samples(k, ("budget", "team"), sorted(v)) for k, v in rows.items()}, figures

    def _exporter_fragments(self, sources: list[str], views: dict[str, SourceView]) -> dict[str, bytes]:
        """The exporter's own families, from one read of each source's state and of the API counters."""
        import platform

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
        out = {name: render_samples(name, ("source", "provider"), rows) for name, rows in per_source.items()}

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
            "spend_exporter_api_cost_usd_total", ("source",), sorted(((s,), _clean(c)) for s, c in cost.items())
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


def _cost_weight(v: dict[str, float]) -> float:
    return (
        abs(v.get("spend_cost_month_to_date_usd", 0.0))
        + abs(v.get("spend_cost_previous_month_usd", 0.0))
        + abs(v.get("spend_cost_daily_baseline_usd", 0.0)) * BASELINE_DAYS
    )


def _fold(
    rows: list[tuple[tuple[str, ...], dict[str, float]]],
    cap: int,
    weight: Callable[[dict[str, float]], float],
) -> tuple[list[tuple[tuple[str, ...], dict[str, float]]], int]:
    """Keep the ``cap - 1`` heaviest series and fold the rest into one ``__other__`` series per provider.

    Sums add up; the folded standard deviation is the root of the summed
    variances (the series are treated as independent).
    """
    if len(rows) <= cap:
        return rows, 0
    ranked = sorted(rows, key=lambda r: (-weight(r[1]), r[0]))
    kept = ranked[: max(cap - 1, 0)]
    folded: dict[tuple[str, ...], dict[str, float]] = {}
    for labels, vals in ranked[len(kept) :]:
        key = (labels[0], OTHER, OTHER, OTHER, OTHER)
        acc = folded.setdefault(key, {})
        for k, v in vals.items():
            if k == "spend_cost_daily_baseline_stddev_usd":
                acc[k] = math.sqrt(acc.get(k, 0.0) ** 2 + v * v)
            else:
                acc[k] = acc.get(k, 0.0) + v
    return kept + list(folded.items()), len(rows) - len(kept)


def budget_matches(b: Budget, labels: Sequence[str]) -> bool:
    provider, account_id, service_name, team, model = labels
    m = b.match
    if m.provider is not None and provider not in m.provider:
        return False
    if m.account_id is not None and account_id not in m.account_id:
        return False
    if m.service_name is not None and service_name not in m.service_name:
        return False
    if m.model is not None and model not in m.model:
        return False
    if m.team is not None:
        return team in m.team
    return not (b.team is not None and team != b.team)


def describe_families() -> list[dict[str, Any]]:
    """Every family the exporter can emit (for docs tests)."""
    return [{"name": n, "type": t, "help": h, "labels": list(lab)} for n, t, h, lab in FAMILIES + EXPORTER_FAMILIES]
