"""The keys the AI admin-API source types share (``openai``, ``anthropic``; ``exporter.providers.admin_api``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator

from exporter.config_types import Duration, EnvName
from exporter.sources.base import RetrySettings, SourceBase


class AdminApiSource(SourceBase):
    """Keys shared by the AI admin-API sources (``openai``, ``anthropic``)."""

    RAW_PAGES = True

    FETCH_NEUTRAL = SourceBase.FETCH_NEUTRAL | {
        "request_timeout",
        "max_retries",
        "max_retry_wait",
        # the burn rate's own light fetch: none of them changes what the daily refresh fetches
        "burn_window",
        "burn_interval",
        "burn_delay",
        "write_key_env",  # the guard's key: writes only
    }
    interval: Duration = 900.0
    admin_key_env: EnvName
    write_key_env: EnvName | None = None
    """The key the guard's write calls use (``exporter.guard_actions``); the usage key stays read-only."""
    base_url: str | None = None
    request_timeout: Duration = 60.0
    """Timeout of one HTTP request (bounded by what is left of ``timeout``)."""
    max_retries: Annotated[int, Field(ge=0, le=10)] = 3
    """Retries of a throttled (429) request that says when to retry."""
    max_retry_wait: Duration = 60.0
    """Longest ``retry-after`` honoured; a longer one fails the refresh as throttled."""

    burn_window: Duration = 900.0
    """Minute usage buckets behind ``spend_ai_burn_rate_usd_per_hour`` (5m..60m)."""
    burn_interval: Duration = 120.0
    """How often those minute buckets are fetched (1m..burn_window)."""
    burn_delay: Duration = 300.0
    """How late the usage API publishes a minute in full: the burn window ends this long before now (1m..30m)."""

    @field_validator("burn_window")
    @classmethod
    def _burn_window(cls, v: float) -> float:
        if not 300 <= v <= 3600 or v % 60:
            raise ValueError(f"burn_window must be whole minutes from 5m to 60m, got {v:g}s")
        return v

    @field_validator("burn_interval")
    @classmethod
    def _burn_interval(cls, v: float, info: ValidationInfo) -> float:
        window = info.data.get("burn_window")
        if v < 60 or (window is not None and v > window):
            raise ValueError(f"burn_interval must be from 1m to burn_window ({window or 900:g}s), got {v:g}s")
        return v

    @field_validator("burn_delay")
    @classmethod
    def _burn_delay(cls, v: float) -> float:
        if not 60 <= v <= 1800 or v % 60:
            raise ValueError(f"burn_delay must be whole minutes from 1m to 30m, got {v:g}s")
        return v

    @property
    def retry_settings(self) -> RetrySettings:
        # no backoff: a 429 without retry-after is not retried
        return RetrySettings(self.max_retries, self.max_retry_wait)
