"""``GET /api/v1/spend``: cost per billing date, daily or monthly, grouped by cost labels, from the cache.

Parameters (docs/api.md): ``from`` and ``to`` (``YYYY-MM-DD``, both inclusive; default: the first of the
current UTC month through today), ``group_by`` (comma-separated cost labels, ``COST_LABELS``; empty or absent:
totals per date), ``granularity`` (``day`` or ``month``; a month's ``date`` is ``YYYY-MM``) and ``source``
(comma-separated source names; default: every configured source, summed). Anything else, a parameter given
twice, a bad date, ``from`` after ``to``, a span over ``MAX_DAYS`` or an answer over ``MAX_ROWS`` rows is a 400
whose JSON names the parameter. Figures are the cache's days, which are the provider's latest (restated) figures:
each is the exact sum of the stored amounts, rounded half-even to a millionth of a dollar.

Nothing here knows HTTP: ``answer`` returns a status and a JSON-able body, which ``exporter.web`` sends.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from exporter.attribution import decode_labels
from exporter.metrics import COST_LABELS
from exporter.store import QueryInterrupted, Store

log = logging.getLogger(__name__)

PATH = "/api/v1/spend"
PARAMETERS = ("from", "to", "group_by", "granularity", "source")
GRANULARITIES = ("day", "month")
# days one request may span: twice the default history_days (400), e.g. 13 months against the 13 before
MAX_DAYS = 800
# rows in one answer: about 15 MB of JSON (docs/performance.md, "The spend API", for the memory it takes)
MAX_ROWS = 100_000
EXTRA_LABEL_ROWS = 20
"""Grouped by an extra label, the cache's rows group by every extra label at once: read up to this many times
``MAX_ROWS`` of them before summing (the answer's own limit is still ``MAX_ROWS``)."""
# one query at a time (two cores: a second would only slow the first); another waits this long, then gets a 503.
# A query stops after QUERY_SECONDS too: the caps bound the rows answered, not the rows read (docs/performance.md:
# any group_by over 400 days of a 100k-series cache, 6.5M rows, takes 12-15 s on two busy cores, up to 56 s on two
# very busy ones). Two minutes, as Prometheus' own --query.timeout.
QUERY_SECONDS = 120.0
_queries = threading.BoundedSemaphore(1)

_MAX_FIELDS = 20  # parse_qsl stops reading a query string of more fields than this
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class BadParameter(Exception):
    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def _date(name: str, value: str) -> dt.date:
    if not _DATE.fullmatch(value):
        raise BadParameter(name, f"{name}: {value[:40]!r} is not a date (YYYY-MM-DD)")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise BadParameter(name, f"{name}: {value!r} is not a date (YYYY-MM-DD)") from None


def _names(name: str, value: str, allowed: Sequence[str], what: str) -> list[str]:
    if value == "":
        return []
    out = value.split(",")
    for v in out:
        if v not in allowed:
            raise BadParameter(name, f"{name}: {v[:60]!r} is not {what} (one of: {', '.join(allowed)})")
    if len(set(out)) != len(out):
        raise BadParameter(name, f"{name}: a name is given twice")
    return out


@dataclass(frozen=True)
class Query:
    """The parsed, checked parameters of one request."""

    first: dt.date
    last: dt.date
    group_by: list[str]
    granularity: str
    sources: list[str]

    @classmethod
    def parse(cls, query: str, today: dt.date, configured: Sequence[str], extra: Sequence[str] = ()) -> Query:
        """The query string's parameters, checked; ``BadParameter`` names the first wrong one. ``extra``: the
        extra labels (``attribution.labels``), which ``group_by`` may name beside the cost labels."""
        try:
            pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=_MAX_FIELDS)
        except ValueError:
            raise BadParameter("", f"too many parameters (known: {', '.join(PARAMETERS)})") from None
        seen: dict[str, str] = {}
        for k, v in pairs:
            if k not in PARAMETERS:
                raise BadParameter(k[:60], f"unknown parameter {k[:60]!r} (known: {', '.join(PARAMETERS)})")
            if k in seen:
                raise BadParameter(k, f"{k} is given twice")
            seen[k] = v
        last = _date("to", seen["to"]) if "to" in seen else today
        first = _date("from", seen["from"]) if "from" in seen else last.replace(day=1)
        if first > last:
            raise BadParameter("from", f"from ({first}) is after to ({last})")
        if (last - first).days + 1 > MAX_DAYS:
            raise BadParameter(
                "from", f"from..to spans {(last - first).days + 1} days; at most {MAX_DAYS}: ask in several ranges"
            )
        granularity = seen.get("granularity", "day")
        if granularity not in GRANULARITIES:
            raise BadParameter(
                "granularity", f"granularity: {granularity[:40]!r} is not one of {', '.join(GRANULARITIES)}"
            )
        group_by = _names("group_by", seen.get("group_by", ""), (*COST_LABELS, *extra), "a cost label")
        sources = _names("source", seen["source"], configured, "a configured source") if "source" in seen else []
        if "source" in seen and not sources:
            raise BadParameter("source", "source: empty (leave it out for every source)")
        return cls(first, last, group_by, granularity, sources or list(configured))


