"""Shared-cost pools (``allocation.shared``): the split in cents, the receivers, the config, and through the engine
on FOCUS files (the AWS and Azure emulators' datasets are in tests/providers/)."""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from exporter.allocation import allocate, receivers, split_cents, to_cents
from exporter.app import App, build_app
from exporter.budgets import SeriesCost, budget_figures
from exporter.config import Budget, ConfigError, SharedPool, parse_config
from tests.helpers import assert_allocation, series


def pool(**kw: Any) -> SharedPool:
    return SharedPool.model_validate({"name": "p", "match": {"team": "platform"}, **kw})


def cost(team: str, mtd: float, service: str = "svc", previous: float | None = None) -> SeriesCost:
    return SeriesCost(("aws", "111", service, team, ""), mtd=mtd, forecast=None, previous=previous)


# -- the split, in cents --------------------------------------------------------------------------------


def test_a_pool_split_three_ways_among_uneven_teams_keeps_every_cent() -> None:
    # $100.00 over direct spend of $50.01, $33.33 and $16.66: the exact quotas are 50.01, 33.33, 16.66 (no cent
    # left); $100.01 leaves one cent to the largest remainder; $0.02 cannot give everyone a cent
    w = {"search": Fraction(5001), "payments": Fraction(3333), "data": Fraction(1666)}
    assert split_cents(10000, w) == {"search": 5001, "payments": 3333, "data": 1666}
    assert split_cents(10001, w) == {"search": 5002, "payments": 3333, "data": 1666}
    assert split_cents(2, w) == {"search": 1, "payments": 1, "data": 0}
    assert split_cents(10000, dict.fromkeys(("a", "b", "c"), Fraction(1))) == {"a": 3334, "b": 3333, "c": 3333}
    assert split_cents(-100, dict.fromkeys(("a", "b", "c"), Fraction(1))) == {"a": -34, "b": -33, "c": -33}


def test_largest_remainder_adds_up_and_stays_within_a_cent_of_each_quota() -> None:
    rng = random.Random(16)
    for _ in range(500):
        total = rng.randint(-(10**7), 10**7)
        weights = {f"t{i}": Fraction(rng.randint(0, 10**6)) for i in range(rng.randint(1, 7))}
        if not any(weights.values()):
            continue
        shares = split_cents(total, weights)
        assert sum(shares.values()) == total
        whole = sum(weights.values())
        assert all(abs(shares[t] - total * w / whole) < 1 for t, w in weights.items())


def test_to_cents_rounds_the_decimal_not_the_binary_noise() -> None:
    assert to_cents(0.1 + 0.2) == 30
    assert to_cents(1.005) == 100  # half to even on the decimal 1.005
    assert to_cents(-2.675) == -268


# -- receivers and splits -------------------------------------------------------------------------------


def test_default_receivers_are_the_teams_with_direct_spend_not_unallocated_nor_the_pools_own() -> None:
    direct = {"search": 1, "payments": 5, "unallocated": 9, "platform": 3, "idle": 0}
    assert receivers(pool(), direct) == ["payments", "search"]
    assert receivers(pool(to_teams=["search", "idle"]), direct) == ["search", "idle"]
    assert receivers(pool(split="weights", weights={"idle": 1}), direct) == ["idle"]
    assert receivers(pool(), {"platform": 5}) == ["unallocated"], "no receiver: the cost stays in sight"


def test_proportional_even_and_weights() -> None:
    series = [cost("platform", 100.0), cost("search", 30.0), cost("payments", 10.0), cost("data", 0.0)]
    got = allocate(
        [
            pool(name="prop"),
            pool(name="even", match={"team": "platform"}, split="even"),
            pool(name="w", match={"team": "platform"}, split="weights", weights={"search": 1, "data": 3}),
        ],
        series,
    )
    (prop, even, w) = got.splits["mtd"]
    assert prop.total_cents == 10000 and prop.shares == {"search": 7500, "payments": 2500}
    # the first pool takes platform's cost: the others match nothing left and split 0
    assert even.total_cents == 0 and even.shares == {"search": 0, "payments": 0}
    assert w.shares == {"search": 0, "data": 0}
    assert got.empty == ["even", "w"]  # they take nothing: logged

    weights = allocate([pool(split="weights", weights={"search": 1, "data": 3})], series).splits["mtd"][0]
    assert weights.shares == {"search": 2500, "data": 7500}
    even = allocate([pool(split="even")], series).splits["mtd"][0]
    assert even.shares == {"search": 5000, "payments": 5000}, "data has no direct spend: not a default receiver"


def test_proportional_without_direct_spend_splits_evenly() -> None:
    got = allocate([pool(to_teams=["a", "b"])], [cost("platform", 1.0)])
    assert got.splits["mtd"][0].shares == {"a": 50, "b": 50}


