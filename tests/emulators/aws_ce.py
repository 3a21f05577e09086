"""AWS Cost Explorer and STS, as far as the exporter uses them, served from ``dataset.py``.

Wire format: Cost Explorer is AWS JSON 1.1 (``POST /`` with
``X-Amz-Target: AWSInsightsIndexService.<Operation>`` and
``Content-Type: application/x-amz-json-1.1``); STS is the query protocol
(form-encoded ``Action=GetCallerIdentity``, XML reply). Both share one
endpoint, as with ``endpoint_url`` in the exporter's config.

Implemented: ``GetCostAndUsage`` (DAILY/MONTHLY, Filter with And/Or/Not over
Dimensions and Tags, up to two GroupBy keys, tag groups as ``key$value``,
``NextPageToken`` pagination with ``page_size`` groups a page),
``GetDimensionValues`` (with attributes: LINKED_ACCOUNT → description), ``GetTags`` (keys, or one
key's values) and
``GetCostForecast`` (mean of the last 7 complete days, per day of the
period). Errors are JSON 1.1 error bodies with ``__type``; throttling is
``LimitExceededException`` with HTTP 400, as Cost Explorer sends it.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import defaultdict
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from tests.emulators.common import offset_token, query_digest, read_offset_token
from tests.emulators.dataset import CloudRow, Dataset
from tests.emulators.server import Emulator, Fault, Request, Response

TARGET_PREFIX = "AWSInsightsIndexService."
COST_METRICS = {
    "AmortizedCost",
    "BlendedCost",
    "NetAmortizedCost",
    "NetUnblendedCost",
    "UnblendedCost",
    "NormalizedUsageAmount",
    "UsageQuantity",
}
FORECAST_METRICS = {"AMORTIZED_COST", "BLENDED_COST", "NET_AMORTIZED_COST", "NET_UNBLENDED_COST", "UNBLENDED_COST"}
GROUP_DIMENSIONS = {"SERVICE", "LINKED_ACCOUNT", "RECORD_TYPE", "USAGE_TYPE", "REGION"}
FORECAST_HISTORY_DAYS = 7


class CeError(Exception):
    def __init__(self, type_: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.type = type_
        self.status = status


def _validation(message: str) -> CeError:
    return CeError("ValidationException", message)


def _date(value: Any, what: str) -> dt.date:
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise _validation(f"{what} is not a valid date (YYYY-MM-DD): {value!r}") from None


def _amount(d: Decimal) -> str:
    return format(d.quantize(Decimal("0.0000000001")).normalize(), "f")


class CostExplorerData:
    """The Cost Explorer answers for one dataset; pure, so a test can also seed another server with them."""

    def __init__(self, dataset: Dataset, page_size: int = 500, tag_keys: tuple[str, ...] = ("team",)) -> None:
        self.dataset = dataset
        self.rows = dataset.rows("aws")
        self.page_size = page_size
        self.tag_keys = tag_keys
        self.names = {r.account_id: r.account_name for r in self.rows}
        self._cache: dict[str, tuple[list[tuple[dt.date, dt.date, Any]], str, list[Any]]] = {}

    # -- row attributes -----------------------------------------------------------------------
    @staticmethod
    def dimension(row: CloudRow, key: str) -> str:
        if key == "SERVICE":
            return row.service_name
        if key == "LINKED_ACCOUNT":
            return row.account_id
        if key == "RECORD_TYPE":
            return row.extra.get("record_type", "Usage")
        if key == "USAGE_TYPE":
            return row.extra.get("usage_type", "")
        if key == "REGION":
            return "us-east-1"
        raise _validation(f"Dimension {key} is not supported here")

    def tag(self, row: CloudRow, key: str) -> str:
        if key in self.tag_keys:
            return row.team or ""
        return row.extra.get(f"tag:{key}", "")

    def tags(self, body: dict[str, Any]) -> dict[str, Any]:
        """``GetTags``: the tag keys with cost in the period, or with ``TagKey`` the values of that key (an
        untagged row's empty value left out), ``Filter`` applied, ``NextPageToken`` pages."""
        start, end = self._period(body)
        rows = self._filtered(body, start, end)
        key = body.get("TagKey")
        if key:
            values = sorted({v for r in rows if (v := self.tag(r, key))})
        else:
            values = sorted({*self.tag_keys, *(k[4:] for r in rows for k in r.extra if k.startswith("tag:"))})
        search = str(body.get("SearchString") or "")
        values = [v for v in values if search in v]
        offset = self._offset(body)
        page = values[offset : offset + self.page_size]
        out: dict[str, Any] = {"Tags": page, "ReturnSize": len(page), "TotalSize": len(values)}
        if offset + self.page_size < len(values):
            out["NextPageToken"] = self._token(body, offset + self.page_size)
        return out

    def matches(self, expr: Any, row: CloudRow) -> bool:
        if not isinstance(expr, dict):
            raise _validation("Expression must be an object")
        present = [k for k in ("And", "Or", "Not", "Dimensions", "Tags", "CostCategories") if expr.get(k) is not None]
        if len(present) != 1:
            raise _validation("Expression must contain exactly one of And, Or, Not, Dimensions, Tags, CostCategories")
        kind = present[0]
        if kind in ("And", "Or"):
            parts = expr[kind]
            if not isinstance(parts, list) or len(parts) < 2:
                raise _validation(f"{kind} must have at least 2 expressions")
            results = [self.matches(p, row) for p in parts]
            return all(results) if kind == "And" else any(results)
        if kind == "Not":
            return not self.matches(expr["Not"], row)
        if kind == "CostCategories":
            raise _validation("CostCategories are not supported here")
        spec = expr[kind]
        key = spec.get("Key")
        values = spec.get("Values") or []
        options = spec.get("MatchOptions") or ["EQUALS"]
        if not key:
            raise _validation(f"{kind}.Key is required")
        actual = self.dimension(row, key) if kind == "Dimensions" else self.tag(row, key)
        if "ABSENT" in options:
            return actual == ""
        if "CASE_INSENSITIVE" in options:
            actual, values = actual.lower(), [str(v).lower() for v in values]
        if "STARTS_WITH" in options:
            return any(actual.startswith(v) for v in values)
        if "ENDS_WITH" in options:
            return any(actual.endswith(v) for v in values)
        if "CONTAINS" in options:
            return any(v in actual for v in values)
        return actual in values

    def _filtered(self, body: dict[str, Any], start: dt.date, end: dt.date) -> list[CloudRow]:
        flt = body.get("Filter")
        return [r for r in self.rows if start <= r.day < end and (flt is None or self.matches(flt, r))]

    @staticmethod
    def _period(body: dict[str, Any]) -> tuple[dt.date, dt.date]:
        tp = body.get("TimePeriod")
        if not isinstance(tp, dict):
            raise _validation("TimePeriod is required")
        start, end = _date(tp.get("Start"), "Start"), _date(tp.get("End"), "End")
        if start >= end:
            raise _validation("Start date must be before End date")
        return start, end

    # -- pagination ----------------------------------------------------------------------------
    @staticmethod
    def _digest(body: dict[str, Any]) -> str:
        return query_digest(body, ignore=("NextPageToken", "MaxResults"))

    def _token(self, body: dict[str, Any], offset: int) -> str:
        return offset_token(self._digest(body), offset)

    def _offset(self, body: dict[str, Any]) -> int:
        token = body.get("NextPageToken")
        if not token:
            return 0
        try:
            digest, offset = read_offset_token(str(token))
        except (ValueError, KeyError, TypeError):
            raise CeError("InvalidNextTokenException", "The NextPageToken is invalid") from None
        if digest != self._digest(body):
            raise CeError("InvalidNextTokenException", "The NextPageToken does not belong to this request")
        return offset

    # -- operations ------------------------------------------------------------------------------
    def _buckets(self, granularity: str, start: dt.date, end: dt.date) -> list[tuple[dt.date, dt.date]]:
        last = min(end, self.dataset.today + dt.timedelta(days=1))
        out = []
        d = start
        while d < last:
            if granularity == "DAILY":
                nxt = d + dt.timedelta(days=1)
            else:
                nxt = (d.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
            out.append((d, min(nxt, end)))
            d = nxt
        return out

    def _group_items(self, body: dict[str, Any]) -> tuple[list[tuple[dt.date, dt.date, Any]], str, list[Any]]:
        start, end = self._period(body)
        granularity = body.get("Granularity")
        if granularity not in ("DAILY", "MONTHLY"):
            raise _validation(f"Granularity {granularity!r} is not supported here (DAILY or MONTHLY)")
        metrics = body.get("Metrics")
        if not isinstance(metrics, list) or not metrics or any(m not in COST_METRICS for m in metrics):
            raise _validation(f"Metrics must be a non-empty list of {sorted(COST_METRICS)}")
        group_by = body.get("GroupBy") or []
        if len(group_by) > 2:
            raise _validation("You can group by at most two keys")
        for g in group_by:
            if g.get("Type") == "DIMENSION" and g.get("Key") not in GROUP_DIMENSIONS:
                raise _validation(f"Group by {g.get('Key')!r} is not supported here")
            if g.get("Type") not in ("DIMENSION", "TAG") or not g.get("Key"):
                raise _validation("GroupBy entries need Type DIMENSION or TAG and a Key")
        if len({(g["Type"], g["Key"]) for g in group_by}) != len(group_by):
            raise _validation("GroupBy keys must be distinct")
        rows = self._filtered(body, start, end)
        buckets = self._buckets(granularity, start, end)
        by_bucket: dict[dt.date, list[CloudRow]] = defaultdict(list)
        for r in rows:
            for b_start, b_end in buckets:
                if b_start <= r.day < b_end:
                    by_bucket[b_start].append(r)
                    break
        items: list[tuple[dt.date, dt.date, Any]] = []
        for b_start, b_end in buckets:
            in_bucket = by_bucket.get(b_start, [])
            if not group_by:
                total = sum((r.amount for r in in_bucket), Decimal(0))
                items.append((b_start, b_end, ("total", total)))
                continue
            sums: dict[tuple[str, ...], Decimal] = defaultdict(Decimal)
            for r in in_bucket:
                keys = tuple(
                    self.dimension(r, g["Key"]) if g["Type"] == "DIMENSION" else f"{g['Key']}${self.tag(r, g['Key'])}"
                    for g in group_by
                )
                sums[keys] += r.amount
            if not sums:
                items.append((b_start, b_end, None))
            for keys in sorted(sums):
                items.append((b_start, b_end, ("group", keys, sums[keys])))
        return items, granularity, metrics

    def cost_and_usage(self, body: dict[str, Any]) -> dict[str, Any]:
        digest = self._digest(body)
        if digest not in self._cache:  # pages of one query are computed once
            self._cache[digest] = self._group_items(body)
        items, _granularity, metrics = self._cache[digest]
        offset = self._offset(body)
        page = items[offset : offset + self.page_size]
        currency = "USD"
        results: list[dict[str, Any]] = []
        accounts: set[str] = set()
        for b_start, b_end, item in page:
            if not results or results[-1]["TimePeriod"]["Start"] != b_start.isoformat():
                results.append(
                    {
                        "TimePeriod": {"Start": b_start.isoformat(), "End": b_end.isoformat()},
                        "Total": {},
                        "Groups": [],
                        "Estimated": b_start >= self.dataset.today - dt.timedelta(days=1),
                    }
                )
            if item is None:
                continue
            if item[0] == "total":
                results[-1]["Total"] = {m: {"Amount": _amount(item[1]), "Unit": currency} for m in metrics}
                continue
            _, keys, amount = item
            results[-1]["Groups"].append(
                {"Keys": list(keys), "Metrics": {m: {"Amount": _amount(amount), "Unit": currency} for m in metrics}}
            )
            for g, k in zip(body.get("GroupBy") or [], keys, strict=True):
                if g["Type"] == "DIMENSION" and g["Key"] == "LINKED_ACCOUNT":
                    accounts.add(k)
        out: dict[str, Any] = {
            "GroupDefinitions": body.get("GroupBy") or [],
            "ResultsByTime": results,
            "DimensionValueAttributes": [
                {"Value": a, "Attributes": {"description": self.names.get(a, "")}} for a in sorted(accounts)
            ],
        }
        if offset + self.page_size < len(items):
            out["NextPageToken"] = self._token(body, offset + self.page_size)
        return out

    def cost_and_usage_pages(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """Every page of one GetCostAndUsage request, in order (for seeding a server that replays answers)."""
        pages = []
        req = dict(body)
        while True:
            page = self.cost_and_usage(req)
            pages.append(page)
            if "NextPageToken" not in page:
                return pages
            req = {**body, "NextPageToken": page["NextPageToken"]}

    def dimension_values(self, body: dict[str, Any]) -> dict[str, Any]:
        start, end = self._period(body)
        dimension = body.get("Dimension")
        if dimension not in GROUP_DIMENSIONS:
            raise _validation(f"Dimension {dimension!r} is not supported here")
        context = body.get("Context", "COST_AND_USAGE")
        if context != "COST_AND_USAGE":
            raise _validation(f"Context {context!r} is not supported here")
        search = str(body.get("SearchString") or "").lower()
        values = sorted({self.dimension(r, dimension) for r in self._filtered(body, start, end)})
        values = [v for v in values if search in v.lower()]
        page_size = min(int(body.get("MaxResults") or self.page_size), self.page_size)
        offset = self._offset(body)
        page = values[offset : offset + page_size]
        out: dict[str, Any] = {
            "DimensionValues": [
                {
                    "Value": v,
                    "Attributes": {"description": self.names[v]} if dimension == "LINKED_ACCOUNT" else {},
                }
                for v in page
            ],
            "ReturnSize": len(page),
            "TotalSize": len(values),
        }
        if offset + page_size < len(values):
            out["NextPageToken"] = self._token(body, offset + page_size)
        return out

    def forecast_daily_mean(self, flt: dict[str, Any] | None) -> Decimal:
        today = self.dataset.today
        start = today - dt.timedelta(days=FORECAST_HISTORY_DAYS)
        rows = self._filtered({"Filter": flt} if flt else {}, start, today)
        if not rows:
            raise CeError("DataUnavailableException", "Insufficient amount of historical data to generate forecast.")
        return sum((r.amount for r in rows), Decimal(0)) / FORECAST_HISTORY_DAYS

    def cost_forecast(self, body: dict[str, Any]) -> dict[str, Any]:
        start, end = self._period(body)
        if body.get("Metric") not in FORECAST_METRICS:
            raise _validation(f"Metric must be one of {sorted(FORECAST_METRICS)}")
        granularity = body.get("Granularity")
        if granularity not in ("DAILY", "MONTHLY"):
            raise _validation("Granularity must be DAILY or MONTHLY")
        if start < self.dataset.today:
            raise _validation("Start date must be equal to or later than the current date")
        mean = self.forecast_daily_mean(body.get("Filter"))
        results = []
        total = Decimal(0)
        d = start
        while d < end:
            nxt = d + dt.timedelta(days=1)
            if granularity == "MONTHLY":
                nxt = min((d.replace(day=1) + dt.timedelta(days=32)).replace(day=1), end)
            value = mean * (nxt - d).days
            total += value
            results.append(
                {
                    "TimePeriod": {"Start": d.isoformat(), "End": nxt.isoformat()},
                    "MeanValue": _amount(value),
                    "PredictionIntervalLowerBound": _amount(value * Decimal("0.9")),
                    "PredictionIntervalUpperBound": _amount(value * Decimal("1.1")),
                }
            )
            d = nxt
        return {"Total": {"Amount": _amount(total), "Unit": "USD"}, "ForecastResultsByTime": results}


class AwsCostExplorerEmulator(Emulator):
    """Cost Explorer (JSON 1.1) and STS (query/XML) on one local endpoint."""

    name = "aws-ce"

    def __init__(
        self,
        dataset: Dataset,
        *,
        page_size: int = 500,
        caller_account: str = "111111111111",
        access_key_id: str | None = None,
    ) -> None:
        super().__init__()
        self.data = CostExplorerData(dataset, page_size=page_size)
        self.caller_account = caller_account
        self.access_key_id = access_key_id

    @property
    def page_size(self) -> int:
        return self.data.page_size

    @page_size.setter
    def page_size(self, value: int) -> None:
        self.data.page_size = value

    def operations(self) -> list[str]:
        """The operation of every request received, in order (CE targets and STS actions)."""
        out = []
        for r in self.requests:
            target = r.headers.get("x-amz-target", "")
            if target:
                out.append(target.removeprefix(TARGET_PREFIX))
            else:
                out.append((parse_qs(r.body.decode(errors="replace")).get("Action") or ["?"])[0])
        return out

    def bodies(self, operation: str) -> list[dict[str, Any]]:
        return [
            json.loads(r.body)
            for r in self.requests
            if r.headers.get("x-amz-target", "") == TARGET_PREFIX + operation and r.body
        ]

    # -- wire ------------------------------------------------------------------------------
    @staticmethod
    def _json_error(type_: str, message: str, status: int = 400) -> Response:
        return Response(
            status,
            json.dumps({"__type": type_, "Message": message}),
            {
                "Content-Type": "application/x-amz-json-1.1",
                "x-amzn-ErrorType": type_,
                "x-amzn-RequestId": str(uuid.uuid4()),
            },
        )

    throttle_error = "LimitExceededException"  # Cost Explorer's; "ThrottlingException" is the generic AWS one

    def throttle_response(self, fault: Fault) -> Response:
        return self._json_error(self.throttle_error, "Rate exceeded")

    def _auth_error(self, request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return "Missing Authentication Token"
        if self.access_key_id and f"Credential={self.access_key_id}/" not in auth:
            return "The security token included in the request is invalid."
        return None

    def handle(self, request: Request) -> Response:
        if request.method != "POST" or request.path != "/":
            return Response(404, {"message": "Not Found"})
        target = request.headers.get("x-amz-target")
        if target is None:
            return self._sts(request)
        problem = self._auth_error(request)
        if problem:
            return self._json_error(
                "UnrecognizedClientException" if "invalid" in problem else "MissingAuthenticationTokenException",
                problem,
                403,
            )
        if not request.headers.get("content-type", "").startswith("application/x-amz-json-1.1"):
            return self._json_error("SerializationException", "Content-Type must be application/x-amz-json-1.1")
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            return self._json_error("SerializationException", "Request body is not JSON")
        if not isinstance(body, dict):
            return self._json_error("SerializationException", "Request body must be a JSON object")
        op = target.removeprefix(TARGET_PREFIX)
        handlers = {
            "GetCostAndUsage": self.data.cost_and_usage,
            "GetDimensionValues": self.data.dimension_values,
            "GetCostForecast": self.data.cost_forecast,
            "GetTags": self.data.tags,
        }
        if not target.startswith(TARGET_PREFIX) or op not in handlers:
            return self._json_error("UnknownOperationException", f"Unknown operation {target}")
        try:
            result = handlers[op](body)
        except CeError as e:
            return self._json_error(e.type, str(e), e.status)
        return Response(
            200,
            json.dumps(result),
            {"Content-Type": "application/x-amz-json-1.1", "x-amzn-RequestId": str(uuid.uuid4())},
        )

    def _sts(self, request: Request) -> Response:
        form = parse_qs(request.body.decode(errors="replace"))
        action = (form.get("Action") or [""])[0]
        request_id = str(uuid.uuid4())
        if self._auth_error(request):
            return self._sts_error(
                "InvalidClientTokenId", "The security token included in the request is invalid.", 403
            )
        if action != "GetCallerIdentity" or (form.get("Version") or [""])[0] != "2011-06-15":
            return self._sts_error("InvalidAction", f"Could not find operation {action} for version", 400)
        xml = (
            '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">\n'
            "  <GetCallerIdentityResult>\n"
            f"    <Arn>arn:aws:iam::{escape(self.caller_account)}:user/spend-exporter</Arn>\n"
            "    <UserId>AIDAEXAMPLEUSERID0001</UserId>\n"
            f"    <Account>{escape(self.caller_account)}</Account>\n"
            "  </GetCallerIdentityResult>\n"
            f"  <ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>\n"
            "</GetCallerIdentityResponse>\n"
        )
        return Response(200, xml, {"Content-Type": "text/xml", "x-amzn-RequestId": request_id})

    @staticmethod
    def _sts_error(code: str, message: str, status: int) -> Response:
        xml = (
            '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">\n'
            f"  <Error><Type>Sender</Type><Code>{code}</Code><Message>{escape(message)}</Message></Error>\n"
            f"  <RequestId>{uuid.uuid4()}</RequestId>\n"
            "</ErrorResponse>\n"
        )
        return Response(status, xml, {"Content-Type": "text/xml"})
