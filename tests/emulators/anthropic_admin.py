"""Emulator of Anthropic's Admin API: cost report, messages usage report and workspaces.

Speaks ``GET /v1/organizations/cost_report``,
``/v1/organizations/usage_report/messages`` and ``/v1/organizations/workspaces``
as documented (platform.claude.com/docs/en/api/admin): RFC 3339
``starting_at``/``ending_at``, ``bucket_width``, ``group_by[]`` (the plain
repeated form is accepted too), bucket ``limit``, the ``page`` cursor with
``has_more``/``next_page``; cost amounts are decimal strings **in cents**;
a null ``workspace_id`` is the default workspace. Requests must carry
``x-api-key`` (the admin key) and ``anthropic-version``.

Throttling is a 429 ``rate_limit_error`` with ``retry-after`` (whole seconds)
and ``retry-after-ms``.

The guard's endpoints: ``GET /v1/organizations/api_keys`` (``limit``,
``after_id``, ``before_id``, ``status``, ``workspace_id``),
``GET /v1/organizations/api_keys/{id}`` and ``POST /v1/organizations/api_keys/{id}``
(``{"name"?, "status"?}``; the updated key back). The keys are the dataset's,
``active``, scoped to their workspace by its real id (the default workspace's
too). With ``write_key`` set, that key also reads and only it writes (the usage
key gets 403). Every write is recorded in ``writes``; one answered by an injected
fault is only in ``requests``.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections import defaultdict
from decimal import Decimal
from typing import Any

from tests.emulators.ai_dataset import ANTHROPIC_TOKEN_TYPE, STREAMS, AICostRow, AIDataset, AIUsageRow
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

WIDTHS = {"1m": dt.timedelta(minutes=1), "1h": dt.timedelta(hours=1), "1d": dt.timedelta(days=1)}
USAGE_LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}  # (default, max) buckets per page
COST_LIMITS = (7, 31)
USAGE_GROUP_BY = {
    "api_key_id",
    "workspace_id",
    "model",
    "service_tier",
    "context_window",
    "inference_geo",
    "speed",
    "account_id",
    "service_account_id",
}
COST_GROUP_BY = {"workspace_id", "description"}

DEFAULT_ADMIN_KEY = "sk-ant-admin01-EMULATORtestKEY0123456789abcdef-AAAA"
DEFAULT_WORKSPACE_REAL_ID = "wrkspc_01DEFAULTdef"
DEFAULT_WRITE_KEY = "sk-ant-admin01-EMULATORwriteKEY9876543210fedcba-WWWW"
KEY_STATUSES = ("active", "inactive", "archived")


class BadRequest(Exception):
    pass


def _error(status: int, type_: str, message: str) -> Response:
    return Response(status, {"type": "error", "error": {"type": type_, "message": message}})


def rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str, name: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name}: invalid RFC 3339 timestamp {value!r}") from None
    if t.tzinfo is None:
        raise BadRequest(f"{name}: timestamp needs a UTC offset: {value!r}")
    return t.astimezone(dt.UTC)


def snap(t: dt.datetime, width: str) -> dt.datetime:
    if width == "1d":
        return t.replace(hour=0, minute=0, second=0, microsecond=0)
    if width == "1h":
        return t.replace(minute=0, second=0, microsecond=0)
    return t.replace(second=0, microsecond=0)


def encode_page(t: dt.datetime) -> str:
    return "page_" + base64.b64encode(rfc3339(t).encode()).decode()


def decode_page(token: str) -> dt.datetime:
    try:
        return parse_time(base64.b64decode(token.removeprefix("page_"), validate=True).decode(), "page")
    except (ValueError, UnicodeDecodeError, BadRequest):
        raise BadRequest(f"page: invalid page token {token!r}") from None


def cents(usd: Decimal) -> str:
    """USD → the API's amount: cents as a decimal string ("123.45" is $1.2345)."""
    return format((usd * 100).normalize(), "f")


