"""OpenAI: organization costs and token usage through the Admin API.

Calls, all through the ``openai`` SDK's admin client
(``client.admin.organization``), authenticated with an admin key:

- ``usage.costs`` (``GET /v1/organization/costs``), daily buckets grouped by
  ``project_id`` and ``line_item``: what was billed, in USD. A line item is
  ``"<model>, <token type>"`` (``"gpt-4o-2024-08-06, input"``) or a named
  product (``"web search tool calls"``); the model and the API family
  (``service_name``) come from it.
- ``usage.completions`` (and ``embeddings``, ``images``, ``audio_speeches``,
  ``audio_transcriptions`` when listed in ``usage_endpoints``), daily buckets
  grouped by ``model``, ``project_id`` and ``api_key_id``: tokens and model
  requests per day; and hourly buckets (``bucket_width=1h``) of the last 24
  complete hours, whose newest one the runaway-burn detector prices.
- ``usage.completions`` again for the burn rate (``fetch_minutes``): minute
  buckets (``bucket_width=1m``) of the last ``burn_window`` that ends
  ``burn_delay`` before now, grouped by ``model``, ``project_id`` and
  ``api_key_id``; one request, no days written.
- ``projects.list``: project names for ``spend_account_info`` and team rules.
- ``projects.api_keys.list`` (``GET /v1/organization/projects/{project_id}/api_keys``, ``owner_project_access=any``)
  for each project with usage by an API key in the window: the keys' names for ``spend_ai_key_info``.

The daily usage by API key is kept too (``FetchResult.key_usage``): the snapshot splits each project's billed
cost of a model across its keys (``exporter.keycost``).


``account_id`` is the project id. Tokens: ``input`` is uncached input
(``input_uncached_tokens``; for older responses without it,
``input_tokens`` − ``input_cached_tokens`` − ``input_cache_write_tokens``, as
``input_tokens`` counts cached and cache-write tokens), ``cache_read`` is
``input_cached_tokens``, ``cache_write`` is ``input_cache_write_tokens`` and
``output`` is ``output_tokens``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import openai

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
from exporter.sources.openai import OpenAISource

PROVIDER = "openai"
UTC = dt.UTC
DAY = 86400
# Buckets per page: the API's maxima (costs: 180 days; usage: 31 days or 168 hours).
COSTS_PAGE_LIMIT = 180
USAGE_DAILY_PAGE_LIMIT = 31
HOURLY_HOURS = 24  # hourly buckets kept: the last complete hour is priced; series of the last day stay visible

# The exporter's service_name for each usage endpoint: the API family.
ENDPOINT_SERVICE = {
    "completions": "chat",
    "embeddings": "embeddings",
    "moderations": "moderations",
    "images": "images",
    "audio_speeches": "audio",
    "audio_transcriptions": "audio",
}
# Products billed without a model, by a word in their line item.
_PRODUCT_SERVICE = (
    ("web search", "web_search"),
    ("file search", "file_search"),
    ("code interpreter", "code_interpreter"),
    ("vector store", "vector_stores"),
    ("container", "containers"),
    ("training", "fine_tuning"),
    ("fine-tuning", "fine_tuning"),
    ("fine tuning", "fine_tuning"),
)
_MODEL_ID = re.compile(r"^(?:ft:)?[a-z0-9][a-z0-9._:/-]*$", re.IGNORECASE)  # fine-tuned suffixes have capitals


def service_for_model(model: str) -> str:
    """The API family a model is used through, as the usage endpoints split it."""
    m = model.lower()
    if m.startswith("ft:"):
        m = m[3:]
    if "embedding" in m:
        return "embeddings"
    if "moderation" in m:
        return "moderations"
    if m.startswith(("dall-e", "gpt-image")):
        return "images"
    if m.startswith(("whisper", "tts")) or "transcribe" in m or m.endswith("-tts") or "-tts-" in m:
        return "audio"
    return "chat"


def token_type_of(kind: str) -> str | None:
    """``input``/``output``/``cache_read``/``cache_write`` from a line item's token part, else None."""
    k = re.sub(r"[_\s]+", " ", kind.strip().lower())
    if not k:
        return None
    if "cache" in k:
        return "cache_write" if "write" in k else "cache_read"
    if "output" in k or "completion" in k:
        return "output"
    if "input" in k or "prompt" in k:
        return "input"
    return None


def parse_line_item(line_item: str | None) -> tuple[str, str | None, str]:
    """``(model, token_type, service_name)`` of a costs line item.

    ``"gpt-4o-2024-08-06, input"`` → ``("gpt-4o-2024-08-06", "input", "chat")``;
    ``"web search tool calls"`` → ``("", None, "web_search")``.
    """
    if not line_item or not line_item.strip():
        return "", None, "other"
    head, sep, tail = line_item.rpartition(",")
    name, kind = (head.strip(), tail) if sep else (line_item.strip(), "")
    if _MODEL_ID.match(name) and any(c.isdigit() for c in name):
        return name, token_type_of(kind), service_for_model(name)
    lowered = line_item.lower()
    for word, service in _PRODUCT_SERVICE:
        if word in lowered:
            return "", None, service
    return "", None, re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "other"


