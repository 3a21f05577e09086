"""Budgets: which cost series each one matches, what they add up to, and its four families.

Budgets cross sources, so they are computed from every source's series at each build (they are
few, and cheap); ``/status`` shows the same ``BudgetFigure`` values that ``/metrics`` serves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from exporter.config import Budget
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
    provider, account_id, service_name, team, model = labels[:5]
    m = b.match
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
    if m.team is not None:
        return team in m.team
    return not (b.team is not None and team != b.team)


def budget_figures(
    budgets: Iterable[Budget], series: Sequence[SeriesCost], extra_names: Sequence[str] = ()
) -> list[BudgetFigure]:
    """Each budget's month-to-date and forecast: the sums over the series it matches.

    A series without a forecast counts with its month-to-date.
    """
    figures = []
    for b in budgets:
        spent = 0.0
        forecast = 0.0
        for s in series:
            if budget_matches(b, s.labels, extra_names):
                spent += s.mtd
                forecast += s.forecast if s.forecast is not None else s.mtd
        figures.append(BudgetFigure(b.name, b.team or "", b.amount_usd, spent, forecast, b.warning_ratio))
    return figures


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
