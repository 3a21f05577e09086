"""The keys the AI admin-API source types share (``openai``, ``anthropic``; ``exporter.providers.admin_api``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from exporter.config_types import Duration, EnvName
from exporter.sources.base import RetrySettings, SourceBase


class AdminApiSource(SourceBase):
    """Keys shared by the AI admin-API sources (``openai``, ``anthropic``)."""

    FETCH_NEUTRAL = SourceBase.FETCH_NEUTRAL | {"request_timeout", "max_retries", "max_retry_wait", "write_key_env"}
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

    @property
    def retry_settings(self) -> RetrySettings:
        # no backoff: a 429 without retry-after is not retried
        return RetrySettings(self.max_retries, self.max_retry_wait)
