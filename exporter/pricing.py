"""The AI price table: list prices by provider, model and token type, from ``genai-prices``.

It prices token counts of the usage APIs: the last complete hour
(``spend_ai_cost_last_hour_usd``), the minute buckets of the burn rate, and the
daily usage the billed cost is compared with (``spend_ai_price_ratio``).
Month-to-date spend comes from the providers' cost APIs and is never estimated.

The prices are those bundled in the installed ``genai-prices`` release (its
version is pinned in ``uv.lock`` and is part of ``version``); the table never
fetches newer ones (no ``UpdatePrices``: the exporter makes no call but to the
billing APIs). ``pricing:`` in the configuration overrides it per model and
token type, in USD per 1M tokens.

What a unit price is, for tokens that arrive already summed by hour or by day:

- the standard tier: no batch or priority price variant, and the base tier of a
  long-context price: the usage buckets the providers ask for are not broken out
  by service tier or context window (the APIs could: OpenAI's ``batch`` and
  ``service_tier``, Anthropic's ``service_tier`` and ``context_window`` group-bys;
  not asked for yet), so a bucket's sum cannot tell them apart;
  ``spend_ai_price_ratio`` shows how far the bill is from the list price;
- ``cache_write`` is a 5-minute cache write (or the only kind a provider has),
  ``cache_write_1h`` a 1-hour one, each at its own rate;
- the price in force at the time given to ``load`` (a start-dated change is
  taken at the next start); time-of-day discounts are not applied.

Model ids are looked up as the APIs report them (the library knows dated ids
like ``gpt-4o-2024-08-06`` and ``claude-sonnet-4-20250514``), then with the
Bedrock/Vertex publisher prefixes and version suffixes removed
(``us.anthropic.claude-sonnet-4-20250514-v1:0``), then without a dated suffix.
``gpt-4o-mini`` never takes ``gpt-4o``'s price; a fine-tuned model (``ft:...``)
is priced only from ``pricing:`` (its price is the fine-tuning price, which the
library may not know for the base model it names); an unknown model is
reported as unpriced rather than guessed.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import math
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

TOKEN_KEYS = ("input", "output", "cache_read", "cache_write", "cache_write_1h")
# cache_write = 5-minute cache writes (or the only kind a provider has); cache_write_1h = 1-hour writes

# genai-prices price keys (USD per 1M) for each token key, first found wins
_LIBRARY_KEYS: dict[str, tuple[str, ...]] = {
    "input": ("input_mtok",),
    "output": ("output_mtok",),
    "cache_read": ("cache_read_mtok",),
    "cache_write": ("cache_write_5m_mtok", "cache_write_mtok"),
    "cache_write_1h": ("cache_write_1h_mtok",),
}

# the exporter's provider label → genai-prices provider id, where they differ (FOCUS names: focus_records.py)
PROVIDER_IDS = {"gcp": "google"}

# Bedrock cross-region profiles ("us.anthropic.…"), Bedrock/Vertex/router publisher prefixes.
_PUBLISHER_PREFIX = re.compile(r"^(?:(?:us|eu|apac|au|jp|global|us-gov)\.)?(?:anthropic|openai)[./]")
_BEDROCK_VERSION = re.compile(r"-v\d+(?::\d+)?$")  # "-v1:0", "-v2"
# Dated snapshots: -2024-08-06, -20250514, -0613 (older OpenAI), and the moving "-latest" alias.
_DATED_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|latest)$")


def _candidates(model: str) -> Iterator[str]:
    """Keys to try for ``model``, most specific first."""
    m = model.strip().lower()
    yield m
    if m.startswith("ft:"):
        return  # a fine-tuned model is priced differently from its base model
    base = _PUBLISHER_PREFIX.sub("", m)
    base = base.split("@", 1)[0]  # Vertex AI: claude-sonnet-4@20250514
    base = _BEDROCK_VERSION.sub("", base)
    if base != m:
        yield base
    undated = _DATED_SUFFIX.sub("", base)
    if undated != base:
        yield undated


def validate_overrides(models: Any, where: str = "pricing") -> dict[str, dict[str, float]]:
    """``pricing:`` as model → token type → USD per 1M tokens; a ValueError names the bad key."""
    if not isinstance(models, Mapping):
        raise ValueError(f"{where}: expected a mapping of model → token type → USD per 1M tokens")
    out: dict[str, dict[str, float]] = {}
    for model, prices in models.items():
        if not isinstance(prices, Mapping):
            raise ValueError(f"{where}.{model}: expected a mapping of token type → USD per 1M tokens")
        entry: dict[str, float] = {}
        for token_type, price in prices.items():
            if token_type not in TOKEN_KEYS:
                raise ValueError(f"{where}.{model}.{token_type}: unknown token type (one of {', '.join(TOKEN_KEYS)})")
            if isinstance(price, bool) or not isinstance(price, int | float) or not math.isfinite(price) or price < 0:
                raise ValueError(f"{where}.{model}.{token_type}: price must be a non-negative number, got {price!r}")
            entry[token_type] = float(price)
        out[str(model).strip().lower()] = entry
    return out


def library_version() -> str:
    """``genai-prices <version>`` of the installed release (read from its metadata: the data is not loaded)."""
    return f"genai-prices {importlib.metadata.version('genai-prices')}"


@dataclass(frozen=True)
class Estimate:
    """The list-price cost of some tokens of one model."""

    usd: float  # list-price cost of the priced tokens
    unpriced_tokens: int  # tokens that could not be priced (unknown model or token type): never priced at 0 silently


_Unit = dict[str, float]  # token key → USD per token


class PriceTable:
    """List prices per (provider, model) and token type; ``pricing:`` in the config overrides them.

    An override replaces the library's price of the token types it names and
    keeps the others, so ``pricing: {gpt-4o: {output: 8}}`` changes one price.
    Each (provider, model) is resolved once and its unit prices kept: pricing a
    series is then a few multiplications. The library's data (about 0.4 s to
    import) is loaded at the first model that needs it, not at start.
    """

    version: str
    """``genai-prices <version>``, plus `` + pricing`` when the configuration overrides prices."""

    def __init__(self, overrides: Mapping[str, Mapping[str, float]], at: dt.datetime | None = None) -> None:
        self._overrides = {k.strip().lower(): dict(v) for k, v in overrides.items()}
        self._at = at
        self._units: dict[tuple[str, str], _Unit | None] = {}
        self._lock = threading.Lock()
        self.version = library_version() + (" + pricing" if self._overrides else "")

    @classmethod
    def load(cls, overrides: dict[str, dict[str, float]] | None = None, *, at: dt.datetime | None = None) -> PriceTable:
        """The installed ``genai-prices`` with the configuration's ``pricing:`` on top.

        ``at``: the time whose list prices apply (start-dated price changes); now when None.
        """
        return cls(validate_overrides(overrides or {}), at)

    # -- lookups ---------------------------------------------------------------------------
    def unit_prices(self, provider: str, model: str) -> dict[str, float] | None:
        """USD per 1M tokens by token key for ``model`` of ``provider``; None when the model is unknown."""
        unit = self._unit(provider, model)
        return None if unit is None else {k: v * 1_000_000 for k, v in unit.items()}

    def estimate(self, provider: str, model: str, tokens: Mapping[str, int]) -> Estimate:
        """The list-price cost of ``tokens`` (token key → count) of ``model``.

        Tokens of a model or token type without a price (a key outside ``TOKEN_KEYS`` included) are counted
        in ``unpriced_tokens``, not priced; zero tokens cost 0 even for an unknown model.
        """
        usd = 0.0
        unpriced = 0
        unit: _Unit | None = None
        resolved = False
        for key, n in tokens.items():
            if not n:
                continue
            if not resolved:
                unit, resolved = self._unit(provider, model), True
            price = unit.get(key) if unit is not None else None
            if price is None:
                unpriced += int(n)
            else:
                usd += n * price
        return Estimate(usd, unpriced)

    def _unit(self, provider: str, model: str) -> _Unit | None:
        key = (provider, model)
        try:
            return self._units[key]
        except KeyError:
            pass
        with self._lock:
            if key not in self._units:
                self._units[key] = self._resolve(provider, model)
            return self._units[key]

    def _resolve(self, provider: str, model: str) -> _Unit | None:
        if not model.strip():
            return None
        per_m: dict[str, float] | None = None
        if not model.strip().lower().startswith("ft:"):
            per_m = _library_prices(provider, model, self._at or dt.datetime.now(dt.UTC))
        for cand in _candidates(model):
            entry = self._overrides.get(cand)
            if entry is not None:
                per_m = {**(per_m or {}), **entry}
                break
        if per_m is None:
            return None
        return {k: v / 1_000_000 for k, v in per_m.items()}


def _library_prices(provider: str, model: str, at: dt.datetime) -> dict[str, float] | None:
    """USD per 1M tokens by token key from the bundled genai-prices data; None for an unknown model."""
    from genai_prices import data_snapshot, types

    snap = data_snapshot.get_snapshot()
    pid = PROVIDER_IDS.get(provider.strip().lower(), provider.strip().lower())
    try:
        prov = snap.find_provider(None, pid, None)
    except LookupError:
        return None  # a provider the library does not know: priced only from pricing:
    info = None
    for cand in _candidates(model):
        info = prov.find_model(cand, all_providers=snap.providers)
        if info is not None:
            break
    if info is None:
        return None
    prices = _standard_prices(info, at, types)
    out: dict[str, float] = {}
    for key, names in _LIBRARY_KEYS.items():
        for name in names:
            value = getattr(prices, name, None)
            if value is None:
                continue
            if isinstance(value, types.TieredPrices):
                value = value.base  # the base tier: a summed bucket cannot tell a long-context request
            out[key] = float(value)
            break
    return out


def _standard_prices(info: Any, at: dt.datetime, types: Any) -> Any:
    """The model's standard prices at ``at``: start-dated changes apply, time-of-day ones do not."""
    if isinstance(info.prices, types.ModelPrice):
        return info.prices
    chosen = info.prices[0].prices
    for cond in reversed(info.prices):
        c = cond.constraint
        if c is None or (isinstance(c, types.StartDateConstraint) and c.active(at)):
            chosen = cond.prices
            break
    return chosen
