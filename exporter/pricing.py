"""The AI price table: USD per 1M tokens by model and token type.

It prices the hourly token counts of the usage APIs for the runaway-burn
detector (``spend_ai_cost_last_hour_usd``); month-to-date spend comes from
the providers' cost APIs and is never estimated. The table is
``exporter/pricing.yml`` with the configuration's ``pricing:`` on top.

Model ids are matched exactly, then with the provider prefixes and dated
suffixes that name the same model removed (``gpt-4o-2024-08-06`` →
``gpt-4o``, ``claude-sonnet-4-20250514`` → ``claude-sonnet-4``,
``us.anthropic.claude-sonnet-4-20250514-v1:0`` → ``claude-sonnet-4``). There is
deliberately no prefix matching: ``gpt-4o-mini`` must never take ``gpt-4o``'s
price, and an unknown model is reported as unpriced rather than guessed.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from exporter.model import TOKEN_TYPES

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


def _validate(models: Any, where: str) -> dict[str, dict[str, float]]:
    if not isinstance(models, Mapping):
        raise ValueError(f"{where}: expected a mapping of model → token type → USD per 1M tokens")
    out: dict[str, dict[str, float]] = {}
    for model, prices in models.items():
        if not isinstance(prices, Mapping):
            raise ValueError(f"{where}.{model}: expected a mapping of token type → USD per 1M tokens")
        entry: dict[str, float] = {}
        for token_type, price in prices.items():
            if token_type not in TOKEN_TYPES:
                raise ValueError(f"{where}.{model}.{token_type}: unknown token type (one of {', '.join(TOKEN_TYPES)})")
            if isinstance(price, bool) or not isinstance(price, int | float) or not math.isfinite(price) or price < 0:
                raise ValueError(f"{where}.{model}.{token_type}: price must be a non-negative number, got {price!r}")
            entry[token_type] = float(price)
        out[str(model).strip().lower()] = entry
    return out


@functools.lru_cache(maxsize=1)
def _bundled() -> tuple[str, dict[str, dict[str, float]]]:
    text = importlib.resources.files("exporter").joinpath("pricing.yml").read_text(encoding="utf-8")
    # libyaml's loader when present: the pure-Python one takes ~0.1 s of every start on this table
    doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    return str(doc.get("checked", "")), _validate(doc.get("models", {}), "pricing.yml:models")


class PriceTable:
    """List prices in USD per 1M tokens; ``pricing:`` in the config overrides the bundled table.

    An override replaces the bundled price of the token types it names and
    keeps the others, so ``pricing: {gpt-4o: {output: 8}}`` changes one price.
    """

    def __init__(self, prices: Mapping[str, Mapping[str, float]], checked: str = "") -> None:
        self._prices = {k.strip().lower(): dict(v) for k, v in prices.items()}
        self.checked = checked
        """The date the bundled list prices were last checked (``checked:`` in pricing.yml)."""

    @classmethod
    def load(cls, overrides: dict[str, dict[str, float]] | None = None) -> PriceTable:
        """The bundled ``pricing.yml`` merged with the configuration's ``pricing:``."""
        checked, bundled = _bundled()
        prices = {k: dict(v) for k, v in bundled.items()}
        for model, entry in _validate(overrides or {}, "pricing").items():
            prices.setdefault(model, {}).update(entry)
        return cls(prices, checked)

    def _entry(self, model: str) -> dict[str, float] | None:
        for key in _candidates(model):
            entry = self._prices.get(key)
            if entry is not None:
                return entry
        return None

    def price_per_million(self, model: str, token_type: str) -> float | None:
        """USD per 1M tokens of ``token_type`` for ``model``; None when the table has no price."""
        if not model:
            return None
        entry = self._entry(model)
        if entry is None:
            return None
        return entry.get(token_type)

    def cost(self, model: str, token_type: str, tokens: int) -> float | None:
        """USD for ``tokens`` tokens; None when they cannot be priced (zero tokens cost 0)."""
        if tokens == 0:
            return 0.0
        price = self.price_per_million(model, token_type)
        if price is None:
            return None
        return tokens * price / 1_000_000
