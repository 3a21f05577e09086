"""The ``aws`` source type: AWS Cost Explorer (``exporter.providers.aws``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from exporter.config_types import NonEmptyStr
from exporter.sources.base import SourceSpec, ThrottleRetry


class AwsSource(ThrottleRetry):
    RAW_PAGES = True
    type: Literal["aws"]
    endpoint_url: str | None = None
    region: str = "us-east-1"
    account_id: str | None = None
    cost_metric: Literal["UnblendedCost", "AmortizedCost", "NetUnblendedCost", "NetAmortizedCost"] = "UnblendedCost"
    group_by_account: bool = False
    team_tag_key: NonEmptyStr = "team"
    include_credits: bool = False
    forecast: bool = True
    max_api_cost_usd_per_day: Annotated[float, Field(ge=0)] | None = 1.00
    profile: str | None = None
    bedrock_models: bool = True
    """One more query per account breaks Amazon Bedrock down by usage type to fill ``model``."""

    def history_requests_per_query(self) -> int:
        # GetCostAndUsage per account (one at least), GetDimensionValues first when grouping by account
        return 2 if self.group_by_account else 1


SPEC = SourceSpec(
    AwsSource,
    provider="aws",
    implementation="exporter.providers.aws:AwsProvider",
    api="AWS Cost Explorer",
    extra="aws",
    docs="docs/providers/aws.md",
    # GetCostAndUsage serves the current month and the 13 before it at daily granularity (the multi-year
    # opt-in is monthly only); $0.01 a request, each page a request
    reach_months=13,
    query_days=92,
    request_usd=0.01,
)
