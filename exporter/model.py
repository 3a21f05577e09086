"""Normalised records: the one schema every provider produces.

Providers return raw amounts in the currency the billing API reports and the
raw value of the team tag they found; the engine converts currencies and
attributes teams (``exporter.attribution``) so that every provider is treated
the same way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, overload

_R = TypeVar("_R")

# cache_write: 5-minute prompt-cache writes (or the only kind a provider has); cache_write_1h: 1-hour writes,
# billed at a higher rate. spend_ai_tokens_month_to_date shows the two summed as cache_write.
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write", "cache_write_1h")


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
    # (name, value) of the extra labels (``attribution.labels``) the provider found in the record's tags; a name
    # missing here is set by ``attribution.rules`` or left empty
    labels: tuple[tuple[str, str], ...] = ()


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
class MinuteUsage:
    """AI usage in one minute bucket of the usage API, by API key (the burn rate's input)."""

    minute_start: dt.datetime  # UTC, aware
    provider: str
    account_id: str
    service_name: str
    model: str
    api_key_id: str
    tokens: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    team_tag: str | None = None


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """AI usage of one API key for one day and one model (``spend_ai_key_cost_month_to_date_usd``'s input).

    ``api_key_id`` is "" for usage the provider attributes to no key (say, the console's).
    """

    day: dt.date
    provider: str
    account_id: str
    service_name: str
    model: str
    api_key_id: str
    tokens: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    team_tag: str | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """An API key as the provider's key list names it (``spend_ai_key_info``)."""

    provider: str
    account_id: str
    api_key_id: str
    api_key_name: str


@dataclass(slots=True)
class MinuteUsageResult:
    """What one burn fetch returned: the minute buckets of ``[start, end)``, every minute of it complete.

    ``end`` is the end of the newest minute judged complete given the usage API's publication delay;
    ``minutes`` holds only buckets that start in ``[start, end)``.
    """

    start: dt.datetime
    end: dt.datetime
    minutes: list[MinuteUsage] = field(default_factory=list)


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
    history: bool = False
    """A chunk of the history (``exporter.history``): the days only, no forecast and no hourly buckets."""

    def days(self) -> list[dt.date]:
        n = (self.end - self.start).days + 1
        return [self.start + dt.timedelta(days=i) for i in range(max(n, 0))]

    @property
    def last_complete_hour(self) -> dt.datetime:
        """Start of the last complete UTC hour before ``now``."""
        top = self.now.replace(minute=0, second=0, microsecond=0)
        return top - dt.timedelta(hours=1)


def burn_bounds(now: dt.datetime, window_seconds: float, delay_seconds: float) -> tuple[dt.datetime, dt.datetime]:
    """``[start, end)`` of the burn window at ``now``.

    ``end`` is the newest minute boundary at least ``delay_seconds`` before ``now``: the usage APIs publish a
    minute late and fill it in over time, so a minute ending later than that is not complete yet and is never
    read (it would look like a drop).
    """
    end = (now - dt.timedelta(seconds=delay_seconds)).replace(second=0, microsecond=0)
    return end - dt.timedelta(seconds=window_seconds), end


# a CostRecord, field by field; its ``labels`` may be left off (no extra label found in tags)
CostRecordTuple = tuple[Any, ...]
_COST_LABELS = (1, 2, 3, 6, 7)  # provider, account_id, service_name, team_tag, model


class CostRows(Sequence[CostRecord]):
    """Cost records held as plain tuples in ``CostRecord``'s field order.

    A provider that aggregates in a database hands over its cursor's rows as they are: for a million
    rows, building one frozen dataclass per row costs more than the query. It reads as a sequence of
    ``CostRecord``; the engine reads ``rows`` and never builds the records.
    """

    __slots__ = ("rows",)

    def __init__(self, rows: list[CostRecordTuple]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, i: int) -> CostRecord: ...
    @overload
    def __getitem__(self, i: slice) -> list[CostRecord]: ...
    def __getitem__(self, i: int | slice) -> CostRecord | list[CostRecord]:
        if isinstance(i, slice):
            return [CostRecord(*r) for r in self.rows[i]]
        return CostRecord(*self.rows[i])

    def __iter__(self) -> Iterator[CostRecord]:
        return (CostRecord(*r) for r in self.rows)

    def clean_labels(self, clean: Callable[[str], tuple[str, bool]]) -> tuple[CostRows, int]:
        """``FetchResult.clean_labels`` on the tuples: each distinct label value is cleaned once."""
        given: Sequence[tuple[Any, ...]] = self.rows
        fixed: dict[str, tuple[str, bool]] = {}
        for i in _COST_LABELS:
            for v in {r[i] for r in given}:
                if v and v not in fixed and (c := clean(v)) != (v, False):
                    fixed[v] = c
        if not fixed:
            return self, 0
        n = 0
        rows: list[Any] = []
        for r in given:
            if any(r[i] in fixed for i in _COST_LABELS):
                row = list(r)
                for i in _COST_LABELS:
                    if row[i] in fixed:
                        row[i], cut = fixed[row[i]]
                        n += cut
                r = tuple(row)
            rows.append(r)
        return CostRows(rows), n


def cost_tuples(costs: Sequence[CostRecord]) -> Iterable[CostRecordTuple]:
    """``costs`` as tuples in field order; a ``CostRows`` gives its rows without building records."""
    if isinstance(costs, CostRows):
        return costs.rows
    return (
        (c.day, c.provider, c.account_id, c.service_name, c.amount, c.currency, c.team_tag, c.model, c.labels)
        for c in costs
    )


@dataclass(slots=True)
class RawPage:
    """One API page as the provider received it, and the request that produced it (the audit trail).

    ``body`` is the page's JSON as sent (for SDKs that return parsed data, such as boto3, the parsed
    response less its transport metadata); ``request`` is the method, URL or operation and parameters,
    never a header; ``meta`` is what the provider's parser must know of the request that the body does not
    say (Cost Explorer: the linked account a page is filtered on).
    """

    operation: str
    request: dict[str, Any]
    body: Any
    meta: dict[str, Any] = field(default_factory=dict)
    as_json: Callable[[Any], Any] | None = field(default=None, compare=False, repr=False)
    """For a body the SDK handed over as its own objects (OCI's models, BigQuery's rows), which ``parse`` reads as
    they are: what makes it JSON, called only when the page is kept (so a refresh without it converts nothing)."""


@dataclass(slots=True)
class RawFetch:
    """Every page one fetch received, in order, and the provider's ``context``: what it used without a call
    (an account list cached from an earlier refresh). ``PageParser.parse`` rebuilds the ``FetchResult`` from it."""

    pages: list[RawPage] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)

    def add(
        self,
        operation: str,
        request: dict[str, Any],
        body: Any,
        *,
        as_json: Callable[[Any], Any] | None = None,
        **meta: Any,
    ) -> Any:
        self.pages.append(RawPage(operation, request, body, meta, as_json))
        return body


