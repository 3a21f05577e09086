"""The AI price table: genai-prices' list prices, config overrides, model-id matching, and no network."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import subprocess
import sys
import textwrap

import pytest

from exporter.model import TOKEN_TYPES
from exporter.pricing import TOKEN_KEYS, Estimate, PriceTable
from tests.clock import FIXED_NOW

M = 1_000_000


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load(at=FIXED_NOW)


def test_token_keys_are_the_records_token_types() -> None:
    assert TOKEN_KEYS == TOKEN_TYPES


def test_version_names_the_library_release_and_overrides() -> None:
    v = importlib.metadata.version("genai-prices")
    assert PriceTable.load(at=FIXED_NOW).version == f"genai-prices {v}"
    assert PriceTable.load({"gpt-4o": {"output": 8}}, at=FIXED_NOW).version == f"genai-prices {v} + pricing"


@pytest.mark.parametrize(
    ("provider", "model", "family"),
    [
        ("openai", "gpt-4o-2024-08-06", "gpt-4o"),
        ("openai", "gpt-4o-2024-11-20", "gpt-4o"),
        ("openai", "GPT-4o", "gpt-4o"),
        ("openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("openai", "gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("openai", "o3-mini-2025-01-31", "o3-mini"),
        ("anthropic", "claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("anthropic", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("anthropic", "claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("anthropic", "claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("anthropic", "claude-3-5-haiku-latest", "claude-3-5-haiku"),
        # Bedrock and Vertex forms, as the Anthropic source or a FOCUS export reports them
        ("anthropic", "anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku"),
        ("anthropic", "us.anthropic.claude-sonnet-4-20250514-v1:0", "claude-sonnet-4"),
        ("anthropic", "claude-sonnet-4@20250514", "claude-sonnet-4"),
        ("aws", "us.anthropic.claude-sonnet-4-20250514-v1:0", "claude-sonnet-4"),
        ("gcp", "claude-sonnet-4@20250514", "claude-sonnet-4"),
    ],
)
def test_api_model_ids_take_their_family_price(table: PriceTable, provider: str, model: str, family: str) -> None:
    got = table.unit_prices(provider, model)
    want = table.unit_prices("anthropic" if family.startswith("claude") else "openai", family)
    assert got is not None and want is not None, model
    for token_type in ("input", "output", "cache_read"):
        assert got[token_type] == want[token_type], (model, token_type)


def test_gpt_4o_mini_never_takes_gpt_4o_price(table: PriceTable) -> None:
    mini = table.unit_prices("openai", "gpt-4o-mini")
    mini_dated = table.unit_prices("openai", "gpt-4o-mini-2024-07-18")
    full = table.unit_prices("openai", "gpt-4o")
    assert mini is not None and full is not None
    assert mini == mini_dated
    for token_type in ("input", "output", "cache_read"):
        assert mini[token_type] < full[token_type] / 10, token_type
    assert table.estimate("openai", "gpt-4o-mini", {"input": M}) != table.estimate("openai", "gpt-4o", {"input": M})
    # nor does gpt-4.1-nano take gpt-4.1's, nor gpt-4 gpt-4o's
    assert table.unit_prices("openai", "gpt-4.1-nano") != table.unit_prices("openai", "gpt-4.1")
    assert table.unit_prices("openai", "gpt-4") != full


def test_fine_tuned_models_are_priced_only_from_the_config(table: PriceTable) -> None:
    ft = "ft:gpt-4o-mini-2024-07-18:acme:support:9xYz"
    assert table.unit_prices("openai", ft) is None
    assert table.estimate("openai", ft, {"input": 1000, "output": 10}) == Estimate(0.0, 1010)
    priced = PriceTable.load({ft: {"input": 0.30, "output": 1.20}}, at=FIXED_NOW)
    assert priced.unit_prices("openai", ft) == pytest.approx({"input": 0.30, "output": 1.20})
    assert priced.estimate("openai", ft, {"input": M, "cache_read": 5}) == Estimate(pytest.approx(0.30), 5)


def test_one_hour_cache_writes_are_priced_at_their_own_rate(table: PriceTable) -> None:
    sonnet = table.unit_prices("anthropic", "claude-sonnet-4-20250514")
    assert sonnet is not None
    assert sonnet["cache_write"] == pytest.approx(1.25 * sonnet["input"])  # 5 minutes: 1.25x input
    assert sonnet["cache_write_1h"] == pytest.approx(2 * sonnet["input"])  # 1 hour: 2x input
    est = table.estimate("anthropic", "claude-sonnet-4-20250514", {"cache_write": M, "cache_write_1h": M})
    assert est == Estimate(pytest.approx(sonnet["cache_write"] + sonnet["cache_write_1h"]), 0)


def test_embeddings_are_priced(table: PriceTable) -> None:
    est = table.estimate("openai", "text-embedding-3-small", {"input": 3 * M})
    assert est.unpriced_tokens == 0
    assert est.usd == pytest.approx(3 * table.unit_prices("openai", "text-embedding-3-small")["input"])  # type: ignore[index]
    assert est.usd > 0


def test_unknown_model_and_token_type_are_unpriced_not_zero(table: PriceTable) -> None:
    assert table.estimate("openai", "my-own-llm", {"input": 7, "output": 3}) == Estimate(0.0, 10)
    assert table.estimate("openai", "", {"input": 7}) == Estimate(0.0, 7)
    assert table.estimate("acme-ai", "gpt-4o", {"input": 7}) == Estimate(0.0, 7)  # a provider the library lacks
    # a token type the model has no price for: only those tokens are unpriced
    est = table.estimate("openai", "text-embedding-3-small", {"input": M, "output": 4})
    assert est.unpriced_tokens == 4 and est.usd > 0
    # zero tokens cost nothing, even of an unknown model
    assert table.estimate("openai", "my-own-llm", dict.fromkeys(TOKEN_KEYS, 0)) == Estimate(0.0, 0)


def test_standard_tier_no_batch_and_base_long_context_tier(table: PriceTable) -> None:
    from genai_prices import data_snapshot, types

    snap = data_snapshot.get_snapshot()
    _, info = snap.find_provider_model("gpt-4o", None, "openai", None)
    std = info.get_prices(FIXED_NOW)
    assert table.unit_prices("openai", "gpt-4o")["input"] == float(std.input_mtok)  # type: ignore[index]
    batch = info.get_prices(FIXED_NOW, {"processing": "batch"})
    assert batch.input_mtok < std.input_mtok  # the library knows batch; the table takes the standard price

    tiered = [
        (p.id, m)
        for p in snap.providers
        if p.id in ("anthropic", "openai", "google")
        for m in p.models
        if isinstance(m.prices, types.ModelPrice) and isinstance(m.prices.input_mtok, types.TieredPrices)
    ]
    assert tiered, "no long-context tier left to test with"
    pid, model = tiered[0]
    got = table.unit_prices("gcp" if pid == "google" else pid, model.id)
    assert got is not None and got["input"] == float(model.prices.input_mtok.base)


def test_prices_in_force_at_the_given_time() -> None:
    # o3's price was cut on 2025-06-10: the table takes the price in force at ``at``
    before = PriceTable.load(at=dt.datetime(2025, 6, 1, tzinfo=dt.UTC)).unit_prices("openai", "o3")
    after = PriceTable.load(at=FIXED_NOW).unit_prices("openai", "o3")
    assert before is not None and after is not None
    assert after["input"] < before["input"]


def test_each_model_is_resolved_once(table: PriceTable) -> None:
    fresh = PriceTable.load(at=FIXED_NOW)
    for _ in range(1000):
        fresh.estimate("openai", "gpt-4o-2024-08-06", {"input": 1})
    assert list(fresh._units) == [("openai", "gpt-4o-2024-08-06")]


def test_overrides_merge_per_token_type() -> None:
    table = PriceTable.load({"gpt-4o": {"output": 8.0}, "Claude-Sonnet-4": {"input": 2.0}}, at=FIXED_NOW)
    lib = PriceTable.load(at=FIXED_NOW)
    assert table.unit_prices("openai", "gpt-4o")["output"] == 8.0  # type: ignore[index]
    assert table.unit_prices("openai", "gpt-4o")["input"] == lib.unit_prices("openai", "gpt-4o")["input"]  # type: ignore[index]
    assert table.unit_prices("openai", "gpt-4o-2024-08-06")["output"] == 8.0  # type: ignore[index]
    assert table.unit_prices("anthropic", "claude-sonnet-4-20250514")["input"] == 2.0  # type: ignore[index]
    # an override also prices a model the library does not know, with just the types it names
    own = PriceTable.load({"my-own-llm": {"input": 1.0}}, at=FIXED_NOW)
    assert own.estimate("openai", "my-own-llm", {"input": M, "output": 2}) == Estimate(pytest.approx(1.0), 2)
    # overrides do not leak into a fresh load
    assert PriceTable.load(at=FIXED_NOW).unit_prices("openai", "gpt-4o")["output"] == 10.0  # type: ignore[index]


def test_override_of_a_dated_snapshot_wins_over_its_family() -> None:
    table = PriceTable.load({"gpt-4o-2024-05-13": {"input": 4.0}}, at=FIXED_NOW)
    assert table.unit_prices("openai", "gpt-4o-2024-05-13")["input"] == 4.0  # type: ignore[index]
    assert table.unit_prices("openai", "gpt-4o-2024-08-06")["input"] == 2.50  # type: ignore[index]


def test_cache_write_1h_can_be_overridden() -> None:
    table = PriceTable.load({"claude-sonnet-4": {"cache_write_1h": 5.0}}, at=FIXED_NOW)
    assert table.unit_prices("anthropic", "claude-sonnet-4-20250514")["cache_write_1h"] == 5.0  # type: ignore[index]


@pytest.mark.parametrize(
    "bad",
    [
        {"gpt-4o": {"reasoning": 1.0}},
        {"gpt-4o": {"input": -1.0}},
        {"gpt-4o": {"input": "cheap"}},
        {"gpt-4o": {"input": float("nan")}},
        {"gpt-4o": 3.0},
    ],
)
def test_invalid_overrides_are_rejected(bad: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match="gpt-4o"):
        PriceTable.load(bad, at=FIXED_NOW)


def test_no_network_at_import_or_use() -> None:
    """A fresh interpreter whose audit hook refuses any socket: importing, loading and pricing still work."""
    code = textwrap.dedent(
        """
        import sys

        def refuse(event, args):
            if event.startswith("socket.") or event in ("urllib.Request", "http.client.connect"):
                raise RuntimeError(f"network call: {event} {args!r}")

        sys.addaudithook(refuse)
        from exporter.pricing import PriceTable
        import genai_prices
        t = PriceTable.load()
        for p, m in [("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4-20250514"), ("openai", "nope")]:
            t.estimate(p, m, {"input": 1000, "cache_write_1h": 10})
        print(t.version, "ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")
