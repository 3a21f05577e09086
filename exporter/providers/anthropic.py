"""Anthropic: organization costs and token usage through the Admin API.

Calls, all through the ``anthropic`` SDK's client (``client.get`` for the
reports, which the SDK does not wrap), with the admin key in ``x-api-key``
and ``anthropic-version: 2023-06-01``:

- ``GET /v1/organizations/cost_report``, daily buckets grouped by
  ``workspace_id`` and ``description``: amounts are decimal strings in
  **cents** (converted to USD here); ``model`` and ``token_type`` come with
  the description grouping; ``cost_type`` names non-token costs
  (``web_search``, ``code_execution``, …), which become their own
  ``service_name`` with no model.
- ``GET /v1/organizations/usage_report/messages``, daily buckets grouped by
  ``model``, ``workspace_id`` and ``api_key_id``, and hourly buckets of the
  last 24 complete hours, whose newest one the runaway-burn detector prices.
- the same report for the burn rate (``fetch_minutes``): minute buckets
  (``bucket_width=1m``) of the last ``burn_window`` that ends ``burn_delay``
  before now, grouped the same way; one request, plus the workspace listing
  (for team tags) at most once an hour.
- ``client.organization.api_keys.list`` (``GET /v1/organizations/api_keys``, 1000 keys a page): the API keys'
  names for ``spend_ai_key_info``. A key belongs to the workspace its usage is reported under; a key without
  usage in the window, to its scope's workspace, or ``default`` for the default workspace (the list gives its
  real id, which the reports never use) and for organization-scoped keys.
- ``client.organization.workspaces.list``: workspace names (and tags: a tag
  named by ``attribution.team_tag_keys`` is the team tag) for
  ``spend_account_info`` and team rules.

``account_id`` is the workspace id; the reports give a null workspace for the
organization's default workspace, exported as ``account_id="default"``.
Token usage is the Messages API's (``service_name="messages"``):
``uncached_input_tokens`` → input, ``cache_read_input_tokens`` → cache_read,
``cache_creation.ephemeral_5m_input_tokens`` → cache_write,
``ephemeral_1h_input_tokens`` → cache_write_1h (priced at the 1-hour rate),
``output_tokens`` → output. The usage report has no request
count, so ``requests`` is 0. The daily usage by API key is kept too (``FetchResult.key_usage``): the cost report
has no API-key grouping, so the snapshot splits each workspace's billed cost of a model across its keys
(``exporter.keycost``).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, cast

import anthropic

from exporter.model import (
    AccountInfo,
    ApiKeyInfo,
    CostRecord,
    FetchResult,
    FetchWindow,
    HourlyUsage,
    KeyUsage,
    MinuteUsage,
    MinuteUsageResult,
    RawFetch,
    UsageRecord,
    burn_bounds,
)
from exporter.providers.admin_api import AdminApi, add_tokens
from exporter.providers.base import ProviderContext, utc_midnight
from exporter.sources.anthropic import AnthropicSource

PROVIDER = "anthropic"
API_VERSION = "2023-06-01"
DEFAULT_WORKSPACE = "default"
DEFAULT_WORKSPACE_NAME = "Default Workspace"
SERVICE = "messages"
UTC = dt.UTC
COST_PAGE_LIMIT = 31  # buckets per page: the API's maxima
API_KEYS_PAGE_LIMIT = 1000
USAGE_DAILY_PAGE_LIMIT = 31
TAGS_MAX_AGE = 3600.0  # the burn fetch lists workspaces (their team tags) again after this long
HOURLY_HOURS = 24  # hourly buckets kept: the last complete hour is priced; series of the last day stay visible
COST_TYPE_SERVICE = {"tokens": SERVICE}  # other cost types (web_search, code_execution, ...) keep their name


def rfc3339(t: dt.datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> dt.datetime:
    if not isinstance(value, str):
        raise TypeError("timestamp is not a string")
    t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC)


def cents_to_usd(amount: Any) -> float:
    """The cost report's amount (cents, as a decimal string) in USD."""
    if not isinstance(amount, str | int | float) or isinstance(amount, bool):
        raise TypeError("amount is not a decimal string")
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        raise ValueError(f"amount {amount!r} is not a decimal") from None
    if not value.is_finite():
        raise ValueError(f"amount {amount!r} is not finite")
    return float(value / 100)


