"""Azure Cost Management (ARM) query and forecast, served from ``dataset.py``.

Wire format: ``POST {scope}/providers/Microsoft.CostManagement/query?api-version=...``
and ``.../forecast`` with a ``QueryDefinition`` / ``ForecastDefinition`` JSON
body, answered with ``{"id", "name", "type", "properties": {"nextLink",
"columns": [{"name", "type"}], "rows": [[...]]}}``. Cost columns are named
after the aggregated field (``PreTaxCost`` or ``Cost``), ``UsageDate`` is a
number like 20261121, a ``TagKey`` grouping adds ``TagKey`` and ``TagValue``
columns (both empty for untagged cost), and ``Currency`` is the billing
currency of the subscription. ``nextLink`` carries a ``$skiptoken``; the
client posts the same body again with it. ``GET /subscriptions/{id}`` gives a
display name. Requests need ``Authorization: Bearer <token>``.

Throttling is a 429 with the ``x-ms-ratelimit-microsoft.costmanagement-*-retry-after``
headers and no ``Retry-After``, as Cost Management sends it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections import defaultdict
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from tests.emulators.common import offset_token, query_digest, read_offset_token
from tests.emulators.dataset import CloudRow, Dataset
from tests.emulators.server import Emulator, Fault, Request, Response

ROUTE = re.compile(r"^(?P<scope>/.+?)/providers/Microsoft\.CostManagement/(?P<op>query|forecast)$", re.IGNORECASE)
SUBSCRIPTION_ROUTE = re.compile(r"^/subscriptions/(?P<id>[^/]+)$", re.IGNORECASE)
COST_FIELDS = {"pretaxcost": "PreTaxCost", "cost": "Cost", "pretaxcostusd": "PreTaxCostUSD", "costusd": "CostUSD"}
DIMENSIONS = {
    "servicename": "ServiceName",
    "meter": "Meter",
    "subscriptionid": "SubscriptionId",
    "subscriptionname": "SubscriptionName",
}
QUERY_TYPES = {"usage", "actualcost", "amortizedcost"}
FORECAST_HISTORY_DAYS = 7
TENANT_ID = "72f988bf-0000-0000-0000-000000000000"
RETRY_HEADERS = (
    "x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after",
    "x-ms-ratelimit-microsoft.costmanagement-entity-retry-after",
    "x-ms-ratelimit-microsoft.costmanagement-tenant-retry-after",
)


class ArmError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _bad(message: str) -> ArmError:
    return ArmError(400, "BadRequest", message)


def _time(value: Any, what: str) -> dt.date:
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).date()
    except ValueError:
        raise _bad(f"Invalid {what}: {value!r}") from None


def _number(d: Decimal) -> float:
    return float(d)


class AzureCostEmulator(Emulator):
    """Cost Management query/forecast for the dataset's Azure subscriptions."""

    name = "azure-cost"

    def __init__(
        self,
        dataset: Dataset,
        *,
        token: str = "emulator-access-token",
        page_size: int = 1000,
        column_order: str = "default",  # or "reversed": clients must read columns by name
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.rows = dataset.rows("azure")
        self.token = token
        self.page_size = page_size
        self.column_order = column_order
        self.names = {r.account_id.lower(): r.account_name for r in self.rows}

    # -- helpers for tests ----------------------------------------------------------------------
    def operations(self) -> list[str]:
        out = []
        for r in self.requests:
            m = ROUTE.match(r.path)
            out.append(m.group("op").lower() if m else f"{r.method} {r.path}")
        return out

    # -- faults ------------------------------------------------------------------------------------
    def throttle_response(self, fault: Fault) -> Response:
        headers = {h: f"{fault.retry_after:g}" for h in RETRY_HEADERS}
        headers["x-ms-ratelimit-microsoft.costmanagement-qpu-remaining"] = "QueryWorkloadUnits=0"
        headers["x-ms-request-id"] = str(uuid.uuid4())
        return Response(429, {"error": {"code": "429", "message": "Too many requests. Please retry."}}, headers)

    # -- serving -----------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        try:
            self._check_auth(request)
            if not request.q("api-version"):
                raise ArmError(400, "MissingApiVersionParameter", "The api-version query parameter is required.")
            sub = SUBSCRIPTION_ROUTE.match(request.path)
            if request.method == "GET" and sub:
                return Response(200, self._subscription(sub.group("id")), self._headers())
            m = ROUTE.match(request.path)
            if request.method != "POST" or not m:
                raise ArmError(404, "NotFound", f"No route for {request.method} {request.path}")
            try:
                body = json.loads(request.body or b"null")
            except ValueError:
                raise _bad("The request body is not valid JSON.") from None
            if not isinstance(body, dict):
                raise _bad("The request body must be a JSON object.")
            rows = self._scope_rows(m.group("scope"))
            if m.group("op").lower() == "query":
                result = self._query(request, body, rows)
            else:
                result = self._forecast(request, body, rows)
            return Response(200, result, self._headers())
        except ArmError as e:
            return Response(e.status, {"error": {"code": e.code, "message": str(e)}}, self._headers())

    @staticmethod
    def _headers() -> dict[str, str]:
        return {
            "x-ms-request-id": str(uuid.uuid4()),
            "x-ms-ratelimit-microsoft.costmanagement-qpu-remaining": "QueryWorkloadUnits=999",
        }

    def _check_auth(self, request: Request) -> None:
        auth = request.headers.get("authorization", "")
        if not auth:
            raise ArmError(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.")
        if auth != f"Bearer {self.token}":
            raise ArmError(401, "InvalidAuthenticationToken", "The access token is invalid.")

    def _subscription(self, sub: str) -> dict[str, Any]:
        name = self.names.get(sub.lower())
        if name is None:
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")
        return {
            "id": f"/subscriptions/{sub}",
            "authorizationSource": "RoleBased",
            "subscriptionId": sub,
            "tenantId": TENANT_ID,
            "displayName": name,
            "state": "Enabled",
            "subscriptionPolicies": {"locationPlacementId": "Public_2014-09-01", "quotaId": "PayAsYouGo_2014-09-01"},
        }

    def _scope_rows(self, scope: str) -> list[CloudRow]:
        parts = scope.strip("/").split("/")
        if len(parts) == 2 and parts[0].lower() == "subscriptions":
            if parts[1].lower() not in self.names:
                raise ArmError(404, "SubscriptionNotFound", f"The subscription '{parts[1]}' could not be found.")
            return [r for r in self.rows if r.account_id.lower() == parts[1].lower()]
        if len(parts) == 4 and [p.lower() for p in parts[:3]] == [
            "providers",
            "microsoft.management",
            "managementgroups",
        ]:
            return list(self.rows)
        if len(parts) == 4 and [p.lower() for p in parts[:3]] == ["providers", "microsoft.billing", "billingaccounts"]:
            return list(self.rows)
        raise _bad(f"Scope {scope} is not supported by this emulator.")

    # -- query -------------------------------------------------------------------------------------
    @staticmethod
    def _dimension(row: CloudRow, name: str) -> str:
        key = name.lower()
        if key == "servicename":
            return row.service_name
        if key == "meter":
            return row.extra.get("meter", "")
        if key == "subscriptionid":
            return row.account_id
        if key == "subscriptionname":
            return row.account_name
        raise _bad(f"Dimension {name} is not supported.")

    @staticmethod
    def _tag(row: CloudRow, key: str) -> str:
        """Tag keys are case-insensitive in Azure: the team tag, or another (``tag:<key>`` in the row's extra)."""
        if key.lower() == "team":
            return row.team or ""
        tags = {k[4:].lower(): v for k, v in row.extra.items() if k.startswith("tag:")}
        return tags.get(key.lower(), "")

    def _matches(self, flt: Any, row: CloudRow) -> bool:
        if not isinstance(flt, dict):
            raise _bad("Invalid filter.")
        if flt.get("and") is not None:
            parts = flt["and"]
            if not isinstance(parts, list) or len(parts) < 2:
                raise _bad("Filter 'and' needs at least 2 expressions.")
            return all(self._matches(p, row) for p in parts)
        if flt.get("or") is not None:
            parts = flt["or"]
            if not isinstance(parts, list) or len(parts) < 2:
                raise _bad("Filter 'or' needs at least 2 expressions.")
            return any(self._matches(p, row) for p in parts)
        for kind in ("dimensions", "tags"):
            spec = flt.get(kind)
            if spec is None:
                continue
            if spec.get("operator") not in ("In", "Equal"):
                raise _bad(f"Operator {spec.get('operator')!r} is not supported.")
            values = [str(v).lower() for v in spec.get("values") or []]
            actual = self._dimension(row, spec["name"]) if kind == "dimensions" else self._tag(row, spec["name"])
            return actual.lower() in values
        raise _bad("Filter needs and, or, dimensions or tags.")

    def _period(self, body: dict[str, Any]) -> tuple[dt.date, dt.date]:
        timeframe = str(body.get("timeframe") or "")
        today = self.dataset.today
        if timeframe.lower() == "custom":
            tp = body.get("timePeriod")
            if not isinstance(tp, dict):
                raise _bad("timePeriod is required when timeframe is Custom.")
            start, end = _time(tp.get("from"), "timePeriod.from"), _time(tp.get("to"), "timePeriod.to")
            if end < start:
                raise _bad("timePeriod.to must not be before timePeriod.from.")
            return start, end
        if timeframe.lower() == "monthtodate":
            return today.replace(day=1), today
        raise _bad(f"Timeframe {timeframe!r} is not supported by this emulator.")

    @staticmethod
    def _aggregations(dataset: dict[str, Any]) -> list[str]:
        agg = dataset.get("aggregation")
        if not isinstance(agg, dict) or not agg or len(agg) > 2:
            raise _bad("dataset.aggregation must have one or two entries.")
        fields = []
        for alias, spec in agg.items():
            if not isinstance(spec, dict) or str(spec.get("function", "")).lower() != "sum":
                raise _bad(f"Aggregation {alias} must use function Sum.")
            name = COST_FIELDS.get(str(spec.get("name", "")).lower())
            if name is None:
                raise _bad(f"Aggregation {alias} names an unknown column {spec.get('name')!r}.")
            fields.append(name)
        return fields

    def _offset(self, request: Request, body: dict[str, Any]) -> int:
        token = request.q("$skiptoken")
        if not token:
            return 0
        try:
            digest, offset = read_offset_token(token)
        except (ValueError, KeyError, TypeError):
            raise _bad("The $skiptoken is invalid.") from None
        if digest != query_digest(body):
            raise _bad("The $skiptoken does not belong to this query.")
        return offset

    def _page(
        self, request: Request, body: dict[str, Any], columns: list[dict[str, str]], rows: list[list[Any]], kind: str
    ) -> dict[str, Any]:
        if self.column_order == "reversed":
            order = list(reversed(range(len(columns))))
            columns = [columns[i] for i in order]
            rows = [[r[i] for i in order] for r in rows]
        offset = self._offset(request, body)
        page = rows[offset : offset + self.page_size]
        next_link = None
        if offset + self.page_size < len(rows):
            token = quote(offset_token(query_digest(body), offset + self.page_size), safe="")
            next_link = f"{self.url}{request.path}?api-version={request.q('api-version')}&$skiptoken={token}"
        qid = str(uuid.uuid4())
        return {
            "id": f"{request.path}/{qid}",
            "name": qid,
            "type": f"Microsoft.CostManagement/{kind}",
            "location": None,
            "sku": None,
            "eTag": None,
            "properties": {"nextLink": next_link, "columns": columns, "rows": page},
        }

    def _query(self, request: Request, body: dict[str, Any], scope_rows: list[CloudRow]) -> dict[str, Any]:
        if str(body.get("type", "")).lower() not in QUERY_TYPES:
            raise _bad(f"Query type {body.get('type')!r} is not valid.")
        start, end = self._period(body)
        dataset = body.get("dataset")
        if not isinstance(dataset, dict):
            raise _bad("dataset is required.")
        granularity = str(dataset.get("granularity") or "None")
        if granularity.lower() not in ("daily", "none"):
            raise _bad(f"Granularity {granularity!r} is not supported.")
        daily = granularity.lower() == "daily"
        fields = self._aggregations(dataset)
        grouping = dataset.get("grouping") or []
        if not isinstance(grouping, list) or len(grouping) > 2:
            raise _bad("At most 2 groupings are allowed.")
        for g in grouping:
            if g.get("type") == "Dimension":
                self._dimension(self.rows[0], str(g.get("name")))
            elif g.get("type") != "TagKey" or not g.get("name"):
                raise _bad("Grouping type must be Dimension or TagKey with a name.")
        flt = dataset.get("filter")
        rows = [r for r in scope_rows if start <= r.day <= end and (flt is None or self._matches(flt, r))]

        sums: dict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
        for r in rows:
            key: list[Any] = [int(r.day.strftime("%Y%m%d"))] if daily else []
            for g in grouping:
                if g["type"] == "Dimension":
                    key.append(self._dimension(r, g["name"]))
                else:
                    value = self._tag(r, g["name"])
                    key.extend([g["name"] if value else "", value])
            key.append(r.currency)
            sums[tuple(key)] += r.amount

        columns = [{"name": f, "type": "Number"} for f in fields]
        if daily:
            columns.append({"name": "UsageDate", "type": "Number"})
        for g in grouping:
            if g["type"] == "Dimension":
                columns.append({"name": DIMENSIONS[g["name"].lower()], "type": "String"})
            else:
                columns.extend([{"name": "TagKey", "type": "String"}, {"name": "TagValue", "type": "String"}])
        columns.append({"name": "Currency", "type": "String"})
        out_rows = [[_number(sums[k]) for _ in fields] + list(k) for k in sorted(sums)]
        return self._page(request, body, columns, out_rows, "query")

    # -- forecast ----------------------------------------------------------------------------------
    def forecast_daily_mean(self, scope_rows: list[CloudRow]) -> dict[str, Decimal]:
        """Mean daily cost per currency over the last 7 complete days: what the forecast repeats."""
        today = self.dataset.today
        start = today - dt.timedelta(days=FORECAST_HISTORY_DAYS)
        sums: dict[str, Decimal] = defaultdict(Decimal)
        for r in scope_rows:
            if start <= r.day < today:
                sums[r.currency] += r.amount
        return {c: s / FORECAST_HISTORY_DAYS for c, s in sums.items()}

    def _forecast(self, request: Request, body: dict[str, Any], scope_rows: list[CloudRow]) -> dict[str, Any]:
        if str(body.get("type", "")).lower() not in QUERY_TYPES:
            raise _bad(f"Forecast type {body.get('type')!r} is not valid.")
        start, end = self._period(body)
        dataset = body.get("dataset")
        if not isinstance(dataset, dict) or str(dataset.get("granularity", "")).lower() != "daily":
            raise _bad("Forecast dataset must have Daily granularity.")
        fields = self._aggregations(dataset)
        today = self.dataset.today
        means = self.forecast_daily_mean(scope_rows)
        out: list[list[Any]] = []
        day = start
        while day <= end:
            stamp = int(day.strftime("%Y%m%d"))
            if day > today:
                for currency, mean in sorted(means.items()):
                    out.append([_number(mean) for _ in fields] + [stamp, "Forecast", currency])
            elif body.get("includeActualCost"):
                actual: dict[str, Decimal] = defaultdict(Decimal)
                for r in scope_rows:
                    if r.day == day:
                        actual[r.currency] += r.amount
                for currency, amount in sorted(actual.items()):
                    out.append([_number(amount) for _ in fields] + [stamp, "Actual", currency])
            day += dt.timedelta(days=1)
        columns = [{"name": f, "type": "Number"} for f in fields] + [
            {"name": "UsageDate", "type": "Number"},
            {"name": "CostStatus", "type": "String"},
            {"name": "Currency", "type": "String"},
        ]
        return self._page(request, body, columns, out, "forecast")
