"""Normalised records: the one schema every provider produces.

Providers return raw amounts in the currency the billing API reports and the
raw value of the team tag they found; the engine converts currencies and
attributes teams (``exporter.attribution``) so that every provider is treated
the same way.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

TOKEN_TYPES = ("input", "output", "cache_read", "cache_write")


@dataclass(frozen=True, slots=True)
class CostRecord:
    """One day's cost for one (account, service, team tag, model) group."""

    day: dt.date
    provider: str
    account_id: str
    service_name: str
    amount: float
    currency: str = "USD"
    team_tag: str | None = None  # value of the provider's team tag/label, None if untagged
    model: str = ""


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """AI usage for one day (or one hour) and one model.

    ``tokens`` maps a token type from ``TOKEN_TYPES`` to a count.
    """

    day: dt.date
    provider: str
    account_id: str
    service_name: str
    model: str
    tokens: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    team_tag: str | None = None


@dataclass(frozen=True, slots=True)
class HourlyUsage:
    """AI usage in one complete hour; priced with the price table for the burn detector."""

    hour_start: dt.datetime  # UTC, aware
    provider: str
    account_id: str
    service_name: str
    model: str
    tokens: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    team_tag: str | None = None


@dataclass(frozen=True, slots=True)
class AccountInfo:
    provider: str
    account_id: str
    account_name: str


@dataclass(frozen=True, slots=True)
class ProviderForecast:
    """The provider's own forecast of what is still to come this month.

    The month-end figure exported is month-to-date plus ``remaining_amount``.
    """

    provider: str
    account_id: str
    remaining_amount: float
    currency: str = "USD"


@dataclass(frozen=True, slots=True)
class FetchWindow:
    """Days to fetch, ``start`` to ``end`` inclusive (UTC), and the current time.

    ``end`` is today: today's partial data is fetched and replaced on the next
    refresh. AI providers also return hourly buckets up to ``last_complete_hour``
    so that it can be priced.
    """

    start: dt.date
    end: dt.date
    now: dt.datetime

    def days(self) -> list[dt.date]:
        n = (self.end - self.start).days + 1
        return [self.start + dt.timedelta(days=i) for i in range(max(n, 0))]

    @property
    def last_complete_hour(self) -> dt.datetime:
        """Start of the last complete UTC hour before ``now``."""
        top = self.now.replace(minute=0, second=0, microsecond=0)
        return top - dt.timedelta(hours=1)


@dataclass(slots=True)
class FetchResult:
    """Everything one refresh of one source produced.

    ``days`` are the days this fetch covered: the store replaces exactly those
    days for the source, so a day with no rows in ``costs`` is stored as empty.
    ``hourly`` replaces the source's hourly usage when not None.
    ``data_through`` is the end of the newest billing bucket returned.
    """

    days: list[dt.date]
    costs: list[CostRecord] = field(default_factory=list)
    usage: list[UsageRecord] = field(default_factory=list)
    hourly: list[HourlyUsage] | None = None
    accounts: list[AccountInfo] = field(default_factory=list)
    forecasts: list[ProviderForecast] | None = None
    data_through: dt.datetime | None = None
