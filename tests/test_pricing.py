"""The AI price table: bundled list prices, config overrides, and model-id matching."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from exporter.model import TOKEN_TYPES
from exporter.pricing import PriceTable


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def test_bundled_file_is_dated_and_complete(table: PriceTable) -> None:
    dt.date.fromisoformat(table.checked)  # "checked:" is a real date
    for model in (
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-5",
        "claude-sonnet-4",
        "claude-haiku-4-5",
        "claude-opus-4-1",
    ):
        assert table.price_per_million(model, "input") is not None, model
        assert table.price_per_million(model, "output") is not None, model
        assert table.price_per_million(model, "cache_read") is not None, model
    for model in ("claude-sonnet-4", "claude-3-5-haiku"):
        assert table.price_per_million(model, "cache_write") is not None, model


def test_every_entry_uses_known_token_types() -> None:
    from importlib.resources import files

    doc = yaml.safe_load(files("exporter").joinpath("pricing.yml").read_text())
    for model, prices in doc["models"].items():
        assert prices, model
        assert set(prices) <= set(TOKEN_TYPES), model
        if "output" in prices and "input" in prices:
            assert prices["output"] >= prices["input"], model
        if "cache_read" in prices:
            assert prices["cache_read"] < prices["input"], model


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-11-20", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("GPT-4o", "gpt-4o"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku"),
        ("us.anthropic.claude-sonnet-4-20250514-v1:0", "claude-sonnet-4"),
        ("claude-sonnet-4@20250514", "claude-sonnet-4"),
    ],
)
def test_dated_snapshots_take_their_family_price(table: PriceTable, model: str, family: str) -> None:
    for token_type in ("input", "output"):
        assert table.price_per_million(model, token_type) == table.price_per_million(family, token_type)
        assert table.price_per_million(model, token_type) is not None


def test_no_prefix_matching(table: PriceTable) -> None:
    # the classic mistake: "gpt-4o-mini" starts with "gpt-4o"
    assert table.price_per_million("gpt-4o-mini", "input") == 0.15
    assert table.price_per_million("gpt-4o", "input") == 2.50
    assert table.price_per_million("gpt-4o-mini-2024-07-18", "output") == 0.60
    assert table.price_per_million("gpt-4.1-nano", "input") != table.price_per_million("gpt-4.1", "input")
    # variants with their own (unlisted) prices are unknown, not their base model's price
    assert table.price_per_million("gpt-4o-mini-realtime-preview", "input") is None
    assert table.price_per_million("gpt-4o-audio-preview-2024-12-17", "input") is None
    assert table.price_per_million("claude-sonnet-4-5-turbo", "input") is None
    assert table.price_per_million("gpt-4", "input") is None  # not gpt-4o, not gpt-4.1


def test_fine_tuned_models_are_not_priced_as_their_base(table: PriceTable) -> None:
    ft = "ft:gpt-4o-mini-2024-07-18:acme:support:9xYz"
    assert table.price_per_million(ft, "input") is None
    assert table.cost(ft, "input", 1000) is None
    priced = PriceTable.load({ft: {"input": 0.30, "output": 1.20}})
    assert priced.price_per_million(ft, "input") == 0.30
    assert priced.price_per_million(ft, "cache_read") is None


def test_unknown_model_and_token_type(table: PriceTable) -> None:
    assert table.price_per_million("my-own-llm", "input") is None
    assert table.price_per_million("", "input") is None
    assert table.price_per_million("gpt-4o", "reasoning") is None
    assert table.price_per_million("text-embedding-3-small", "output") is None


def test_cost(table: PriceTable) -> None:
    assert table.cost("gpt-4o-2024-08-06", "output", 2_000_000) == pytest.approx(20.0)
    assert table.cost("claude-sonnet-4-20250514", "cache_read", 1_000_000) == pytest.approx(0.30)
    assert table.cost("claude-sonnet-4", "cache_write", 400_000) == pytest.approx(1.50)
    assert table.cost("unknown-model", "input", 5) is None
    assert table.cost("unknown-model", "input", 0) == 0.0
    assert table.cost("text-embedding-3-small", "output", 0) == 0.0


def test_overrides_merge_per_token_type() -> None:
    table = PriceTable.load({"gpt-4o": {"output": 8.0}, "Claude-Sonnet-4": {"input": 2.0}})
    assert table.price_per_million("gpt-4o", "output") == 8.0
    assert table.price_per_million("gpt-4o", "input") == 2.50  # kept from pricing.yml
    assert table.price_per_million("gpt-4o-2024-08-06", "output") == 8.0  # the dated id follows the family
    assert table.price_per_million("claude-sonnet-4-20250514", "input") == 2.0
    # overrides do not leak into a fresh load
    assert PriceTable.load().price_per_million("gpt-4o", "output") == 10.0


def test_override_of_a_dated_snapshot_wins_over_its_family() -> None:
    table = PriceTable.load({"gpt-4o-2024-05-13": {"input": 5.0, "output": 15.0}})
    assert table.price_per_million("gpt-4o-2024-05-13", "input") == 5.0
    assert table.price_per_million("gpt-4o-2024-05-13", "cache_read") is None  # its own entry, no fallback
    assert table.price_per_million("gpt-4o-2024-08-06", "input") == 2.50


@pytest.mark.parametrize(
    "bad",
    [
        {"gpt-4o": {"reasoning": 1.0}},
        {"gpt-4o": {"input": -1.0}},
        {"gpt-4o": {"input": "cheap"}},
        {"gpt-4o": 3.0},
    ],
)
def test_invalid_overrides_are_rejected(bad: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match="gpt-4o"):
        PriceTable.load(bad)
