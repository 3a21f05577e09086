"""AWS Cost Explorer source (``boto3`` client ``ce``).

One refresh asks ``GetCostAndUsage`` for the window at DAILY granularity,
grouped by ``SERVICE`` and the team tag (Cost Explorer allows two GroupBy
keys), once for the whole payer view or, with ``group_by_account``, once per
linked account found with ``GetDimensionValues``. Amazon Bedrock is then
broken down by usage type so that ``model`` can be filled, and
``GetCostForecast`` gives the rest of the month. Every Cost Explorer request
costs $0.01; each one goes through ``ProviderContext.api_call`` so that it is
counted and held to ``max_api_cost_usd_per_day``.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
import time
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import boto3

from exporter.model import AccountInfo, FetchResult, FetchWindow, ProviderForecast, RawFetch
from exporter.providers.base import (
    CostKey,
    LabelChoice,
    Labels,
    ProviderContext,
    RetryPolicy,
    SourceError,
    choices_from_context,
    labelled_cost_records,
    paginate,
    query_cells,
    split_by_labels,
    utc_midnight,
)
from exporter.providers.boto import boto_call, boto_clients
from exporter.sources.aws import AwsSource

PROVIDER = "aws"
CE_REQUEST_COST_USD = 0.01
ACCOUNT_CACHE = dt.timedelta(days=1)
BEDROCK_SERVICE = "Amazon Bedrock"


FORECAST_METRIC = {
    "UnblendedCost": "UNBLENDED_COST",
    "AmortizedCost": "AMORTIZED_COST",
    "NetUnblendedCost": "NET_UNBLENDED_COST",
    "NetAmortizedCost": "NET_AMORTIZED_COST",
}

# -- Bedrock model names ------------------------------------------------------------------

# Usage types name the model between a region prefix and the token kind, e.g.
# ``USE1-Claude3.5Sonnet-input-tokens`` or ``USW2-NovaLite-cache-read-input-token-count``.
_BEDROCK_TOKEN_USAGE = re.compile(
    r"^(?:(?-i:[A-Z]{2,4}\d?)-)?(?P<model>.+?)-(?:batch-)?(?:cache-(?:read|write)-)?(?:input|output)-tokens?(?:-count)?(?:-.*)?$",
    re.IGNORECASE,
)
# Anthropic and other Marketplace models bill as their own service: "Claude 3.5 Sonnet (Amazon Bedrock Edition)".
_BEDROCK_EDITION = re.compile(r"^(?P<model>.+?)\s*\(Amazon Bedrock Edition\)$", re.IGNORECASE)
# Bedrock model ids are "<vendor>.<model>"; the vendor is not in the usage type.
BEDROCK_VENDORS = (
    ("claude", "anthropic"),
    ("titan", "amazon"),
    ("nova", "amazon"),
    ("llama", "meta"),
    ("mistral", "mistral"),
    ("mixtral", "mistral"),
    ("pixtral", "mistral"),
    ("command", "cohere"),
    ("embed", "cohere"),
    ("rerank", "cohere"),
    ("jamba", "ai21"),
    ("j2", "ai21"),
    ("deepseek", "deepseek"),
    ("stable", "stability"),
    ("sd3", "stability"),
    ("palmyra", "writer"),
    ("qwen", "qwen"),
    ("gpt-oss", "openai"),
)


def _kebab(name: str) -> str:
    """``Claude3.5Sonnet`` → ``claude-3-5-sonnet``; ``Llama3-70B-Instruct`` → ``llama-3-70b-instruct``."""
    s = re.sub(r"(?<=[a-z])(?=[0-9])|(?<=[a-z])(?=[A-Z])|(?<=[0-9])(?=[A-Z][a-z])", "-", name.strip())
    s = re.sub(r"[\s._:/]+", "-", s).lower()
    return re.sub(r"-{2,}", "-", s).strip("-")


def _with_vendor(model: str) -> str:
    for prefix, vendor in BEDROCK_VENDORS:
        if model.startswith(prefix):
            return f"{vendor}.{model}"
    return model


def bedrock_model(usage_type: str) -> str:
    """The model a Bedrock usage type names, as ``vendor.model``, or "" when it names none.

    ``USE1-Claude3.5Sonnet-input-tokens`` → ``anthropic.claude-3-5-sonnet``.
    """
    m = _BEDROCK_TOKEN_USAGE.match(usage_type.strip())
    if not m:
        return ""
    return _with_vendor(_kebab(m.group("model")))


def bedrock_edition_model(service_name: str) -> str:
    """``Claude 3.5 Sonnet (Amazon Bedrock Edition)`` → ``anthropic.claude-3-5-sonnet``; else ""."""
    m = _BEDROCK_EDITION.match(service_name.strip())
    return _with_vendor(_kebab(m.group("model"))) if m else ""


# -- the provider ---------------------------------------------------------------------------


class AwsProvider:
    """AWS Cost Explorer: daily cost by service and team tag, per account when asked, plus the forecast."""

    def __init__(self, config: AwsSource, ctx: ProviderContext, sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg = config
        self.ctx = ctx
        self._sleep = sleep
        self._retry = RetryPolicy.from_settings(config)
        self._session = boto3.Session(profile_name=config.profile, region_name=config.region)
        self._own_account: str | None = config.account_id
        self._accounts: list[tuple[str, str]] | None = None  # (id, name) of linked accounts
        self._accounts_at: dt.datetime | None = None
        self._accounts_from: dt.date | None = None

    def close(self) -> None:
        pass

    # -- clients ------------------------------------------------------------------------------
    def _clients(self) -> tuple[Any, Any]:
        ce, sts = boto_clients(self._session, self.ctx, self.cfg.timeout, self.cfg.endpoint_url, ("ce", "sts"))
        return ce, sts

    # -- calls ------------------------------------------------------------------------------------
    def _call(self, operation: str, method: Callable[..., Any], cost_usd: float, **params: Any) -> dict[str, Any]:
        """One request through the context, retried with backoff while Cost Explorer throttles."""
        return boto_call(self.ctx, self._retry, operation, method, params, cost_usd=cost_usd, sleep=self._sleep)

    def _paged(
        self,
        operation: str,
        method: Callable[..., Any],
        items_key: str,
        raw: RawFetch | None = None,
        meta: dict[str, Any] | None = None,
        **params: Any,
    ) -> list[dict[str, Any]]:
        """All pages of a paid Cost Explorer call, following NextPageToken by hand; each kept in ``raw`` (with
        ``meta``) when given."""

        def page(token: str | None) -> tuple[dict[str, Any], str | None]:
            req = {**params, "NextPageToken": token} if token else params
            got = self._call(operation, method, CE_REQUEST_COST_USD, **req)
            if not isinstance(got.get(items_key), list):
                raise SourceError(f"{operation}: malformed response (no {items_key} list)")
            if raw is not None:
                raw.add(operation, _request(operation, req), _body(got), **(meta or {}))
            return got, got.get("NextPageToken") or None

        return list(paginate(operation, page))

    # -- accounts -----------------------------------------------------------------------------
    def _caller_account(self, sts: Any) -> str:
        if self._own_account is None:
            resp = self._call("GetCallerIdentity", sts.get_caller_identity, 0.0)
            account = resp.get("Account")
            if not isinstance(account, str) or not account:
                raise SourceError("GetCallerIdentity: malformed response (no Account)")
            self._own_account = account
        return self._own_account

    def _linked_accounts(
        self, ce: Any, window: FetchWindow, period: dict[str, str], raw: RawFetch
    ) -> list[tuple[str, str]]:
        fresh = (
            self._accounts is not None
            and self._accounts_at is not None
            and self._accounts_from is not None
            and window.now - self._accounts_at < ACCOUNT_CACHE
            and self._accounts_from <= window.start
        )
        if fresh and self._accounts is not None:
            return self._accounts
        pages = self._paged(
            "GetDimensionValues",
            ce.get_dimension_values,
            "DimensionValues",
            raw,
            TimePeriod=period,
            Dimension="LINKED_ACCOUNT",
            Context="COST_AND_USAGE",
        )
        accounts: dict[str, str] = {}
        for page in pages:
            for v in page["DimensionValues"]:
                value = v.get("Value") if isinstance(v, dict) else None
                if not isinstance(value, str) or not value:
                    raise SourceError("GetDimensionValues: malformed response (a value without Value)")
                attrs = v.get("Attributes") or {}
                accounts[value] = str(attrs.get("description") or "") if isinstance(attrs, dict) else ""
        self._accounts = sorted(accounts.items())
        self._accounts_at = window.now
        self._accounts_from = window.start
        return self._accounts

    # -- filters --------------------------------------------------------------------------------
    def _filter(self, account: str | None, *extra: dict[str, Any]) -> dict[str, Any] | None:
        parts: list[dict[str, Any]] = list(extra)
        if account is not None:
            parts.append({"Dimensions": {"Key": "LINKED_ACCOUNT", "Values": [account]}})
        if not self.cfg.include_credits:
            parts.append({"Not": {"Dimensions": {"Key": "RECORD_TYPE", "Values": ["Credit", "Refund"]}}})
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else {"And": parts}

    # -- cost and usage --------------------------------------------------------------------------
    def _groups(
        self,
        ce: Any,
        raw: RawFetch,
        meta: dict[str, Any],
        period: dict[str, str],
        group_by: list[dict[str, str]],
        flt: dict[str, Any] | None,
    ) -> None:
        """Every page of one GetCostAndUsage query into ``raw``, marked with ``meta`` (account and query)."""
        params: dict[str, Any] = {
            "TimePeriod": period,
            "Granularity": "DAILY",
            "Metrics": [self.cfg.cost_metric],
            "GroupBy": group_by,
        }
        if flt is not None:
            params["Filter"] = flt
        self._paged("GetCostAndUsage", ce.get_cost_and_usage, "ResultsByTime", raw, meta, **params)

    def _group_rows(
        self, raw: RawFetch, account: str, query: str, cell: list[Any] | None = None
    ) -> list[tuple[dt.date, list[str], Decimal, str]]:
        """(day, group keys, amount, unit) of every group in the pages of one account's query (``cell``: the
        query filtered on those extra-label expressions, ``_cells``); pages missing for it are an error."""
        want = _query_meta(account, query, cell)
        out = []
        found = False
        for page in raw.pages:
            if page.operation != "GetCostAndUsage" or page.meta != want:
                continue
            found = True
            for result in page.body["ResultsByTime"]:
                try:
                    day = dt.date.fromisoformat(result["TimePeriod"]["Start"][:10])
                    groups = result.get("Groups") or []
                    for g in groups:
                        keys = g["Keys"]
                        metric = g["Metrics"][self.cfg.cost_metric]
                        amount = Decimal(str(metric["Amount"]))
                        unit = str(metric.get("Unit") or "")
                        if not isinstance(keys, list) or len(keys) != 2 or not amount.is_finite():
                            raise ValueError("bad group")
                        out.append((day, [str(k) for k in keys], amount, unit))
                except (KeyError, TypeError, ValueError, InvalidOperation, AttributeError) as e:
                    raise SourceError(
                        f"GetCostAndUsage: malformed result in response ({e.__class__.__name__})"
                    ) from None
        if not found:
            raise SourceError(f"Cost Explorer pages of the {query} query of account {account} are missing")
        return out

    # -- extra labels (attribution.labels) ----------------------------------------------------------
    def _tag_values(
        self, ce: Any, raw: RawFetch, account: str, period: dict[str, str], acct_filter: str | None, key: str
    ) -> list[str]:
        """The values tag ``key`` has in the period's cost data (``GetTags``, paid, per page), empty ones left out."""
        params: dict[str, Any] = {"TimePeriod": period, "TagKey": key}
        flt = self._filter(acct_filter)
        if flt is not None:
            params["Filter"] = flt
        values: set[str] = set()
        for page in self._paged("GetTags", ce.get_tags, "Tags", raw, {"account": account, "tag_key": key}, **params):
            values.update(v for v in page["Tags"] if isinstance(v, str) and v)
        return sorted(values)

    def _label_choices(
        self, ce: Any, raw: RawFetch, account: str, period: dict[str, str], acct_filter: str | None
    ) -> list[list[LabelChoice]]:
        """For each extra label, its values as (name, value, filter expressions): ``Tags key = value``, and for a
        second tag key, none of the first key's values (the first key present wins, as everywhere)."""
        out = []
        for name, keys in self.ctx.extra_labels:
            choices: list[LabelChoice] = []
            earlier: list[dict[str, Any]] = []
            for key in keys:
                values = self._tag_values(ce, raw, account, period, acct_filter, key)
                for v in values:
                    eq = {"Tags": {"Key": key, "Values": [v], "MatchOptions": ["EQUALS"]}}
                    choices.append((name, v, [eq, *earlier], []))
                if values:
                    earlier.append({"Not": {"Tags": {"Key": key, "Values": values, "MatchOptions": ["EQUALS"]}}})
            out.append(choices)
        return out

    def _query_cells(
        self,
        ce: Any,
        raw: RawFetch,
        account: str,
        query: str,
        period: dict[str, str],
        group_by: list[dict[str, str]],
        acct_filter: str | None,
        choices: list[list[LabelChoice]],
        *extra: dict[str, Any],
    ) -> None:
        """Every query ``_cells`` reads, into ``raw``: the query as it is, and once per combination of extra-label
        values, filtered on them (Cost Explorer groups by two keys at most: the service or usage type, and the
        team tag)."""

        def run(exprs: list[Any]) -> None:
            flt = self._filter(acct_filter, *extra, *exprs)
            self._groups(ce, raw, _query_meta(account, query, exprs), period, group_by, flt)

        query_cells(choices, run)

    def _cells(
        self, raw: RawFetch, account: str, query: str, choices: list[list[LabelChoice]]
    ) -> dict[Labels, dict[tuple[dt.date, tuple[str, ...], str], Decimal]]:
        """The query's groups split exactly by the extra labels' values, from the pages ``_query_cells`` kept.

        A cell where a label has none of its tag values is what its "any" query holds beyond the cells with a
        value there: computed, never guessed (``split_by_labels``).
        """

        def run(exprs: list[Any]) -> dict[tuple[dt.date, tuple[str, ...], str], Decimal]:
            sums: dict[tuple[dt.date, tuple[str, ...], str], Decimal] = defaultdict(Decimal)
            for day, keys, amount, unit in self._group_rows(raw, account, query, exprs):
                sums[(day, tuple(keys), unit)] += amount
            return sums

        return split_by_labels(choices, run)

    def _team(self, tag_key: str) -> str | None:
        prefix = f"{self.cfg.team_tag_key}$"
        value = tag_key[len(prefix) :] if tag_key.startswith(prefix) else tag_key.partition("$")[2]
        return value or None

    def fetch(self, window: FetchWindow) -> FetchResult:
        if not window.days():
            return FetchResult(days=[])
        ce, sts = self._clients()
        period = {"Start": window.start.isoformat(), "End": (window.end + dt.timedelta(days=1)).isoformat()}
        raw = RawFetch()
        names: dict[str, str] = {}
        if self.cfg.group_by_account:
            accounts = self._linked_accounts(ce, window, period, raw)
            names = {a: n for a, n in accounts if n}
            targets: list[tuple[str, str | None]] = [(a, a) for a, _ in accounts]
        else:
            targets = [(self._caller_account(sts), None)]
        # the accounts may come from an earlier refresh (no call this time): parse must know them all the same
        raw.context = {"targets": [list(t) for t in targets], "names": names}

        tag = {"Type": "TAG", "Key": self.cfg.team_tag_key}
        raw.context["choices"] = {}
        for account_id, acct_filter in targets:
            choices = self._label_choices(ce, raw, account_id, period, acct_filter)
            raw.context["choices"][account_id] = choices
            by_service = [{"Type": "DIMENSION", "Key": "SERVICE"}, tag]
            self._query_cells(ce, raw, account_id, "service", period, by_service, acct_filter, choices)
            rows = self._group_rows(raw, account_id, "service")
            if self.cfg.bedrock_models and any(keys[0] == BEDROCK_SERVICE for _, keys, _, _ in rows):
                only_bedrock = {"Dimensions": {"Key": "SERVICE", "Values": [BEDROCK_SERVICE]}}
                by_usage = [{"Type": "DIMENSION", "Key": "USAGE_TYPE"}, tag]
                self._query_cells(
                    ce, raw, account_id, "bedrock_usage_type", period, by_usage, acct_filter, choices, only_bedrock
                )
        if self.cfg.forecast and not window.history:
            self._forecasts(ce, window, targets, raw)
        return self.parse(window, raw)

    def parse(self, window: FetchWindow, raw: RawFetch) -> FetchResult:
        """The records of the pages ``fetch`` kept (live or from the cache); no API call."""
        days = window.days()
        if not days:
            return FetchResult(days=[], raw=raw)
        try:
            targets = [(str(a), None if f is None else str(f)) for a, f in raw.context["targets"]]
            names = {str(a): str(n) for a, n in raw.context["names"].items()}
            choices_of = {str(a): choices_from_context(ch) for a, ch in raw.context.get("choices", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            raise SourceError("Cost Explorer pages without the accounts they were fetched for") from None
        totals: dict[tuple[Labels, CostKey], Decimal] = defaultdict(Decimal)
        newest: dt.date | None = None
        for account_id, _filter in targets:
            choices = choices_of.get(account_id, [])
            cells = self._cells(raw, account_id, "service", choices)
            bedrock = self.cfg.bedrock_models and any(
                keys[0] == BEDROCK_SERVICE for rows in cells.values() for (_, keys, _) in rows
            )
            for labels, rows in cells.items():
                for (day, (service, tag_value), unit), amount in rows.items():
                    if not window.start <= day <= window.end or (bedrock and service == BEDROCK_SERVICE):
                        continue
                    model = bedrock_edition_model(service)
                    totals[(labels, (day, account_id, service, self._team(tag_value), model, unit))] += amount
                    newest = day if newest is None or day > newest else newest
            if bedrock:
                for labels, rows in self._cells(raw, account_id, "bedrock_usage_type", choices).items():
                    for (day, (usage_type, tag_value), unit), amount in rows.items():
                        if not window.start <= day <= window.end:
                            continue
                        model = bedrock_model(usage_type)
                        totals[(labels, (day, account_id, BEDROCK_SERVICE, self._team(tag_value), model, unit))] += (
                            amount
                        )
                        newest = day if newest is None or day > newest else newest

        costs = labelled_cost_records(PROVIDER, totals, "USD")
        forecasts = self._parse_forecasts(window, targets, raw) if self.cfg.forecast and not window.history else None
        data_through = min(utc_midnight(newest, 1), window.now) if newest is not None else None
        return FetchResult(
            days=days,
            costs=costs,
            accounts=[AccountInfo(PROVIDER, a, n) for a, n in sorted(names.items())],
            forecasts=forecasts,
            data_through=data_through,
            raw=raw,
        )

    # -- forecast -------------------------------------------------------------------------------
    @staticmethod
    def _forecast_period(window: FetchWindow) -> tuple[dt.date, dt.date]:
        # From tomorrow: today is already in month-to-date (partially), and Cost Explorer
        # rejects a forecast that starts in the past.
        today = window.now.astimezone(dt.UTC).date()
        start = today + dt.timedelta(days=1)
        month_end = today.replace(day=calendar.monthrange(today.year, today.month)[1]) + dt.timedelta(days=1)
        return start, month_end

    def _forecasts(self, ce: Any, window: FetchWindow, targets: list[tuple[str, str | None]], raw: RawFetch) -> None:
        start, month_end = self._forecast_period(window)
        if start >= month_end:
            return
        for account_id, acct_filter in targets:
            params: dict[str, Any] = {
                "TimePeriod": {"Start": start.isoformat(), "End": month_end.isoformat()},
                "Metric": FORECAST_METRIC[self.cfg.cost_metric],
                "Granularity": "MONTHLY",
            }
            flt = self._filter(acct_filter)
            if flt is not None:
                params["Filter"] = flt
            try:
                resp = self._call("GetCostForecast", ce.get_cost_forecast, CE_REQUEST_COST_USD, **params)
            except SourceError as e:
                if "DataUnavailableException" in str(e):
                    # too little history to forecast (a new account): no forecast, not a failed refresh
                    self.ctx.log.info("no Cost Explorer forecast for account %s: %s", account_id, e)
                    continue
                raise
            raw.add("GetCostForecast", _request("GetCostForecast", params), _body(resp), account=account_id)

    def _parse_forecasts(
        self, window: FetchWindow, targets: list[tuple[str, str | None]], raw: RawFetch
    ) -> list[ProviderForecast]:
        start, month_end = self._forecast_period(window)
        if start >= month_end:
            return [ProviderForecast(PROVIDER, account_id, 0.0) for account_id, _ in targets]
        out = []
        for page in raw.pages:
            if page.operation != "GetCostForecast":
                continue
            try:
                total = page.body["Total"]
                amount = Decimal(str(total["Amount"]))
                unit = str(total.get("Unit") or "USD")
                if not amount.is_finite():
                    raise ValueError("not finite")
                account_id = str(page.meta["account"])
            except (KeyError, TypeError, ValueError, InvalidOperation) as e:
                raise SourceError(f"GetCostForecast: malformed response ({e.__class__.__name__})") from None
            out.append(ProviderForecast(PROVIDER, account_id, float(amount), unit))
        return out


def _request(operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """A Cost Explorer request as kept with its page: the API call and its parameters (no credentials in them)."""
    return {"method": "POST", "operation": f"ce:{operation}", "params": params}


def _body(response: dict[str, Any]) -> dict[str, Any]:
    """A boto3 response as kept: the service's data, without the transport's metadata (request id, headers)."""
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


def _query_meta(account: str, query: str, cell: list[Any] | None) -> dict[str, Any]:
    """How a GetCostAndUsage page is marked in the raw fetch: account, query, and its extra-label filter if any (a
    source without extra labels keeps the marks it had before them, so that its kept fetches still replay)."""
    return {"account": account, "query": query, **({"cell": cell} if cell else {})}
