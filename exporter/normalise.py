"""Record normalisation: a provider's ``FetchResult`` becomes the rows the store holds for one refresh.

Every amount is converted to USD and every record gets its team (``attribution.Resolver``); records
outside the fetch window, amounts that are not a finite number and currencies with no rate are
skipped and counted by reason.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from typing import Any

from exporter.attribution import Resolver
from exporter.model import TOKEN_TYPES, FetchResult, FetchWindow, HourlyUsage, UsageRecord, cost_tuples
from exporter.store import Replacement, StoredCostRow


def normalise(r: Resolver, window: FetchWindow, result: FetchResult) -> tuple[Replacement, int, Counter[str]]:
    """The store's rows for ``result``, how many cost and usage records they hold, and what was skipped, by reason."""
    skipped: Counter[str] = Counter({k: n for k, n in result.skipped.items() if n > 0})
    lo, hi = window.start, window.end
    costs: list[StoredCostRow] = []
    for t in cost_tuples(result.costs):
        day, provider, account_id, service_name, amount, currency, team_tag, model = t[:8]
        if not lo <= day <= hi:
            skipped["outside_window"] += 1
            continue
        usd = r.to_usd(amount, currency)
        if usd is None:
            bad = amount is None or not math.isfinite(amount)
            skipped["not_a_number" if bad else f"no_rate_{(currency or 'blank').upper()[:8]}"] += 1
            continue
        team = r.team(team_tag, provider, account_id, service_name, model)
        labels = r.labels(t[8] if len(t) > 8 else (), provider, account_id, service_name, model or "")
        costs.append((day.isoformat(), provider, account_id, service_name, team, model or "", usd, labels))
    usage = []
    for u in result.usage:
        if not lo <= u.day <= hi:
            skipped["outside_window"] += 1
            continue
        usage.append(_usage_row(u.day.isoformat(), u, r))
    key_usage = []
    for k in result.key_usage:
        if not lo <= k.day <= hi:
            skipped["outside_window"] += 1
            continue
        team = r.team(k.team_tag, k.provider, k.account_id, k.service_name, k.model)
        tokens = tuple(int(k.tokens.get(t, 0)) for t in TOKEN_TYPES)
        key_usage.append(
            (k.day.isoformat(), k.provider, k.account_id, k.service_name, team, k.model, k.api_key_id, *tokens)
            + (int(k.requests),)
        )
    hourly = None
    if result.hourly is not None:
        hourly = []
        for h in result.hourly:
            hourly.append(_usage_row(h.hour_start.timestamp(), h, r))
    forecasts = None
    if result.forecasts is not None:
        forecasts = []
        for f in result.forecasts:
            usd = r.to_usd(f.remaining_amount, f.currency)
            if usd is None:
                skipped[f"forecast_no_rate_{(f.currency or 'blank').upper()[:8]}"] += 1
                continue
            forecasts.append((f.provider, f.account_id, usd))
    rep = Replacement(
        start=lo,
        end=hi,
        costs=costs,
        usage=usage,
        hourly=hourly,
        accounts=[(a.provider, a.account_id, a.account_name) for a in result.accounts],
        forecasts=forecasts,
        key_usage=key_usage,
        api_keys=[(k.provider, k.account_id, k.api_key_id, k.api_key_name) for k in result.api_keys],
    )
    return rep, len(costs) + len(usage), skipped


def data_through(rep: Replacement) -> float | None:
    """The end of the newest day with a cost or usage record, for a provider that does not say it."""
    days = [c[0] for c in rep.costs] + [u[0] for u in rep.usage]
    if not days:
        return None
    newest = dt.date.fromisoformat(max(days)) + dt.timedelta(days=1)
    return dt.datetime.combine(newest, dt.time(), tzinfo=dt.UTC).timestamp()


def _usage_row(when: str | float, u: UsageRecord | HourlyUsage, r: Resolver) -> tuple[Any, ...]:
    """A daily or hourly usage record as stored: its day or hour, its series, tokens by type, requests."""
    team = r.team(u.team_tag, u.provider, u.account_id, u.service_name, u.model)
    tokens = tuple(int(u.tokens.get(t, 0)) for t in TOKEN_TYPES)
    return (when, u.provider, u.account_id, u.service_name, team, u.model, *tokens, int(u.requests))
