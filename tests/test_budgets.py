"""Budgets: which series each one matches, the sums, and the samples they render to."""

from __future__ import annotations

from typing import Any

from exporter.budgets import BudgetFigure, SeriesCost, budget_figures, budget_fragments, budget_matches
from exporter.config import Budget


def budget(**kw: Any) -> Budget:
    return Budget.model_validate({"name": "b", "amount_usd": 100.0, **kw})


# provider, account_id, service_name, team, model
OPENAI = ("openai", "proj_a", "chat", "search", "gpt-4o")
ANTHROPIC = ("anthropic", "ws_1", "messages", "ml", "claude")
AWS = ("aws", "111", "Amazon EC2", "search", "")


def test_a_budget_without_match_or_team_takes_everything() -> None:
    b = budget()
    assert all(budget_matches(b, s) for s in (OPENAI, ANTHROPIC, AWS))


def test_match_keys_all_hold() -> None:
    b = budget(match={"provider": ["openai", "anthropic"]})
    assert [budget_matches(b, s) for s in (OPENAI, ANTHROPIC, AWS)] == [True, True, False]
    b = budget(match={"provider": "openai", "model": ["gpt-4o"]})
    assert [budget_matches(b, s) for s in (OPENAI, ANTHROPIC, AWS)] == [True, False, False]
    b = budget(match={"account_id": "111", "service_name": "Amazon S3"})
    assert not budget_matches(b, AWS)


def test_the_budgets_team_restricts_it_unless_match_names_teams() -> None:
    assert [budget_matches(budget(team="search"), s) for s in (OPENAI, ANTHROPIC, AWS)] == [True, False, True]
    b = budget(team="search", match={"team": ["ml"]})
    assert [budget_matches(b, s) for s in (OPENAI, ANTHROPIC, AWS)] == [False, True, False]


def test_figures_sum_the_matching_series() -> None:
    series = [
        SeriesCost(OPENAI, mtd=10.0, forecast=31.0),
        SeriesCost(ANTHROPIC, mtd=5.0, forecast=None),  # no forecast: counts with its month-to-date
        SeriesCost(AWS, mtd=100.0, forecast=250.0),
    ]
    ai = budget(name="ai", amount_usd=50.0, match={"provider": ["openai", "anthropic"]})
    search = budget(name="search", amount_usd=500.0, team="search", warning_ratio=0.9)
    assert budget_figures([ai, search], series) == [
        BudgetFigure("ai", "", 50.0, 15.0, 36.0, 0.8),
        BudgetFigure("search", "search", 500.0, 110.0, 281.0, 0.9),
    ]
    assert budget_figures([ai], []) == [BudgetFigure("ai", "", 50.0, 0.0, 0.0, 0.8)]


def test_fragments_one_sample_per_budget_sorted_and_rounded() -> None:
    figures = [
        BudgetFigure("total", "", 1000.0, 0.1 + 0.2, 2.0000001234, 0.8),
        BudgetFigure("ai", "ml", 50.0, 15.0, 36.0, 0.9),
    ]
    frags = budget_fragments(figures)
    assert frags["spend_budget_limit_usd"] == (
        b'spend_budget_limit_usd{budget="ai",team="ml"} 50.0\nspend_budget_limit_usd{budget="total",team=""} 1000.0\n'
    )
    assert frags["spend_budget_spent_usd"].endswith(b'{budget="total",team=""} 0.3\n')
    assert frags["spend_budget_forecast_usd"].endswith(b'{budget="total",team=""} 2.0\n')
    assert frags["spend_budget_warning_ratio"].startswith(b'spend_budget_warning_ratio{budget="ai",team="ml"} 0.9\n')
