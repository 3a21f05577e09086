"""The provider protocol and the context the engine hands to each provider.

A provider turns one billing API into normalised records
(``exporter.model``). It knows nothing of Prometheus, of the store or of the
scheduler: it is given a ``FetchWindow`` and returns a ``FetchResult``, and it
reports every API call it makes through ``ProviderContext.api_call`` so that
the engine can count requests, their cost and the daily paid-call cap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import email.utils
import itertools
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from exporter.model import CostRecord, FetchResult, FetchWindow, MinuteUsageResult, RawFetch

if TYPE_CHECKING:
    # not at run time: the FOCUS reader process imports this module and starts without pydantic and the models
    from exporter.sources.base import RetrySettings


class SourceError(Exception):
    """A refresh failed for a reason worth showing to the user as is.

    The message must not contain secrets; the engine also scrubs every value
    registered with ``ProviderContext.register_secret``.
    """


class PaidCallCapReached(SourceError):
    """The source's ``max_api_cost_usd_per_day`` would be exceeded by another call."""


class Throttled(SourceError):
    """The API throttled us; ``retry_after`` seconds is its hint, when it gave one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


T = TypeVar("T")
P = TypeVar("P")
K = TypeVar("K")

MAX_PAGES = 1000
"""Pages of one listing after which ``paginate`` gives up: a runaway page-token loop is a bug on one side."""


class Retrying(Protocol):
    """A source's config that says how its throttled requests are retried (``ThrottleRetry``, ``AdminApiSource``)."""

    @property
    def timeout(self) -> float: ...

    @property
    def retry_settings(self) -> RetrySettings: ...


@dataclass(frozen=True)
class RetryPolicy:
    """How ``ProviderContext.call`` retries a throttled request.

    The wait is the server's hint when it gave one (a hint longer than
    ``max_wait`` is left to the scheduler's backoff), else ``backoff`` doubled
    on each retry and capped at ``max_wait``; with no ``backoff``, a throttle
    without a hint is not retried. ``timeout`` is the source's refresh timeout:
    no wait may outlast what is left of the refresh.
    """

    retries: int
    max_wait: float
    timeout: float
    backoff: float | None = None

    @classmethod
    def from_settings(cls, config: Retrying) -> RetryPolicy:
        """The policy a source's config sets: its retry keys, within its refresh ``timeout``."""
        s = config.retry_settings
        return cls(retries=s.retries, max_wait=s.max_wait, timeout=config.timeout, backoff=s.backoff)


def paginate(
    operation: str, fetch: Callable[[str | None], tuple[P, str | None]], max_pages: int = MAX_PAGES
) -> Iterator[P]:
    """Every page of a listing paged by token: ``fetch(token)`` returns a page and the next token (None at the end).

    The first call gets ``None``. A token seen before, or more than ``max_pages`` pages, is a loop that would
    never end: ``SourceError``.
    """
    token: str | None = None
    seen: set[str] = set()
    for number in itertools.count(1):
        page, token = fetch(token)
        yield page
        if not token:
            return
        if token in seen or number >= max_pages:
            raise SourceError(f"{operation}: pagination does not end (page {number})")
        seen.add(token)


CostKey = tuple[dt.date, str, str, str | None, str, str]
"""What a provider sums costs by: day, account, service, team tag, model, currency."""


def cost_records(provider: str, totals: Mapping[CostKey, Decimal], default_currency: str = "") -> list[CostRecord]:
    """Costs summed by ``CostKey`` as records, in key order (untagged first); a blank currency is the default."""
    return [
        CostRecord(
            day=day,
            provider=provider,
            account_id=account,
            service_name=service,
            amount=float(amount),
            currency=currency or default_currency,
            team_tag=team,
            model=model,
        )
        for (day, account, service, team, model, currency), amount in sorted(
            totals.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3] or "", kv[0][4], kv[0][5])
        )
    ]


Labels = tuple[tuple[str, str], ...]
"""The extra labels (``attribution.labels``) a record's tags or a label cell gave: (name, value)."""


def labelled_cost_records(
    provider: str, totals: Mapping[tuple[Labels, CostKey], Decimal], default_currency: str = ""
) -> list[CostRecord]:
    """``cost_records`` of costs summed by extra labels and ``CostKey`` (``split_by_labels``' cells), each record
    with its labels; by labels, then in key order."""
    by_labels: dict[Labels, dict[CostKey, Decimal]] = defaultdict(dict)
    for (labels, key), amount in totals.items():
        by_labels[labels][key] = amount
    return [
        dataclasses.replace(rec, labels=labels) if labels else rec
        for labels, part in sorted(by_labels.items())
        for rec in cost_records(provider, part, default_currency)
    ]


def utc_midnight(day: dt.date, plus_days: int = 0) -> dt.datetime:
    """00:00 UTC of ``day`` (or of ``plus_days`` later): where a day of billing data starts."""
    return dt.datetime.combine(day + dt.timedelta(days=plus_days), dt.time(), tzinfo=dt.UTC)


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The server's retry hint: ``retry-after-ms``, else ``retry-after`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(float(ra), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max((when - dt.datetime.now(dt.UTC)).total_seconds(), 0.0)


