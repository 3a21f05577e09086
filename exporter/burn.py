"""The burn rate: the last complete ``burn_window`` of minute usage, priced, scaled to one hour.

Pure arithmetic and rendering; the engine (``App.refresh_burn``) fetches the minutes
(``MinuteProvider.fetch_minutes``, which ends the window at ``model.burn_bounds``) and injects
the price estimate and the price ratio, so this module knows no price table.

- Each series (``provider, account_id, service_name, team, model``) sums its tokens over the
  window; the estimate prices them; the figure is scaled to one hour (× 3600 / window seconds)
  and by the price ratio (billed ÷ list price) where it is known.
- A series with tokens the estimate cannot price gets no figure (never 0): its tokens are counted
  in ``unpriced``.
- A series seen in the window, or in the hour before it, reads 0 when the window holds none of its
  usage: a loop that stops shows a drop to 0, not a vanished series.
- Stale data (the window ended more than ``STALE_WINDOWS`` windows before the newest complete
  minute): no burn rate at all for the source; ``spend_ai_burn_window_end_timestamp_seconds``
  still shows the old end, so the staleness is visible and alertable. A stale low rate then hides
  nothing for long, and a stale high one stops paging.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from exporter.cardinality import fold
from exporter.exposition import render_samples, rounded
from exporter.metrics import COST_LABELS, SOURCE_LABELS
from exporter.model import MinuteUsage, MinuteUsageResult

RATE = "spend_ai_burn_rate_usd_per_hour"
WINDOW_END = "spend_ai_burn_window_end_timestamp_seconds"

Estimate = Callable[[str, str, Mapping[str, int]], tuple[float, int]]
"""(provider, model, tokens by token type) → (USD at list price, tokens it could not price)."""
Ratio = Callable[[str, str, str], "float | None"]
"""(provider, account_id, model) → billed cost ÷ list-price estimate, None when unknown."""
Labels = tuple[str, ...]

SERIES_MEMORY = 3600.0  # seconds a series seen with usage keeps reading 0 after its usage stops
STALE_WINDOWS = 3  # windows past the newest complete minute after which the burn rate is withdrawn


@dataclass(frozen=True)
class BurnData:
    """One source's burn window, priced."""

    start: dt.datetime
    end: dt.datetime
    rates: dict[Labels, float]  # COST_LABELS values → USD per hour (scaled by the ratio where known)
    unpriced: dict[tuple[str, str], int] = field(default_factory=dict)  # (provider, model) → tokens
    keys: dict[tuple[str, str, str], tuple[str, ...]] = field(default_factory=dict)
    """(provider, account_id, model) → the API key ids with usage in the window."""
    seen: dict[Labels, float] = field(default_factory=dict)  # series → window end (unix) it last had usage


def per_hour(usd: float, window_seconds: float) -> float:
    """``usd`` spent in ``window_seconds``, as USD per hour."""
    return usd * 3600.0 / window_seconds


def burn_data(
    result: MinuteUsageResult,
    labels_of: Callable[[MinuteUsage], Labels],
    estimate: Estimate,
    ratio: Ratio,
    previous: BurnData | None = None,
) -> BurnData:
    """The burn rate of each series in ``result``'s window.

    ``labels_of`` gives a minute row's COST_LABELS values (team attribution is the engine's);
    ``previous`` carries series seen in the last ``SERIES_MEMORY`` seconds, which read 0.
    """
    window = (result.end - result.start).total_seconds()
    tokens: dict[Labels, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    keys: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for m in result.minutes:
        labels = labels_of(m)
        acc = tokens[labels]
        for tt, n in m.tokens.items():
            acc[tt] += n
        if m.api_key_id and (m.requests or any(m.tokens.values())):
            keys[(m.provider, m.account_id, m.model)].add(m.api_key_id)
    end_ts = result.end.timestamp()
    seen = {k: t for k, t in (previous.seen if previous else {}).items() if 0 <= end_ts - t <= SERIES_MEMORY}
    rates: dict[Labels, float] = {k: 0.0 for k in seen}
    unpriced: dict[tuple[str, str], int] = defaultdict(int)
    for labels, counts in tokens.items():
        provider, account, model = labels[0], labels[1], labels[4]
        usd, missing = estimate(provider, model, counts)
        if missing:
            unpriced[(provider, model)] += missing
            rates.pop(labels, None)
            continue
        rate = per_hour(usd, window)
        r = ratio(provider, account, model)
        if r is not None:
            rate *= r
        rates[labels] = rate
        if any(counts.values()):
            seen[labels] = end_ts
    return BurnData(
        start=result.start,
        end=result.end,
        rates=rates,
        unpriced=dict(unpriced),
        keys={k: tuple(sorted(v)) for k, v in keys.items()},
        seen=seen,
    )


def is_stale(end: dt.datetime, now: dt.datetime, window_seconds: float, delay_seconds: float) -> bool:
    """The window ended more than ``STALE_WINDOWS`` windows before the newest minute complete at ``now``."""
    newest = (now - dt.timedelta(seconds=delay_seconds)).replace(second=0, microsecond=0)
    return (newest - end).total_seconds() > STALE_WINDOWS * window_seconds


def fragments(
    source: str,
    provider: str,
    data: BurnData | None,
    stale: bool,
    cap: int,
) -> tuple[dict[str, bytes], int]:
    """The two burn families' samples for one source, and the series folded by the cardinality cap."""
    if data is None:
        return {RATE: b"", WINDOW_END: b""}, 0
    rows, overflow = ([], 0) if stale else fold([(k, {"v": v}) for k, v in data.rates.items()], cap, lambda v: v["v"])
    return {
        RATE: render_samples(RATE, COST_LABELS, sorted((lab, rounded(v["v"])) for lab, v in rows)),
        WINDOW_END: render_samples(WINDOW_END, SOURCE_LABELS, [((source, provider), data.end.timestamp())]),
    }, overflow
