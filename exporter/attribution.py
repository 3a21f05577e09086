"""Team attribution and currency conversion, the same for every provider.

Order: the provider's team tag/label, then ``attribution.rules`` (first match
wins), else ``unallocated``.
"""

from __future__ import annotations

import logging
import math

from exporter.config import Config

UNALLOCATED = "unallocated"
log = logging.getLogger(__name__)


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
            )
            for r in config.attribution.rules
        ]
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
        for match, team in self._rules:
            if all(fields[k] in allowed for k, allowed in match.items()):
                return team
        return UNALLOCATED

    def to_usd(self, amount: float, currency: str | None) -> float | None:
        """Amount in USD, or None when the currency has no rate or the amount is not finite."""
        if amount is None or not math.isfinite(amount):
            return None
        cur = (currency or "").strip().upper()
        rate = self._rates.get(cur)
        if rate is None:
            return None
        return amount * rate
