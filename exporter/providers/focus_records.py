"""FOCUS rows → records: what both engines of the focus source (DuckDB files, Athena) build their results with.

Usage is summed with ``add_usage`` into a dict per ``UsageKey``, then turned into records with
``usage_records`` (by day) and ``hourly_records`` (by hour).
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from exporter.model import TOKEN_TYPES, HourlyUsage, UsageRecord

PROVIDER_NAMES = {
    "aws": "aws",
    "amazon web services": "aws",
    "amazon": "aws",
    "microsoft": "azure",
    "microsoft azure": "azure",
    "azure": "azure",
    "google cloud": "gcp",
    "google cloud platform": "gcp",
    "google": "gcp",
    "gcp": "gcp",
    "oracle": "oci",
    "oracle cloud infrastructure": "oci",
    "oci": "oci",
    "openai": "openai",
    "anthropic": "anthropic",
}

TOKEN_TYPE_ALIASES = {
    "input": "input",
    "prompt": "input",
    "uncached_input": "input",
    "output": "output",
    "completion": "output",
    "cache_read": "cache_read",
    "cached_input": "cache_read",
    "cache_write": "cache_write",
    "cache_creation": "cache_write",
    "cache_write_5m": "cache_write",
    "cache_write_1h": "cache_write_1h",  # 1-hour prompt-cache writes, priced at their own rate
}


@functools.lru_cache(maxsize=4096)  # called once per aggregated row: 1M calls on a 1M-row export
def normalise_provider(name: str | None) -> str:
    n = (name or "").strip().lower()
    return PROVIDER_NAMES.get(n, n.replace(" ", "_") or "unknown")


UsageKey = tuple[Any, ...]  # (day, or hour start), provider, account_id, service_name, team tag, model


def add_usage(acc: dict[str, int], unit: str, token_type: str, qty: float) -> None:
    """Add one usage row (``ConsumedQuantity`` in ``ConsumedUnit``) to a key's sums: requests, or tokens by type."""
    if unit.startswith("request"):
        acc["requests"] = acc.get("requests", 0) + int(qty)
        return
    tt = TOKEN_TYPE_ALIASES.get(token_type.strip(), "input" if not token_type else None)
    if tt is None:
        return
    acc[tt] = acc.get(tt, 0) + int(qty)


def _fields(key: UsageKey, sums: dict[str, int]) -> dict[str, Any]:
    """A usage record's fields but its day or hour."""
    return {
        "provider": key[1],
        "account_id": key[2],
        "service_name": key[3],
        "team_tag": key[4],
        "model": key[5],
        "tokens": {t: sums[t] for t in TOKEN_TYPES if t in sums},
        "requests": sums.get("requests", 0),
    }


def usage_records(usage: dict[UsageKey, dict[str, int]]) -> list[UsageRecord]:
    """Daily usage summed by ``add_usage`` under ``UsageKey``s, as records."""
    return [UsageRecord(day=k[0], **_fields(k, v)) for k, v in usage.items()]


def hourly_records(hourly: dict[UsageKey, dict[str, int]]) -> list[HourlyUsage]:
    """Hourly usage summed by ``add_usage`` under ``UsageKey``s, as records."""
    return [HourlyUsage(hour_start=k[0].astimezone(dt.UTC), **_fields(k, v)) for k, v in hourly.items()]
