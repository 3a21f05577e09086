"""What ``/status`` and ``/`` show, and the month-to-date ``spend-exporter check`` prints.

Cheap to answer: the spend figures come from the published snapshot, not the store.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from exporter.app import App
from exporter.budgets import BudgetFigure
from exporter.exposition import rounded
from exporter.snapshot import Snapshot

BUDGET_STATES = ("exceeded", "warning", "forecast_exceeded", "ok")
"""A budget's ``state`` in ``/status``, worst first; each is the condition of one alert of
prometheus/rules/spend-alerts.yml on the same figures: ``SpendBudgetExceeded`` (spent reached the limit),
``SpendBudgetWarning`` (spent reached ``warning_ratio`` of it), ``SpendBudgetForecastExceeded`` (the month-end
forecast is above the limit)."""


def status_report(app: App) -> dict[str, Any]:
    """The engine's state: each source's schedule, errors and API cost, the cache, the snapshot and the budgets."""
    now = app.now()
    snap = app.snapshot  # one snapshot for the whole answer, even if a rebuild publishes another meanwhile
    sources = []
    for src in app.config.sources:
        st = app.store.get_state(src.name)
        rt = app.runtime(src.name)
        cap = src.max_api_cost_usd_per_day
        sources.append(
            {
                "name": src.name,
                "type": src.type,
                "provider": app.provider_name(src.name),
                "up": st.up,
                "refreshing": rt.refreshing,
                "last_attempt": _iso(st.last_attempt),
                "last_success": _iso(st.last_success),
                "last_error": st.last_error,
                "consecutive_failures": st.consecutive_failures,
                "next_refresh": _iso(app.due_at(src.name) or now.timestamp()),
                "data_through": _iso(st.data_through),
                "fetched_through": st.fetched_through.isoformat() if st.fetched_through else None,
                "last_duration_seconds": st.last_duration,
                "records_last_refresh": rt.records,
                "records_skipped_last_refresh": json.loads(st.skipped_detail) if st.skipped_detail else {},
                "interval_seconds": src.interval,
                "api_cost_usd_today": round(app.store.api_cost_on(src.name, now.date()), 6),
                "max_api_cost_usd_per_day": cap,
                "paid_call_cap_reached": app.cap_reached(src.name),
                "month_to_date_usd": round(snap.mtd_by_source.get(src.name, 0.0), 2),
            }
        )
        hist = app.history_status(src.name)
        sources[-1]["history"] = {**hist, "last_attempt": _iso(hist["last_attempt"])}
        burn = app.burn_status(src.name)
        if burn is not None:
            sources[-1]["burn"] = burn
    return {
        "now": _iso(now.timestamp()),
        "ready": app.ready(),
        "cache": {"path": app.store.path, "persistent": app.store.persistent, "problem": app.store.problem},
        "snapshot": {
            "restored_from_cache": app.snapshot_restored,
            "built_at": _iso(snap.built_at),
            "series": snap.series,
            "bytes": len(snap.text),
        },
        "sources": sources,
        "budgets": budgets_status(snap),
    }


def month_to_date(snap: Snapshot, name: str) -> float:
    """The source's month-to-date in USD as ``/metrics`` serves it (the sum of its month-to-date series)."""
    return snap.mtd_by_source.get(name, 0.0)


def budgets_status(snap: Snapshot) -> list[dict[str, Any]]:
    """The snapshot's budgets: the figures ``/metrics`` serves."""
    return [
        {
            "name": b.name,
            "team": b.team,
            "amount_usd": b.amount_usd,
            "spent_usd": round(b.spent_usd, 2),
            "used_ratio": round(b.spent_usd / b.amount_usd, 4),
            "warning_ratio": b.warning_ratio,
            "forecast_usd": round(b.forecast_usd, 2),
            "forecast_ratio": round(b.forecast_usd / b.amount_usd, 4),
            "state": budget_state(b),
        }
        for b in snap.budgets
    ]


def budget_state(b: BudgetFigure) -> str:
    """Which of ``BUDGET_STATES`` the budget is in, from the figures ``/metrics`` serves (so the alerts agree)."""
    spent, forecast = rounded(b.spent_usd), rounded(b.forecast_usd)
    if spent >= b.amount_usd:
        return "exceeded"
    if spent >= b.amount_usd * b.warning_ratio:
        return "warning"
    if forecast > b.amount_usd:
        return "forecast_exceeded"
    return "ok"


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")
