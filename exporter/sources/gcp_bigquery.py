"""The ``gcp_bigquery`` source type: the GCP billing export in BigQuery (``exporter.providers.gcp_bigquery``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from exporter.config_types import Duration, NonEmptyStr
from exporter.sources.base import SourceBase, SourceSpec


class GcpBigQuerySource(SourceBase):
    RAW_PAGES = True
    # google-api-core retries by itself (its Retry), so these are not the throttle_* keys
    FETCH_NEUTRAL = SourceBase.FETCH_NEUTRAL | {
        "price_usd_per_tib",
        "maximum_bytes_billed",
        "retry_deadline",
        "retry_base_delay",
        "retry_max_delay",
    }
    type: Literal["gcp_bigquery"]
    table: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]+\.[A-Za-z0-9_]+\.[A-Za-z0-9_$-]+$")]
    project: str | None = None
    """Project that runs (and pays for) the query; defaults to the table's project."""
    location: str | None = None
    team_label_key: NonEmptyStr = "team"
    api_endpoint: str | None = None
    credentials: Literal["default", "anonymous"] = "default"
    price_usd_per_tib: Annotated[float, Field(ge=0)] = 6.25
    partition_margin_days: Annotated[int, Field(ge=0, le=31)] = 1
    """Partitions before the first day fetched that are still scanned (partitions are by export time)."""
    maximum_bytes_billed: Annotated[int, Field(ge=1)] | None = None
    retry_deadline: Duration = 60.0
    retry_base_delay: Duration = 1.0
    retry_max_delay: Duration = 10.0


SPEC = SourceSpec(
    GcpBigQuerySource,
    provider="gcp",
    implementation="exporter.providers.gcp_bigquery:GcpBigQueryProvider",
    api="GCP BigQuery billing export",
    extra="gcp",
    docs="docs/providers/gcp_bigquery.md",
    # as far back as the export table holds (from the day the export was turned on); billed by bytes scanned
    query_days=92,
    request_usd=None,
)
