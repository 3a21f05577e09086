"""The ``anthropic`` source type: the Anthropic Admin API (``exporter.providers.anthropic``)."""

from __future__ import annotations

from typing import Literal

from exporter.config_types import EnvName
from exporter.sources.admin_api import AdminApiSource
from exporter.sources.base import SourceSpec


class AnthropicSource(AdminApiSource):
    type: Literal["anthropic"]
    admin_key_env: EnvName = "ANTHROPIC_ADMIN_KEY"


SPEC = SourceSpec(
    AnthropicSource,
    provider="anthropic",
    implementation="exporter.providers.anthropic:AnthropicProvider",
    api="Anthropic Admin API",
    extra="anthropic",
    docs="docs/providers/anthropic.md",
    # no documented limit on starting_at; a page holds 31 daily buckets
    query_days=93,
)
