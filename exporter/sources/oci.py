"""The ``oci`` source type: the OCI Usage API (``exporter.providers.oci``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from exporter.config_types import ConfigModel, Duration, NonEmptyStr
from exporter.sources.base import SourceBase, SourceSpec


class OciTeamTag(ConfigModel):
    namespace: NonEmptyStr
    key: NonEmptyStr


class OciSource(SourceBase):
    RAW_PAGES = True
    # the OCI SDK retries by itself (its RetryStrategy), so these are not the throttle_* keys
    FETCH_NEUTRAL = SourceBase.FETCH_NEUTRAL | {"retry_max_attempts", "retry_base_delay", "retry_max_delay"}
    type: Literal["oci"]
    tenancy_id: NonEmptyStr
    config_file: str = "~/.oci/config"
    profile: str = "DEFAULT"
    auth: Literal["config_file", "instance_principal"] = "config_file"
    team_tag: OciTeamTag | None = None
    service_endpoint: str | None = None
    region: str | None = None
    currency: Annotated[str, Field(pattern=r"^[A-Za-z]{3}$")] | None = None
    """Currency of the OCI subscription, used for items whose ``currency`` the Usage API leaves blank."""
    retry_max_attempts: Annotated[int, Field(ge=1, le=20)] = 5
    retry_base_delay: Duration = 1.0
    retry_max_delay: Duration = 30.0


SPEC = SourceSpec(
    OciSource,
    provider="oci",
    implementation="exporter.providers.oci:OciProvider",
    api="OCI Usage API",
    extra="oci",
    docs="docs/providers/oci.md",
    # the Usage API's cost data: one year back; a daily query of more than about 90 days is refused
    reach_days=365,
    query_days=90,
)
