"""Reading Cost Management's replies: result tables by column name, dates, page tokens, retry hints, scopes and
the model an Azure OpenAI meter names."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from exporter.providers.base import SourceError

_SUBSCRIPTION = re.compile(r"^/?subscriptions/(?P<id>[^/]+)", re.IGNORECASE)
RETRY_AFTER_HEADER = re.compile(r"^x-ms-ratelimit-microsoft\.costmanagement-[a-z0-9-]+-retry-after$", re.IGNORECASE)
AZURE_OPENAI_SERVICES = frozenset({"Azure OpenAI", "Azure OpenAI Service", "Foundry Models", "Cognitive Services"})
"""Services whose cost is broken down by meter to fill ``model`` (``openai_models``)."""

# -- Azure OpenAI model names --------------------------------------------------------------

_MODEL_FAMILY = re.compile(
    r"^(gpt|chatgpt|o\d|text-embedding|text-davinci|davinci|babbage|ada|dall-?e|whisper|tts|sora|codex|"
    r"computer-use|model-router|phi|llama|mistral|deepseek|grok)",
    re.IGNORECASE,
)
# Meter words that come after the model name: direction, deployment type, unit.
_METER_WORDS = frozenset(
    (  # noqa: SIM905
        "inp input in outp output out opt cached cchd cache cd rsn reasoning glbl global gl regional rgnl regnl "
        "dz datazone data zone batch bt tokens token tkns 1k 1m ft finetune fine tuned training trng hosting "
        "hours hour hr images image img characters chars audio aud realtime rt standard std hd provisioned ptu "
        "developer dev"
    ).split()
)


def openai_model(meter: str) -> str:
    """The model an Azure OpenAI meter names, or "" when it names none.

    ``gpt-4o-0806-Inp-glbl Tokens`` → ``gpt-4o``; ``gpt-35-turbo-16k Output Tokens`` → ``gpt-35-turbo-16k``;
    ``text-embedding-3-large Tokens`` → ``text-embedding-3-large``.
    """
    name = meter.strip()
    if not _MODEL_FAMILY.match(name):
        return ""
    parts: list[str] = []
    for tok in re.split(r"[\s_-]+", name.lower()):
        if not tok:
            continue
        if tok in _METER_WORDS or re.fullmatch(r"\d{4}", tok) or not re.fullmatch(r"[a-z0-9.]+", tok):
            break  # a version (MMDD or YYYY), a meter word or a size like 1024*1024: the name is over
        parts.append(tok)
    return "-".join(parts)


def subscription_id(scope: str) -> str | None:
    """The subscription of a subscription or resource-group scope, as written; None for other scopes."""
    m = _SUBSCRIPTION.match(scope.strip())
    return m.group("id") if m else None


def scope_account(scope: str) -> str:
    """The subscription id of a subscription or resource-group scope; other scopes stand for themselves."""
    sub = subscription_id(scope)
    return sub.lower() if sub is not None else "/" + scope.strip().strip("/")


def usage_date(value: Any) -> dt.date:
    """A ``UsageDate`` cell: ``20261120`` (a number or text) or an ISO date."""
    if isinstance(value, bool):
        raise ValueError("boolean date")
    if isinstance(value, int | float):
        value = str(int(value))
    s = str(value).strip()
    if re.fullmatch(r"\d{8}", s):
        return dt.date(int(s[:4]), int(s[4:6]), int(s[6:]))
    return dt.date.fromisoformat(s[:10])


class Table:
    """A Cost Management result read by column name."""

    def __init__(self, operation: str, result: Any) -> None:
        """``result``: the response's JSON (``{"properties": {"columns", "rows", "nextLink"}}``), None for a 204."""
        if result is None:  # 204 No Content: nothing in this scope and period
            self.columns: dict[str, int] = {}
            self.rows: list[list[Any]] = []
            self.next_link: str | None = None
            return
        props = result.get("properties") if isinstance(result, dict) else None
        columns = props.get("columns") if isinstance(props, dict) else None
        rows = props.get("rows") if isinstance(props, dict) else None
        if not isinstance(props, dict) or not isinstance(columns, list) or not isinstance(rows, list):
            raise SourceError(f"{operation}: malformed response (no properties.columns/rows)")
        names = [c.get("name") if isinstance(c, dict) else None for c in columns]
        if not all(isinstance(n, str) for n in names):
            raise SourceError(f"{operation}: malformed response (a column without a name)")
        self.columns = {str(n).lower(): i for i, n in enumerate(names)}
        for r in rows:
            if not isinstance(r, list) or len(r) != len(names):
                raise SourceError(f"{operation}: malformed response (a row does not match the columns)")
        self.rows = rows
        link = props.get("nextLink")
        self.next_link = link if isinstance(link, str) and link else None

    def index(self, operation: str, *names: str) -> int:
        for n in names:
            if n.lower() in self.columns:
                return self.columns[n.lower()]
        raise SourceError(f"{operation}: response has no {' or '.join(names)} column")

    def maybe(self, *names: str) -> int | None:
        for n in names:
            if n.lower() in self.columns:
                return self.columns[n.lower()]
        return None

    def cost_columns(self, operation: str, cost_column: str) -> CostColumns:
        """Where a row's cost, day and currency are."""
        return CostColumns(
            self.index(operation, cost_column, "PreTaxCost", "Cost"),
            self.index(operation, "UsageDate"),
            self.index(operation, "Currency", "BillingCurrency", "BillingCurrencyCode"),
        )


class CostColumns(NamedTuple):
    cost: int
    date: int
    currency: int

    def read(self, operation: str, row: list[Any]) -> tuple[dt.date, Decimal, str]:
        """A row's day, amount and currency (blank if it has none)."""
        try:
            day = usage_date(row[self.date])
            amount = Decimal(str(row[self.cost]))
            if not amount.is_finite():
                raise ValueError("not finite")
        except (ValueError, TypeError, InvalidOperation) as e:
            raise SourceError(f"{operation}: malformed row ({e})") from None
        return day, amount, str(row[self.currency] or "").strip()


def skiptoken(operation: str, next_link: str) -> str:
    values = {k.lower(): v for k, v in parse_qs(urlsplit(next_link).query).items()}
    token = (values.get("$skiptoken") or values.get("skiptoken") or [""])[0]
    if not token:
        raise SourceError(f"{operation}: nextLink has no $skiptoken")
    return token


def retry_after(headers: Any) -> float | None:
    """The longest wait a 429's ``x-ms-ratelimit-*-retry-after`` (or ``retry-after``) headers ask for, in seconds."""
    waits = []
    for name, value in (headers or {}).items():
        if RETRY_AFTER_HEADER.match(name) or name.lower() == "retry-after":
            try:
                waits.append(float(value))
            except (TypeError, ValueError):
                continue
    return max(waits) if waits else None
