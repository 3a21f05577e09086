"""The metric catalogue: every family the exporter serves, with its type, HELP and label names.

One table, read by the snapshot (which renders the families in this order), by the docs tests
(``docs/metrics.md`` must list every family and label) and by the dashboards' tests (every query
names a family from here). A new family is declared here first, the grafana/cloudcost-exporter
``NewMetrics()`` habit.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from exporter.exposition import MAX_LABEL_VALUE_BYTES

COST_LABELS = ("provider", "account_id", "service_name", "team", "model")
BUDGET_LABELS = ("budget", "team")
SOURCE_LABELS = ("source", "provider")
KEY_LABELS = ("provider", "account_id", "api_key_id", "model")
SERIES_COST_FAMILIES = (
    "spend_cost_month_to_date_usd",
    "spend_cost_daily_usd",
    "spend_cost_daily_baseline_usd",
    "spend_cost_daily_baseline_stddev_usd",
    "spend_cost_previous_month_usd",
    "spend_cost_forecast_month_end_usd",
)
"""The families of cost by series (``COST_LABELS``, then the extra labels of ``attribution.labels``)."""

# appended to the HELP of the cost families (``FAMILIES``), naming the billing APIs configured
CACHED = "Cached: refreshed in the background from {apis}, never at scrape time."


class MetricSpec(NamedTuple):
    """One family: its full sample name (counters end in ``_total``), type, HELP and label names."""

    name: str
    type: str  # gauge | counter
    help: str
    labels: tuple[str, ...]


FAMILIES: list[MetricSpec] = [
    MetricSpec(
        "spend_cost_month_to_date_usd",
        "gauge",
        "Cost in USD of the current UTC calendar month through the newest data.",
        COST_LABELS,
    ),
    MetricSpec("spend_cost_daily_usd", "gauge", "Cost in USD of the newest complete UTC day.", COST_LABELS),
    MetricSpec(
        "spend_cost_daily_baseline_usd",
        "gauge",
        "Mean daily cost in USD over the 28 days before the newest complete UTC day.",
        COST_LABELS,
    ),
    MetricSpec(
        "spend_cost_daily_baseline_stddev_usd",
        "gauge",
        "Standard deviation of the daily cost in USD over the 28 days before the newest complete UTC day.",
        COST_LABELS,
    ),
    MetricSpec(
        "spend_cost_previous_month_usd", "gauge", "Cost in USD of the last complete UTC calendar month.", COST_LABELS
    ),
    MetricSpec(
        "spend_cost_forecast_month_end_usd",
        "gauge",
        "Forecast month-end cost in USD: month-to-date plus remaining days times the mean of the last 7 complete days.",
        COST_LABELS,
    ),
    MetricSpec(
        "spend_ai_tokens_month_to_date",
        "gauge",
        "AI model tokens used this UTC month, by token type.",
        (*COST_LABELS, "token_type"),
    ),
    MetricSpec("spend_ai_requests_month_to_date", "gauge", "AI model requests this UTC month.", COST_LABELS),
    MetricSpec(
        "spend_ai_cost_last_hour_usd",
        "gauge",
        "Estimated AI cost in USD of the last complete UTC hour: hourly usage times the price table.",
        COST_LABELS,
    ),
    MetricSpec(
        "spend_ai_price_ratio",
        "gauge",
        "Billed AI cost divided by its list-price estimate (usage times the price table) over the last 7 complete "
        "UTC days with costs; below 1: a negotiated discount or batch use, above 1: a stale price table.",
        ("provider", "account_id", "model"),
    ),
    MetricSpec(
        "spend_ai_burn_rate_usd_per_hour",
        "gauge",
        "Estimated AI cost in USD per hour: the last complete burn_window of minute usage times the price table, "
        "scaled to one hour and by the billed/list price ratio where known.",
        COST_LABELS,
    ),
    MetricSpec(
        "spend_ai_burn_window_end_timestamp_seconds",
        "gauge",
        "Unix time of the end of the newest minute bucket behind spend_ai_burn_rate_usd_per_hour.",
        SOURCE_LABELS,
    ),
    MetricSpec("spend_budget_limit_usd", "gauge", "Monthly budget limit in USD.", BUDGET_LABELS),
    MetricSpec("spend_budget_spent_usd", "gauge", "Month-to-date spend in USD matching the budget.", BUDGET_LABELS),
    MetricSpec(
        "spend_budget_forecast_usd", "gauge", "Forecast month-end spend in USD matching the budget.", BUDGET_LABELS
    ),
    MetricSpec(
        "spend_budget_warning_ratio",
        "gauge",
        "Share of the budget at which the warning alert fires.",
        BUDGET_LABELS,
    ),
    MetricSpec(
        "spend_provider_forecast_month_end_usd",
        "gauge",
        "The provider's own forecast of month-end cost in USD (month-to-date plus its forecast of the rest).",
        ("provider", "account_id"),
    ),
    MetricSpec(
        "spend_account_info",
        "gauge",
        "Account, project or subscription names; always 1.",
        ("provider", "account_id", "account_name"),
    ),
    # shared-cost pools (allocation.shared, exporter.allocation): no samples without pools
    MetricSpec(
        "spend_cost_shared_month_to_date_usd",
        "gauge",
        "Each team's share in USD of each shared-cost pool this UTC month (allocation.shared); a pool's shares add "
        "up to the pool to the cent. The pool's line items stay in spend_cost_month_to_date_usd under their own team.",
        ("team", "pool"),
    ),
    MetricSpec(
        "spend_cost_shared_previous_month_usd",
        "gauge",
        "Each team's share in USD of each shared-cost pool in the last complete UTC month.",
        ("team", "pool"),
    ),
    MetricSpec(
        "spend_cost_direct_month_to_date_usd",
        "gauge",
        "Each team's cost in USD this UTC month outside every shared-cost pool; plus its shares: its allocated total.",
        ("team",),
    ),
    MetricSpec(
        "spend_cost_direct_previous_month_usd",
        "gauge",
        "Each team's cost in USD in the last complete UTC month outside every shared-cost pool.",
        ("team",),
    ),
    MetricSpec(
        "spend_customer_revenue_monthly_usd",
        "gauge",
        "Each customer's monthly revenue in USD, from revenue_file (read again when it changes).",
        ("customer_id",),
    ),
    MetricSpec(
        "spend_ai_key_cost_month_to_date_usd",
        "gauge",
        "AI cost in USD of the current UTC month per API key: usage by key times the price table, scaled so that "
        "the keys of a project or workspace add up to its billed cost of the model, to the cent.",
        KEY_LABELS,
    ),
    MetricSpec(
        "spend_ai_key_info",
        "gauge",
        "AI API key names, from the providers' key lists; always 1.",
        ("provider", "account_id", "api_key_id", "api_key_name"),
    ),
]

NOT_FROM_BILLING = frozenset({"spend_customer_revenue_monthly_usd"})
"""Families of ``FAMILIES`` that no billing API gives: their HELP has no ``CACHED`` note."""

EXPORTER_FAMILIES: list[MetricSpec] = [
    MetricSpec("spend_exporter_source_up", "gauge", "1 if the source's last refresh succeeded, else 0.", SOURCE_LABELS),
    MetricSpec(
        "spend_exporter_source_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the source's last successful refresh.",
        SOURCE_LABELS,
    ),
    MetricSpec(
        "spend_exporter_source_data_through_timestamp_seconds",
        "gauge",
        "Unix time of the end of the newest billing bucket held for the source.",
        SOURCE_LABELS,
    ),
    MetricSpec(
        "spend_exporter_source_refresh_duration_seconds",
        "gauge",
        "Duration of the source's last refresh in seconds.",
        SOURCE_LABELS,
    ),
    MetricSpec(
        "spend_exporter_source_interval_seconds",
        "gauge",
        "The source's configured refresh interval.",
        SOURCE_LABELS,
    ),
    MetricSpec(
        "spend_exporter_source_records_skipped",
        "gauge",
        "Records the last refresh skipped (an amount in a currency with no rate or not a finite number, "
        "or an unparsable row).",
        SOURCE_LABELS,
    ),
    MetricSpec(
        "spend_exporter_label_values_truncated_total",
        "counter",
        f"Label values longer than {MAX_LABEL_VALUE_BYTES} bytes that were cut short (ending in ...) as records were "
        "ingested.",
        ("source",),
    ),
    MetricSpec(
        "spend_exporter_api_requests_total",
        "counter",
        "Billing API requests the exporter made, by operation and status.",
        ("source", "operation", "status"),
    ),
    MetricSpec(
        "spend_exporter_api_cost_usd_total",
        "counter",
        "What the exporter's own paid API calls cost in USD (Cost Explorer: $0.01 each).",
        ("source",),
    ),
    MetricSpec(
        "spend_exporter_series_overflow",
        "gauge",
        "Series folded into __other__ by max_series_per_source.",
        ("source",),
    ),
    MetricSpec(
        "spend_exporter_unpriced_tokens",
        "gauge",
        "Tokens this month of AI models missing from the price table (not priced in spend_ai_cost_last_hour_usd).",
        ("source", "provider", "model"),
    ),
    MetricSpec(
        "spend_exporter_cache_persistent",
        "gauge",
        "1 while the cache is kept in its file at cache_path; 0 when it could not be written and runs in memory "
        "(what is fetched is lost at the next restart).",
        (),
    ),
    MetricSpec("spend_exporter_build_info", "gauge", "Build information; always 1.", ("version", "pythonversion")),
]

GUARD_FAMILIES: list[MetricSpec] = [
    MetricSpec(
        "spend_guard_actions_total",
        "counter",
        "Actions the guard took on Alertmanager's alerts, by rule, action and result (applied, dry_run, failed, "
        "limited, duplicate); counted from the record in the cache, so it survives restarts.",
        ("rule", "action", "result"),
    ),
    MetricSpec(
        "spend_guard_action_active",
        "gauge",
        "1 while an action the guard applied is in force (not undone with spend-exporter guard undo).",
        ("rule", "action", "provider", "account_id"),
    ),
]
"""Rendered when ``guard.rules`` are configured (``exporter.guard``)."""

GUARD_RESULTS = ("applied", "dry_run", "failed", "limited", "duplicate")


def describe_families() -> list[dict[str, Any]]:
    """Every family the exporter can emit (for docs tests)."""
    return [
        {"name": n, "type": t, "help": h, "labels": list(lab)}
        for n, t, h, lab in FAMILIES + EXPORTER_FAMILIES + GUARD_FAMILIES
    ]
