"""Per-key AI spend (``exporter.keycost``): the split in whole cents, with recorded figures worked out by hand."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path

import pytest

from exporter.cardinality import OTHER
from exporter.config import parse_config
from exporter.keycost import key_costs, split_cents, to_cents
from exporter.snapshot import SnapshotBuilder
from exporter.store import Replacement, SourceState, Store
from tests.helpers import family_samples


def test_three_uneven_keys_keep_every_cent() -> None:
    # $100.00 by weights 1:1:1 is 3333.33... cents each: the one cent left goes to the first (ties: earlier part)
    assert split_cents(10000, [1.0, 1.0, 1.0]) == [3334, 3333, 3333]
    # 1001 cents by 0.5 : 0.3 : 0.2 is 500.5, 300.3, 200.2: floors 500, 300, 200, the cent left to the largest .5
    assert split_cents(1001, [0.5, 0.3, 0.2]) == [501, 300, 200]
    # 7 cents by 1:2:4 is 1, 2, 4 exactly
    assert split_cents(7, [1.0, 2.0, 4.0]) == [1, 2, 4]
    for total in (0, 1, 2, 99, 12345, -250):
        assert sum(split_cents(total, [0.013, 7.2, 3.3])) == total


def test_to_cents_rounds_half_up_after_float_drift() -> None:
    assert to_cents(12.345) == 1235
    assert to_cents(0.1 + 0.2 + 12.045 - 0.3) == 1205  # 12.044999999999998 in floats
    assert to_cents(-1.005) == -101


def _estimate(prices: Mapping[str, float]) -> object:
    def estimate(provider: str, model: str, tokens: Mapping[str, int]) -> tuple[float, int]:
        if model not in prices:
            return 0.0, sum(tokens.values())
        return sum(n for n in tokens.values()) * prices[model] / 1e6, 0

    return estimate


def _row(account: str, key: str, model: str, tokens: int) -> tuple[object, ...]:
    return ("openai", account, "chat", "search", model, key, tokens, 0, 0, 0, 0, 1)


def test_billed_cost_is_split_by_list_price_and_unpriced_models_are_left_out() -> None:
    usage = [
        _row("proj_a", "key_1", "m", 3_000_000),  # $3 at list price
        _row("proj_a", "key_2", "m", 1_000_000),  # $1
        _row("proj_a", "key_1", "ft:x", 500),  # not in the price table
        _row("proj_b", "key_3", "m", 10),  # billed nothing yet this month
    ]
    billed = {("openai", "proj_a", "m"): 2.0, ("openai", "proj_a", "ft:x"): 0.5}  # 50% off
    kc = key_costs(usage, billed, _estimate({"m": 1.0}))  # type: ignore[arg-type]
    assert kc.by_key() == {
        ("openai", "proj_a", "key_1", "m"): 1.5,
        ("openai", "proj_a", "key_2", "m"): 0.5,
        ("openai", "proj_b", "key_3", "m"): 0.0,
    }
    assert kc.unpriced == {("openai", "proj_a", "ft:x")}
    assert kc.unsplit == set()
    assert [(s.labels[3], s.api_key_id, s.mtd) for s in kc.series][:2] == [
        ("search", "key_1", 1.5),
        ("search", "key_2", 0.5),
    ]


def test_billed_usage_without_tokens_is_not_split() -> None:
    usage = [_row("proj_a", "key_1", "dall-e-3", 0)]  # images: requests, no tokens
    kc = key_costs(usage, {("openai", "proj_a", "dall-e-3"): 4.0}, _estimate({"dall-e-3": 1.0}))  # type: ignore[arg-type]
    assert kc.by_key() == {}
    assert kc.unsplit == {("openai", "proj_a", "dall-e-3")}


@pytest.mark.parametrize("n", [2, 3, 7])
def test_shares_add_up_to_the_bill_to_the_cent(n: int) -> None:
    usage = [_row("p", f"k{i}", "m", 1_000_003 * (i + 1)) for i in range(n)]
    kc = key_costs(usage, {("openai", "p", "m"): 123.456789}, _estimate({"m": 0.37}))  # type: ignore[arg-type]
    assert sum(round(v * 100) for v in kc.by_key().values()) == 12346


# --------------------------------------------------------------------------- through the store and the snapshot

NOW = dt.datetime(2026, 11, 22, 9, 41, 7, tzinfo=dt.UTC)


def _key_row(day: dt.date, key: str, tokens: int) -> tuple[object, ...]:
    return (day.isoformat(), "openai", "proj_a", "chat", "search", "m-test", key, tokens, 0, 0, 0, 0, 1)


def test_snapshot_caps_keys_and_carries_last_months_keys_at_zero(tmp_path: Path) -> None:
    """Six keys this month and one of last month under a cap of 4: the three heaviest kept, the rest folded into
    one __other__ series that keeps their cents; the key of last month reads 0 before it is folded away."""
    cfg = parse_config(
        {"cache_path": str(tmp_path / "c.sqlite"), "max_series_per_source": 4, "pricing": {"m-test": {"input": 1.0}}},
        env={},
    )
    store = Store(cfg.cache_path)
    day, last_month = dt.date(2026, 11, 20), dt.date(2026, 10, 30)
    rep = Replacement(
        start=last_month,
        end=NOW.date(),
        costs=[(day.isoformat(), "openai", "proj_a", "chat", "search", "m-test", 10.0)],
        usage=[],
        hourly=None,
        accounts=[],
        forecasts=None,
        key_usage=[_key_row(day, f"key_{i}", 1_000_000 * (i + 1)) for i in range(6)]
        + [_key_row(last_month, "key_old", 5_000_000)],
        api_keys=[("openai", "proj_a", f"key_{i}", f"user {i}") for i in range(6)],
    )
    store.replace("s", rep, SourceState(source="s"))
    builder = SnapshotBuilder(cfg, store, {"s": ("openai", "OpenAI Admin API", 900.0)})
    try:
        text = builder.build(NOW, ["s"]).text.decode()
    finally:
        store.close()
    cost = {lab["api_key_id"]: v for lab, v in family_samples(text, "spend_ai_key_cost_month_to_date_usd")}
    # 1000 cents by 1:2:3:4:5:6 (of 21): 47.62, 95.24, 142.86, 190.48, 238.10, 285.71: floors 47, 95, 142, 190,
    # 238, 285 (997), the 3 cents left to the largest remainders (.86, .71, .62); key_old (no tokens) 0
    assert cost == {"key_5": 2.86, "key_4": 2.38, "key_3": 1.9, OTHER: 2.86}
    assert round(sum(cost.values()) * 100) == 1000
    names = {lab["api_key_id"] for lab, _ in family_samples(text, "spend_ai_key_info")}
    assert names == {"key_5", "key_4", "key_3"}  # the costliest keys' names; past the cap dropped, not folded
    overflow = [v for _, v in family_samples(text, "spend_exporter_series_overflow")]
    assert overflow == [4 + 3]  # key cost series folded (4 of 7) and key names dropped (3 of 6)


def test_key_rows_are_replaced_with_their_days_pruned_and_forgotten(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite")
    d1, d2 = dt.date(2026, 11, 1), dt.date(2026, 11, 2)

    def rep(first: dt.date, last: dt.date, rows: list[tuple[object, ...]]) -> Replacement:
        names = [("openai", "proj_a", "key_1", "user 1")]
        return Replacement(first, last, [], [], None, [], None, key_usage=rows, api_keys=names)

    try:
        store.replace("s", rep(d1, d2, [_key_row(d1, "key_1", 5), _key_row(d2, "key_1", 7)]), SourceState("s"))
        store.replace("s", rep(d2, d2, [_key_row(d2, "key_1", 11)]), SourceState("s"))  # d2 again: replaced
        (row,) = store.key_usage_by_series("s", d1, d1, d2)
        assert row[5:8] == ("key_1", 16, 0)
        store.prune("s", d2)
        assert store.key_usage_by_series("s", d1, d1, d2)[0][6] == 11
        assert store.api_keys("s") == [("openai", "proj_a", "key_1", "user 1")]
        store.forget_source("s")
        assert store.key_usage_by_series("s", d1, d1, d2) == [] and store.api_keys("s") == []
    finally:
        store.close()
