"""The ``azure`` source type: Azure Cost Management (``exporter.providers.azure``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from exporter.config_types import Duration, NonEmptyStr
from exporter.sources.base import SourceSpec, ThrottleRetry


class AzureSource(ThrottleRetry):
    RAW_PAGES = True
    type: Literal["azure"]
    scopes: Annotated[list[NonEmptyStr], Field(min_length=1)]
    cost_type: Literal["ActualCost", "AmortizedCost"] = "ActualCost"
    team_tag_key: NonEmptyStr = "team"
    credential: Literal["default", "cli", "environment", "managed_identity", "workload_identity"] = "default"
    base_url: str | None = None
    forecast: bool = True
    cost_column: Literal["PreTaxCost", "Cost"] = "PreTaxCost"
    openai_models: bool = True
    """One more query per scope breaks Azure OpenAI down by meter to fill ``model``."""
    throttle_retries: Annotated[int, Field(ge=0, le=10)] = 3
    throttle_backoff: Duration = 5.0
    """Wait after a 429 that names no retry-after time; doubled on each retry."""
    throttle_max_wait: Duration = 60.0


SPEC = SourceSpec(
    AzureSource,
    provider="azure",
    implementation="exporter.providers.azure:AzureProvider",
    api="Azure Cost Management",
    extra="azure",
    docs="docs/providers/azure.md",
    # Query - Usage: a daily query spans 31 days at most (a longer one is cut short, not refused); 37 months back
    reach_months=37,
    query_days=31,
)