def answer(
    store: Store,
    query: str,
    today: dt.date,
    configured: Sequence[str],
    clock: Callable[[], float] = time.monotonic,
    extra: Sequence[str] = (),
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for ``GET /api/v1/spend?<query>``; ``today`` is the UTC date of the engine's
    clock, ``configured`` the sources' names. ``clock`` (monotonic seconds) bounds the wait and the query.
    ``extra``: the extra labels (``attribution.labels``) in their order, which ``group_by`` may name too."""
    try:
        q = Query.parse(query, today, configured, extra)
    except BadParameter as e:
        return 400, {"error": str(e), "parameter": e.parameter}
    if not _queries.acquire(timeout=QUERY_SECONDS):
        return 503, {"error": "another spend query is running; try again shortly"}
    try:
        wanted_extra = [c for c in q.group_by if c not in COST_LABELS]
        columns = [c for c in q.group_by if c in COST_LABELS] + (["labels"] if wanted_extra else [])
        rows = store.spend(
            q.sources,
            q.first,
            q.last,
            columns,
            monthly=q.granularity == "month",
            # by extra labels the cache's rows group by all of them at once, then sum up here
            limit=(MAX_ROWS + 1) * (EXTRA_LABEL_ROWS if wanted_extra else 1),
            deadline=clock() + QUERY_SECONDS,
        )
        if wanted_extra:
            rows = _by_extra_labels(rows, columns, q.group_by, extra)
    except QueryInterrupted:
        return 503, {"error": f"the query ran over {QUERY_SECONDS:g} s: narrow group_by or the range (from, to)"}
    except Exception:
        log.exception("spend API: reading the cache failed")
        return 500, {"error": "the cache could not be read (the exporter's log says why)"}
    finally:
        _queries.release()
    if len(rows) > MAX_ROWS:
        return 400, {
            "error": f"the answer has more than {MAX_ROWS} rows: narrow group_by or the range (from, to), "
            "or ask for granularity=month",
            "parameter": "group_by",
        }
    labels = q.group_by
    return 200, {
        "currency": "USD",
        "from": q.first.isoformat(),
        "to": q.last.isoformat(),
        "granularity": q.granularity,
        "group_by": labels,
        "rows": [{"date": r[0], **dict(zip(labels, r[1:-1], strict=True)), "cost_usd": usd(r[-1])} for r in rows],
    }


def _by_extra_labels(
    rows: list[tuple[Any, ...]], columns: list[str], group_by: list[str], extra: Sequence[str]
) -> list[tuple[Any, ...]]:
    """Rows of ``columns`` (the cost labels asked for, then the encoded ``labels``) summed by ``group_by``'s
    labels in its order, sorted as the store sorts (date, then the values)."""
    sums: dict[tuple[Any, ...], int] = {}
    i_labels = len(columns)  # after the date and the cost labels
    for r in rows:
        values = dict(zip(columns[:-1], r[1:i_labels], strict=True))
        values.update(zip(extra, decode_labels(r[i_labels], len(extra)), strict=True))
        key = (r[0], *(values[c] for c in group_by))
        sums[key] = sums.get(key, 0) + int(r[-1])
    return [(*k, v) for k, v in sorted(sums.items())]


def usd(nano: int) -> float:
    """Nano-dollars → dollars rounded half-even to the micro-dollar, as the float whose shortest repr is that
    decimal (``12.5``, ``0.000417``)."""
    micro, rest = divmod(int(nano), 1000)
    if rest > 500 or (rest == 500 and micro % 2):
        micro += 1
    return micro / 1_000_000
