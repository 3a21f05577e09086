"""The ``focus`` source type: FinOps FOCUS exports (``exporter.providers.focus``, ``focus_athena`` for Athena)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from exporter.config_types import Duration, NonEmptyStr
from exporter.sources.base import SourceSpec, ThrottleRetry

SqlName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=255)]


class FocusSource(ThrottleRetry):
    """FOCUS exports: local files through DuckDB, or (``engine: athena``) a table in S3 queried by Athena."""

    RAW_PAGES = True  # with engine duckdb: the files' names, sizes and hashes (docs/audit.md)

    # the throttle_* keys are the Athena engine's (TooManyRequestsException, ThrottlingException)
    FETCH_NEUTRAL = ThrottleRetry.FETCH_NEUTRAL | {"poll_interval", "memory_limit", "threads"}
    type: Literal["focus"]
    interval: Duration = 3600.0
    paths: list[NonEmptyStr] = []
    cost_column: Literal["BilledCost", "EffectiveCost"] = "BilledCost"
    memory_limit: Annotated[str, Field(pattern=r"(?i)^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")] | None = "512MB"
    """DuckDB: memory of one refresh's query beyond which it spills to disk (null: DuckDB's 80% of RAM)."""
    threads: Annotated[int, Field(ge=1, le=256)] = 2
    """DuckDB: threads of one refresh's query."""
    engine: Literal["duckdb", "athena"] = "duckdb"
    database: SqlName | None = None
    table: SqlName | None = None
    workgroup: NonEmptyStr = "primary"
    output_location: str | None = None
    """s3://bucket/prefix/ for query results; not needed when the workgroup sets one."""
    region: NonEmptyStr = "us-east-1"
    endpoint_url: str | None = None
    partition_column: SqlName | None = "billing_period"
    """Partition holding the billing month as YYYY-MM (AWS Data Exports' layout); null to scan the whole table."""
    poll_interval: Duration = 1.0
    """Wait between two GetQueryExecution polls."""
    model_column: SqlName | None = None
    """Athena: the table's column holding the AI model (e.g. x_model), if it has one; else model is empty."""
    token_type_column: SqlName | None = None
    """Athena: the table's column holding the token type (e.g. x_tokentype); else token counts are input."""

    @model_validator(mode="after")
    def _engine_keys(self) -> FocusSource:
        if self.engine == "duckdb" and not self.paths:
            raise ValueError("paths: needed with engine duckdb (a list of files or globs)")
        if self.engine == "athena" and (not self.database or not self.table):
            raise ValueError("database and table: needed with engine athena")
        if self.engine == "athena" and self.raw_retention > 0:
            raise ValueError("raw_retention: not kept with engine athena yet (engine duckdb keeps the files' hashes)")
        return self

    def history_request_usd(self, listed: float | None) -> float | None:
        return None if self.engine == "athena" else listed  # Athena bills the data each query scans


SPEC = SourceSpec(
    FocusSource,
    provider="focus",
    implementation="exporter.providers.focus:FocusProvider",
    api="FinOps FOCUS files",
    extra="",
    docs="docs/configuration.md",
    # whatever the files (or the Athena table) hold; 62 days a query, a cold refresh's span, so that the history
    # never holds more in memory than a first refresh does (each query reads the files again)
    query_days=62,
)
