"""Emulator of OpenAI's organization Admin API: costs, usage and projects.

Speaks the wire format of ``GET /v1/organization/costs``,
``/v1/organization/usage/{completions,embeddings,images,...}`` and
``/v1/organization/projects`` as the ``openai`` SDK's admin client sends and
parses it (``openai/types/admin/organization/usage_*``): unix-second
``start_time``/``end_time``, ``bucket_width``, ``group_by`` (the SDK sends
``group_by[]=…``; the plain repeated form is accepted too), bucket ``limit``
and the ``page`` cursor, ``Authorization: Bearer <admin key>``. Buckets are
aligned to UTC and returned up to ``now`` (today's bucket is partial); the
usage and costs come from ``ai_dataset.AIDataset``.

Throttling is a 429 with ``retry-after`` (whole seconds, as HTTP says) and
``retry-after-ms``, which the OpenAI SDKs read first.

The guard's write endpoints: ``GET /v1/organization/projects/{id}/rate_limits``
(``limit``, ``after``, ``before``; a ``list`` of ``project.rate_limit``) and
``POST /v1/organization/projects/{id}/rate_limits/{rate_limit_id}`` (a JSON body of
the fields to set; the updated object back). Every project starts with one rate
limit per model of the dataset (``rl-<model>``). With ``write_key`` set, that key
also reads, and only it writes (the usage key gets 403 on a write). Every write is
recorded in ``writes``; one answered by an injected fault is only in ``requests``.

``GET /v1/organization/projects/{id}/api_keys`` (``limit`` 1..100, ``after``, ``owner_project_access``)
lists a project's API keys (``organization.project.api_key``): the dataset's keys of that project, named
``<key id> service key``, plus ``extra_api_keys`` (project id → ``(id, name)``) for keys without usage.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections import defaultdict
from decimal import Decimal
from typing import Any

from tests.emulators.ai_dataset import STREAMS, AICostRow, AIDataset, AIUsageRow
from tests.emulators.common import (
    RecordsWrites,
    ServesAIDataset,
    WriteCall,
    after_id,
    bucket_starts,
    id_page,
    retry_after_headers,
)
from tests.emulators.scenario import Scenario
from tests.emulators.server import Emulator, Fault, Request, Response

WIDTHS = {"1m": 60, "1h": 3600, "1d": 86400}
USAGE_LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}  # (default, max) buckets per page
COSTS_LIMITS = (7, 180)

USAGE_GROUP_BY = {
    "completions": {"project_id", "user_id", "api_key_id", "model", "batch", "service_tier", "api_source"},
    "embeddings": {"project_id", "user_id", "api_key_id", "model"},
    "moderations": {"project_id", "user_id", "api_key_id", "model"},
    "images": {"project_id", "user_id", "api_key_id", "model", "size", "source"},
    "audio_speeches": {"project_id", "user_id", "api_key_id", "model"},
    "audio_transcriptions": {"project_id", "user_id", "api_key_id", "model"},
}
COSTS_GROUP_BY = {"project_id", "user_id", "line_item", "api_key_id", "api_source"}

DEFAULT_ADMIN_KEY = "sk-admin-EMULATOR0123456789abcdefTESTKEY"
DEFAULT_WRITE_KEY = "sk-admin-EMULATORwriteKEY9876543210fedcba"

RATE_LIMIT_FIELDS = (
    "max_requests_per_1_minute",
    "max_tokens_per_1_minute",
    "max_images_per_1_minute",
    "max_audio_megabytes_per_1_minute",
    "max_requests_per_1_day",
    "batch_1_day_max_input_tokens",
)


def default_rate_limit(model: str) -> dict[str, Any]:
    """A project's rate limit of ``model`` before anyone changes it (tier-5-like figures)."""
    rl: dict[str, Any] = {"object": "project.rate_limit", "id": f"rl-{model}", "model": model}
    if model.startswith("text-embedding"):
        rl.update(max_requests_per_1_minute=10_000, max_tokens_per_1_minute=10_000_000)
    else:
        rl.update(
            max_requests_per_1_minute=10_000,
            max_tokens_per_1_minute=30_000_000,
            batch_1_day_max_input_tokens=5_000_000_000,
        )
    return rl


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _list_limit(request: Request) -> int:
    """``limit`` of the admin lists (projects, a project's keys): 20 by default, 1 to 100."""
    try:
        limit = int(request.q("limit") or 20)
    except ValueError:
        raise BadRequest("limit must be an integer.", "limit") from None
    if not 1 <= limit <= 100:
        raise BadRequest("limit must be between 1 and 100.", "limit")
    return limit


