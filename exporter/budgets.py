"""Budgets: which cost series each one matches, what they add up to, and its four families.

Budgets cross sources, so they are computed from every source's series at each build (they are
few, and cheap); ``/status`` shows the same ``BudgetFigure`` values that ``/metrics`` serves.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass

from exporter.config import Budget, BudgetMatch
from exporter.exposition import render_samples, rounded
from exporter.metrics import BUDGET_LABELS

BUDGET_FAMILIES = (
    "spend_budget_limit_usd",
    "spend_budget_spent_usd",
    "spend_budget_forecast_usd",
    "spend_budget_warning_ratio",
)


@dataclass
class SeriesCost:
    """One cost series, unfolded (before the cardinality cap): what budgets are computed from."""

    labels: tuple[str, ...]  # provider, account_id, service_name, team, model, then the extra labels' values
    mtd: float
    forecast: float | None
    previous: float | None = None  # the last complete month, where the series had cost then


@dataclass
class KeySeriesCost:
    """One API key's share of one cost series' model (``exporter.keycost``): what ``api_key_id`` budgets count."""

    labels: tuple[str, str, str, str, str]  # provider, account_id, service_name, team, model
    api_key_id: str
    mtd: float


@dataclass(frozen=True)
class BudgetFigure:
    """One budget as the snapshot computed it (``/status`` shows the same figures as ``/metrics``)."""

    name: str
    team: str
    amount_usd: float
    spent_usd: float
    forecast_usd: float
    warning_ratio: float


def budget_matches(b: Budget, labels: Sequence[str], extra_names: Sequence[str] = ()) -> bool:
    """A series (by its cost labels) counts towards ``b``: every ``match`` key given holds, and the team.

    ``match.team`` takes precedence over the budget's own ``team``. ``extra_names``: the extra labels
    (``attribution.labels``) whose values follow the cost labels in ``labels``; ``match`` may name them too.
    """
    m = b.match
    if not match_holds(m, labels, teams=False, extra_names=extra_names):
        return False
    if m.team is not None:
        return labels[3] in m.team
    return not (b.team is not None and labels[3] != b.team)


def match_holds(m: BudgetMatch, labels: Sequence[str], teams: bool = True, extra_names: Sequence[str] = ()) -> bool:
    """Every key ``m`` gives holds of a series' cost labels (``teams``: ``m.team`` too); budgets and pools match so.

    ``extra_names``: the extra labels whose values follow the five cost labels in ``labels`` (a series without
    them reads "" for each).
    """
    provider, account_id, service_name, team, model = labels[:5]
    for key, want in (m.model_extra or {}).items():
        i = extra_names.index(key) if key in extra_names else -1
        value = labels[5 + i] if 0 <= i < len(labels) - 5 else ""
        if value not in ([want] if isinstance(want, str) else want):
            return False
    if m.provider is not None and provider not in m.provider:
        return False
    if m.account_id is not None and account_id not in m.account_id:
        return False
    if m.service_name is not None and service_name not in m.service_name:
        return False
    if m.model is not None and model not in m.model:
        return False
    return not (teams and m.team is not None and team not in m.team)


def budget_teams(b: Budget) -> list[str]:
    """The teams a budget is restricted to (``match.team``, else its ``team``); empty: any team."""
    return list(b.match.team) if b.match.team is not None else [b.team] if b.team is not None else []


def budget_figures(
    budgets: Iterable[Budget],
    series: Sequence[SeriesCost],
    pooled: Container[tuple[str, ...]] = frozenset(),
    shares: Mapping[str, tuple[float, float]] | None = None,
    key_series: Sequence[KeySeriesCost] = (),
    extra_names: Sequence[str] = (),
) -> list[BudgetFigure]:
    """Each budget's month-to-date and forecast: the sums over the series it matches.

    A series without a forecast counts with its month-to-date. A budget with ``include_shared`` leaves out the
    series in a shared-cost pool (``pooled``: their labels) and counts its teams' ``shares`` instead (team →
    (month to date, forecast), from ``exporter.allocation``): the team's allocated spend. A budget with
    ``match.api_key_id`` sums the keys' shares instead; a key's forecast is its share of the forecast of its
    (provider, account, model). ``extra_names``: the extra labels whose values follow the cost labels in a
    series' ``labels`` (``match`` may name them).
    """
    figures = []
    growth: dict[tuple[str, str, str], tuple[float, float]] | None = None
    for b in budgets:
        spent = 0.0
        forecast = 0.0
        keys = b.match.api_key_id
        if keys is not None:
            if growth is None:
                growth = _growth(series)
            for k in key_series:
                if k.api_key_id in keys and budget_matches(b, k.labels, extra_names):
                    mtd, fc = growth.get((k.labels[0], k.labels[1], k.labels[4]), (0.0, 0.0))
                    spent += k.mtd
                    forecast += k.mtd * fc / mtd if mtd > 0 else k.mtd
        else:
            for s in series:
                if b.include_shared and s.labels in pooled:
                    continue
                if budget_matches(b, s.labels, extra_names):
                    spent += s.mtd
                    forecast += s.forecast if s.forecast is not None else s.mtd
        if b.include_shared and shares:
            for team in budget_teams(b):
                mtd_share, forecast_share = shares.get(team, (0.0, 0.0))
                spent += mtd_share
                forecast += forecast_share
        figures.append(BudgetFigure(b.name, b.team or "", b.amount_usd, spent, forecast, b.warning_ratio))
    return figures


def _growth(series: Sequence[SeriesCost]) -> dict[tuple[str, str, str], tuple[float, float]]:
    """(month-to-date, forecast) of every (provider, account_id, model)'s cost series together."""
    out: dict[tuple[str, str, str], tuple[float, float]] = {}
    for s in series:
        key = (s.labels[0], s.labels[1], s.labels[4])
        mtd, fc = out.get(key, (0.0, 0.0))
        out[key] = (mtd + s.mtd, fc + (s.forecast if s.forecast is not None else s.mtd))
    return out


def budget_fragments(figures: Iterable[BudgetFigure]) -> dict[str, bytes]:
    """The samples of ``BUDGET_FAMILIES``, one per budget."""
    rows: dict[str, list[tuple[tuple[str, ...], float]]] = {name: [] for name in BUDGET_FAMILIES}
    for f in figures:
        labels = (f.name, f.team)
        rows["spend_budget_limit_usd"].append((labels, f.amount_usd))
        rows["spend_budget_spent_usd"].append((labels, rounded(f.spent_usd)))
        rows["spend_budget_forecast_usd"].append((labels, rounded(f.forecast_usd)))
        rows["spend_budget_warning_ratio"].append((labels, f.warning_ratio))
    return {name: render_samples(name, BUDGET_LABELS, sorted(v)) for name, v in rows.items()}
