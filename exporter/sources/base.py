"""What every source type declares: the keys all sources share, the throttle keys, and its ``SourceSpec``."""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, NamedTuple

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema, field_validator

from exporter.config_types import ConfigModel, Duration, format_duration, parse_duration


def _retention(value: Any) -> float:
    """A duration, or ``0`` (off)."""
    if not isinstance(value, bool) and re.fullmatch(r"0+(\.0+)?(ms|s|m|h|d|w)?", str(value).strip()):
        return 0.0
    try:
        return parse_duration(value)
    except ValueError as e:
        raise ValueError(f"{e}; 0 turns it off") from None


Retention = Annotated[
    float,
    BeforeValidator(_retention),
    PlainSerializer(lambda v: format_duration(v) if v else "0", return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^(0|(\d+(\.\d+)?(ms|s|m|h|d|w))+)$",
            "description": "A duration such as 90d, or 0 (off).",
        }
    ),
]


class SourceBase(ConfigModel):
    FETCH_NEUTRAL: ClassVar[frozenset[str]] = frozenset(
        {"interval", "jitter", "timeout", "backoff_max", "max_api_cost_usd_per_day", "raw_retention", "history_days"}
    )
    """Keys that change when or how patiently a source is fetched, not what: changing one keeps the cache."""
    RAW_PAGES: ClassVar[bool] = False
    """The type's provider keeps its raw pages and rebuilds its records from them (``raw_retention``)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", min_length=1, max_length=64)]
    interval: Duration = 6 * 3600.0
    jitter: Annotated[float, Field(ge=0, le=0.5)] = 0.1
    """Fraction of the interval by which each refresh is randomly delayed."""
    timeout: Duration = 300.0
    restatement_days: Annotated[int, Field(ge=0, le=60)] = 3
    max_api_cost_usd_per_day: Annotated[float, Field(ge=0)] | None = None
    backoff_max: Duration = 3600.0
    history_days: Annotated[int, Field(ge=1, le=1200)] | None = None
    """How far back this source's history is fetched (default: the top-level ``history_days``); the cache keeps
    the top-level figure. Changing it keeps the cache: a longer reach fetches only the days missing."""
    raw_retention: Retention = 0.0
    """How long every raw API page a refresh receives is kept in the cache (docs/audit.md); 0: none is."""
    type: str
    """The source type; each narrows it to its own ``Literal``, on which the config's union is discriminated."""

    @field_validator("raw_retention")
    @classmethod
    def _raw_pages(cls, v: float) -> float:
        if v > 0 and not cls.RAW_PAGES:
            tag = typing.get_args(cls.model_fields["type"].annotation) or (cls.__name__,)
            raise ValueError(f"source type {tag[0]} does not keep raw pages yet: set it to 0 or remove it")
        return v

    def history_requests_per_query(self) -> int:
        """API requests one history query makes at least (its first page of each listing), for the dry-run plan."""
        return 1

    def history_request_usd(self, listed: float | None) -> float | None:
        """What one request costs, from the type's ``SourceSpec.request_usd`` (None: billed by data scanned)."""
        return listed


class RetrySettings(NamedTuple):
    """How a source retries a throttled request, whatever its keys are called (``RetryPolicy.from_settings``)."""

    retries: int
    max_wait: float
    backoff: float | None = None
    """First wait after a throttle without the server's hint; None: such a throttle is not retried."""


class ThrottleRetry(SourceBase):
    """The ``throttle_*`` keys of a source whose API throttles and says so without always saying how long."""

    FETCH_NEUTRAL = SourceBase.FETCH_NEUTRAL | {"throttle_retries", "throttle_backoff", "throttle_max_wait"}
    throttle_retries: Annotated[int, Field(ge=0, le=10)] = 4
    """Retries of a throttled request before the refresh fails."""
    throttle_backoff: Duration = 1.0
    """First wait after a throttled request; doubled on each retry, each wait at most ``throttle_max_wait``."""
    throttle_max_wait: Duration = 30.0
    """Longest wait honoured; a longer retry hint fails the refresh and the scheduler retries later."""

    @property
    def retry_settings(self) -> RetrySettings:
        return RetrySettings(self.throttle_retries, self.throttle_max_wait, self.throttle_backoff)


@dataclass(frozen=True)
class SourceSpec:
    """One source type: its config model, and what the engine, the installer and the docs need to know of it.

    ``exporter.sources.SOURCES`` lists one per type; the config's union, the provider factory and the docs
    tests are built from that table.
    """

    config: type[SourceBase]
    provider: str
    """Value of the ``provider`` label on ``spend_exporter_source_*`` metrics."""
    implementation: str
    """The provider class as ``module:Class``, imported only when a source of this type is configured."""
    api: str
    """The billing API it reads, named in HELP texts and docs."""
    extra: str
    """The pip extra that installs its SDK ("" if none)."""
    docs: str
    """The page that documents it, from the repository's root."""
    reach_months: int | None = None
    """How far back the API serves daily data: from the first of the month this many months before the current
    one (Cost Explorer: 13). None: no such limit (``reach_days``, or as far as the data goes)."""
    reach_days: int | None = None
    """How far back the API serves daily data, in days before today. None: no such limit."""
    query_days: int | None = None
    """Days one history query asks for at most (the API's cap on a query's span, or a size that pages well);
    None: the whole history in one query (files read whole)."""
    request_usd: float | None = 0.0
    """What one API request costs; None: billed by data scanned, known only once a query is planned by the API."""
    type: str = field(init=False)
    """The ``type`` key's value, read from the model's ``Literal``."""

    def __post_init__(self) -> None:
        (tag,) = typing.get_args(self.config.model_fields["type"].annotation)
        object.__setattr__(self, "type", tag)