class AnthropicAdminEmulator(RecordsWrites, ServesAIDataset, Emulator):
    """``/v1/organizations/*`` of the Anthropic Admin API, driven by an ``AIDataset``.

    ``page_size_cap`` makes pages hold fewer buckets than ``limit`` asks for, to
    exercise pagination with short windows.
    """

    name = "anthropic-admin"
    provider = "anthropic"

    def __init__(
        self,
        dataset: AIDataset,
        admin_key: str = DEFAULT_ADMIN_KEY,
        *,
        page_size_cap: int | None = None,
        scenario: Scenario | None = None,
        write_key: str | None = None,
    ):
        """``scenario`` serves usage (every bucket width) from a ``Scenario`` on its clock, published late."""
        super().__init__()
        self.dataset = dataset
        self.scenario = scenario
        self.admin_key = admin_key
        self.page_size_cap = page_size_cap
        self.write_key = write_key
        self.writes: list[WriteCall] = []
        created = rfc3339(dataset.now - dt.timedelta(days=300))
        self.api_keys: dict[str, dict[str, Any]] = {}
        for st in STREAMS:
            if st.provider == "anthropic" and st.api_key_id not in self.api_keys:
                self.api_keys[st.api_key_id] = {
                    "type": "api_key",
                    "id": st.api_key_id,
                    "name": f"{st.api_key_id.removeprefix('apikey_')} service key",
                    "created_at": created,
                    "created_by": {"id": "user_01EMULATOR", "type": "user"},
                    "expires_at": None,
                    "partial_key_hint": f"sk-ant-api03-{st.api_key_id[-2:]}...AAAA",
                    "principal": None,
                    "scope": {"type": "workspace", "workspace_id": st.account_id or DEFAULT_WORKSPACE_REAL_ID},
                    "status": "active",
                }

    def throttle_response(self, fault: Fault) -> Response:
        resp = _error(429, "rate_limit_error", "Number of requests has exceeded your rate limit; try again later.")
        resp.headers.update(retry_after_headers(fault))
        return resp

    def wrong_shape_body(self, request: Request) -> Any:
        return {"data": [{"starting_at": "yesterday", "results": "none"}], "has_more": "perhaps"}

    def handle(self, request: Request) -> Response:
        presented = request.headers.get("x-api-key")
        key = (
            "admin"
            if presented == self.admin_key
            else "write"
            if self.write_key and presented == self.write_key
            else ""
        )
        if not key:
            return _error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version: header is required")
        if request.path.startswith("/v1/organizations/api_keys"):
            return self._api_keys(request, key)
        if request.method != "GET":
            return _error(405, "invalid_request_error", f"Method {request.method} not allowed")
        try:
            if request.path == "/v1/organizations/cost_report":
                return Response(200, self._cost_report(request))
            if request.path == "/v1/organizations/usage_report/messages":
                return Response(200, self._usage_report(request))
            if request.path == "/v1/organizations/workspaces":
                return Response(200, self._workspaces(request))
        except BadRequest as e:
            return _error(400, "invalid_request_error", str(e))
        return _error(404, "not_found_error", f"Not found: {request.path}")

    # -- buckets ---------------------------------------------------------------------
    def _window(
        self, request: Request, widths: tuple[str, ...], limits: dict[str, tuple[int, int]]
    ) -> tuple[list[dt.datetime], dt.timedelta, bool]:
        starting_at = request.q("starting_at")
        if not starting_at:
            raise BadRequest("starting_at: field required")
        start = parse_time(starting_at, "starting_at")
        ending_at = request.q("ending_at")
        end = parse_time(ending_at, "ending_at") if ending_at else None
        bw = request.q("bucket_width") or "1d"
        if bw not in widths:
            raise BadRequest(f"bucket_width: must be one of {', '.join(widths)}")
        default, maximum = limits[bw]
        try:
            limit = int(request.q("limit") or default)
        except ValueError:
            raise BadRequest("limit: must be an integer") from None
        if not 1 <= limit <= maximum:
            raise BadRequest(f"limit: must be between 1 and {maximum} for bucket_width {bw}")
        width = WIDTHS[bw]
        now = self.scenario.now if self.scenario else self.dataset.now
        stop = now if end is None else min(end, now)
        first = snap(start, bw)
        page = request.q("page")
        if page:
            first = decode_page(page)
        n = min(limit, self.page_size_cap or limit)
        starts, more = bucket_starts(first, stop, width, n)
        return starts, width, more

    @staticmethod
    def _group_by(request: Request, allowed: set[str]) -> list[str]:
        fields = request.qlist("group_by")
        for f in fields:
            if f not in allowed:
                raise BadRequest(f"group_by: invalid value {f!r}")
        return fields

    @staticmethod
    def _page(data: list[dict[str, Any]], next_start: dt.datetime | None) -> dict[str, Any]:
        return {
            "data": data,
            "has_more": next_start is not None,
            "next_page": encode_page(next_start) if next_start is not None else None,
        }

    # -- cost report -----------------------------------------------------------------
    def _cost_report(self, request: Request) -> dict[str, Any]:
        group_by = self._group_by(request, COST_GROUP_BY)
        starts, width, more = self._window(request, ("1d",), {"1d": COST_LIMITS})
        data = []
        for s in starts:
            groups: dict[tuple[Any, ...], list[AICostRow]] = defaultdict(list)
            for c in self._costs_by_day.get(s.date(), ()):
                key = (
                    c.account_id if "workspace_id" in group_by else None,
                    (c.line_item, c.model, c.billed_type) if "description" in group_by else None,
                )
                groups[key].append(c)
            results = []
            for (workspace_id, desc), rows in groups.items():
                token_cost = bool(desc and desc[1])
                results.append(
                    {
                        "amount": cents(sum((r.amount for r in rows), Decimal(0))),
                        "currency": "USD",
                        "workspace_id": workspace_id,
                        "description": desc[0] if desc else None,
                        "cost_type": ("tokens" if token_cost else "web_search") if desc else None,
                        "context_window": "0-200k" if token_cost else None,
                        "model": desc[1] if token_cost else None,
                        "service_tier": "standard" if token_cost else None,
                        "token_type": ANTHROPIC_TOKEN_TYPE[desc[2]] if token_cost else None,
                        "inference_geo": None,
                    }
                )
            data.append({"starting_at": rfc3339(s), "ending_at": rfc3339(s + width), "results": results})
        return self._page(data, starts[-1] + width if more and starts else None)

    # -- usage report ----------------------------------------------------------------
    def _usage_report(self, request: Request) -> dict[str, Any]:
        group_by = self._group_by(request, USAGE_GROUP_BY)
        filters = {
            "workspace_id": set(request.qlist("workspace_ids")),
            "api_key_id": set(request.qlist("api_key_ids")),
            "model": set(request.qlist("models")),
        }
        starts, width, more = self._window(request, tuple(WIDTHS), USAGE_LIMITS)
        data = []
        for s in starts:
            rows = (self.scenario or self.dataset).rows_between("anthropic", "messages", s, s + width)
            groups: dict[tuple[Any, ...], list[AIUsageRow]] = defaultdict(list)
            for r in rows:
                values: dict[str, Any] = {"workspace_id": r.account_id, "api_key_id": r.api_key_id, "model": r.model}
                if any(want and values[f] not in want for f, want in filters.items()):
                    continue
                groups[tuple(values.get(f) for f in group_by)].append(r)
            results = []
            for key, rs in groups.items():
                g = dict(zip(group_by, key, strict=True))
                results.append(
                    {
                        "uncached_input_tokens": sum(r.input for r in rs),
                        "cache_creation": {
                            "ephemeral_1h_input_tokens": sum(r.cache_write_1h for r in rs),
                            "ephemeral_5m_input_tokens": sum(r.cache_write_5m for r in rs),
                        },
                        "cache_read_input_tokens": sum(r.cache_read for r in rs),
                        "output_tokens": sum(r.output for r in rs),
                        "server_tool_use": {"web_search_requests": 0},
                        "api_key_id": g.get("api_key_id"),
                        "workspace_id": g.get("workspace_id"),
                        "model": g.get("model"),
                        "service_tier": g.get("service_tier"),
                        "context_window": g.get("context_window"),
                        "inference_geo": g.get("inference_geo"),
                    }
                )
            data.append({"starting_at": rfc3339(s), "ending_at": rfc3339(s + width), "results": results})
        return self._page(data, starts[-1] + width if more and starts else None)

    # -- workspaces ------------------------------------------------------------------
    def _workspaces(self, request: Request) -> dict[str, Any]:
        try:
            limit = int(request.q("limit") or 20)
        except ValueError:
            raise BadRequest("limit: must be an integer") from None
        if not 1 <= limit <= 1000:
            raise BadRequest("limit: must be between 1 and 1000")
        include_archived = (request.q("include_archived") or "false").lower() == "true"
        include_default = (request.q("include_default") or "false").lower() == "true"
        created = self.dataset.now - dt.timedelta(days=400)
        items = []
        for i, a in enumerate(self.dataset.accounts["anthropic"]):
            if a.archived and not include_archived:
                continue
            if a.id is None and not include_default:
                continue  # the default workspace is listed only on request, under its real id
            items.append(
                {
                    "id": a.id or DEFAULT_WORKSPACE_REAL_ID,
                    "type": "workspace",
                    "name": a.name,
                    "created_at": rfc3339(created + dt.timedelta(days=i)),
                    "archived_at": rfc3339(created + dt.timedelta(days=200)) if a.archived else None,
                    "display_color": "#6C5BB9",
                    "tags": dict(a.tags),
                    "compartment_id": f"cmpt_{i:04d}",
                    "data_residency": {"workspace_geo": "us", "allowed_inference_geos": "unrestricted"},
                    "external_key_id": None,
                    "user_profile_id": None,
                }
            )
        after = request.q("after_id")
        rest = after_id(items, after)
        if rest is None:
            raise BadRequest(f"after_id: no such workspace {after!r}")
        return id_page(rest, limit, self.page_size_cap)

    # -- API keys (the guard's writes) -----------------------------------------------------
    def _api_keys(self, request: Request, key: str) -> Response:
        parts = request.path.split("/")  # "", v1, organizations, api_keys[, {id}]
        if len(parts) == 4:
            if request.method != "GET":
                return _error(405, "invalid_request_error", f"Method {request.method} not allowed")
            return self._list_api_keys(request)
        if len(parts) != 5:
            return _error(404, "not_found_error", f"Not found: {request.path}")
        if request.method == "GET":
            found = self.api_keys.get(parts[4])
            if found is None:
                return _error(404, "not_found_error", f"API key {parts[4]} not found")
            return Response(200, dict(found))
        if request.method != "POST":
            return _error(405, "invalid_request_error", f"Method {request.method} not allowed")
        try:
            body = request.json()
        except ValueError:
            body = request.body.decode("utf-8", "replace")
        self.record_write(request.method, request.path, body, key)
        if self.write_key and key != "write":
            return _error(403, "permission_error", "this API key does not have permission to update API keys")
        found = self.api_keys.get(parts[4])
        if found is None:
            return _error(404, "not_found_error", f"API key {parts[4]} not found")
        if not isinstance(body, dict) or set(body) - {"name", "status"}:
            return _error(400, "invalid_request_error", "body: only name and status can be updated")
        status = body.get("status")
        if status is not None and status not in KEY_STATUSES:
            return _error(400, "invalid_request_error", f"status: must be one of {', '.join(KEY_STATUSES)}")
        if found["status"] == "archived" and status is not None:
            return _error(400, "invalid_request_error", "an archived API key cannot change status")
        if status is not None:
            found["status"] = status
        if body.get("name"):
            found["name"] = body["name"]
        return Response(200, dict(found))

    def _list_api_keys(self, request: Request) -> Response:
        try:
            limit = int(request.q("limit") or 20)
        except ValueError:
            return _error(400, "invalid_request_error", "limit: must be an integer")
        if not 1 <= limit <= 1000:
            return _error(400, "invalid_request_error", "limit: must be between 1 and 1000")
        items = [dict(k) for k in self.api_keys.values()]
        if request.q("status"):
            items = [k for k in items if k["status"] == request.q("status")]
        if request.q("workspace_id"):
            items = [k for k in items if k["scope"]["workspace_id"] == request.q("workspace_id")]
        after = request.q("after_id")
        rest = after_id(items, after)
        if rest is None:
            return _error(400, "invalid_request_error", f"after_id: no such API key {after!r}")
        return Response(200, id_page(rest, limit, self.page_size_cap))
