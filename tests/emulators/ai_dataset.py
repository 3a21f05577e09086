"""The AI part of the shared dataset: hourly OpenAI and Anthropic usage, and the costs it bills.

Deterministic for a given ``now``: hourly token counts for every complete
hour of the ``days`` days up to ``now``, per (account, API key, model). The
emulators aggregate these rows into the admin APIs' daily and hourly
buckets, and bill them at ``BILLING_PRICES`` (the dataset's own price list,
independent of the exporter's price table (genai-prices), so that the cost APIs
also bill ``UNPRICED_MODEL``, which the exporter does not price).

Amounts are ``Decimal``: OpenAI cost rows to the micro-dollar, Anthropic cost
rows to the hundredth of a cent (the API reports cents as a decimal string),
so tests sum them exactly and compare "to the cent".

``runaway(ds)`` is the burn scenario: one project's tokens for one model
jump 40× in the last complete hour.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

UTC = dt.UTC
MILLION = Decimal(1_000_000)

# OpenAI projects, Anthropic workspaces, and the models they use (as the usage APIs name them)
SEARCH, PAYMENTS, LABS, SANDBOX = "proj_SEARCHa1b2c3", "proj_PAYMENTSd4e5", "proj_LABSf6g7h8", "proj_SANDBOXk2m4"
RESEARCH, SUPPORT, SCRATCH = "wrkspc_01RESEARCHxyz", "wrkspc_01SUPPORTabc", "wrkspc_01SCRATCHqq"
GPT4O, GPT4O_MINI, EMBED = "gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "text-embedding-3-small"
SONNET, OPUS, HAIKU = "claude-sonnet-4-20250514", "claude-opus-4-1-20250805", "claude-3-5-haiku-20241022"


@dataclass(frozen=True)
class AIAccount:
    """An OpenAI project or an Anthropic workspace (``id`` None: Anthropic's default workspace)."""

    provider: str
    id: str | None
    name: str
    team_rule: str | None = None  # the team an `attribution.rules` entry gives its account_id
    tags: dict[str, str] = field(default_factory=dict, hash=False, compare=False)  # Anthropic workspace tags
    archived: bool = False

    @property
    def account_id(self) -> str:
        """The exporter's account_id: Anthropic's default workspace (null in the reports) is "default"."""
        return self.id if self.id is not None else "default"

    def team(self, tag_keys: Iterable[str] = ("team", "Team")) -> str:
        """The team the exporter attributes: the tag, else the rule, else ``unallocated``."""
        for k in tag_keys:
            if self.tags.get(k):
                return self.tags[k]
        return self.team_rule or "unallocated"


ACCOUNTS: dict[str, list[AIAccount]] = {
    "openai": [
        AIAccount("openai", SEARCH, "Search", team_rule="search"),
        AIAccount("openai", PAYMENTS, "Payments", team_rule="payments"),
        AIAccount("openai", LABS, "Labs", team_rule="ml-platform"),
        AIAccount("openai", SANDBOX, "Sandbox"),  # no rule: unallocated
        AIAccount("openai", "proj_OLDz9", "Old prototype", team_rule="search", archived=True),
    ],
    "anthropic": [
        # the tag wins over the rule
        AIAccount("anthropic", RESEARCH, "Research", team_rule="not-this-one", tags={"team": "research"}),
        AIAccount("anthropic", SUPPORT, "Support", team_rule="support"),
        AIAccount("anthropic", SCRATCH, "Scratch"),  # no tag, no rule: unallocated
        AIAccount("anthropic", None, "Default Workspace", team_rule="platform"),
    ],
}

UNPRICED_MODEL = "ft:gpt-4o-mini-2024-07-18:acme:payments:8kQx2"
"""A fine-tuned model: billed by OpenAI's cost API, priced by the exporter only when ``pricing:`` lists it."""

# What the providers bill, USD per 1M tokens. Anthropic bills 5-minute and 1-hour cache writes apart.
BILLING_PRICES: dict[str, dict[str, Decimal]] = {
    GPT4O: {"input": Decimal("2.50"), "cache_read": Decimal("1.25"), "output": Decimal("10.00")},
    GPT4O_MINI: {"input": Decimal("0.15"), "cache_read": Decimal("0.075"), "output": Decimal("0.60")},
    UNPRICED_MODEL: {"input": Decimal("0.30"), "cache_read": Decimal("0.15"), "output": Decimal("1.20")},
    EMBED: {"input": Decimal("0.02")},
    SONNET: {
        "input": Decimal("3.00"),
        "cache_read": Decimal("0.30"),
        "cache_write_5m": Decimal("3.75"),
        "cache_write_1h": Decimal("6.00"),
        "output": Decimal("15.00"),
    },
    OPUS: {
        "input": Decimal("15.00"),
        "cache_read": Decimal("1.50"),
        "cache_write_5m": Decimal("18.75"),
        "cache_write_1h": Decimal("30.00"),
        "output": Decimal("75.00"),
    },
    HAIKU: {
        "input": Decimal("0.80"),
        "cache_read": Decimal("0.08"),
        "cache_write_5m": Decimal("1.00"),
        "cache_write_1h": Decimal("1.60"),
        "output": Decimal("4.00"),
    },
}


@dataclass(frozen=True)
class Stream:
    """One (account, API key, model) whose hourly usage the dataset generates."""

    provider: str
    account_id: str | None  # the API's id: None is Anthropic's default workspace
    api_key_id: str
    model: str
    endpoint: str  # openai: completions | embeddings; anthropic: messages
    input: int  # mean uncached input tokens per hour
    output: int = 0
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    requests: int = 0  # OpenAI reports model requests; Anthropic's usage report has no request count


# provider, account, API key, model, endpoint, and mean tokens per hour:
# input (uncached), output, cache_read, cache_write_5m, cache_write_1h, model requests
_S = Stream
STREAMS: list[Stream] = [
    _S("openai", SEARCH, "key_srch_A1", GPT4O, "completions", 120_000, 30_000, 40_000, 0, 0, 60),
    _S("openai", SEARCH, "key_srch_B2", GPT4O_MINI, "completions", 400_000, 80_000, 100_000, 0, 0, 300),
    _S("openai", SEARCH, "key_srch_A1", EMBED, "embeddings", 900_000, 0, 0, 0, 0, 200),
    _S("openai", PAYMENTS, "key_pay_C3", GPT4O_MINI, "completions", 150_000, 40_000, 20_000, 0, 0, 120),
    _S("openai", PAYMENTS, "key_pay_C3", UNPRICED_MODEL, "completions", 50_000, 10_000, 5_000, 0, 0, 40),
    _S("openai", LABS, "key_labs_D4", GPT4O, "completions", 80_000, 20_000, 10_000, 0, 0, 30),
    _S("openai", LABS, "key_labs_E5", GPT4O, "completions", 20_000, 5_000, 5_000, 0, 0, 10),
    _S("openai", SANDBOX, "key_sbx_F6", GPT4O_MINI, "completions", 30_000, 6_000, 0, 0, 0, 25),
    _S("anthropic", RESEARCH, "apikey_01R1", SONNET, "messages", 90_000, 25_000, 200_000, 20_000, 5_000),
    _S("anthropic", RESEARCH, "apikey_01R2", OPUS, "messages", 10_000, 3_000, 30_000, 2_000, 1_000),
    _S("anthropic", SUPPORT, "apikey_01S1", HAIKU, "messages", 300_000, 60_000, 100_000, 30_000),
    _S("anthropic", SUPPORT, "apikey_01S1", SONNET, "messages", 40_000, 10_000, 50_000, 8_000),
    _S("anthropic", SCRATCH, "apikey_01Q1", HAIKU, "messages", 20_000, 5_000),
    _S("anthropic", None, "apikey_01D1", SONNET, "messages", 30_000, 8_000, 20_000, 4_000, 2_000),
]  # fmt: skip


@dataclass(frozen=True)
class AIUsageRow:
    """One complete hour of one stream."""

    hour: dt.datetime  # start of the hour, UTC
    provider: str
    account_id: str | None
    api_key_id: str
    model: str
    endpoint: str
    input: int  # uncached input tokens
    output: int
    cache_read: int
    cache_write_5m: int
    cache_write_1h: int
    requests: int

    @property
    def day(self) -> dt.date:
        return self.hour.date()

    @property
    def cache_write(self) -> int:
        return self.cache_write_5m + self.cache_write_1h

    @property
    def tokens(self) -> dict[str, int]:
        """By the exporter's token types (``exporter.model.TOKEN_TYPES``): 5-minute and 1-hour cache writes apart."""
        return {
            "input": self.input,
            "output": self.output,
            "cache_read": self.cache_read,
            "cache_write": self.cache_write_5m,
            "cache_write_1h": self.cache_write_1h,
        }

    @property
    def billed(self) -> dict[str, int]:
        """By the billing prices' token types (``BILLING_PRICES``): cache writes as ``cache_write_5m`` and
        ``cache_write_1h``."""
        return {
            "input": self.input,
            "output": self.output,
            "cache_read": self.cache_read,
            "cache_write_5m": self.cache_write_5m,
            "cache_write_1h": self.cache_write_1h,
        }

    def scaled(self, factor: int) -> AIUsageRow:
        return dataclasses.replace(
            self,
            input=self.input * factor,
            output=self.output * factor,
            cache_read=self.cache_read * factor,
            cache_write_5m=self.cache_write_5m * factor,
            cache_write_1h=self.cache_write_1h * factor,
            requests=self.requests * factor,
        )


@dataclass(frozen=True)
class AICostRow:
    """One day's cost of one (account, model, billed token type) or of one non-token line item."""

    day: dt.date
    provider: str
    account_id: str | None  # the API's id
    service_name: str  # what the exporter reports: chat | embeddings | messages | web_search
    model: str  # "" for non-token costs
    billed_type: str  # input | output | cache_read | cache_write_5m | cache_write_1h | "" (non-token)
    amount: Decimal  # USD
    line_item: str = ""  # OpenAI's line item / Anthropic's description
    quantity: int = 0


# The exporter's service_name per usage endpoint (OpenAI's API family).
SERVICE = {"completions": "chat", "embeddings": "embeddings", "messages": "messages"}

OPENAI_LINE_ITEM = {"input": "input", "cache_read": "cached input", "output": "output"}
ANTHROPIC_TOKEN_TYPE = {
    "input": "uncached_input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_input_tokens",
    "cache_write_5m": "cache_creation.ephemeral_5m_input_tokens",
    "cache_write_1h": "cache_creation.ephemeral_1h_input_tokens",
}
ANTHROPIC_DESCRIPTION = {
    "input": "Input Tokens",
    "output": "Output Tokens",
    "cache_read": "Cache Read Input Tokens",
    "cache_write_5m": "5m Cache Write Input Tokens",
    "cache_write_1h": "1h Cache Write Input Tokens",
}


def _diurnal(hour: int) -> float:
    """More traffic in the (UTC) working day."""
    return 0.35 + 0.65 * max(0.0, 1 - abs(hour - 14) / 9)


@dataclass
class AIDataset:
    now: dt.datetime
    start: dt.date
    usage: list[AIUsageRow]
    extra_costs: list[AICostRow]  # non-token line items (web search)
    accounts: dict[str, list[AIAccount]] = field(default_factory=lambda: ACCOUNTS)
    # negotiated prices: (provider, the API's account id) → the share of the list price billed (0.8: 20% off)
    discounts: dict[tuple[str, str | None], Decimal] = field(default_factory=dict)

    # -- what the APIs are built from ---------------------------------------------
    @property
    def last_complete_hour(self) -> dt.datetime:
        return self.now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)

    @property
    def today(self) -> dt.date:
        return self.now.date()

    def rows(self, provider: str) -> list[AIUsageRow]:
        return [r for r in self.usage if r.provider == provider]

    @functools.cached_property
    def _by_hour(self) -> dict[tuple[str, str, dt.datetime], list[AIUsageRow]]:
        index: dict[tuple[str, str, dt.datetime], list[AIUsageRow]] = defaultdict(list)
        for r in self.usage:
            index[(r.provider, r.endpoint, r.hour)].append(r)
        return index

    def rows_between(self, provider: str, endpoint: str, start: dt.datetime, end: dt.datetime) -> list[AIUsageRow]:
        """Usage rows whose hour starts in [start, end); for a span shorter than an hour (a minute bucket),
        each hour's usage spread over its 60 minutes (``minute_rows``)."""
        if end - start < dt.timedelta(hours=1):
            return self.minute_rows(provider, endpoint, start, end)
        out: list[AIUsageRow] = []
        h = start.replace(minute=0, second=0, microsecond=0)
        if h < start:
            h += dt.timedelta(hours=1)
        while h < end:
            out.extend(self._by_hour.get((provider, endpoint, h), ()))
            h += dt.timedelta(hours=1)
        return out

    def minute_rows(self, provider: str, endpoint: str, start: dt.datetime, end: dt.datetime) -> list[AIUsageRow]:
        """Rows of the minutes starting in [start, end): minute i of an hour holds floor(n(i+1)/60) − floor(ni/60)
        of each count n of the hour, so an hour's minutes add up to the hour exactly. The dataset has complete
        hours only: the minutes of the current hour are empty (``tests.emulators.scenario`` serves real minutes)."""
        out: list[AIUsageRow] = []
        m = start.replace(second=0, microsecond=0)
        if m < start:
            m += dt.timedelta(minutes=1)
        while m < end:
            i = m.minute
            for r in self._by_hour.get((provider, endpoint, m.replace(minute=0)), ()):
                fields = ("input", "output", "cache_read", "cache_write_5m", "cache_write_1h", "requests")
                split = {f: getattr(r, f) * (i + 1) // 60 - getattr(r, f) * i // 60 for f in fields}
                out.append(dataclasses.replace(r, hour=m, **split))
            m += dt.timedelta(minutes=1)
        return out

    def account(self, provider: str, account_id: str | None) -> AIAccount:
        for a in self.accounts[provider]:
            if a.id == account_id or a.account_id == account_id:
                return a
        raise KeyError((provider, account_id))

    @functools.cached_property
    def _costs(self) -> list[AICostRow]:
        tokens: dict[tuple[dt.date, str, str | None, str, str, str], int] = defaultdict(int)
        for r in self.usage:
            for billed, n in r.billed.items():
                if n:
                    tokens[(r.day, r.provider, r.account_id, r.model, r.endpoint, billed)] += n
        out: list[AICostRow] = []
        for (day, provider, account_id, model, endpoint, billed), n in sorted(
            tokens.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "", *kv[0][3:])
        ):
            usd = Decimal(n) * BILLING_PRICES[model][billed] / MILLION
            usd *= self.discounts.get((provider, account_id), Decimal(1))
            if provider == "openai":
                amount = usd.quantize(Decimal("0.000001"))
                line_item = f"{model}, {OPENAI_LINE_ITEM[billed]}"
            else:
                amount = (usd * 100).quantize(Decimal("0.01")) / 100  # whole hundredths of a cent
                line_item = f"{model} {ANTHROPIC_DESCRIPTION[billed]}"
            out.append(AICostRow(day, provider, account_id, SERVICE[endpoint], model, billed, amount, line_item, n))
        out.extend(self.extra_costs)
        return out

    def costs(self, provider: str) -> list[AICostRow]:
        return [c for c in self._costs if c.provider == provider]

    # -- what tests expect -----------------------------------------------------------
    def teams(self, provider: str, tag_keys: Iterable[str] = ("team", "Team")) -> dict[str, str]:
        """account_id (as the exporter reports it) → team."""
        return {a.account_id: a.team(tag_keys) for a in self.accounts[provider]}

    def attribution_rules(self) -> list[dict[str, object]]:
        """The ``attribution.rules`` that give each account its ``team_rule``."""
        return [
            {"match": {"provider": a.provider, "account_id": a.account_id}, "team": a.team_rule}
            for accts in self.accounts.values()
            for a in accts
            if a.team_rule
        ]

    def cost_sum(
        self,
        provider: str,
        *,
        start: dt.date | None = None,
        end: dt.date | None = None,
        account_id: str | None = None,
        model: str | None = None,
        service_name: str | None = None,
        team: str | None = None,
    ) -> Decimal:
        """Sum of cost rows, days ``start``..``end`` inclusive; account_id as the exporter reports it."""
        teams = self.teams(provider)
        total = Decimal(0)
        for c in self.costs(provider):
            acct = c.account_id if c.account_id is not None else "default"
            if start is not None and c.day < start:
                continue
            if end is not None and c.day > end:
                continue
            if account_id is not None and acct != account_id:
                continue
            if model is not None and c.model != model:
                continue
            if service_name is not None and c.service_name != service_name:
                continue
            if team is not None and teams[acct] != team:
                continue
            total += c.amount
        return total

    def list_cost(self, provider: str, *, start: dt.date, end: dt.date, account_id: str, model: str) -> Decimal:
        """Usage of the days ``start``..``end`` at list prices (``BILLING_PRICES``, no discount), unrounded."""
        total = Decimal(0)
        for r in self.rows(provider):
            acct = r.account_id if r.account_id is not None else "default"
            if acct != account_id or r.model != model or not start <= r.day <= end:
                continue
            prices = BILLING_PRICES[model]
            for billed, n in r.billed.items():
                if n:
                    total += Decimal(n) * prices[billed] / MILLION
        return total

    def key_cost(
        self, provider: str, *, start: dt.date, end: dt.date, account_id: str, api_key_id: str
    ) -> dict[str, Decimal]:
        """What each model used by one API key cost, days ``start``..``end``: its tokens at ``BILLING_PRICES``,
        with the account's discount, unrounded (the APIs bill no key: this is the truth the exporter estimates)."""
        out: dict[str, Decimal] = defaultdict(Decimal)
        for r in self.rows(provider):
            acct = r.account_id if r.account_id is not None else "default"
            if acct != account_id or r.api_key_id != api_key_id or not start <= r.day <= end:
                continue
            prices = BILLING_PRICES[r.model]
            discount = self.discounts.get((provider, r.account_id), Decimal(1))
            for billed, n in r.billed.items():
                if n:
                    out[r.model] += Decimal(n) * prices[billed] / MILLION * discount
        return dict(out)

    def token_sum(
        self,
        provider: str,
        token_type: str,
        *,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        account_id: str | None = None,
        model: str | None = None,
        endpoints: Iterable[str] | None = None,
    ) -> int:
        """Tokens of the exporter's ``token_type`` in hours [start, end)."""
        eps = set(endpoints) if endpoints is not None else None
        total = 0
        for r in self.rows(provider):
            acct = r.account_id if r.account_id is not None else "default"
            if start is not None and r.hour < start:
                continue
            if end is not None and r.hour >= end:
                continue
            if account_id is not None and acct != account_id:
                continue
            if model is not None and r.model != model:
                continue
            if eps is not None and r.endpoint not in eps:
                continue
            total += r.tokens[token_type]
        return total