def usage_tokens(r: Mapping[str, Any]) -> dict[str, int]:
    """Token counts of one messages usage result, by the exporter's token types."""
    creation = r.get("cache_creation")
    if isinstance(creation, Mapping):
        cache_write = int(creation.get("ephemeral_5m_input_tokens") or 0)
        cache_write_1h = int(creation.get("ephemeral_1h_input_tokens") or 0)
    else:  # responses from before the TTL split: every write was a 5-minute one
        cache_write = int(r.get("cache_creation_input_tokens") or 0)
        cache_write_1h = 0
    return {
        "input": int(r["uncached_input_tokens"]),
        "output": int(r["output_tokens"]),
        "cache_read": int(r.get("cache_read_input_tokens") or 0),
        "cache_write": cache_write,
        "cache_write_1h": cache_write_1h,
    }


def _check_report(body: Any) -> None:
    """The fields pagination and parsing rely on; a TypeError or KeyError when one is missing."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise TypeError
    if not isinstance(body.get("has_more"), bool):
        raise TypeError
    for bucket in body["data"]:
        parse_time(bucket["starting_at"])
        parse_time(bucket["ending_at"])
        if not isinstance(bucket["results"], list) or not all(isinstance(r, dict) for r in bucket["results"]):
            raise TypeError


class AnthropicProvider:
    """Anthropic Admin API: costs by workspace and model, tokens, and the last complete hour."""

    def __init__(self, config: AnthropicSource, ctx: ProviderContext) -> None:
        self.cfg = config
        self.ctx = ctx
        self.api = AdminApi(
            anthropic,
            "Anthropic",
            config,
            ctx,
            base_error=anthropic.AnthropicError,
            key_hint="an Anthropic admin API key (sk-ant-admin...)",
            permission_hint="the Usage and Cost API needs an admin key, sk-ant-admin...",
        )
        self._client: anthropic.Anthropic | None = None
        self._tags: tuple[float, dict[str, str]] | None = None  # (when listed, team tag by workspace), for the burn

    # -- client ----------------------------------------------------------------------
    def _get_client(self) -> anthropic.Anthropic:
        if self._client is None:
            key = self.api.admin_key()
            # The Admin API documents the key in x-api-key. Passing it as api_key too stops the SDK
            # from looking for credentials in the environment and on disk; the Authorization header
            # that api_key would add is omitted. Default headers are never logged (per-request ones are).
            headers = {"x-api-key": key, "anthropic-version": API_VERSION, "Authorization": anthropic.omit}
            self._client = anthropic.Anthropic(
                api_key=key,
                base_url=self.cfg.base_url,
                max_retries=0,  # 429s are retried by AdminApi.call, honouring retry-after; errors fail the refresh
                timeout=self.cfg.request_timeout,
                default_headers=cast(Mapping[str, str], headers),
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _report(self, raw: RawFetch, operation: str, path: str, params: dict[str, Any]) -> None:
        """Every page of a bucketed report into ``raw`` (``client.get``: the SDK does not wrap the reports)."""
        client = self._get_client()

        def request(token: str | None) -> tuple[tuple[dict[str, Any], dict[str, Any]], bool, Any]:
            query = dict(params, page=token) if token else dict(params)
            body = client.get(path, cast_to=object, options={"params": query, "timeout": self.api.timeout()})
            with self.api.shape(operation):
                _check_report(body)
            page = cast(dict[str, Any], body)
            request = {"method": "GET", "url": str(client.base_url).rstrip("/") + path, "params": query}
            return (request, page), page["has_more"], page.get("next_page")

        for req, page in self.api.reports(operation, request):
            raw.add(operation, req, page)

    # -- the reports ------------------------------------------------------------------
    def _workspaces(self, raw: RawFetch) -> None:
        """Every page of the workspace listing into ``raw``, as the SDK read it (it pages the listing)."""
        workspaces = self._get_client().organization.workspaces

        def first() -> Any:
            return workspaces.list(limit=100, include_archived=True, timeout=self.api.timeout())

        for page in self.api.listing_pages("workspaces", first):
            url = str(self._get_client().base_url).rstrip("/") + "/v1/organizations/workspaces"
            raw.add("workspaces", {"method": "GET", "url": url}, page.to_dict(mode="json"))

    def _accounts(self, raw: RawFetch) -> tuple[list[AccountInfo], dict[str, str]]:
        """Account infos and the team tag of each workspace that has one, from the listing's pages."""
        infos = [AccountInfo(PROVIDER, DEFAULT_WORKSPACE, DEFAULT_WORKSPACE_NAME)]
        tags: dict[str, str] = {}
        with self.api.shape("workspaces"):
            for page in raw.pages:
                if page.operation != "workspaces":
                    continue
                for w in page.body["data"]:
                    wid = str(w["id"])
                    infos.append(AccountInfo(PROVIDER, wid, str(w.get("name") or wid)))
                    labels = w.get("tags")
                    if not isinstance(labels, dict):
                        continue  # absent from older responses
                    for key in self.ctx.team_tag_keys:
                        value = labels.get(key)
                        if value:
                            tags[wid] = str(value)
                            break
        return infos, tags

    def _api_keys(self, workspaces: set[str], used_in: dict[str, str]) -> list[ApiKeyInfo]:
        """Every API key of the organization, with the workspace it is used in (``used_in``) or scoped to."""
        api_keys = self._get_client().organization.api_keys

        def first() -> Any:
            return api_keys.list(limit=API_KEYS_PAGE_LIMIT, timeout=self.api.timeout())

        out = []
        for k in self.api.listing("api_keys", first):
            scoped = getattr(k.scope, "workspace_id", None)
            account = used_in.get(k.id) or (scoped if scoped in workspaces else DEFAULT_WORKSPACE)
            out.append(ApiKeyInfo(PROVIDER, account, k.id, k.name or k.id))
        return out

    def _costs(
        self, window: FetchWindow, raw: RawFetch, tags: dict[str, str]
    ) -> tuple[list[CostRecord], dt.datetime | None]:
        amounts: dict[tuple[dt.date, str, str, str, str], float] = defaultdict(float)
        newest: dt.datetime | None = None
        for page in _bodies(raw, "cost_report"):
            with self.api.shape("cost_report"):
                for bucket in page["data"]:
                    day = parse_time(bucket["starting_at"]).date()
                    if bucket["results"]:
                        end = parse_time(bucket["ending_at"])
                        newest = end if newest is None else max(newest, end)
                    if not window.start <= day <= window.end:
                        continue
                    for r in bucket["results"]:
                        cost_type = r.get("cost_type") or "tokens"
                        service = COST_TYPE_SERVICE.get(cost_type, str(cost_type))
                        account = r.get("workspace_id") or DEFAULT_WORKSPACE
                        currency = str(r.get("currency") or "USD").upper()
                        model = str(r.get("model") or "")
                        amounts[(day, account, service, model, currency)] += cents_to_usd(r["amount"])
        records = [
            CostRecord(
                day=d,
                provider=PROVIDER,
                account_id=a,
                service_name=s,
                amount=v,
                currency=c,
                team_tag=tags.get(a),
                model=m,
            )
            for (d, a, s, m, c), v in sorted(amounts.items())
        ]
        return records, newest

    def _usage(self, raw: RawFetch, starting: str, ending: str, bucket_width: str, limit: int) -> str:
        """Every page of the messages usage report into ``raw``; the operation it is kept under."""
        operation = "usage_report_messages" + {"1h": "_hourly", "1m": "_minutes"}.get(bucket_width, "")
        params = {
            "starting_at": starting,
            "ending_at": ending,
            "bucket_width": bucket_width,
            "group_by": ["model", "workspace_id", "api_key_id"],
            "limit": limit,
        }
        self._report(raw, operation, "/v1/organizations/usage_report/messages", params)
        return operation

    def _usage_rows(
        self, raw: RawFetch, operation: str
    ) -> Iterator[tuple[dt.datetime, dt.datetime, str, str, dict[str, int], str]]:
        """(bucket start, bucket end, account, model, tokens, API key) per result of ``operation``'s pages."""
        for page in _bodies(raw, operation):
            rows = []
            with self.api.shape(operation):
                for bucket in page["data"]:
                    start, end = parse_time(bucket["starting_at"]), parse_time(bucket["ending_at"])
                    for r in bucket["results"]:
                        account = r.get("workspace_id") or DEFAULT_WORKSPACE
                        key = str(r.get("api_key_id") or "")
                        rows.append((start, end, str(account), str(r.get("model") or ""), usage_tokens(r), key))
            yield from rows

    def fetch(self, window: FetchWindow) -> FetchResult:
        starting = rfc3339(utc_midnight(window.start))
        ending = rfc3339(utc_midnight(window.end, 1))
        through = window.last_complete_hour + dt.timedelta(hours=1)
        raw = RawFetch()
        self._workspaces(raw)
        self._report(
            raw,
            "cost_report",
            "/v1/organizations/cost_report",
            {
                "starting_at": starting,
                "ending_at": ending,
                "bucket_width": "1d",
                "group_by": ["workspace_id", "description"],
                "limit": COST_PAGE_LIMIT,
            },
        )
        self._usage(raw, starting, ending, "1d", USAGE_DAILY_PAGE_LIMIT)
        if not window.history:  # days only: the hourly buckets are the refresh's
            self._usage(raw, rfc3339(through - dt.timedelta(hours=HOURLY_HOURS)), rfc3339(through), "1h", HOURLY_HOURS)
        result = self.parse(window, raw)
        # the keys' names (spend_ai_key_info) are not records: listed live, not kept with the pages (names held
        # are never deleted, so a recompute keeps them)
        used_in = {k.api_key_id: k.account_id for k in result.key_usage}
        workspaces = {a.account_id for a in result.accounts}
        result.api_keys = self.api.optional("API key names", lambda: self._api_keys(workspaces, used_in))
        return result

    def parse(self, window: FetchWindow, raw: RawFetch) -> FetchResult:
        """The records of the pages ``fetch`` kept (live or from the cache); no API call."""
        through = window.last_complete_hour + dt.timedelta(hours=1)  # a partial hour is never claimed as held
        accounts, tags = self._accounts(raw)
        costs, newest = self._costs(window, raw, tags)

        daily: dict[tuple[dt.date, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        by_key: dict[tuple[dt.date, str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for b_start, b_end, account, model, tokens, api_key in self._usage_rows(raw, "usage_report_messages"):
            newest = b_end if newest is None else max(newest, b_end)
            day = b_start.date()
            if window.start <= day <= window.end:
                add_tokens(daily[(day, account, model)], tokens)
                add_tokens(by_key[(day, account, model, api_key)], tokens)
        h_start = through - dt.timedelta(hours=HOURLY_HOURS)
        hourly: dict[tuple[dt.datetime, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for b_start, b_end, account, model, tokens, _key in self._usage_rows(raw, "usage_report_messages_hourly"):
            if h_start <= b_start < through:
                newest = b_end if newest is None else max(newest, b_end)
                add_tokens(hourly[(b_start, account, model)], tokens)

        usage = [
            UsageRecord(
                day=day,
                provider=PROVIDER,
                account_id=account,
                service_name=SERVICE,
                model=model,
                tokens=dict(tokens),
                team_tag=tags.get(account),
            )
            for (day, account, model), tokens in sorted(daily.items())
        ]
        hourly_records = [
            HourlyUsage(
                hour_start=b_start,
                provider=PROVIDER,
                account_id=account,
                service_name=SERVICE,
                model=model,
                tokens=dict(tokens),
                team_tag=tags.get(account),
            )
            for (b_start, account, model), tokens in sorted(hourly.items())
        ]
        key_usage = [
            KeyUsage(
                day=day,
                provider=PROVIDER,
                account_id=account,
                service_name=SERVICE,
                model=model,
                api_key_id=api_key,
                tokens=dict(tokens),
                team_tag=tags.get(account),
            )
            for (day, account, model, api_key), tokens in sorted(by_key.items())
        ]
        return FetchResult(
            days=window.days(),
            costs=costs,
            usage=usage,
            hourly=None if window.history else hourly_records,
            accounts=accounts,
            data_through=min(newest, through) if newest is not None else None,
            raw=raw,
            key_usage=key_usage,
        )

    def fetch_minutes(self, now: dt.datetime) -> MinuteUsageResult:
        """Minute usage of the burn window, by model, workspace and API key (``requests`` stays 0)."""
        clock = now.timestamp()
        if self._tags is None or not 0 <= clock - self._tags[0] < TAGS_MAX_AGE:
            listing = RawFetch()
            self._workspaces(listing)
            self._tags = (clock, self._accounts(listing)[1])
        tags = self._tags[1]
        start, end = burn_bounds(now, self.cfg.burn_window, self.cfg.burn_delay)
        limit = max(int((end - start).total_seconds()) // 60, 1)
        raw = RawFetch()
        operation = self._usage(raw, rfc3339(start), rfc3339(end), "1m", limit)
        by: dict[tuple[dt.datetime, str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for b_start, _b_end, account, model, tokens, key in self._usage_rows(raw, operation):
            if start <= b_start < end:  # nothing past the complete end is read
                add_tokens(by[(b_start, account, model, key)], tokens)
        minutes = [
            MinuteUsage(
                minute_start=b,
                provider=PROVIDER,
                account_id=account,
                service_name=SERVICE,
                model=model,
                api_key_id=key,
                tokens=dict(tokens),
                team_tag=tags.get(account),
            )
            for (b, account, model, key), tokens in sorted(by.items())
        ]
        return MinuteUsageResult(start=start, end=end, minutes=minutes)


def _bodies(raw: RawFetch, operation: str) -> Iterator[Any]:
    """The bodies of ``raw``'s pages of ``operation``, in order."""
    return (page.body for page in raw.pages if page.operation == operation)