def test_direct_spend_outside_the_pools_and_previous_month() -> None:
    series = [
        cost("platform", 10.0, previous=20.0),
        cost("search", 3.0, previous=None),
        cost("payments", 1.0, previous=4.0),
        cost("search", 2.0, service="db", previous=4.0),
    ]
    got = allocate([pool()], series)
    assert got.direct["mtd"] == {"search": 5.0, "payments": 1.0, "platform": 0.0}
    assert got.direct["previous"] == {"search": 4.0, "payments": 4.0, "platform": 0.0}
    assert got.splits["previous"][0].shares == {"search": 1000, "payments": 1000}
    assert got.splits["mtd"][0].shares == {"search": 833, "payments": 167}
    assert got.pooled == {("aws", "111", "svc", "platform", "")}


def test_no_previous_month_in_the_cache_no_previous_month_shares() -> None:
    got = allocate([pool()], [cost("platform", 10.0), cost("search", 1.0)])
    assert got.splits["previous"] == [] and got.direct["previous"] == {}


def test_an_item_two_pools_match_belongs_to_the_first() -> None:
    pools = [pool(name="db", match={"service_name": "db"}), pool(name="all", match={"provider": "aws"})]
    got = allocate(pools, [cost("platform", 4.0, service="db"), cost("platform", 6.0), cost("search", 1.0)])
    assert [(s.pool, s.total_cents) for s in got.splits["mtd"]] == [("db", 400), ("all", 700)]


def test_include_shared_budgets_count_the_teams_shares_not_its_pooled_items() -> None:
    series = [cost("platform", 90.0), cost("search", 20.0), cost("payments", 10.0), cost("search", 5.0, "db")]
    pools = [pool(name="db", match={"service_name": "db"}, split="even", to_teams=["search", "payments"])]
    got = allocate(pools, series)
    own = Budget(name="own", amount_usd=100, team="search")
    shared = Budget(name="shared", amount_usd=100, team="search", include_shared=True)
    plat = Budget(name="plat", amount_usd=100, match={"team": ["platform"]}, include_shared=True)
    figures = budget_figures([own, shared, plat], series, got.pooled, got.shares_by_team())
    assert [f.spent_usd for f in figures] == [25.0, 22.5, 90.0]
    assert [f.forecast_usd for f in figures] == [25.0, 22.5, 90.0]  # no forecast: counted with month-to-date


# -- config ---------------------------------------------------------------------------------------------


def config_errors(shared: list[dict[str, Any]], **top: Any) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config({"allocation": {"shared": shared}, **top})
    return e.value.errors


def test_bad_pools_name_their_key() -> None:
    assert config_errors([{"name": "p", "match": {"team": "x"}, "split": "fair"}]) == [
        "allocation.shared[0].split: Input should be 'proportional', 'even' or 'weights', got 'fair'"
    ]
    assert config_errors([{"name": "p", "match": {"team": "x"}, "split": "even", "weights": {"a": 1}}]) == [
        "allocation.shared[0]: weights is only for split: weights (this pool's split is even)"
    ]
    assert config_errors([{"name": "p", "match": {}}]) == [
        "allocation.shared[0]: match needs at least one of provider, account_id, service_name, team, model or an "
        "extra label"
    ]
    assert config_errors([{"name": "p", "match": {"team": "x"}}, {"name": "p", "match": {"team": "y"}}]) == [
        "allocation.shared[1].name: duplicate pool name 'p'"
    ]
    assert config_errors([{"name": "p", "match": {"team": "x"}, "to_teams": ["x", "y"]}]) == [
        "allocation.shared[0].to_teams: 'x' is the pool's own team (match.team): it never receives a share"
    ]


def test_weights_naming_an_unknown_team() -> None:
    w = {"name": "p", "match": {"team": "platform"}, "split": "weights"}
    assert config_errors([{**w, "weights": {"search": 1, "serach": 1}, "to_teams": ["search"]}]) == [
        "allocation.shared[0].weights.serach: unknown team 'serach': not in to_teams ['search']"
    ]
    assert config_errors([{**w, "weights": {"search": 1}, "to_teams": ["search", "payments"]}]) == [
        "allocation.shared[0].weights: no weight for team 'payments' of to_teams"
    ]
    (err,) = config_errors([{**w, "weights": {"search": 1}}])
    assert err.startswith("allocation.shared[0].weights.search: unknown team 'search': list the receiving teams")
    # without to_teams, a team the configuration names elsewhere is known
    cfg = parse_config(
        {
            "attribution": {"rules": [{"match": {"account_id": "1"}, "team": "search"}]},
            "budgets": [{"name": "b", "amount_usd": 1, "match": {"team": ["payments"]}}],
            "allocation": {"shared": [{**w, "weights": {"search": 1, "payments": 2}}]},
        }
    )
    assert cfg.allocation.shared[0].weights == {"search": 1.0, "payments": 2.0}


def test_include_shared_needs_a_team() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"budgets": [{"name": "b", "amount_usd": 1, "include_shared": True}]})
    assert e.value.errors == ["budgets[0]: include_shared needs team or match.team: shares belong to teams"]