def build_ai_dataset(now: dt.datetime, days: int = 70, seed: int = 11) -> AIDataset:
    """Hourly usage for every complete hour of the ``days`` UTC days up to ``now``."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    now = now.astimezone(UTC)
    rnd = random.Random(seed)
    start = now.date() - dt.timedelta(days=days - 1)
    first = dt.datetime.combine(start, dt.time(), UTC)
    end = now.replace(minute=0, second=0, microsecond=0)  # hours before this one are complete
    usage: list[AIUsageRow] = []
    extra: list[AICostRow] = []
    hour = first
    while hour < end:
        f = _diurnal(hour.hour)
        for s in STREAMS:
            jitter = 0.8 + 0.4 * rnd.random()

            def n(mean: int, f: float = f, jitter: float = jitter) -> int:
                return int(mean * f * jitter)

            usage.append(
                AIUsageRow(
                    hour=hour,
                    provider=s.provider,
                    account_id=s.account_id,
                    api_key_id=s.api_key_id,
                    model=s.model,
                    endpoint=s.endpoint,
                    input=n(s.input),
                    output=n(s.output),
                    cache_read=n(s.cache_read),
                    cache_write_5m=n(s.cache_write_5m),
                    cache_write_1h=n(s.cache_write_1h),
                    requests=max(1, n(s.requests)) if s.requests else 0,
                )
            )
        hour += dt.timedelta(hours=1)
    # non-token costs: web search calls (OpenAI, one project) and web search (Anthropic, one workspace)
    for d in range((now.date() - start).days + 1):
        day = start + dt.timedelta(days=d)
        calls = 40 + rnd.randrange(60)
        extra.append(
            AICostRow(
                day,
                "openai",
                SEARCH,
                "web_search",
                "",
                "",
                Decimal(calls) / 100,
                "web search tool calls",
                calls,
            )
        )
        searches = 10 + rnd.randrange(30)
        extra.append(
            AICostRow(
                day,
                "anthropic",
                RESEARCH,
                "web_search",
                "",
                "",
                Decimal(searches) / 100,
                "Web Search",
                searches,
            )
        )
    return AIDataset(now=now, start=start, usage=usage, extra_costs=extra)


RUNAWAY_FACTOR = 40


def runaway(
    ds: AIDataset,
    provider: str = "openai",
    account_id: str | None = LABS,
    model: str = GPT4O,
    factor: int = RUNAWAY_FACTOR,
) -> AIDataset:
    """The burn scenario: ``account_id``'s usage of ``model`` is ``factor``× in the last complete hour.

    Every API key of that account and model jumps; its daily totals and billed
    costs follow, as they would on the real APIs.
    """
    hour = ds.last_complete_hour
    usage = [
        r.scaled(factor)
        if (r.hour == hour and r.provider == provider and r.account_id == account_id and r.model == model)
        else r
        for r in ds.usage
    ]
    if usage == ds.usage:
        raise ValueError(f"no usage of {model} by {account_id} in the hour starting {hour:%Y-%m-%d %H:%M}")
    return dataclasses.replace(ds, usage=usage, extra_costs=list(ds.extra_costs))
