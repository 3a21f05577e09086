"""Shared-cost pools (``allocation.shared``): each team's share of each pool, exact to the cent.

A pool takes the cost line items (series) its ``match`` selects; an item that two pools match belongs to the
first. The items stay in the direct families (``spend_cost_month_to_date_usd`` ...) under their own team; this
module adds each receiving team's share of each pool (``spend_cost_shared_*``) and each team's direct spend
outside every pool (``spend_cost_direct_*``), so that the recording rule's allocated total, direct outside the
pools plus shares, counts each dollar once. Shares are split in integer cents by largest remainder: a pool's
shares add up to the pool rounded to the cent. Pure: the snapshot builder calls ``allocate`` at each build.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction

from exporter.budgets import SeriesCost, match_holds
from exporter.config import SharedPool
from exporter.exposition import render_samples, rounded

UNALLOCATED = "unallocated"  # the team of untagged cost (exporter.attribution); no default receiver
SHARED_FAMILIES = {"mtd": "spend_cost_shared_month_to_date_usd", "previous": "spend_cost_shared_previous_month_usd"}
DIRECT_FAMILIES = {"mtd": "spend_cost_direct_month_to_date_usd", "previous": "spend_cost_direct_previous_month_usd"}
PERIODS = ("mtd", "previous")


@dataclass(frozen=True)
class PoolSplit:
    """One pool in one period: its total and each receiving team's share, in cents (they add up to the total)."""

    pool: str
    total_cents: int
    shares: dict[str, int]


@dataclass
class Allocated:
    """Every pool split, for both periods, and what budgets with ``include_shared`` need."""

    splits: dict[str, list[PoolSplit]]  # period ("mtd" | "previous") → one per pool, in config order
    direct: dict[str, dict[str, float]]  # period → team → its direct spend outside every pool
    pooled: set[tuple[str, ...]] = field(default_factory=set)  # the labels of the series in a pool
    empty: list[str] = field(default_factory=list)  # pools that match no series
    forecast_shares: dict[str, float] = field(default_factory=dict)  # team → its shares of the pools' forecasts

    def shares_by_team(self) -> dict[str, tuple[float, float]]:
        """Team → (month-to-date shares, forecast shares), over every pool: what budgets add."""
        out: dict[str, tuple[float, float]] = {}
        for sp in self.splits["mtd"]:
            for team, cents in sp.shares.items():
                mtd, fc = out.get(team, (0.0, 0.0))
                out[team] = (mtd + cents / 100, fc)
        for team, fc in self.forecast_shares.items():
            mtd, _ = out.get(team, (0.0, 0.0))
            out[team] = (mtd, fc)
        return out


def to_cents(usd: float) -> int:
    """A sum of money in whole cents (half to even, from its shortest decimal form, never from binary noise)."""
    return int(Decimal(repr(round(usd, 6))).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN) * 100)


def split_cents(total: int, weights: dict[str, Fraction]) -> dict[str, int]:
    """``total`` cents split in proportion to ``weights`` (all ≥ 0, not all 0), by largest remainder.

    Every team gets the floor of its exact quota; the cents left over go one each to the largest remainders
    (ties: by team name), so the shares add up to ``total`` exactly. A negative total (credits) splits as its
    opposite.
    """
    if total < 0:
        return {t: -c for t, c in split_cents(-total, weights).items()}
    whole = sum(weights.values(), Fraction(0))
    quotas = {t: total * w / whole for t, w in weights.items()}
    shares = {t: math.floor(q) for t, q in quotas.items()}
    left = total - sum(shares.values())
    for t in sorted(quotas, key=lambda t: (-(quotas[t] - shares[t]), t))[:left]:
        shares[t] += 1
    return shares


def pool_of(pools: Sequence[SharedPool], labels: Sequence[str], extra_names: Sequence[str] = ()) -> int | None:
    """The index of the first pool whose ``match`` selects the series ``labels``; None: in no pool.

    ``extra_names``: the extra labels (``attribution.labels``) whose values follow the cost labels in ``labels``."""
    for i, p in enumerate(pools):
        if match_holds(p.match, labels, extra_names=extra_names):
            return i
    return None


