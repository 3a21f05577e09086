"""Per-key AI spend (``exporter.keycost``): the split in whole cents, with recorded figures worked out by hand."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from exporter.keycost import key_costs, split_cents, to_cents


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