class Provider(Protocol):
    """One billing API. Built once per source by the factory in the registry."""

    def fetch(self, window: FetchWindow) -> FetchResult:
        """Fetch every day in ``window`` and return them normalised.

        Must raise (never return partial data) when any page or call fails:
        the engine then keeps the last good data for the source.
        """
        ...

    def close(self) -> None:
        """Release clients and connections."""
        ...


class MinuteProvider(Provider, Protocol):
    """A provider whose usage API has minute buckets: the burn rate's light fetch (``openai``, ``anthropic``)."""

    def fetch_minutes(self, now: dt.datetime) -> MinuteUsageResult:
        """The minute usage of the source's burn window at ``now`` (``model.burn_bounds``); writes no days.

        Must raise when any call fails: the engine then keeps the last good burn data.
        """
        ...


class PageParser(Provider, Protocol):
    """A provider whose fetch only collects pages and whose records come from ``parse``: the live refresh and
    ``spend-exporter recompute`` (pages from the cache, no API call) go through the same code."""

    def parse(self, window: FetchWindow, raw: RawFetch) -> FetchResult:
        """The records of ``raw``, the pages a fetch of ``window`` received; no API call. ``result.raw`` is ``raw``.

        Raises ``SourceError`` on a page of the wrong shape, as the fetch does.
        """
        ...


CallHook = Callable[[str, str, float], None]
CapCheck = Callable[[float], None]


def labels_from_tags(tags: dict[str, Any], extra_labels: list[tuple[str, list[str]]]) -> tuple[tuple[str, str], ...]:
    """The extra labels found in a record's ``tags`` (key → value; keys compared case-insensitively, as the
    team tag's): (name, value) for each label one of whose tag keys has a non-empty value."""
    if not extra_labels or not tags:
        return ()
    lowered = {str(k).strip().lower(): v for k, v in tags.items()}
    out = []
    for name, keys in extra_labels:
        for key in keys:
            v = lowered.get(key.strip().lower())
            if v is not None and str(v).strip() and str(v).strip().upper() != "NULL":
                # a JSON escape like "\udcff" decodes to a lone surrogate, which no UTF-8 store accepts
                out.append((name, str(v).strip().encode("utf-16", "surrogatepass").decode("utf-16", "replace")))
                break
    return tuple(out)


LabelChoice = tuple[str, str, list[Any], list[Any]]
"""One value of an extra label for ``split_by_labels``: (label name, value, filter expressions that select it,
expressions whose cost must be taken out: a second tag key's value counts only where the first key has none)."""


def split_by_labels(
    choices: list[list[LabelChoice]], run: Callable[[list[Any]], Mapping[K, Decimal]]
) -> dict[tuple[tuple[str, str], ...], dict[K, Decimal]]:
    """A billing query's groups split exactly by the extra labels' values, for an API that groups by too few keys.

    ``run(exprs)`` is the query filtered on all of ``exprs`` (none: the query as it is), summed by group. Each
    combination of one value (or "any") per label is queried; a label's "no value" cell is what its "any" query
    holds beyond the cells with a value, and a choice's ``exclude`` expressions are taken out by
    inclusion-exclusion: everything is exact arithmetic on the API's own figures, nothing is estimated. A group
    whose cost all went to finer cells leaves no 0 behind.
    """
    combos = list(itertools.product(*[range(-1, len(c)) for c in choices]))  # -1: any (no value)

    def cell_query(combo: tuple[int, ...]) -> dict[K, Decimal]:
        chosen = [choices[i][j] for i, j in enumerate(combo) if j >= 0]
        incl = [e for c in chosen for e in c[2]]
        excl = [e for c in chosen for e in c[3]]
        out: dict[K, Decimal] = defaultdict(Decimal)
        for n in range(len(excl) + 1):
            for subset in itertools.combinations(excl, n):
                sign = -1 if n % 2 else 1
                for k, v in run([*incl, *subset]).items():
                    out[k] += sign * v
        return out

    exact: dict[tuple[int, ...], dict[K, Decimal]] = {}
    split: set[K] = set()  # groups a finer cell took cost from
    for combo in sorted(combos, key=lambda c: -sum(j >= 0 for j in c)):  # the most specific first
        cell = dict(cell_query(combo))
        for finer, part in exact.items():
            if all(j < 0 or j == f for j, f in zip(combo, finer, strict=True)):
                for k, v in part.items():
                    cell[k] = cell.get(k, Decimal(0)) - v
                    split.add(k)
        exact[combo] = {k: v for k, v in cell.items() if v or k not in split}
    result: dict[tuple[tuple[str, str], ...], dict[K, Decimal]] = {}
    for combo, cell in exact.items():
        labels = tuple((choices[i][j][0], choices[i][j][1]) for i, j in enumerate(combo) if j >= 0)
        rows = result.setdefault(labels, {})
        for k, v in cell.items():
            rows[k] = rows.get(k, Decimal(0)) + v
    return result


