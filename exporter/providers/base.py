"""The provider protocol and the context the engine hands to each provider.

A provider turns one billing API into normalised records
(``exporter.model``). It knows nothing of Prometheus, of the store or of the
scheduler: it is given a ``FetchWindow`` and returns a ``FetchResult``, and it
reports every API call it makes through ``ProviderContext.api_call`` so that
the engine can count requests, their cost and the daily paid-call cap.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from exporter.model import FetchResult, FetchWindow


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


CallHook = Callable[[str, str, float], None]
CapCheck = Callable[[float], None]


class ProviderContext:
    """What the engine gives a provider: its name, settings and accounting hooks."""

    def __init__(
        self,
        source_name: str,
        *,
        team_tag_keys: list[str] | None = None,
        on_call: CallHook | None = None,
        check_cap: CapCheck | None = None,
        deadline: Callable[[], float] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.source_name = source_name
        self.team_tag_keys = list(team_tag_keys or ["team", "Team"])
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


ProviderFactory = Callable[[Any, ProviderContext], Provider]