def receivers(pool: SharedPool, direct: dict[str, int]) -> list[str]:
    """The teams that share ``pool``: ``to_teams``, else the teams of its ``weights``, else every team with direct
    spend above 0 in the period (not ``unallocated``); never the pool's own team (``match.team``). With none,
    ``unallocated`` takes the pool, so that its cost does not vanish from the allocated totals."""
    own = set(pool.match.team or [])
    if pool.to_teams is not None:
        teams = list(pool.to_teams)
    elif pool.weights:
        teams = list(pool.weights)
    else:
        teams = sorted(t for t, c in direct.items() if c > 0 and t != UNALLOCATED)
    teams = [t for t in dict.fromkeys(teams) if t not in own]
    return teams or [UNALLOCATED]


def basis(pool: SharedPool, teams: list[str], direct: dict[str, int]) -> dict[str, Fraction]:
    """Each receiving team's weight: its direct spend (proportional), 1 (even) or its configured weight.

    Proportional counts negative direct spend (credits) as 0; when no receiver has direct spend above 0 the
    pool is split evenly.
    """
    if pool.split == "weights" and pool.weights:
        return {t: Fraction(pool.weights.get(t, 0.0)) for t in teams}
    if pool.split == "proportional":
        w = {t: Fraction(max(direct.get(t, 0), 0)) for t in teams}
        if any(w.values()):
            return w
    return {t: Fraction(1) for t in teams}


def allocate(pools: Sequence[SharedPool], series: Sequence[SeriesCost], extra_names: Sequence[str] = ()) -> Allocated:
    """Split every pool of ``pools`` over the cost ``series`` of every source (unfolded, before the cap).

    Month to date splits by this month's direct spend, the previous month by the previous month's.
    """
    matched = [False] * len(pools)
    in_pool: list[list[SeriesCost]] = [[] for _ in pools]
    direct_usd: dict[str, dict[str, list[float]]] = {p: {} for p in PERIODS}
    pooled: set[tuple[str, ...]] = set()
    for s in series:
        i = pool_of(pools, s.labels, extra_names)
        if i is not None:
            matched[i] = True
            in_pool[i].append(s)
            pooled.add(s.labels)
            continue
        team = s.labels[3]
        direct_usd["mtd"].setdefault(team, []).append(s.mtd)
        if s.previous is not None:
            direct_usd["previous"].setdefault(team, []).append(s.previous)
    # the previous month is exported once the cache holds it (as spend_cost_previous_month_usd)
    periods = [p for p in PERIODS if p == "mtd" or any(s.previous is not None for s in series)]
    direct = {p: {t: math.fsum(v) for t, v in direct_usd[p].items()} for p in PERIODS}
    # every team of a series or a share has a direct figure (0 where all its items are pooled), for the rule's sum
    for s in series:
        for p in periods:
            direct[p].setdefault(s.labels[3], 0.0)

    out = Allocated(splits={p: [] for p in PERIODS}, direct=direct, pooled=pooled)
    out.empty = [p.name for p, m in zip(pools, matched, strict=True) if not m]
    forecast: dict[str, int] = {}
    for p in periods:
        direct_cents = {t: to_cents(v) for t, v in direct[p].items()}
        for pool, items in zip(pools, in_pool, strict=True):
            values = [s.mtd if p == "mtd" else s.previous for s in items]
            total = to_cents(math.fsum(v for v in values if v is not None))
            teams = receivers(pool, direct_cents)
            weights = basis(pool, teams, direct_cents)
            out.splits[p].append(PoolSplit(pool.name, total, split_cents(total, weights)))
            for t in teams:
                direct[p].setdefault(t, 0.0)
            if p == "mtd":
                fc = to_cents(math.fsum(s.forecast if s.forecast is not None else s.mtd for s in items))
                for t, c in split_cents(fc, weights).items():
                    forecast[t] = forecast.get(t, 0) + c
    out.forecast_shares = {t: c / 100 for t, c in forecast.items()}
    return out


def allocation_fragments(a: Allocated) -> dict[str, bytes]:
    """The samples of the shared and direct families: one per pool and receiving team, one per team."""
    frags: dict[str, bytes] = {}
    for p in PERIODS:
        rows = [((team, sp.pool), c / 100) for sp in a.splits[p] for team, c in sp.shares.items()]
        frags[SHARED_FAMILIES[p]] = render_samples(SHARED_FAMILIES[p], ("team", "pool"), sorted(rows))
        frags[DIRECT_FAMILIES[p]] = render_samples(
            DIRECT_FAMILIES[p], ("team",), sorted(((t,), rounded(v)) for t, v in a.direct[p].items())
        )
    return frags