def query_cells(choices: list[list[LabelChoice]], query: Callable[[list[Any]], None]) -> None:
    """Run each filtered query ``split_by_labels`` reads for ``choices`` once (``[]``: the query unfiltered):
    ``query(exprs)`` keeps its pages in the raw fetch, and ``parse`` runs ``split_by_labels`` over them."""
    done: set[str] = set()

    def run(exprs: list[Any]) -> dict[Any, Decimal]:
        key = json.dumps(exprs, sort_keys=True)
        if key not in done:
            done.add(key)
            query(exprs)
        return {}

    split_by_labels(choices, run)


def choices_from_context(kept: Any) -> list[list[LabelChoice]]:
    """The extra labels' choices as a raw fetch's context keeps them (JSON: tuples become lists); a malformed one
    raises ``TypeError``, ``ValueError`` or ``IndexError``."""
    return [[(str(c[0]), str(c[1]), list(c[2]), list(c[3])) for c in label] for label in kept]


class ProviderContext:
    """What the engine gives a provider: its name, settings and accounting hooks."""

    def __init__(
        self,
        source_name: str,
        *,
        team_tag_keys: list[str] | None = None,
        extra_labels: list[tuple[str, list[str]]] | None = None,
        on_call: CallHook | None = None,
        check_cap: CapCheck | None = None,
        deadline: Callable[[], float] | None = None,
        logger: logging.Logger | None = None,
        scratch_dir: str | None = None,
    ) -> None:
        self.source_name = source_name
        # where a provider may spill temporary files (DuckDB): beside the cache, the one writable place in the image
        self.scratch_dir = scratch_dir
        self.team_tag_keys = list(team_tag_keys or ["team", "Team"])
        # attribution.labels: (label name, tag keys to read its value from, the first present wins)
        self.extra_labels = list(extra_labels or [])
        self._on_call = on_call
        self._check_cap = check_cap
        self._deadline = deadline
        self.log = logger or logging.getLogger(f"exporter.providers.{source_name}")
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    # -- secrets ---------------------------------------------------------
    def register_secret(self, value: str | None) -> None:
        """Remember a secret so that the engine scrubs it from any error text."""
        if value and len(value) >= 4:
            with self._lock:
                self._secrets.add(value)

    @property
    def secrets(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._secrets)

    def scrub(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "<redacted>")
        return text

    # -- time ------------------------------------------------------------
    def set_deadline(self, deadline: float | None) -> None:
        """The ``time.monotonic()`` value at which the current refresh times out (None: no limit)."""
        self._deadline = None if deadline is None else (lambda: deadline)

    def remaining_seconds(self, default: float = 60.0) -> float:
        """Seconds left before this refresh's timeout; use it for SDK timeouts."""
        if self._deadline is None:
            return default
        return max(self._deadline() - time.monotonic(), 0.1)

    # -- API accounting --------------------------------------------------
    def check_cap(self, cost_usd: float) -> None:
        """Raise ``PaidCallCapReached`` if a call costing ``cost_usd`` would exceed the daily cap.

        For calls whose real cost is known only afterwards (then counted with
        ``record_call``): check an estimate first.
        """
        if cost_usd > 0 and self._check_cap is not None:
            self._check_cap(cost_usd)

    def record_call(self, operation: str, status: str, cost_usd: float = 0.0) -> None:
        if self._on_call is not None:
            self._on_call(operation, status, cost_usd)

    @contextlib.contextmanager
    def api_call(self, operation: str, cost_usd: float = 0.0) -> Iterator[None]:
        """Wrap one API request: checks the paid-call cap, then counts it.

        The status is ``success``, ``throttled`` (``Throttled`` raised) or
        ``error``. A paid call is charged even when it fails, as the provider
        bills it.
        """
        self.check_cap(cost_usd)
        status = "success"
        try:
            yield
        except Throttled:
            status = "throttled"
            raise
        except BaseException:
            status = "error"
            raise
        finally:
            self.record_call(operation, status, cost_usd)

    def call(
        self,
        operation: str,
        fn: Callable[[], T],
        retry: RetryPolicy,
        *,
        cost_usd: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> T:
        """One request through ``api_call`` (so each attempt is counted and capped), retried while
        ``fn`` raises ``Throttled``, as ``retry`` says. ``fn`` maps the SDK's errors to ``SourceError``.
        """
        attempt = 0
        while True:
            try:
                with self.api_call(operation, cost_usd=cost_usd):
                    return fn()
            except Throttled as e:
                if e.retry_after is not None:
                    wait = e.retry_after
                elif retry.backoff is not None:
                    wait = min(retry.backoff * 2**attempt, retry.max_wait)
                else:
                    raise
                if attempt >= retry.retries:
                    raise Throttled(f"{e} on {attempt + 1} attempts in a row", retry_after=wait) from None
                if wait > retry.max_wait or wait >= self.remaining_seconds(retry.timeout):
                    message = f"{e}; asked to wait {wait:g}s, more than this refresh can"
                    raise Throttled(message, retry_after=wait) from None
                attempt += 1
                self.log.info(
                    "%s: throttled, retrying in %.2fs (retry %d of %d)", operation, wait, attempt, retry.retries
                )
                sleep(wait)
