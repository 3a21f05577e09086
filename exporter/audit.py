"""The audit trail's encoding: a fetch's raw pages as the cache keeps them, secrets stripped, compressed.

A page is kept with the request that produced it (method, URL or operation, parameters; never a header).
Before anything is written, the request's credentials are cut out (a URL's user and password, query
parameters and keys named like a key, token, signature or password) and every secret the source registered
(its API keys, the cloud credentials) is replaced in the request, the page and the fetch's context: a user may
paste a key anywhere. The page's JSON is then zlib-compressed. ``decode_*`` give back what ``parse`` reads
(``spend-exporter recompute``, ``raw show``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.parse
import zlib
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from exporter.model import FetchWindow, RawFetch, RawPage

REDACTED = "<redacted>"
# names of parameters and keys whose value is a credential, whatever the API (X-Amz-Signature, sig, api_key,
# access_token, client_secret, password, Authorization, Credential, SecurityToken, code)
_SECRET_NAME = re.compile(
    r"(^|[-_.])(key|api[-_]?key|apikey|token|access[-_]?token|secret|client[-_]?secret|password|passwd|pwd|"
    r"signature|sig|credential|credentials|security[-_]?token|session[-_]?token|authorization|auth|code)$",
    re.IGNORECASE,
)
# Cost Explorer's own parameter names that end like a secret's but are data
_NOT_SECRET = frozenset({"NextPageToken", "Key", "nextPageToken", "page_token"})
LEVEL = 6  # zlib: 6 is its default; 9 saved 2% more on the AI reports at three times the time

Scrub = Callable[[str], str]


def _secret_name(name: str) -> bool:
    return name not in _NOT_SECRET and bool(_SECRET_NAME.search(name))


def _strip(value: Any) -> Any:
    """``value`` with the value of every key named like a credential replaced."""
    if isinstance(value, dict):
        return {k: REDACTED if _secret_name(str(k)) and isinstance(v, str) else _strip(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def strip_url(url: str) -> str:
    """A URL without its user and password and with the value of credential-like query parameters replaced."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, REDACTED if _secret_name(k) else v) for k, v in query]
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, urllib.parse.urlencode(kept, safe="<>:,[]"), parts.fragment)
    )


def strip_request(request: dict[str, Any], scrub: Scrub) -> dict[str, Any]:
    """The request as kept: no header, no credential, no registered secret."""
    out: dict[str, Any] = {}
    for k, v in request.items():
        if k.lower() == "headers":
            continue
        if k == "url" and isinstance(v, str):
            v = strip_url(v)
        out[k] = _strip(v)
    kept: dict[str, Any] = json.loads(scrub(_dumps(out)))
    return kept


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    """A date or timestamp (ISO 8601) or a decimal (its string) left in a page or a request."""
    if isinstance(value, dt.date):  # a datetime too
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def encode_page(page: RawPage, scrub: Scrub) -> tuple[str, str, str, int, bytes]:
    """(operation, request JSON, meta JSON, size of the page's JSON in bytes, the page's JSON compressed)."""
    body = scrub(_dumps(page.body if page.as_json is None else page.as_json(page.body))).encode()
    request = _dumps(strip_request(page.request, scrub))
    return page.operation, request, scrub(_dumps(page.meta)), len(body), zlib.compress(body, LEVEL)


def decode_page(operation: str, request: str, meta: str, body: bytes) -> RawPage:
    return RawPage(operation, json.loads(request), json.loads(zlib.decompress(body)), json.loads(meta))


def page_json(body: bytes) -> Any:
    """A kept page's JSON (``raw show``)."""
    return json.loads(zlib.decompress(body))


def encode_context(raw: RawFetch, scrub: Scrub) -> bytes:
    return zlib.compress(scrub(_dumps(raw.context)).encode(), LEVEL)


def decode_fetch(context: bytes, pages: list[RawPage]) -> RawFetch:
    return RawFetch(pages=pages, context=json.loads(zlib.decompress(context)))


def encode_window(window: FetchWindow) -> str:
    """The window a fetch asked for: ``parse`` filters by it, as the live refresh did."""
    return _dumps({"start": window.start.isoformat(), "end": window.end.isoformat(), "now": window.now.isoformat()})


def decode_window(text: str) -> FetchWindow:
    w = json.loads(text)
    return FetchWindow(
        start=dt.date.fromisoformat(w["start"]),
        end=dt.date.fromisoformat(w["end"]),
        now=dt.datetime.fromisoformat(w["now"]),
    )


def describe_request(request: dict[str, Any]) -> str:
    """One line for ``raw list``: ``GET https://…/v1/organization/costs?…`` or ``POST ce:GetCostAndUsage {…}``."""
    method = str(request.get("method") or "")
    target = str(request.get("url") or request.get("operation") or request.get("path") or "")
    params = request.get("params")
    if params:
        target += " " + _dumps(params)
    return f"{method} {target}".strip()
