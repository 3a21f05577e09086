"""The ``openai`` source type: the OpenAI Admin API (``exporter.providers.openai``)."""

from __future__ import annotations

from typing import Literal

from exporter.config_types import EnvName
from exporter.sources.admin_api import AdminApiSource
from exporter.sources.base import SourceSpec


class OpenAISource(AdminApiSource):
    type: Literal["openai"]
    admin_key_env: EnvName = "OPENAI_ADMIN_KEY"
    usage_endpoints: list[Literal["completions", "embeddings", "images", "audio_speeches", "audio_transcriptions"]] = [
        "completions"
    ]


SPEC = SourceSpec(
    OpenAISource,
    provider="openai",
    implementation="exporter.providers.openai:OpenAIProvider",
    api="OpenAI Admin API",
    extra="openai",
    docs="docs/providers/openai.md",
    # no documented limit on start_time; a page holds 180 daily cost buckets, 31 usage buckets
    query_days=90,
)