def completion_tokens(r: Any) -> dict[str, int]:
    """Token counts of one completions usage result, by the exporter's token types."""
    cached = int(r.input_cached_tokens or 0)
    cache_write = int(getattr(r, "input_cache_write_tokens", None) or 0)
    uncached = getattr(r, "input_uncached_tokens", None)
    if uncached is None:
        # input_tokens counts cached and cache-write tokens too
        uncached = max(int(r.input_tokens) - cached - cache_write, 0)
    return {"input": int(uncached), "output": int(r.output_tokens), "cache_read": cached, "cache_write": cache_write}


def usage_tokens(endpoint: str, r: Any) -> dict[str, int]:
    if endpoint == "completions":
        return completion_tokens(r)
    if endpoint in ("embeddings", "moderations"):
        return {"input": int(r.input_tokens)}
    return {}  # images are counted in images, audio in characters/seconds: requests only


def _epoch(day: dt.date) -> int:
    return int(utc_midnight(day).timestamp())


class OpenAIProvider:
    """OpenAI Admin API: costs by project and model, tokens and requests, and the last complete hour."""

    def __init__(self, config: OpenAISource, ctx: ProviderContext) -> None:
        self.cfg = config
        self.ctx = ctx
        self.api = AdminApi(
            openai,
            "OpenAI",
            config,
            ctx,
            base_error=openai.OpenAIError,
            key_hint="an OpenAI admin API key",
            permission_hint="the key needs the organization Owner role: use an admin key",
        )
        self._client: openai.OpenAI | None = None

    # -- client ----------------------------------------------------------------------
    def _get_client(self) -> openai.OpenAI:
        if self._client is None:
            self._client = openai.OpenAI(
                admin_api_key=self.api.admin_key(),
                # The admin endpoints authenticate with the admin key only; a fixed non-secret value
                # keeps the SDK from picking up an unrelated OPENAI_API_KEY from the environment.
                api_key="unused-admin-endpoints-only",
                base_url=self.cfg.base_url,
                max_retries=0,  # 429s are retried by AdminApi.call, honouring retry-after; errors fail the refresh
                timeout=self.cfg.request_timeout,
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _report(self, raw: RawFetch, operation: str, endpoint: str, **params: Any) -> None:
        """Every page of a bucketed report into ``raw``, each checked before the next is asked for.

        Through the SDK's ``with_raw_response``: the page is kept as the API sent it, and ``parse`` reads the
        same JSON whether it was just received or read back from the cache.
        """
        method = getattr(self._get_client().admin.organization.usage.with_raw_response, endpoint)

        def checked(token: str | None) -> tuple[tuple[dict[str, str], Any], bool, Any]:
            resp = method(**params, page=token if token else openai.omit, timeout=self.api.timeout())
            body = resp.http_response.json()
            with self.api.shape(operation):
                if not isinstance(body["data"], list) or not isinstance(body["has_more"], bool):
                    raise TypeError
                for bucket in body["data"]:
                    int(bucket["start_time"]), int(bucket["end_time"])
                    if not isinstance(bucket["results"], list):
                        raise TypeError
            request = {"method": resp.http_response.request.method, "url": str(resp.http_response.request.url)}
            return (request, body), body["has_more"], body.get("next_page")

        for request, body in self.api.reports(operation, checked):
            raw.add(operation, request, body)

    # -- the reports ------------------------------------------------------------------
    def _projects(self, raw: RawFetch) -> None:
        projects = self._get_client().admin.organization.projects

        def first() -> Any:
            return projects.list(limit=100, include_archived=True, timeout=self.api.timeout())

        # the SDK pages the listing (a cursor of its own); each page is kept as the SDK read it
        for page in self.api.listing_pages("projects", first):
            url = str(self._get_client().base_url).rstrip("/") + "/organization/projects"
            raw.add("projects", {"method": "GET", "url": url}, page.to_dict(mode="json"))

    def _api_keys(self, client: openai.OpenAI, projects: list[str]) -> list[ApiKeyInfo]:
        """The API keys of ``projects`` (every key, whether or not its owner still has access to the project)."""
        api_keys = client.admin.organization.projects.api_keys
        out = []
        for project in projects:

            def first(project: str = project) -> Any:
                return api_keys.list(project, limit=100, owner_project_access="any", timeout=self.api.timeout())

            out += [
                ApiKeyInfo(PROVIDER, project, k.id, k.name or k.id) for k in self.api.listing("project_api_keys", first)
            ]
        return out

    def _costs(self, raw: RawFetch, start: int, end: int) -> None:
        self._report(
            raw,
            "costs",
            "costs",
            start_time=start,
            end_time=end,
            bucket_width="1d",
            group_by=["project_id", "line_item"],
            limit=COSTS_PAGE_LIMIT,
        )

    def _usage(self, raw: RawFetch, endpoint: str, start: int, end: int, bucket_width: str, limit: int) -> str:
        """Every page of one usage report into ``raw``; the operation it is kept under."""
        operation = f"usage_{endpoint}" + {"1h": "_hourly", "1m": "_minutes"}.get(bucket_width, "")
        self._report(
            raw,
            operation,
            endpoint,
            start_time=start,
            end_time=end,
            bucket_width=bucket_width,
            group_by=["model", "project_id", "api_key_id"],
            limit=limit,
        )
        return operation

    def fetch(self, window: FetchWindow) -> FetchResult:
        start, end = _epoch(window.start), _epoch(window.end) + DAY
        h_end = _hourly_end(window)
        raw = RawFetch()
        self._projects(raw)
        self._costs(raw, start, end)
        for endpoint in dict.fromkeys(self.cfg.usage_endpoints):
            self._usage(raw, endpoint, start, end, "1d", USAGE_DAILY_PAGE_LIMIT)
            if not window.history:  # days only: the hourly buckets are the refresh's
                self._usage(raw, endpoint, h_end - HOURLY_HOURS * 3600, h_end, "1h", HOURLY_HOURS)
        result = self.parse(window, raw)
        # the keys' names (spend_ai_key_info) are not records: listed live, not kept with the pages (names held
        # are never deleted, so a recompute keeps them)
        client = self._get_client()
        with_keys = sorted({k.account_id for k in result.key_usage if k.api_key_id and k.account_id != "default"})
        result.api_keys = self.api.optional("API key names", lambda: self._api_keys(client, with_keys))
        return result

    def parse(self, window: FetchWindow, raw: RawFetch) -> FetchResult:
        """The records of the pages ``fetch`` kept (live or from the cache); no API call."""
        through = _hourly_end(window)  # the usage API is near-real-time; a partial hour is never claimed as held
        with self.api.shape("projects"):
            accounts = [
                AccountInfo(PROVIDER, str(p["id"]), str(p.get("name") or p["id"]))
                for body in _bodies(self.api, raw, "projects")
                for p in body["data"]
            ]
        amounts: dict[tuple[dt.date, str, str, str, str], float] = defaultdict(float)
        newest = 0
        for page in _bodies(self.api, raw, "costs"):
            with self.api.shape("costs"):
                for bucket in page.data:
                    day = dt.datetime.fromtimestamp(bucket.start_time, UTC).date()
                    if bucket.results:
                        newest = max(newest, int(bucket.end_time))
                    if not window.start <= day <= window.end:
                        continue
                    for r in bucket.results:
                        if r.amount is None or r.amount.value is None:
                            continue
                        currency = (r.amount.currency or "usd").upper()
                        model, _token_type, service = parse_line_item(r.line_item)
                        account = r.project_id or "default"
                        amounts[(day, account, service, model, currency)] += float(r.amount.value)
        costs = [
            CostRecord(day=d, provider=PROVIDER, account_id=a, service_name=s, amount=v, currency=c, model=m)
            for (d, a, s, m, c), v in sorted(amounts.items())
        ]

        daily: dict[tuple[dt.date, str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        daily_requests: dict[tuple[dt.date, str, str, str], int] = defaultdict(int)
        by_key: dict[tuple[dt.date, str, str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        key_requests: dict[tuple[dt.date, str, str, str, str], int] = defaultdict(int)
        h_end = through
        h_start = h_end - HOURLY_HOURS * 3600
        hourly: dict[tuple[int, str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        hourly_requests: dict[tuple[int, str, str, str], int] = defaultdict(int)
        for endpoint in dict.fromkeys(self.cfg.usage_endpoints):
            service = ENDPOINT_SERVICE[endpoint]
            for b_start, b_end, account, model, tokens, requests, api_key in _usage_rows(
                self.api, raw, endpoint, f"usage_{endpoint}"
            ):
                day = dt.datetime.fromtimestamp(b_start, UTC).date()
                newest = max(newest, b_end)
                if not window.start <= day <= window.end:
                    continue
                key = (day, account, service, model)
                add_tokens(daily[key], tokens)
                daily_requests[key] += requests
                add_tokens(by_key[(*key, api_key)], tokens)
                key_requests[(*key, api_key)] += requests
            for b_start, b_end, account, model, tokens, requests, _key in _usage_rows(
                self.api, raw, endpoint, f"usage_{endpoint}_hourly"
            ):
                if not h_start <= b_start < h_end:
                    continue
                newest = max(newest, b_end)
                hkey = (b_start, account, service, model)
                add_tokens(hourly[hkey], tokens)
                hourly_requests[hkey] += requests

        usage = [
            UsageRecord(
                day=day,
                provider=PROVIDER,
                account_id=account,
                service_name=service,
                model=model,
                tokens=dict(tokens),
                requests=daily_requests[(day, account, service, model)],
            )
            for (day, account, service, model), tokens in sorted(daily.items())
        ]
        hourly_records = [
            HourlyUsage(
                hour_start=dt.datetime.fromtimestamp(b_start, UTC),
                provider=PROVIDER,
                account_id=account,
                service_name=service,
                model=model,
                tokens=dict(tokens),
                requests=hourly_requests[(b_start, account, service, model)],
            )
            for (b_start, account, service, model), tokens in sorted(hourly.items())
        ]
        key_usage = [
            KeyUsage(
                day=day,
                provider=PROVIDER,
                account_id=account,
                service_name=service,
                model=model,
                api_key_id=api_key,
                tokens=dict(tokens),
                requests=key_requests[(day, account, service, model, api_key)],
            )
            for (day, account, service, model, api_key), tokens in sorted(by_key.items())
        ]
        return FetchResult(
            days=window.days(),
            costs=costs,
            usage=usage,
            hourly=None if window.history else hourly_records,
            accounts=accounts,
            data_through=dt.datetime.fromtimestamp(min(newest, through), UTC) if newest else None,
            raw=raw,
            key_usage=key_usage,
        )

    def fetch_minutes(self, now: dt.datetime) -> MinuteUsageResult:
        """Minute usage of the burn window (chat completions), by model, project and API key; one request."""
        start, end = burn_bounds(now, self.cfg.burn_window, self.cfg.burn_delay)
        s, e = int(start.timestamp()), int(end.timestamp())
        service = ENDPOINT_SERVICE["completions"]
        raw = RawFetch()
        operation = self._usage(raw, "completions", s, e, "1m", max((e - s) // 60, 1))
        tokens_by: dict[tuple[int, str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        requests_by: dict[tuple[int, str, str, str], int] = defaultdict(int)
        for b_start, _b_end, account, model, tokens, requests, key in _usage_rows(
            self.api, raw, "completions", operation
        ):
            if not s <= b_start < e:
                continue  # the API snaps the start to the minute; nothing past the complete end is read
            k = (b_start, account, model, key)
            add_tokens(tokens_by[k], tokens)
            requests_by[k] += requests
        minutes = [
            MinuteUsage(
                minute_start=dt.datetime.fromtimestamp(b, UTC),
                provider=PROVIDER,
                account_id=account,
                service_name=service,
                model=model,
                api_key_id=key,
                tokens=dict(tokens),
                requests=requests_by[(b, account, model, key)],
            )
            for (b, account, model, key), tokens in sorted(tokens_by.items())
        ]
        return MinuteUsageResult(start=start, end=end, minutes=minutes)


def _hourly_end(window: FetchWindow) -> int:
    """End of the hourly buckets asked for: the end of the last complete hour (unix)."""
    return int((window.last_complete_hour + dt.timedelta(hours=1)).timestamp())


def _attrs(value: Any) -> Any:
    """A page's JSON with attribute access (``bucket.results``, ``r.amount.value``), as the SDK's models read."""
    if isinstance(value, dict):
        return SimpleNamespace(**{str(k): _attrs(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_attrs(v) for v in value]
    return value


def _bodies(api: AdminApi, raw: RawFetch, operation: str) -> Iterator[Any]:
    """The bodies of ``raw``'s pages of ``operation``, in order; a projects page as JSON, a report with attributes."""
    for page in raw.pages:
        if page.operation == operation:
            with api.shape(operation):
                yield page.body if operation == "projects" else _attrs(page.body)


def _usage_rows(
    api: AdminApi, raw: RawFetch, endpoint: str, operation: str
) -> Iterator[tuple[int, int, str, str, dict[str, int], int, str]]:
    """(bucket start, bucket end, account, model, tokens, requests, API key) per result of ``operation``'s pages."""
    for page in _bodies(api, raw, operation):
        rows = []
        with api.shape(operation):
            for bucket in page.data:
                for r in bucket.results:
                    rows.append(
                        (
                            int(bucket.start_time),
                            int(bucket.end_time),
                            str(r.project_id or "default"),
                            str(r.model or ""),
                            usage_tokens(endpoint, r),
                            int(getattr(r, "num_model_requests", 0) or 0),
                            str(getattr(r, "api_key_id", None) or ""),
                        )
                    )
        yield from rows
