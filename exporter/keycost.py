"""Per-key AI spend: usage by API key times the list price, scaled to what the project or workspace was billed.

Neither provider bills by API key: Anthropic's cost report has no API-key grouping at all
(anthropics/claude-quickstarts#431), and the usage reports (which do group by ``api_key_id``) count tokens, not
dollars. So the billed cost of each (provider, account_id, model) this month is split across the keys that used
that model there, in proportion to each key's list-price estimate (``PriceTable.estimate`` of its tokens), in
whole cents with the largest-remainder method: the keys' shares add up to the billed cost rounded to the cent,
and a discount or a stale price table moves every key alike (docs/allocation.md, "Per-key AI spend").

A model whose key usage the price table cannot fully price is not split (its tokens are already counted in
``spend_exporter_unpriced_tokens``): there is no weight to split by, and pricing it at 0 would hide it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from exporter.budgets import KeySeriesCost
from exporter.model import TOKEN_TYPES

# (provider, model, tokens) -> (list-price USD, tokens that could not be priced)
Estimator = Callable[[str, str, Mapping[str, int]], tuple[float, int]]


@dataclass
class KeyCosts:
    """The month's cost of each API key, by the series its usage belongs to (for budgets), and what was not split."""

    series: list[KeySeriesCost] = field(default_factory=list)
    # (provider, account_id, model) with tokens the price table cannot price (counted and logged as unpriced)
    unpriced: set[tuple[str, str, str]] = field(default_factory=set)
    # (provider, account_id, model) billed, whose keys' usage has no list price to split by (no tokens)
    unsplit: set[tuple[str, str, str]] = field(default_factory=set)

    def by_key(self) -> dict[tuple[str, str, str, str], float]:
        """USD per (provider, account_id, api_key_id, model): ``spend_ai_key_cost_month_to_date_usd``."""
        cents: dict[tuple[str, str, str, str], int] = defaultdict(int)
        for s in self.series:
            cents[(s.labels[0], s.labels[1], s.api_key_id, s.labels[4])] += round(s.mtd * 100)
        return {k: c / 100 for k, c in cents.items()}


def to_cents(usd: float) -> int:
    """``usd`` rounded to the cent, half up.

    The sum of many billed amounts in floats drifts (12.345 may read 12.344999999998): it is rounded to the
    micro-dollar first, the finest unit the AI cost APIs bill in, so that a half cent rounds up as billed.
    """
    exact = Decimal(repr(round(usd, 6)))
    return int((exact * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def split_cents(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` cents in whole cents proportional to ``weights`` (>= 0, summing above 0), adding up to ``total``.

    Largest remainder: each part gets the floor of its exact share, and the cents left go one each to the parts
    with the largest fractional remainders (ties to the earlier part).
    """
    w = [Decimal(repr(x)) for x in weights]
    whole = sum(w)
    exact = [Decimal(total) * x / whole for x in w]
    parts = [int(e.to_integral_value(rounding="ROUND_FLOOR")) for e in exact]
    left = total - sum(parts)
    order = sorted(range(len(parts)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in order[:left]:
        parts[i] += 1
    return parts


def key_costs(
    usage: Iterable[Sequence[Any]], billed: Mapping[tuple[str, str, str], float], estimate: Estimator
) -> KeyCosts:
    """Split each (provider, account_id, model)'s ``billed`` USD across its keys' ``usage``.

    ``usage``: ``Store.key_usage_by_series`` rows (provider, account_id, service_name, team, model, api_key_id,
    tokens by ``TOKEN_TYPES``, requests). A model with key usage and no billed cost this month gets 0 per key.
    """
    n_tt = len(TOKEN_TYPES)
    groups: dict[tuple[str, str, str], list[tuple[tuple[str, str, str, str, str], str, dict[str, int]]]] = defaultdict(
        list
    )
    for r in usage:
        labels = (str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]))
        tokens = {tt: int(n or 0) for tt, n in zip(TOKEN_TYPES, r[6 : 6 + n_tt], strict=True)}
        groups[(labels[0], labels[1], labels[4])].append((labels, str(r[5]), tokens))
    out = KeyCosts()
    for (provider, account, model), rows in sorted(groups.items()):
        weights = []
        unpriced = 0
        for _labels, _key, tokens in rows:
            usd, missing = estimate(provider, model, tokens)
            weights.append(max(usd, 0.0))
            unpriced += missing
        total = to_cents(billed.get((provider, account, model), 0.0))
        if unpriced:
            out.unpriced.add((provider, account, model))
            continue
        if sum(weights) <= 0:
            if total:
                out.unsplit.add((provider, account, model))
                continue
            weights = [1.0] * len(rows)  # nothing billed: every key's share is 0
        for (labels, key, _tokens), cents in zip(rows, split_cents(total, weights), strict=True):
            out.series.append(KeySeriesCost(labels=labels, api_key_id=key, mtd=cents / 100))
    return out