# -- through the engine, on FOCUS files --------------------------------------------------------------------

NOW = dt.datetime(2025, 3, 15, 10, 30, tzinfo=dt.UTC)
DAYS = {  # service → (team tag, daily cost in USD)
    "Shared DB": ("platform", "10.01"),
    "Search API": ("search", "7.00"),
    "Pay API": ("payments", "2.33"),
    "Data Lake": ("data", "0.67"),
    "Misc": (None, "1.00"),
}
POOLS: list[dict[str, Any]] = [
    {"name": "db", "match": {"team": "platform"}},
    {"name": "misc", "match": {"service_name": "Misc"}, "split": "even"},  # $14.00 three ways
    {"name": "nothing", "match": {"service_name": "No Such Service"}},
]


@pytest.fixture
def app(tmp_path: Path, focus: Any) -> Iterator[App]:
    rows = []
    for day in [dt.date(2025, 2, 1) + dt.timedelta(days=i) for i in range(28 + 14)]:
        for service, (team, usd) in DAYS.items():
            tags = f'{{"team": "{team}"}}' if team else ""
            rows.append(focus.daily(day, usd, ServiceName=service, Tags=tags))
    focus.write(tmp_path / "exports" / "a.csv", rows)
    cfg = parse_config(
        {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "sources": [{"name": "focus", "type": "focus", "paths": [str(tmp_path / "exports" / "*.csv")]}],
            "allocation": {"shared": POOLS},
            "budgets": [
                {"name": "search", "amount_usd": 500, "team": "search"},
                {"name": "search-allocated", "amount_usd": 500, "team": "search", "include_shared": True},
            ],
        }
    )
    a = build_app(cfg, now=lambda: NOW)
    yield a
    a.close()


def test_focus_pools_and_shares_equal_the_files_to_the_cent(app: App, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="exporter.snapshot"):
        assert all(o.ok for o in app.refresh_all())
        text = app.exposition()
        assert all(o.ok for o in app.refresh_all())  # a second build logs nothing new
        assert series(app.exposition(), "spend_cost_shared_month_to_date_usd") == series(
            text, "spend_cost_shared_month_to_date_usd"
        )
    for period, days in (("month_to_date", 14), ("previous_month", 28)):
        items = {
            ("aws", "111111111111", service, team or "unallocated", ""): Decimal(usd) * days
            for service, (team, usd) in DAYS.items()
        }
        assert_allocation(text, items, POOLS, period)

    shared = {tuple(v for _, v in k): x for k, x in series(text, "spend_cost_shared_month_to_date_usd").items()}
    assert shared[("misc", "data")] + shared[("misc", "payments")] + shared[("misc", "search")] == 14.0
    assert sorted(shared[("misc", t)] for t in ("data", "payments", "search")) == [4.66, 4.67, 4.67]
    assert {k: v for k, v in shared.items() if k[0] == "nothing"} == {
        ("nothing", "data"): 0.0,
        ("nothing", "payments"): 0.0,
        ("nothing", "search"): 0.0,
    }
    logged = [r.getMessage() for r in caplog.records if "takes no cost line item" in r.getMessage()]
    assert len(logged) == 1 and logged[0].startswith("allocation.shared pool 'nothing' takes no cost line item")

    spent = {dict(k)["budget"]: v for k, v in series(text, "spend_budget_spent_usd").items()}
    assert spent["search"] == 98.0
    search_shares = sum(v for (_, team), v in shared.items() if team == "search")
    assert spent["search-allocated"] == pytest.approx(98.0 + search_shares, abs=1e-6)
    assert search_shares > 0


def test_without_pools_every_teams_spend_is_direct(tmp_path: Path, focus: Any) -> None:
    """No allocation.shared: spend_cost_direct_* is each team's whole cost to the cent (the allocated total's rule
    and the dashboard's team table read it), and the shared families have no samples."""
    day = dt.date(2026, 11, 3)
    rows = [
        focus.daily(day, "10.01", ServiceName="EC2", Tags='{"team": "search"}'),
        focus.daily(day, "2.50", ServiceName="S3", Tags='{"team": "search"}'),
        focus.daily(day, "0.33", ServiceName="Lambda", Tags="{}"),
    ]
    focus.write(tmp_path / "a.csv", rows)
    cfg = parse_config(
        {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "sources": [{"name": "f", "type": "focus", "paths": [str(tmp_path / "*.csv")]}],
        }
    )
    app = build_app(cfg, now=lambda: dt.datetime(2026, 11, 4, 12, tzinfo=dt.UTC))
    try:
        assert all(o.ok for o in app.refresh_all())
        text = app.exposition()
        direct = {
            dict(k)["team"]: Decimal(repr(v)) for k, v in series(text, "spend_cost_direct_month_to_date_usd").items()
        }
        assert direct == {"search": Decimal("12.51"), "unallocated": Decimal("0.33")}
        assert not series(text, "spend_cost_shared_month_to_date_usd")
    finally:
        app.close()
