"""Team attribution and currency conversion, the same for every provider.

Order: the provider's team tag/label, then ``attribution.rules`` (first match
wins), else ``unallocated``. The extra labels (``attribution.labels``) the same way, each on its own:
the provider's tags, then the first matching rule that sets it, else the empty string; the store
holds their values in one column, encoded by ``encode_labels``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import Any

from exporter.config import Config

UNALLOCATED = "unallocated"
log = logging.getLogger(__name__)


def encode_labels(values: Sequence[str]) -> str:
    """The extra labels' values, in ``attribution.labels`` order, as the store's ``cost.labels`` column holds them.

    No extra label configured: the empty string (every row then groups as one).
    """
    return json.dumps(list(values), ensure_ascii=False, separators=(",", ":")) if values else ""


def decode_labels(stored: str, n: int) -> tuple[str, ...]:
    """``encode_labels`` reversed, padded or cut to ``n`` values (a row written under other labels reads empty)."""
    if not n:
        return ()
    try:
        values = json.loads(stored) if stored else []
    except ValueError:
        values = []
    if not isinstance(values, list):
        values = []
    out = tuple(str(v) for v in values[:n])
    return out + ("",) * (n - len(out))


class Resolver:
    """Resolves teams and converts amounts to USD with the config's rules and rates."""

    def __init__(self, config: Config) -> None:
        self._rules = [
            (
                {
                    k: frozenset(v)
                    for k in ("provider", "account_id", "service_name", "model")
                    if (v := getattr(r.match, k)) is not None
                },
                r.team,
                r.labels,
            )
            for r in config.attribution.rules
        ]
        self.label_names = config.attribution.label_names
        self._label_cache: dict[tuple[Any, ...], str] = {}
        self._rates = {"USD": 1.0, **config.currency_rates}
        self._cache: dict[tuple[str | None, str, str, str, str], str] = {}

    def team(self, team_tag: str | None, provider: str, account_id: str, service_name: str, model: str) -> str:
        key = (team_tag, provider, account_id, service_name, model)
        team = self._cache.get(key)
        if team is None:
            team = self._resolve(*key)
            if len(self._cache) < 200_000:
                self._cache[key] = team
        return team

    def _resolve(self, team_tag: str | None, provider: str, account_id: str, service_name: str, model: str) -> str:
        if team_tag is not None and team_tag.strip():
            return team_tag.strip()
        fields = {"provider": provider, "account_id": account_id, "service_name": service_name, "model": model}
        for match, team, _ in self._rules:
            if all(fields[k] in allowed for k, allowed in match.items()):
                return team
        return UNALLOCATED

    def labels(
        self, found: tuple[tuple[str, str], ...], provider: str, account_id: str, service_name: str, model: str
    ) -> str:
        """The extra labels' values, encoded (``encode_labels``): from ``found`` (the provider's tags), then rules."""
        if not self.label_names:
            return ""
        key = (found, provider, account_id, service_name, model)
        enc = self._label_cache.get(key)
        if enc is None:
            given = {n: v.strip() for n, v in found if v and v.strip()}
            values = []
            for name in self.label_names:
                v = given.get(name)
                if v is None:
                    v = self._rule_label(name, provider, account_id, service_name, model)
                values.append(v)
            enc = encode_labels(values)
            if len(self._label_cache) < 200_000:
                self._label_cache[key] = enc
        return enc

    def _rule_label(self, name: str, provider: str, account_id: str, service_name: str, model: str) -> str:
        fields = {"provider": provider, "account_id": account_id, "service_name": service_name, "model": model}
        for match, _, labels in self._rules:
            if name in labels and all(fields[k] in allowed for k, allowed in match.items()):
                return labels[name]
        return ""

    def to_usd(self, amount: float, currency: str | None) -> float | None:
        """Amount in USD, or None when the currency has no rate or the amount is not finite."""
        if amount is None or not math.isfinite(amount):
            return None
        cur = (currency or "").strip().upper()
        rate = self._rates.get(cur)
        if rate is None:
            return None
        return amount * rate
