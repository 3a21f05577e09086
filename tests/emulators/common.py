"""Pieces several emulators share: page tokens, bucketed windows, retry-after headers, AI cost rows by day.

Only the mechanics live here; each emulator keeps its own wire format (token
shapes it shows, error codes and messages).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tests.emulators.ai_dataset import AICostRow, AIDataset
from tests.emulators.server import Fault

T = TypeVar("T")


class PageTokens(Generic[T]):
    """Opaque page tokens kept on the server: a random token stands for where the next page starts."""

    def __init__(self, upper: bool = False) -> None:
        self.upper = upper
        self._lock = threading.Lock()
        self._pages: dict[str, T] = {}

    def issue(self, position: T) -> str:
        token = uuid.uuid4().hex
        if self.upper:
            token = token.upper()
        with self._lock:
            self._pages[token] = position
        return token

    def get(self, token: str) -> T | None:
        """The position a token stands for; None if this server never issued it."""
        with self._lock:
            return self._pages.get(token)


def after_id(items: list[dict[str, Any]], after: str | None) -> list[dict[str, Any]] | None:
    """The items listed after the one whose ``id`` is ``after`` (every item without it); None when no item has
    that id (the caller answers with its API's own error)."""
    if not after:
        return items
    ids = [i["id"] for i in items]
    return items[ids.index(after) + 1 :] if after in ids else None


def id_page(items: list[dict[str, Any]], limit: int, cap: int | None) -> dict[str, Any]:
    """The first page of ``items`` as the admin APIs' id-cursor listings show it (at most ``limit``, and at most
    ``cap`` when the emulator caps pages): ``data``, ``first_id``, ``last_id``, ``has_more``."""
    n = min(limit, cap or limit)
    page = items[:n]
    return {
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > n,
    }


def query_digest(body: dict[str, Any], ignore: tuple[str, ...] = ()) -> str:
    """A short digest of a request body (without the ``ignore`` keys): ties a page token to its query."""
    clean = {k: v for k, v in body.items() if k not in ignore}
    return hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()[:16]


def offset_token(digest: str, offset: int) -> str:
    """A stateless page token: the query's digest and the offset of the next page."""
    raw = json.dumps({"q": digest, "o": offset}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def read_offset_token(token: str) -> tuple[Any, int]:
    """(digest, offset) of an ``offset_token``; ValueError, KeyError or TypeError if it is not one."""
    data = json.loads(base64.urlsafe_b64decode(token.encode()))
    offset = int(data["o"])
    return data.get("q"), offset


def bucket_starts(first: Any, stop: Any, width: Any, n: int) -> tuple[list[Any], bool]:
    """Up to ``n`` bucket starts from ``first`` in steps of ``width`` before ``stop``, and whether more follow.

    Works for datetimes with a timedelta width and for epoch seconds with an int width.
    """
    starts: list[Any] = []
    b = first
    while b < stop and len(starts) < n:
        starts.append(b)
        b += width
    return starts, b < stop


def retry_after_headers(fault: Fault) -> dict[str, str]:
    """``retry-after`` in whole seconds (rounded up) and ``retry-after-ms``, as the AI admin APIs send them."""
    return {"retry-after": str(math.ceil(fault.retry_after)), "retry-after-ms": str(int(fault.retry_after * 1000))}


class ServesAIDataset:
    """Mixin for an emulator serving one provider of an ``AIDataset``, whose cost rows it indexes by day."""

    provider: str
    _dataset: AIDataset
    _costs_by_day: dict[dt.date, list[AICostRow]]

    @property
    def dataset(self) -> AIDataset:
        return self._dataset

    @dataset.setter
    def dataset(self, ds: AIDataset) -> None:
        """Swap the data served (e.g. for ``runaway(ds)``) while the emulator runs."""
        costs: dict[dt.date, list[AICostRow]] = defaultdict(list)
        for c in ds.costs(self.provider):
            costs[c.day].append(c)
        self._costs_by_day = costs
        self._dataset = ds


@dataclass(frozen=True)
class WriteCall:
    """One write call an emulator received (the guard's tests assert exactly what arrived)."""

    method: str
    path: str
    body: Any  # the JSON body, parsed
    key: str  # "write" (the separate write key) or "admin" (the usage key)
    time: float  # unix time it arrived


class RecordsWrites:
    """Mixin: ``writes`` holds every write call in arrival order; ``record_write`` appends one."""

    writes: list[WriteCall]

    def record_write(self, method: str, path: str, body: Any, key: str) -> None:
        self.writes.append(WriteCall(method, path, body, key, time.time()))