def _error(status: int, message: str, type_: str, code: str | None = None, param: str | None = None) -> Response:
    return Response(status, {"error": {"message": message, "type": type_, "param": param, "code": code}})


def encode_page(ts: int) -> str:
    return "page_" + base64.urlsafe_b64encode(str(ts).encode()).decode().rstrip("=")


def decode_page(token: str) -> int:
    if not token.startswith("page_"):
        raise BadRequest(f"Invalid page cursor: {token!r}", "page")
    raw = token[5:]
    try:
        return int(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode())
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(f"Invalid page cursor: {token!r}", "page") from None


class OpenAIAdminEmulator(RecordsWrites, ServesAIDataset, Emulator):
    """``/v1/organization/*`` of the OpenAI Admin API, driven by an ``AIDataset``.

    ``page_size_cap`` makes pages hold fewer buckets than ``limit`` asks for
    (the API may do so), to exercise pagination with short windows;
    ``legacy_usage_fields`` leaves out ``input_uncached_tokens`` and
    ``input_cache_write_tokens``, as older responses did; ``scenario`` serves usage (every bucket
    width) from a ``tests.emulators.scenario.Scenario`` on its clock, with its publication delay.
    """

    name = "openai-admin"
    provider = "openai"

    def __init__(
        self,
        dataset: AIDataset,
        admin_key: str = DEFAULT_ADMIN_KEY,
        *,
        page_size_cap: int | None = None,
        legacy_usage_fields: bool = False,
        scenario: Scenario | None = None,
        write_key: str | None = None,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.scenario = scenario
        self.admin_key = admin_key
        self.write_key = write_key
        self.writes: list[WriteCall] = []
        models = sorted({s.model for s in STREAMS if s.provider == "openai"})
        self.rate_limits: dict[str, dict[str, dict[str, Any]]] = {
            a.id or "": {f"rl-{m}": default_rate_limit(m) for m in models} for a in dataset.accounts["openai"]
        }
        self.page_size_cap = page_size_cap
        self.legacy_usage_fields = legacy_usage_fields
        self.extra_api_keys: dict[str, list[tuple[str, str]]] = {}

    def _now(self) -> dt.datetime:
        return self.scenario.now if self.scenario else self.dataset.now

    def _usage_source(self) -> Scenario | AIDataset:
        """Where usage comes from: the scenario (minute rows on its clock, published late) or the dataset."""
        return self.scenario or self.dataset

    # -- protocol --------------------------------------------------------------------
    def throttle_response(self, fault: Fault) -> Response:
        return Response(
            429,
            {
                "error": {
                    "message": "Rate limit reached for organization usage API requests. Please try again later.",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            },
            retry_after_headers(fault),
        )

    def handle(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        keys = {f"Bearer {self.admin_key}": "admin"}
        if self.write_key:
            keys[f"Bearer {self.write_key}"] = "write"
        if auth not in keys:
            presented = auth.removeprefix("Bearer ")
            # Deliberately worse than the real API (which masks the key): echo it in full, so that
            # tests prove the exporter never shows a key an API put into an error message.
            return _error(401, f"Incorrect API key provided: {presented}.", "invalid_request_error", "invalid_api_key")
        path = request.path
        if path.startswith("/v1/organization/projects/") and "/rate_limits" in path:
            return self._rate_limits(request, keys[auth])
        if request.method != "GET":
            return _error(405, f"Method {request.method} not allowed", "invalid_request_error")
        try:
            if path == "/v1/organization/costs":
                return Response(200, self._costs(request))
            if path.startswith("/v1/organization/usage/"):
                endpoint = path.rsplit("/", 1)[1]
                if endpoint not in USAGE_GROUP_BY:
                    return _error(404, f"Unknown usage endpoint {endpoint!r}", "invalid_request_error")
                return Response(200, self._usage(request, endpoint))
            if path == "/v1/organization/projects":
                return Response(200, self._projects(request))
            parts = path.split("/")  # "", v1, organization, projects, {id}, api_keys
            if len(parts) == 6 and path.startswith("/v1/organization/projects/") and parts[5] == "api_keys":
                return self._project_api_keys(request, parts[4])
        except BadRequest as e:
            return _error(400, str(e), "invalid_request_error", param=e.param)
        return _error(404, f"Invalid URL (GET {request.path})", "invalid_request_error")

    # -- buckets ---------------------------------------------------------------------
    def _window(
        self, request: Request, widths: tuple[str, ...], limits: tuple[int, int]
    ) -> tuple[list[int], int, bool]:
        """Bucket starts for this page, the bucket width in seconds, and whether more pages follow."""
        raw_start = request.q("start_time")
        if raw_start is None:
            raise BadRequest("Missing required parameter: 'start_time'.", "start_time")
        try:
            start = int(raw_start)
            end_raw = request.q("end_time")
            end = int(end_raw) if end_raw is not None else None
            limit_raw = request.q("limit")
            limit = int(limit_raw) if limit_raw is not None else limits[0]
        except ValueError:
            raise BadRequest("start_time, end_time and limit must be integers.") from None
        bw = request.q("bucket_width", "1d") or "1d"
        if bw not in widths:
            raise BadRequest(f"Invalid bucket_width {bw!r}: expected one of {', '.join(widths)}.", "bucket_width")
        if not 1 <= limit <= limits[1]:
            raise BadRequest(f"limit must be between 1 and {limits[1]} for bucket_width={bw}.", "limit")
        width = WIDTHS[bw]
        now = int(self._now().timestamp())
        stop = now if end is None else min(end, now)
        first = start - start % width
        page = request.q("page")
        if page:
            first = decode_page(page)
        n = min(limit, self.page_size_cap or limit)
        starts, more = bucket_starts(first, stop, width, n)
        return starts, width, more

    @staticmethod
    def _page(buckets: list[dict[str, Any]], next_start: int | None) -> dict[str, Any]:
        return {
            "object": "page",
            "data": buckets,
            "has_more": next_start is not None,
            "next_page": encode_page(next_start) if next_start is not None else None,
        }

    @staticmethod
    def _group_by(request: Request, allowed: set[str]) -> list[str]:
        fields = request.qlist("group_by")
        for f in fields:
            if f not in allowed:
                raise BadRequest(
                    f"Invalid group_by value {f!r}: expected any of {', '.join(sorted(allowed))}.", "group_by"
                )
        return fields

    # -- costs -----------------------------------------------------------------------
    def _costs(self, request: Request) -> dict[str, Any]:
        group_by = self._group_by(request, COSTS_GROUP_BY)
        project_ids = set(request.qlist("project_ids"))
        starts, width, more = self._window(request, ("1d",), COSTS_LIMITS)
        buckets = []
        for s in starts:
            day = dt.datetime.fromtimestamp(s, dt.UTC).date()
            groups: dict[tuple[Any, ...], list[AICostRow]] = defaultdict(list)
            for c in self._costs_by_day.get(day, ()):
                if project_ids and c.account_id not in project_ids:
                    continue
                values = {"project_id": c.account_id, "line_item": c.line_item}
                groups[tuple(values.get(f) for f in group_by)].append(c)
            results = []
            for key, rows in groups.items():
                g = dict(zip(group_by, key, strict=True))
                amount = sum((r.amount for r in rows), Decimal(0))
                result: dict[str, Any] = {
                    "object": "organization.costs.result",
                    "amount": {"value": float(amount), "currency": "usd"},
                    "line_item": g.get("line_item"),
                    "project_id": g.get("project_id"),
                    "api_key_id": None,
                    "user_id": None,
                    "api_source": None,
                }
                if "line_item" in g:
                    result["quantity"] = float(sum(r.quantity for r in rows))
                    result["quantity_unit"] = "tokens" if rows[0].model else None
                results.append(result)
            buckets.append({"object": "bucket", "start_time": s, "end_time": s + width, "results": results})
        return self._page(buckets, starts[-1] + width if more and starts else None)

    # -- usage -----------------------------------------------------------------------
    def _usage(self, request: Request, endpoint: str) -> dict[str, Any]:
        group_by = self._group_by(request, USAGE_GROUP_BY[endpoint])
        filters = {
            "project_id": set(request.qlist("project_ids")),
            "api_key_id": set(request.qlist("api_key_ids")),
            "model": set(request.qlist("models")),
        }
        bw = request.q("bucket_width", "1d") or "1d"
        starts, width, more = self._window(request, tuple(WIDTHS), USAGE_LIMITS.get(bw, USAGE_LIMITS["1d"]))
        buckets = []
        for s in starts:
            b_start = dt.datetime.fromtimestamp(s, dt.UTC)
            rows = self._usage_source().rows_between("openai", endpoint, b_start, b_start + dt.timedelta(seconds=width))
            groups: dict[tuple[Any, ...], list[AIUsageRow]] = defaultdict(list)
            for r in rows:
                values: dict[str, Any] = {"project_id": r.account_id, "api_key_id": r.api_key_id, "model": r.model}
                if any(want and values[f] not in want for f, want in filters.items()):
                    continue
                groups[tuple(values.get(f) for f in group_by)].append(r)
            results = [
                self._usage_result(endpoint, dict(zip(group_by, k, strict=True)), rs) for k, rs in groups.items()
            ]
            buckets.append({"object": "bucket", "start_time": s, "end_time": s + width, "results": results})
        return self._page(buckets, starts[-1] + width if more and starts else None)

    def _usage_result(self, endpoint: str, g: dict[str, Any], rows: list[AIUsageRow]) -> dict[str, Any]:
        uncached = sum(r.input for r in rows)
        cached = sum(r.cache_read for r in rows)
        cache_write = sum(r.cache_write for r in rows)
        requests = sum(r.requests for r in rows)
        ids = {
            "project_id": g.get("project_id"),
            "user_id": g.get("user_id"),
            "api_key_id": g.get("api_key_id"),
            "model": g.get("model"),
        }
        if endpoint == "completions":
            result: dict[str, Any] = {
                "object": "organization.usage.completions.result",
                # includes cached and cache-write tokens (openai SDK 3.x field docs)
                "input_tokens": uncached + cached + cache_write,
                "output_tokens": sum(r.output for r in rows),
                "input_cached_tokens": cached,
                "input_audio_tokens": 0,
                "output_audio_tokens": 0,
                "num_model_requests": requests,
                **ids,
                "batch": g.get("batch"),
                "service_tier": g.get("service_tier"),
                "api_source": g.get("api_source"),
            }
            if not self.legacy_usage_fields:
                result["input_uncached_tokens"] = uncached
                result["input_cache_write_tokens"] = cache_write
            return result
        if endpoint in ("embeddings", "moderations"):
            return {
                "object": f"organization.usage.{endpoint}.result",
                "input_tokens": uncached,
                "num_model_requests": requests,
                **ids,
            }
        raise BadRequest(f"the dataset has no {endpoint} usage")  # images/audio: no rows, never reached

    # -- projects --------------------------------------------------------------------
    def _projects(self, request: Request) -> dict[str, Any]:
        limit = _list_limit(request)
        include_archived = (request.q("include_archived") or "false").lower() == "true"
        created = int((self.dataset.now - dt.timedelta(days=400)).timestamp())
        projects = [
            {
                "id": a.id,
                "object": "organization.project",
                "name": a.name,
                "created_at": created + i * 86400,
                "archived_at": created + 200 * 86400 if a.archived else None,
                "status": "archived" if a.archived else "active",
            }
            for i, a in enumerate(self.dataset.accounts["openai"])
            if include_archived or not a.archived
        ]
        after = request.q("after")
        rest = after_id(projects, after)
        if rest is None:
            raise BadRequest(f"No such project: {after!r}", "after")
        return {"object": "list", **id_page(rest, limit, self.page_size_cap)}

    def _project_api_keys(self, request: Request, project: str) -> Response:
        if project not in {a.id for a in self.dataset.accounts["openai"]}:
            return _error(404, f"No such project: {project}", "invalid_request_error")
        limit = _list_limit(request)
        if (request.q("owner_project_access") or "any") not in ("active", "inactive", "any"):
            raise BadRequest("owner_project_access must be one of active, inactive, any.", "owner_project_access")
        created = int((self.dataset.now - dt.timedelta(days=300)).timestamp())
        ids = [(s.api_key_id, f"{s.api_key_id} service key") for s in STREAMS if s.account_id == project]
        ids += self.extra_api_keys.get(project, [])
        keys = [
            {
                "object": "organization.project.api_key",
                "id": key_id,
                "name": name,
                "redacted_value": f"sk-proj-****{key_id[-2:]}",
                "created_at": created,
                "last_used_at": None,
                "owner": {"type": "service_account", "service_account": None, "user": None},
                "owner_project_access": "active",
            }
            for key_id, name in dict.fromkeys(ids)
        ]
        after = request.q("after")
        rest = after_id(keys, after)
        if rest is None:
            raise BadRequest(f"No such API key: {after!r}", "after")
        return Response(200, {"object": "list", **id_page(rest, limit, self.page_size_cap)})

    # -- project rate limits (the guard's writes) ---------------------------------------
    def _rate_limits(self, request: Request, key: str) -> Response:
        parts = request.path.split("/")  # "", v1, organization, projects, {id}, rate_limits[, {rl id}]
        if len(parts) not in (6, 7) or parts[5] != "rate_limits":
            return _error(404, f"Invalid URL ({request.method} {request.path})", "invalid_request_error")
        project = parts[4]
        limits = self.rate_limits.get(project)
        if limits is None:
            return _error(404, f"No such project: {project}", "invalid_request_error", "not_found")
        if len(parts) == 6:
            if request.method != "GET":
                return _error(405, f"Method {request.method} not allowed", "invalid_request_error")
            return self._list_rate_limits(request, limits)
        if request.method != "POST":
            return _error(405, f"Method {request.method} not allowed", "invalid_request_error")
        try:
            body = request.json()
        except ValueError:
            body = request.body.decode("utf-8", "replace")
        self.record_write(request.method, request.path, body, key)
        if self.write_key and key != "write":
            return _error(
                403,
                "You have insufficient permissions for this operation. Missing scopes: api.management.write.",
                "invalid_request_error",
                "insufficient_permissions",
            )
        rl = limits.get(parts[6])
        if rl is None:
            return _error(404, f"No such rate limit: {parts[6]}", "invalid_request_error", "not_found")
        if not isinstance(body, dict) or not body:
            return _error(400, "Expected a JSON object of rate limit fields.", "invalid_request_error")
        for k, v in body.items():
            if k not in RATE_LIMIT_FIELDS:
                return _error(400, f"Unrecognized request argument supplied: {k}", "invalid_request_error", param=k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                return _error(400, f"Invalid value for {k}: expected a non-negative integer.", "invalid_request_error")
            if k not in rl:
                return _error(400, f"{k} is not relevant for model {rl['model']}.", "invalid_request_error", param=k)
        rl.update(body)
        return Response(200, dict(rl))

    def _list_rate_limits(self, request: Request, limits: dict[str, dict[str, Any]]) -> Response:
        try:
            limit = int(request.q("limit") or 100)
        except ValueError:
            return _error(400, "limit must be an integer.", "invalid_request_error", param="limit")
        items = [dict(v) for v in limits.values()]
        after = request.q("after")
        rest = after_id(items, after)
        if rest is None:
            return _error(400, f"No such rate limit: {after!r}", "invalid_request_error", param="after")
        return Response(200, {"object": "list", **id_page(rest, limit, self.page_size_cap)})