@dataclass(slots=True)
class FetchResult:
    """Everything one refresh of one source produced.

    ``days`` are the days this fetch covered: the store replaces exactly those
    days for the source, so a day with no rows in ``costs`` is stored as empty.
    ``hourly`` replaces the source's hourly usage when not None.
    ``data_through`` is the end of the newest billing bucket returned.
    ``key_usage`` is the daily usage by API key of the same days (replaced with them); ``api_keys`` names
    keys (added to the names held, as ``accounts``).
    ``skipped`` counts, by reason, rows the provider itself could not use (say an unparsable date or
    amount in a file): the engine adds them to what it skips and to ``spend_exporter_source_records_skipped``.
    """

    days: list[dt.date]
    costs: list[CostRecord] | CostRows = field(default_factory=list)
    usage: list[UsageRecord] = field(default_factory=list)
    hourly: list[HourlyUsage] | None = None
    accounts: list[AccountInfo] = field(default_factory=list)
    forecasts: list[ProviderForecast] | None = None
    data_through: dt.datetime | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    raw: RawFetch | None = None
    """The pages the result was parsed from (providers that split fetching from parsing: ``PageParser``)."""
    key_usage: list[KeyUsage] = field(default_factory=list)
    api_keys: list[ApiKeyInfo] = field(default_factory=list)

    def clean_labels(self, clean: Callable[[str], tuple[str, bool]]) -> int:
        """Pass every string that becomes a label value through ``clean``, in place.

        ``clean`` returns (value, truncated); the number of truncated values is returned.
        """
        n = 0

        def fix(rec: _R, names: tuple[str, ...]) -> _R:
            nonlocal n
            values = [getattr(rec, k) for k in names]
            # fast path: short ASCII everywhere (one concatenation, one O(1) check)
            if sum(len(v) for v in values if v) <= 1024 and "".join(v for v in values if v).isascii():
                return rec
            changes: dict[str, Any] = {}
            for k, v in zip(names, values, strict=True):
                if v:
                    c, cut = clean(v)
                    n += cut
                    if c != v:
                        changes[k] = c
            return replace(rec, **changes) if changes else rec  # type: ignore[type-var]

        labels = ("provider", "account_id", "service_name", "team_tag", "model")
        if isinstance(self.costs, CostRows):
            self.costs, cut = self.costs.clean_labels(clean)
            n += cut
        else:
            self.costs = [fix(c, labels) for c in self.costs]
        self.usage = [fix(u, labels) for u in self.usage]
        if self.hourly is not None:
            self.hourly = [fix(h, labels) for h in self.hourly]
        self.accounts = [fix(a, ("provider", "account_id", "account_name")) for a in self.accounts]
        self.key_usage = [fix(k, (*labels, "api_key_id")) for k in self.key_usage]
        self.api_keys = [fix(k, ("provider", "account_id", "api_key_id", "api_key_name")) for k in self.api_keys]
        if self.forecasts is not None:
            self.forecasts = [fix(f, ("provider", "account_id")) for f in self.forecasts]
        return n
