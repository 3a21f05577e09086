"""Azure Cost Management source (``azure-mgmt-costmanagement`` + ``azure-identity``).

For each configured scope one refresh posts a ``query.usage`` (Custom time
period, Daily granularity, cost summed, grouped by ``ServiceName`` and the
team ``TagKey``), follows ``nextLink`` by posting the same query again with
its ``$skiptoken``, breaks Azure OpenAI down by meter to fill ``model``, and
asks ``forecast.usage`` for the rest of the month. Columns are read by name.

Cost Management is free but rate limited per scope and per tenant. A 429
carries ``x-ms-ratelimit-microsoft.costmanagement-*-retry-after`` headers and
no ``Retry-After``; the SDK's own retries are switched off and this module
honours those headers itself, a bounded number of times.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import ipaddress
import os
import time
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.rest import HttpRequest
from azure.mgmt.costmanagement import CostManagementClient
from azure.mgmt.costmanagement.models import (
    ForecastAggregation,
    ForecastDataset,
    ForecastDefinition,
    ForecastTimePeriod,
    QueryAggregation,
    QueryComparisonExpression,
    QueryDataset,
    QueryDefinition,
    QueryFilter,
    QueryGrouping,
    QueryTimePeriod,
)

from exporter import __version__
from exporter.model import AccountInfo, FetchResult, FetchWindow, ProviderForecast, RawFetch
from exporter.providers.azure_results import (
    AZURE_OPENAI_SERVICES,
    Table,
    openai_model,
    retry_after,
    scope_account,
    skiptoken,
    subscription_id,
)
from exporter.providers.base import (
    CostKey,
    LabelChoice,
    Labels,
    ProviderContext,
    RetryPolicy,
    SourceError,
    Throttled,
    choices_from_context,
    labelled_cost_records,
    paginate,
    query_cells,
    split_by_labels,
    utc_midnight,
)
from exporter.sources.azure import AzureSource

PROVIDER = "azure"
CLIENT_TYPE = "spend-exporter"
"""Sent as the ``ClientType`` header: Cost Management keeps a rate-limit bucket per client type."""
ARM_SCOPE = "https://management.azure.com/.default"
SUBSCRIPTIONS_API_VERSION = "2022-12-01"
NAME_CACHE = dt.timedelta(days=1)


def _credential(kind: str) -> Any:
    from azure.identity import (
        AzureCliCredential,
        DefaultAzureCredential,
        EnvironmentCredential,
        ManagedIdentityCredential,
        WorkloadIdentityCredential,
    )

    if kind == "cli":
        return AzureCliCredential(process_timeout=30)
    if kind == "environment":
        return EnvironmentCredential()
    if kind == "managed_identity":
        # a user-assigned identity is named by AZURE_CLIENT_ID, as DefaultAzureCredential reads it
        return ManagedIdentityCredential(client_id=os.environ.get("AZURE_CLIENT_ID") or None)
    if kind == "workload_identity":
        return WorkloadIdentityCredential()
    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


def _loopback_http(url: str | None) -> bool:
    """A plain-http base_url on this host (a local proxy or emulator) may carry the bearer token."""
    if not url:
        return False
    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AzureProvider:
    """Azure Cost Management: daily cost per scope by service and team tag, plus the scope's forecast."""

    def __init__(self, config: AzureSource, ctx: ProviderContext, sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg = config
        self.ctx = ctx
        self._sleep = sleep
        self._retry = RetryPolicy.from_settings(config)
        self._credential = _credential(config.credential)
        self._client = CostManagementClient(
            self._credential,
            base_url=config.base_url or None,
            retry_total=0,  # 429s are ours to honour (see _call); other failures fail the refresh
            user_agent=f"spend-exporter/{__version__}",
        )
        self._insecure_ok = _loopback_http(config.base_url)
        self._names: dict[str, tuple[str, dt.datetime]] = {}

    def close(self) -> None:
        self._client.close()
        close = getattr(self._credential, "close", None)
        if callable(close):
            close()

    # -- calls --------------------------------------------------------------------------------
    def _options(self) -> dict[str, Any]:
        timeout = max(min(self.cfg.timeout, self.ctx.remaining_seconds(self.cfg.timeout)), 1.0)
        opts: dict[str, Any] = {
            "headers": {"ClientType": CLIENT_TYPE},
            "connection_timeout": min(timeout, 10.0),
            "read_timeout": timeout,
        }
        if self._insecure_ok:
            opts["enforce_https"] = False
        return opts

    def _call(self, operation: str, fn: Callable[[], Any]) -> Any:
        """One request through the context; 429s are retried after the wait the service names."""

        def attempt() -> Any:
            try:
                return fn()
            except ClientAuthenticationError as e:
                status = getattr(e, "status_code", None)
                where = f"HTTP {status}" if status else f"credential {self.cfg.credential!r}"
                raise SourceError(f"{operation}: authentication failed ({where}): {_first_line(e)}") from None
            except DecodeError:
                raise SourceError(f"{operation}: malformed response (not JSON)") from None
            except HttpResponseError as e:
                status = e.status_code
                if status == 429:
                    headers = getattr(e.response, "headers", None) or {}
                    raise Throttled(
                        f"{operation}: throttled by Cost Management (429)",
                        retry_after=retry_after(headers),
                    ) from None
                raise SourceError(f"{operation} failed: HTTP {status}: {_first_line(e)}") from None
            except (ServiceRequestError, ServiceResponseError) as e:
                raise SourceError(f"{operation} failed: {e.__class__.__name__}: {_first_line(e)}") from None
            except AzureError as e:
                raise SourceError(f"{operation} failed: {e.__class__.__name__}: {_first_line(e)}") from None
            except (ValueError, TypeError) as e:
                raise SourceError(f"{operation}: malformed response ({e.__class__.__name__})") from None

        return self.ctx.call(operation, attempt, self._retry, sleep=self._sleep)

    def _pages(self, raw: RawFetch, operation: str, run: Callable[..., Any], **meta: Any) -> None:
        """Every page of a query into ``raw`` (marked with ``meta``): the same body posted again with each
        nextLink's $skiptoken. Each page is the response's JSON, through the SDK's ``cls`` hook."""

        def page(token: str | None) -> tuple[None, str | None]:
            params = {"$skiptoken": token} if token else {}
            request, body = self._call(operation, functools.partial(run, params, cls=_raw_response))
            table = Table(operation, body)  # checked before the next page is asked for
            raw.add(operation, request, body, **meta)
            return None, None if table.next_link is None else skiptoken(operation, table.next_link)

        for _ in paginate(operation, page):
            pass

    def _register_token(self) -> None:
        """Get a token up front: a credential problem gets a clear message, and the token is scrubbed from errors."""
        try:
            token = self._credential.get_token(ARM_SCOPE)
        except ClientAuthenticationError as e:  # CredentialUnavailableError included
            raise SourceError(
                f"Azure credential {self.cfg.credential!r} could not get a token: {_first_line(e)}"
            ) from None
        self.ctx.register_secret(token.token)

    # -- queries --------------------------------------------------------------------------------
    def _query(
        self,
        raw: RawFetch,
        scope: str,
        window: FetchWindow,
        group: QueryGrouping,
        service: str | None = None,
        cell: list[Any] | None = None,
        tag_key: str | None = None,
    ) -> None:
        """Every page of one scope's query, grouped by ``group`` (and the team tag), into ``raw``.

        ``cell``: filtered on these tags too (the extra labels: ``{"tag": key, "values": [...]}`` each);
        ``tag_key``: grouped by this tag instead of the team's (the extra labels' values)."""
        col = self.cfg.cost_column
        dataset = QueryDataset(
            granularity="Daily",
            aggregation={col: QueryAggregation(name=col, function="Sum")},
            grouping=[group, QueryGrouping(type="TagKey", name=tag_key or self.cfg.team_tag_key)],
        )
        parts = [
            QueryFilter(tags=QueryComparisonExpression(name=e["tag"], operator="In", values_property=list(e["values"])))
            for e in cell or []
        ]
        if service is not None:
            parts.append(
                QueryFilter(
                    dimensions=QueryComparisonExpression(name="ServiceName", operator="In", values_property=[service])
                )
            )
        if parts:
            dataset.filter = parts[0] if len(parts) == 1 else QueryFilter(and_property=parts)
        definition = QueryDefinition(
            type=self.cfg.cost_type,
            timeframe="Custom",
            time_period=QueryTimePeriod(
                from_property=utc_midnight(window.start),
                to=dt.datetime.combine(window.end, dt.time(23, 59, 59), tzinfo=dt.UTC),
            ),
            dataset=dataset,
        )
        path = scope.strip().strip("/")

        def run(params: dict[str, str], **kw: Any) -> Any:
            return self._client.query.usage(path, definition, params=params, **kw, **self._options())

        self._pages(raw, "query.usage", run, **_query_meta(scope, group.name, service, cell, tag_key))

    def _query_rows(
        self,
        raw: RawFetch,
        scope: str,
        group: str,
        service: str | None = None,
        cell: list[Any] | None = None,
        tag_key: str | None = None,
    ) -> list[tuple[dt.date, str, str | None, Decimal, str]]:
        """Rows of (day, group value, team tag, amount, currency) of one scope's query, from its pages (``cell``,
        ``tag_key``: as ``_query``; then the tag is that key's value); pages missing for it are an error."""
        col = self.cfg.cost_column
        op = "query.usage"
        want = _query_meta(scope, group, service, cell, tag_key)
        tag_key = tag_key or self.cfg.team_tag_key
        out = []
        found = False
        for page in raw.pages:
            if page.operation != op or page.meta != want:
                continue
            found = True
            t = Table(op, page.body)
            if not t.rows:
                continue
            cost = t.cost_columns(op, col)
            i_group = t.index(op, group)
            i_tagkey, i_tagval = t.maybe("TagKey"), t.maybe("TagValue")
            i_tagcol = t.maybe(tag_key) if i_tagval is None else None
            if i_tagval is None and i_tagcol is None:
                raise SourceError(f"{op}: response has no TagValue column")
            for r in t.rows:
                day, amount, currency = cost.read(op, r)
                if not currency:
                    raise SourceError(f"{op}: malformed row (no currency)")
                if i_tagval is not None:
                    key = str(r[i_tagkey] or "") if i_tagkey is not None else tag_key
                    value = r[i_tagval]
                    team = str(value) if value and key.lower() == tag_key.lower() else None
                else:
                    assert i_tagcol is not None
                    team = str(r[i_tagcol]) if r[i_tagcol] else None
                out.append((day, str(r[i_group] or ""), team, amount, currency))
        if not found:
            raise SourceError(f"{op}: the pages of a query of {scope} are missing")
        return out

    # -- extra labels (attribution.labels) ----------------------------------------------------------
    def _label_choices(self, raw: RawFetch, scope: str, window: FetchWindow) -> list[list[LabelChoice]]:
        """For each extra label, its values in the scope: one query grouped by the tag key per key (free, rate
        limited). Filters have no ``not``, so a second key's value excludes the first key's values by
        inclusion-exclusion (``split_by_labels``). Expressions are ``{"tag": key, "values": [...]}``."""
        out = []
        by_service = QueryGrouping(type="Dimension", name="ServiceName")
        for name, keys in self.ctx.extra_labels:
            choices: list[LabelChoice] = []
            earlier: list[dict[str, Any]] = []
            for key in keys:
                self._query(raw, scope, window, by_service, tag_key=key)
                rows = self._query_rows(raw, scope, "ServiceName", tag_key=key)
                values = sorted({str(tag).strip() for _, _, tag, _, _ in rows if tag and str(tag).strip()})
                for v in values:
                    choices.append((name, v, [{"tag": key, "values": [v]}], list(earlier)))
                if values:
                    earlier.append({"tag": key, "values": values})
            out.append(choices)
        return out

    def _query_cells(
        self,
        raw: RawFetch,
        scope: str,
        window: FetchWindow,
        group: QueryGrouping,
        choices: list[list[LabelChoice]],
        service: str | None = None,
    ) -> None:
        """Every query ``_cells`` reads, into ``raw``: Cost Management groups by two keys at most (here the service
        or meter, and the team tag), so each combination of extra-label values is one more filtered query."""
        query_cells(choices, lambda exprs: self._query(raw, scope, window, group, service, cell=exprs))

    def _cells(
        self, raw: RawFetch, scope: str, group: str, choices: list[list[LabelChoice]], service: str | None = None
    ) -> dict[Labels, dict[tuple[dt.date, str, str | None, str], Decimal]]:
        """The query's groups split exactly by the extra labels' values, from the pages ``_query_cells`` kept."""

        def run(exprs: list[Any]) -> dict[tuple[dt.date, str, str | None, str], Decimal]:
            sums: dict[tuple[dt.date, str, str | None, str], Decimal] = defaultdict(Decimal)
            for day, value, team, amount, currency in self._query_rows(raw, scope, group, service, cell=exprs):
                sums[(day, value, team, currency)] += amount
            return sums

        return split_by_labels(choices, run)

    @staticmethod
    def _forecast_days(window: FetchWindow) -> tuple[dt.date, dt.date]:
        """First and last day the forecast covers: tomorrow to the month's end."""
        today = window.now.astimezone(dt.UTC).date()
        return today + dt.timedelta(days=1), today.replace(day=calendar.monthrange(today.year, today.month)[1])

    def _forecast(self, raw: RawFetch, scope: str, window: FetchWindow) -> None:
        """Every page of the scope's forecast of the rest of the month into ``raw`` (none if no day remains)."""
        start, last = self._forecast_days(window)
        if start > last:
            return
        col = self.cfg.cost_column
        definition = ForecastDefinition(
            type=self.cfg.cost_type,
            timeframe="Custom",
            time_period=ForecastTimePeriod(
                from_property=utc_midnight(start),
                to=dt.datetime.combine(last, dt.time(23, 59, 59), tzinfo=dt.UTC),
            ),
            dataset=ForecastDataset(
                granularity="Daily", aggregation={col: ForecastAggregation(name=col, function="Sum")}
            ),
            include_actual_cost=False,
            include_fresh_partial_cost=False,
        )
        path = scope.strip().strip("/")

        def run(params: dict[str, str], **kw: Any) -> Any:
            return self._client.forecast.usage(path, definition, params=params, **kw, **self._options())

        self._pages(raw, "forecast.usage", run, scope=scope)

    def _forecast_total(self, raw: RawFetch, scope: str, window: FetchWindow) -> tuple[Decimal, str] | None:
        """What is still to come this month in the scope, and its currency ("" if no day remains); None: no forecast."""
        start, last = self._forecast_days(window)
        if start > last:
            return Decimal(0), ""
        col = self.cfg.cost_column
        op = "forecast.usage"
        total = Decimal(0)
        currencies: set[str] = set()
        for page in raw.pages:
            if page.operation != op or page.meta != {"scope": scope}:
                continue
            t = Table(op, page.body)
            if not t.rows:
                continue
            cost = t.cost_columns(op, col)
            i_status = t.maybe("CostStatus")
            for r in t.rows:
                day, amount, currency = cost.read(op, r)
                if i_status is not None and str(r[i_status]).lower() != "forecast":
                    continue
                if start <= day <= last:
                    total += amount
                    currencies.add(currency)
        if not currencies:
            return None  # too little history: Cost Management forecasts nothing
        if len(currencies) > 1 or "" in currencies:
            raise SourceError(f"{op}: forecast for {scope} is not in one currency ({sorted(currencies)})")
        return total, currencies.pop()

    def _subscription_name(self, subscription: str, now: dt.datetime) -> str | None:
        cached = self._names.get(subscription)
        if cached is not None and now - cached[1] < NAME_CACHE:
            return cached[0]
        request = HttpRequest(
            "GET", f"/subscriptions/{subscription}", params={"api-version": SUBSCRIPTIONS_API_VERSION}
        )
        try:
            response = self._call("subscriptions.get", lambda: self._client.send_request(request, **self._options()))
            if response.status_code != 200:
                raise SourceError(f"subscriptions.get: HTTP {response.status_code}")
            name = response.json().get("displayName")
        except (SourceError, ValueError, AttributeError) as e:
            # a name is a label, not data: without Microsoft.Resources/subscriptions/read the costs still count
            self.ctx.log.warning("no display name for subscription %s: %s", subscription, e)
            return cached[0] if cached else None
        if not isinstance(name, str) or not name:
            return None
        self._names[subscription] = (name, now)
        return name

    # -- fetch --------------------------------------------------------------------------------
    def fetch(self, window: FetchWindow) -> FetchResult:
        if not window.days():
            return FetchResult(days=[])
        self._register_token()
        raw = RawFetch()
        names: dict[str, str] = {}
        choices_of: dict[str, list[list[LabelChoice]]] = {}
        for scope in self.cfg.scopes:
            choices = choices_of[scope] = self._label_choices(raw, scope, window)
            self._query_cells(raw, scope, window, QueryGrouping(type="Dimension", name="ServiceName"), choices)
            if self.cfg.openai_models:
                services = {svc for _, svc, _, _, _ in self._query_rows(raw, scope, "ServiceName")}
                for svc in sorted(services & set(AZURE_OPENAI_SERVICES)):
                    meter = QueryGrouping(type="Dimension", name="Meter")
                    self._query_cells(raw, scope, window, meter, choices, svc)
            subscription = subscription_id(scope)
            if subscription is not None:
                name = self._subscription_name(subscription, window.now)
                if name:
                    names[scope_account(scope)] = name
            if self.cfg.forecast and not window.history:
                self._forecast(raw, scope, window)
        # a subscription's name may come from an earlier refresh (no call this time): parse must know it
        raw.context = {"names": names, "choices": choices_of}
        return self.parse(window, raw)

    def parse(self, window: FetchWindow, raw: RawFetch) -> FetchResult:
        """The records of the pages ``fetch`` kept (live or from the cache); no API call."""
        days = window.days()
        if not days:
            return FetchResult(days=[], raw=raw)
        names = raw.context.get("names")
        if not isinstance(names, dict):
            raise SourceError("Cost Management pages without the subscription names they were fetched with")
        try:
            choices_of = {str(scope): choices_from_context(ch) for scope, ch in raw.context.get("choices", {}).items()}
        except (TypeError, ValueError, AttributeError, IndexError):
            raise SourceError("Cost Management pages without the extra labels' values they were fetched with") from None
        totals: dict[tuple[Labels, CostKey], Decimal] = defaultdict(Decimal)
        newest: dt.date | None = None
        forecasts: dict[str, list[tuple[Decimal, str]]] = defaultdict(list)
        for scope in self.cfg.scopes:
            account = scope_account(scope)
            choices = choices_of.get(scope, [])
            by_service = self._cells(raw, scope, "ServiceName", choices)
            ai = set()
            if self.cfg.openai_models:
                ai = {k[1] for cell in by_service.values() for k in cell if k[1] in AZURE_OPENAI_SERVICES}
            for labels, cell in by_service.items():
                for (day, service, team, currency), amount in cell.items():
                    if window.start <= day <= window.end and service not in ai:
                        totals[(labels, (day, account, service, team, "", currency))] += amount
                        newest = day if newest is None or day > newest else newest
            for svc in sorted(ai):
                for labels, cell in self._cells(raw, scope, "Meter", choices, svc).items():
                    for (day, meter, team, currency), amount in cell.items():
                        if window.start <= day <= window.end:
                            totals[(labels, (day, account, svc, team, openai_model(meter), currency))] += amount
                            newest = day if newest is None or day > newest else newest
            if self.cfg.forecast and not window.history:
                forecast = self._forecast_total(raw, scope, window)
                if forecast is not None:
                    forecasts[account].append(forecast)

        provider_forecasts = None
        if self.cfg.forecast and not window.history:
            provider_forecasts = []
            for account, parts in sorted(forecasts.items()):
                currencies = {c for _, c in parts if c}
                if len(currencies) > 1:
                    raise SourceError(f"forecast.usage: scopes of {account} forecast in several currencies")
                # no day left: zero, in the currency the account's costs came in
                seen = sorted({k[5] for _, k in totals if k[1] == account})
                currency = currencies.pop() if currencies else (seen[0] if len(seen) == 1 else "USD")
                total = sum((a for a, _ in parts), Decimal(0))
                provider_forecasts.append(ProviderForecast(PROVIDER, account, float(total), currency))
        costs = labelled_cost_records(PROVIDER, totals)
        data_through = min(utc_midnight(newest, 1), window.now) if newest is not None else None
        return FetchResult(
            days=days,
            costs=costs,
            accounts=[AccountInfo(PROVIDER, str(a), str(n)) for a, n in sorted(names.items())],
            forecasts=provider_forecasts,
            data_through=data_through,
            raw=raw,
        )


def _query_meta(
    scope: str, group: str, service: str | None, cell: list[Any] | None, tag_key: str | None
) -> dict[str, Any]:
    """How a query's page is marked in the raw fetch (a source without extra labels keeps the marks it had before
    them, so that its kept fetches still replay)."""
    meta: dict[str, Any] = {"scope": scope, "group": group, "service": service}
    if cell:
        meta["cell"] = cell
    if tag_key:
        meta["tag_key"] = tag_key
    return meta


def _raw_response(pipeline_response: Any, deserialized: Any, headers: Any) -> tuple[dict[str, Any], Any]:
    """The SDK's ``cls`` hook: the request as kept (method and URL) and the response's JSON (None for a 204)."""
    request = pipeline_response.http_request
    response = pipeline_response.http_response
    body = response.json() if response.status_code == 200 else None
    return {"method": request.method, "url": str(request.url)}, body


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "message", None) or e).strip()
    return text.splitlines()[0][:500] if text else e.__class__.__name__
