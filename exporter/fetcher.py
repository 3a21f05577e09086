"""Running one source's provider: its context, the paid-call cap, and each fetch under the source's timeout."""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import threading
import time
import typing
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from exporter.model import FetchResult, FetchWindow, MinuteUsageResult, RawFetch
from exporter.providers import create_provider
from exporter.providers.base import (
    MinuteProvider,
    PageParser,
    PaidCallCapReached,
    Provider,
    ProviderContext,
    SourceError,
)
from exporter.sources.base import SourceBase
from exporter.store import Store
from exporter.timing import next_midnight

log = logging.getLogger(__name__)


class SourceFetcher:
    """One source's provider and the context it is given, both made on first use.

    The context counts each API call in the store, holds back a paid call over the source's
    ``max_api_cost_usd_per_day`` until the next UTC midnight, and knows the secrets to scrub from error
    text. Each fetch runs in a thread of its own, so that a hung API cannot outlive the source's ``timeout``.
    """

    def __init__(
        self,
        src: SourceBase,
        store: Store,
        now: Callable[[], dt.datetime],
        *,
        team_tag_keys: Sequence[str],
        cache_path: str,
        extra_labels: Sequence[tuple[str, Sequence[str]]] = (),
    ) -> None:
        self.src = src
        self._store = store
        self._now = now
        self._team_tag_keys = team_tag_keys
        self._extra_labels = [(n, list(k)) for n, k in extra_labels]
        self._cache_path = cache_path
        self._ctx: ProviderContext | None = None
        self._provider: Provider | None = None
        # the burn rate's fetch has a provider and a context of its own: its deadline and clients never
        # touch the daily refresh's, so the two run side by side
        self._burn_ctx: ProviderContext | None = None
        self._burn_provider: Provider | None = None
        self.cap_reached_until: float | None = None  # unix time: no paid call before it
        self._reserve = 0.0  # dollars of today's cap the running fetch (the history's) must leave unspent

    def context(self) -> ProviderContext:
        if self._ctx is None:
            self._ctx = self._new_context()
        return self._ctx

    def _new_context(self) -> ProviderContext:
        src = self.src
        ctx = ProviderContext(
            src.name,
            team_tag_keys=list(self._team_tag_keys),
            extra_labels=self._extra_labels,
            on_call=self._record_call,
            check_cap=self._check_cap,
            logger=logging.getLogger(f"exporter.providers.{getattr(src, 'type', src.name)}"),
            scratch_dir=None
            if self._cache_path == ":memory:"
            else os.path.join(os.path.dirname(os.path.abspath(self._cache_path)), "tmp"),
        )
        # a password in an endpoint URL (http://user:pass@proxy) is a secret, and SDK errors quote the URL
        for value in src.model_dump(mode="json").values():
            for m in re.finditer(r"://[^/@:\s]*:([^/@\s]+)@", value if isinstance(value, str) else ""):
                ctx.register_secret(m.group(1))
                ctx.register_secret(urllib.parse.unquote(m.group(1)))
        return ctx

    def _record_call(self, operation: str, status: str, cost: float) -> None:
        self._store.record_call(self.src.name, self._now().date(), operation, status, cost)

    def _check_cap(self, cost: float) -> None:
        src = self.src
        cap = src.max_api_cost_usd_per_day
        if cap is None:
            return
        now = self._now()
        spent = self._store.api_cost_on(src.name, now.date())
        reserve = self._reserve
        if reserve > 0 and cap + 1e-9 >= spent + cost > cap - reserve + 1e-9:
            # the history stops here; the day's refreshes may still spend what it left
            msg = (
                f"paid-call cap: ${spent:.2f} of max_api_cost_usd_per_day ${cap:.2f} spent today, "
                f"${reserve:.2f} kept for today's refreshes"
            )
            raise PaidCallCapReached(msg)
        if spent + cost > cap + 1e-9:
            until = next_midnight(now)
            self.cap_reached_until = until.timestamp()
            msg = (
                f"paid-call cap reached: ${spent:.2f} of max_api_cost_usd_per_day ${cap:.2f} spent today; "
                f"no more paid calls until {until:%Y-%m-%d %H:%M} UTC"
            )
            log.warning("source %s: %s", src.name, msg)
            raise PaidCallCapReached(msg)

    def cap_reached(self) -> bool:
        """The paid-call cap was reached today: no refresh until the next UTC midnight."""
        until = self.cap_reached_until
        now = self._now()
        if until is not None and until > next_midnight(now).timestamp():
            self.cap_reached_until = until = None  # the clock went back a day or more: a new day's cap
        return until is not None and now.timestamp() < until

    def scrub(self, text: str) -> str:
        """``text`` without the source's secrets (as it is when no fetch has begun)."""
        for ctx in (self._ctx, self._burn_ctx):
            if ctx is not None:
                text = ctx.scrub(text)
        return text

    def _get_provider(self) -> Provider:
        p = self._provider
        if p is None:
            p = create_provider(self.src, self.context())
            self._provider = p
        return p

    def fetch(self, window: FetchWindow, reserve: float = 0.0) -> FetchResult:
        """Run the provider's fetch in its own thread, so that a hung API cannot outlive the timeout.

        ``reserve``: dollars of today's paid-call cap this fetch must leave (the history's, for the refreshes);
        reaching it raises ``PaidCallCapReached`` without holding back the refreshes."""
        src = self.src
        self.context().set_deadline(time.monotonic() + src.timeout)
        self._reserve = reserve
        try:
            result = _in_thread(f"fetch-{src.name}", lambda: self._get_provider().fetch(window), src.timeout)
        except TimeoutError:
            self._provider = None  # the thread is abandoned; the next refresh gets fresh clients
            raise TimeoutError(f"refresh timed out after {src.timeout:g}s") from None
        finally:
            self._reserve = 0.0
        if not isinstance(result, FetchResult):
            raise SourceError(f"provider returned {type(result).__name__}, not a FetchResult")
        return result

    def can_parse(self) -> bool:
        """The source's provider rebuilds its records from its pages (``PageParser``)."""
        return hasattr(self._get_provider(), "parse")

    def parse(self, window: FetchWindow, raw: RawFetch) -> FetchResult:
        """The records of pages kept from an earlier fetch of ``window`` (``PageParser.parse``): no API call."""
        p = self._get_provider()
        if not hasattr(p, "parse"):
            raise SourceError(f"source type {getattr(self.src, 'type', '?')} cannot rebuild its records from pages")
        result = typing.cast(PageParser, p).parse(window, raw)
        if not isinstance(result, FetchResult):
            raise SourceError(f"provider returned {type(result).__name__}, not a FetchResult")
        return result

    def fetch_minutes(self, now: dt.datetime, timeout: float) -> MinuteUsageResult:
        """The burn rate's fetch (``MinuteProvider.fetch_minutes``), in its own thread under ``timeout``."""
        src = self.src
        if self._burn_ctx is None:
            self._burn_ctx = self._new_context()
        ctx = self._burn_ctx
        ctx.set_deadline(time.monotonic() + timeout)

        def run() -> MinuteUsageResult:
            p = self._burn_provider
            if p is None:
                p = self._burn_provider = create_provider(src, ctx)
            if not hasattr(p, "fetch_minutes"):
                raise SourceError(f"source type {getattr(src, 'type', '?')} has no minute usage")
            return typing.cast(MinuteProvider, p).fetch_minutes(now)

        try:
            result = _in_thread(f"burn-{src.name}", run, timeout)
        except TimeoutError:
            self._burn_provider = None
            raise TimeoutError(f"burn fetch timed out after {timeout:g}s") from None
        if not isinstance(result, MinuteUsageResult):
            raise SourceError(f"provider returned {type(result).__name__}, not a MinuteUsageResult")
        return result

    def close(self) -> None:
        for p in (self._provider, self._burn_provider):
            if p is None:
                continue
            try:
                p.close()
            except Exception:
                log.debug("closing a provider failed", exc_info=True)


def _in_thread(name: str, fn: Callable[[], Any], timeout: float) -> Any:
    """``fn()`` in a daemon thread; its exception re-raised; TimeoutError if it has not returned in ``timeout``."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(name)
    if "error" in box:
        raise box["error"]
    return box.get("result")
