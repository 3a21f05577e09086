"""Emulator of the OCI Usage API (``POST /20200107/usage``, RequestSummarizedUsages).

Speaks the wire format of the API reference (UsageAggregation / UsageSummary,
camelCase JSON, ``opc-next-page`` and ``opc-request-id`` headers, OCI error
bodies ``{"code": ..., "message": ...}``) and serves the ``oci`` rows of
``dataset.py``. It checks what the real service checks that matters to us:
a signed request (the signature is verified when the emulator is given the
public key), the tenancy, DAILY boundaries on exact UTC midnights, at most one
``groupByTag``, and known ``groupBy`` dimensions.

Knobs for tests: ``page_size`` (items per page, so a test can force several
pages), ``null_amount_days`` (items of those days carry ``computedAmount:
null``), ``blank_currency_days`` (items of those days carry a blank
``currency``, as the service does for some grouped queries).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import uuid
from collections import defaultdict
from decimal import Decimal
from typing import Any

from tests.emulators.common import PageTokens
from tests.emulators.dataset import CloudRow, Dataset
from tests.emulators.server import Emulator, Fault, Request, Response

USAGE_PATH = "/20200107/usage"
GROUP_BY_DIMENSIONS = {
    "service": lambda r: r.service_name,
    "compartmentName": lambda r: r.extra.get("compartment"),
    "tenantId": lambda r: r.account_id,
    "tenantName": lambda r: r.account_name,
}
# Accepted by the service but not modelled by the emulator: asking for them is a test bug.
KNOWN_UNMODELLED = {
    "tagNamespace",
    "tagKey",
    "tagValue",
    "skuName",
    "skuPartNumber",
    "unit",
    "compartmentPath",
    "compartmentId",
    "platform",
    "region",
    "logicalAd",
    "resourceId",
}
SUMMARY_FIELDS = (
    "tenantId",
    "tenantName",
    "compartmentId",
    "compartmentPath",
    "compartmentName",
    "service",
    "resourceName",
    "resourceId",
    "region",
    "ad",
    "weight",
    "shape",
    "skuPartNumber",
    "skuName",
    "unit",
    "discount",
    "listRate",
    "platform",
    "timeUsageStarted",
    "timeUsageEnded",
    "computedAmount",
    "computedQuantity",
    "attributedCost",
    "attributedUsage",
    "overagesFlag",
    "unitPrice",
    "currency",
    "subscriptionId",
    "overage",
    "isForecast",
    "tags",
)


def _error(status: int, code: str, message: str) -> Response:
    return Response(status, {"code": code, "message": message}, {"opc-request-id": uuid.uuid4().hex.upper()})


def _ts(d: dt.date) -> str:
    return f"{d.isoformat()}T00:00:00.000Z"


def _parse_time(value: Any) -> dt.datetime:
    if not isinstance(value, str):
        raise ValueError(f"not a date-time: {value!r}")
    t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError(f"no time zone: {value!r}")
    return t.astimezone(dt.UTC)


class OciUsageEmulator(Emulator):
    """``POST /20200107/usage`` over the ``oci`` rows of a dataset."""

    name = "oci-usage"

    def __init__(
        self,
        dataset: Dataset,
        *,
        page_size: int = 1000,
        tag_namespace: str = "Ops",
        tag_key: str = "team",
        public_key_pem: bytes | None = None,
        null_amount_days: set[dt.date] | None = None,
        blank_currency_days: set[dt.date] | None = None,
        blank_currency_value: str | None = " ",
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.page_size = page_size
        self.tag_namespace = tag_namespace
        self.tag_key = tag_key
        self.null_amount_days = set(null_amount_days or ())
        self.blank_currency_days = set(blank_currency_days or ())
        self.blank_currency_value = blank_currency_value
        self._public_key: Any = None
        if public_key_pem is not None:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            self._public_key = load_pem_public_key(public_key_pem)
        self.tenancies = {r.account_id for r in dataset.rows("oci")}
        self._pages: PageTokens[int] = PageTokens()  # opaque opc-next-page token -> offset

    # -- the wire format --------------------------------------------------------------
    def throttle_response(self, fault: Fault) -> Response:
        return _error(429, "TooManyRequests", "Too many requests for the user.")

    def handle(self, request: Request) -> Response:
        if request.path != USAGE_PATH:
            return _error(404, "NotAuthorizedOrNotFound", f"Unknown resource {request.path}")
        if request.method != "POST":
            return _error(405, "MethodNotAllowed", f"Method {request.method} not allowed on {request.path}")
        auth_error = self._check_signature(request)
        if auth_error is not None:
            return auth_error
        try:
            body = request.json()
        except ValueError:
            return _error(400, "InvalidParameter", "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return _error(400, "InvalidParameter", "The request body must be a RequestSummarizedUsagesDetails object.")
        for key in ("tenantId", "timeUsageStarted", "timeUsageEnded", "granularity"):
            if body.get(key) in (None, ""):
                return _error(400, "MissingParameter", f"{key} is required.")
        if body["tenantId"] not in self.tenancies:
            return _error(404, "NotAuthorizedOrNotFound", "Authorization failed or requested resource not found.")
        if body["granularity"] != "DAILY":
            return _error(
                400, "InvalidParameter", f"The emulator serves DAILY granularity only, not {body['granularity']}."
            )
        if body.get("queryType", "USAGE") != "COST":
            return _error(400, "InvalidParameter", "The emulator serves queryType COST only.")
        try:
            start = _parse_time(body["timeUsageStarted"])
            end = _parse_time(body["timeUsageEnded"])
        except ValueError as e:
            return _error(400, "InvalidParameter", f"Invalid timeUsageStarted/timeUsageEnded: {e}")
        midnight = dt.time(0, 0)
        if start.timetz().replace(tzinfo=None) != midnight or end.timetz().replace(tzinfo=None) != midnight:
            return _error(
                400,
                "InvalidParameter",
                "For DAILY granularity, timeUsageStarted and timeUsageEnded must be UTC midnights (hours, minutes, "
                "seconds and fractions of a second must be 0).",
            )
        if end <= start:
            return _error(400, "InvalidParameter", "timeUsageEnded must be after timeUsageStarted.")
        group_by = body.get("groupBy") or []
        for g in group_by:
            if g in KNOWN_UNMODELLED:
                return _error(400, "InvalidParameter", f"groupBy {g!r} is valid but not modelled by the emulator.")
            if g not in GROUP_BY_DIMENSIONS:
                return _error(400, "InvalidParameter", f"Invalid groupBy value {g!r}.")
        tags = body.get("groupByTag") or []
        if len(tags) > 1:
            return _error(400, "InvalidParameter", "groupByTag supports only one tag.")
        tag = tags[0] if tags else None
        if tag is not None and (not tag.get("namespace") or not tag.get("key")):
            return _error(400, "InvalidParameter", "groupByTag needs a namespace and a key.")

        flt = body.get("filter")
        try:
            items = self._aggregate(start.date(), end.date(), group_by, tag, flt)
        except (ValueError, KeyError) as e:
            return _error(400, "InvalidParameter", f"Invalid filter: {e}")
        offset = 0
        token = request.q("page")
        if token:
            found = self._pages.get(token)
            if found is None:
                return _error(400, "InvalidParameter", "Invalid page token.")
            offset = found
        size = self.page_size
        limit = request.q("limit")
        if limit:
            size = min(size, int(limit))
        page = items[offset : offset + size]
        headers = {"opc-request-id": uuid.uuid4().hex.upper()}
        if offset + size < len(items):
            headers["opc-next-page"] = self._pages.issue(offset + size)
        return Response(200, {"groupBy": group_by, "items": page}, headers)

    def wrong_shape_body(self, request: Request) -> Any:
        return {"groupBy": ["service"], "items": {"not": "a list"}}

    # -- the data -------------------------------------------------------------------------
    def _tag_value(self, row: CloudRow, tag: dict[str, Any]) -> str | None:
        """The team tag, or another defined tag of the same namespace (``tag:<key>`` in the row's extra)."""
        if str(tag["namespace"]).casefold() != self.tag_namespace.casefold():
            return None
        if str(tag["key"]).casefold() == self.tag_key.casefold():
            return row.team
        others = {k[4:].casefold(): v for k, v in row.extra.items() if k.startswith("tag:")}
        return others.get(str(tag["key"]).casefold())

    def _matches(self, flt: Any, row: CloudRow) -> bool:
        """A request's ``filter``: ``operator`` AND or OR over its ``dimensions``, ``tags`` and nested ``filters``."""
        if not isinstance(flt, dict) or flt.get("operator") not in ("AND", "OR"):
            raise ValueError("filter.operator must be AND or OR here (NOT is not modelled)")
        results = [GROUP_BY_DIMENSIONS[d["key"]](row) == d["value"] for d in flt.get("dimensions") or []]
        results += [self._tag_value(row, t) == t.get("value") for t in flt.get("tags") or []]
        results += [self._matches(f, row) for f in flt.get("filters") or []]
        return all(results) if flt["operator"] == "AND" else any(results)

    def _aggregate(
        self, start: dt.date, end: dt.date, group_by: list[str], tag: dict[str, Any] | None, flt: Any = None
    ) -> list[dict[str, Any]]:
        sums: dict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
        currencies: dict[tuple[Any, ...], str] = {}
        for r in self.dataset.rows("oci"):
            if not start <= r.day < end or (flt is not None and not self._matches(flt, r)):
                continue
            dims = tuple(GROUP_BY_DIMENSIONS[g](r) for g in group_by)
            tag_value = self._tag_value(r, tag) if tag is not None else None
            key = (r.day, dims, tag_value, r.currency)
            sums[key] += r.amount
            currencies[key] = r.currency
        items = []
        for key in sorted(sums, key=lambda k: (k[0], tuple(str(x) for x in k[1]), str(k[2]), k[3])):
            day, dims, tag_value, currency = key
            item: dict[str, Any] = dict.fromkeys(SUMMARY_FIELDS)
            item.update(dict(zip(group_by, dims, strict=True)))
            item["timeUsageStarted"] = _ts(day)
            item["timeUsageEnded"] = _ts(day + dt.timedelta(days=1))
            item["computedAmount"] = None if day in self.null_amount_days else float(sums[key])
            item["computedQuantity"] = None
            item["currency"] = self.blank_currency_value if day in self.blank_currency_days else currency
            item["isForecast"] = False
            item["tags"] = (
                [{"namespace": tag["namespace"], "key": tag["key"], "value": tag_value}] if tag is not None else None
            )
            items.append(item)
        return items

    # -- request signing --------------------------------------------------------------------
    def _check_signature(self, request: Request) -> Response | None:
        """Verify the OCI HTTP signature (draft-cavage, rsa-sha256) as the service does."""
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Signature "):
            return _error(
                401, "NotAuthenticated", "The required information to complete authentication was not provided."
            )
        if self._public_key is None:
            return None
        params: dict[str, str] = {}
        for part in auth[len("Signature ") :].split(","):
            k, _, v = part.partition("=")
            params[k.strip()] = v.strip().strip('"')
        try:
            names = params["headers"].split()
            signature = base64.b64decode(params["signature"])
        except (KeyError, ValueError):
            return _error(401, "NotAuthenticated", "Malformed Authorization header.")
        if params.get("algorithm") != "rsa-sha256":
            return _error(401, "NotAuthenticated", "Unsupported signing algorithm.")
        if "x-content-sha256" in names:
            digest = base64.b64encode(hashlib.sha256(request.body).digest()).decode()
            if request.headers.get("x-content-sha256") != digest:
                return _error(401, "NotAuthenticated", "x-content-sha256 does not match the body.")
        target = request.path
        if request.query:
            # the raw query string is not kept by the base server; rebuild it in the order the SDK sends
            from urllib.parse import urlencode

            target += "?" + urlencode([(k, v) for k, vs in request.query.items() for v in vs])
        lines = []
        for name in names:
            if name == "(request-target)":
                lines.append(f"(request-target): {request.method.lower()} {target}")
            else:
                lines.append(f"{name}: {request.headers.get(name, '')}")
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        try:
            self._public_key.verify(signature, "\n".join(lines).encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return _error(401, "NotAuthenticated", "The request signature is not valid.")
        return None
