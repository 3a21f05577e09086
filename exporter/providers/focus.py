"""FinOps FOCUS 1.0–1.2 cost exports (CSV or Parquet, local files and globs) through DuckDB.

Reads what AWS Data Exports, Azure FocusCost exports, OCI FOCUS reports and
our demo generator write. Real exports are messy, so every column is read as
text and cleaned in SQL: ``NULL``/empty strings, timestamps with or without
``T``/``Z``/fractions/offsets, mixed-case enums, negative costs, hourly and
daily charge periods in one file. Files added to the glob are picked up at
the next refresh.

Optional columns beyond FOCUS, used where present: ``x_Model`` (AI model),
``x_TokenType`` (input|output|cache_read|cache_write) with ``ConsumedQuantity``
in ``ConsumedUnit`` ``Tokens``, and ``Requests`` rows for request counts.
"""

from __future__ import annotations

import datetime as dt
import functools
import glob
import json
import os
from typing import Any

from exporter.config import FocusSource
from exporter.model import (
    TOKEN_TYPES,
    AccountInfo,
    CostRecord,
    FetchResult,
    FetchWindow,
    HourlyUsage,
    UsageRecord,
)
from exporter.providers.base import ProviderContext, SourceError

PROVIDER_NAMES = {
    "aws": "aws",
    "amazon web services": "aws",
    "amazon": "aws",
    "microsoft": "azure",
    "microsoft azure": "azure",
    "azure": "azure",
    "google cloud": "gcp",
    "google cloud platform": "gcp",
    "google": "gcp",
    "gcp": "gcp",
    "oracle": "oci",
    "oracle cloud infrastructure": "oci",
    "oci": "oci",
    "openai": "openai",
    "anthropic": "anthropic",
}

TOKEN_TYPE_ALIASES = {
    "input": "input",
    "prompt": "input",
    "uncached_input": "input",
    "output": "output",
    "completion": "output",
    "cache_read": "cache_read",
    "cached_input": "cache_read",
    "cache_write": "cache_write",
    "cache_creation": "cache_write",
}

COLUMNS = (
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ProviderName",
    "ServiceProviderName",
    "SubAccountId",
    "SubAccountName",
    "BillingAccountId",
    "BillingAccountName",
    "ServiceName",
    "BilledCost",
    "EffectiveCost",
    "BillingCurrency",
    "Tags",
    "ConsumedQuantity",
    "ConsumedUnit",
    "x_Model",
    "x_TokenType",
)


@functools.lru_cache(maxsize=4096)  # called once per aggregated row: 1M calls on a 1M-row export
def normalise_provider(name: str | None) -> str:
    n = (name or "").strip().lower()
    return PROVIDER_NAMES.get(n, n.replace(" ", "_") or "unknown")


class FocusProvider:
    """Aggregates FOCUS files by UTC day, provider, sub-account, service, team tag and model."""

    def __init__(self, config: FocusSource, ctx: ProviderContext) -> None:
        self.config = config
        self.ctx = ctx
        self._tag_cache: dict[str, str | None] = {}
        self._keys = [k.strip().lower() for k in ctx.team_tag_keys]
        self._athena: Any = None
        if config.engine == "athena":
            from exporter.providers.focus_athena import AthenaFocus  # imports boto3: only when configured

            self._athena = AthenaFocus(config, ctx)

    def close(self) -> None:
        if self._athena is not None:
            self._athena.close()

    def files(self) -> list[str]:
        out: set[str] = set()
        for pattern in self.config.paths:
            out.update(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
        return sorted(out)

    def team_from_tags(self, tags: str | None) -> str | None:
        if not tags:
            return None
        if tags in self._tag_cache:
            return self._tag_cache[tags]
        team: str | None = None
        try:
            obj = json.loads(tags)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            lowered = {str(k).strip().lower(): v for k, v in obj.items()}
            for key in self._keys:
                v = lowered.get(key)
                if v is not None and str(v).strip() and str(v).strip().upper() != "NULL":
                    team = str(v).strip()
                    break
        if len(self._tag_cache) < 100_000:
            self._tag_cache[tags] = team
        return team

    def fetch(self, window: FetchWindow) -> FetchResult:
        if self._athena is not None:
            result: FetchResult = self._athena.fetch(window)
            return result
        import duckdb

        files = self.files()
        if not files:
            raise SourceError(f"no files match {', '.join(self.config.paths)}")
        con = duckdb.connect()
        try:
            con.execute("SET TimeZone='UTC'")
            con.execute("SET enable_progress_bar = false")  # it would write to the exporter's terminal
            self._create_view(con, files)
            with self.ctx.api_call("read_files"):
                return self._query(con, window)
        except duckdb.Error as e:
            raise SourceError(f"reading FOCUS files failed: {str(e).splitlines()[0]}") from None
        finally:
            con.close()

    def _check_columns(self, con: Any, files: list[str]) -> None:
        """A file in the glob that is not a FOCUS export must fail the refresh, not read as a month of nothing."""
        for f in files:
            reader = "read_parquet" if f.lower().endswith(".parquet") else "read_csv"
            opts = "" if reader == "read_parquet" else ", all_varchar = true, header = true"
            cols = {r[0].lower() for r in con.execute(f"DESCRIBE SELECT * FROM {reader}({f!r}{opts})").fetchall()}
            missing = [c for c in ("ChargePeriodStart", self.config.cost_column) if c.lower() not in cols]
            if missing:
                raise SourceError(f"{os.path.basename(f)} is not a FOCUS export: no column {', '.join(missing)}")

    def _create_view(self, con: Any, files: list[str]) -> None:
        self._check_columns(con, files)
        csv = [f for f in files if not f.lower().endswith(".parquet")]
        parquet = [f for f in files if f.lower().endswith(".parquet")]
        parts = []
        if csv:
            parts.append(
                f"SELECT * FROM read_csv({csv!r}, all_varchar = true, header = true, union_by_name = true, "
                "nullstr = ['NULL', 'null', ''], ignore_errors = false)"
            )
        if parquet:
            parts.append(f"SELECT * FROM read_parquet({parquet!r}, union_by_name = true)")
        selects = []
        for part in parts:
            present = {r[0].lower(): r[0] for r in con.execute(f"DESCRIBE {part}").fetchall()}
            cols = []
            for c in COLUMNS:
                if c.lower() in present:
                    cols.append(f'CAST("{present[c.lower()]}" AS VARCHAR) AS {c}')
                else:
                    cols.append(f"CAST(NULL AS VARCHAR) AS {c}")
            selects.append(f"SELECT {', '.join(cols)} FROM ({part})")
        con.execute("CREATE TEMP VIEW raw AS " + " UNION ALL BY NAME ".join(selects))

        def clean(c: str) -> str:
            return f"NULLIF(NULLIF(TRIM({c}), ''), 'NULL')"

        cost_col = self.config.cost_column
        # a table, not a view: the files are parsed once, not once per query below (5 queries)
        con.execute(
            f"""
            CREATE TEMP TABLE focus AS
            SELECT
                TRY_CAST({clean("ChargePeriodStart")} AS TIMESTAMPTZ) AS ts,
                TRY_CAST({clean("ChargePeriodEnd")} AS TIMESTAMPTZ) AS te,
                COALESCE({clean("ProviderName")}, {clean("ServiceProviderName")}, '') AS provider,
                COALESCE({clean("SubAccountId")}, {clean("BillingAccountId")}, '') AS account_id,
                COALESCE({clean("SubAccountName")}, {clean("BillingAccountName")}) AS account_name,
                COALESCE({clean("ServiceName")}, '') AS service_name,
                TRY_CAST({clean(cost_col)} AS DOUBLE) AS cost,
                UPPER(COALESCE({clean("BillingCurrency")}, '')) AS currency,
                {clean("Tags")} AS tags,
                TRY_CAST({clean("ConsumedQuantity")} AS DOUBLE) AS qty,
                LOWER(COALESCE({clean("ConsumedUnit")}, '')) AS unit,
                COALESCE({clean("x_Model")}, '') AS model,
                LOWER(COALESCE({clean("x_TokenType")}, '')) AS token_type
            FROM raw
            """
        )

    def _query(self, con: Any, window: FetchWindow) -> FetchResult:
        lo = dt.datetime.combine(window.start, dt.time(), tzinfo=dt.UTC)
        hi = dt.datetime.combine(window.end + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
        bad = con.execute(
            "SELECT COUNT(*) FROM focus "
            "WHERE ts IS NULL OR (cost IS NULL AND unit NOT IN ('tokens', 'token', 'requests', 'request'))"
        ).fetchone()[0]
        if bad:
            self.ctx.log.warning(
                "source %s: %d FOCUS rows have no parsable ChargePeriodStart or cost", self.ctx.source_name, bad
            )
        costs: list[CostRecord] = []
        for day, prov, acct, svc, tags, cur, model, amount in con.execute(
            """
            SELECT CAST(ts AS DATE), provider, account_id, service_name, tags, currency, model, SUM(cost)
            FROM focus WHERE ts >= ? AND ts < ? AND cost IS NOT NULL
            GROUP BY ALL
            """,
            [lo, hi],
        ).fetchall():
            costs.append(
                CostRecord(
                    day=day,
                    provider=normalise_provider(prov),
                    account_id=acct,
                    service_name=svc,
                    amount=float(amount),
                    currency=cur or "",
                    team_tag=self.team_from_tags(tags),
                    model=model,
                )
            )
        usage: dict[tuple[Any, ...], dict[str, int]] = {}
        for day, prov, acct, svc, tags, model, unit, token_type, qty in con.execute(
            """
            SELECT CAST(ts AS DATE), provider, account_id, service_name, tags, model, unit, token_type, SUM(qty)
            FROM focus WHERE ts >= ? AND ts < ? AND qty IS NOT NULL
              AND unit IN ('tokens', 'token', 'requests', 'request')
            GROUP BY ALL
            """,
            [lo, hi],
        ).fetchall():
            key = (day, normalise_provider(prov), acct, svc, self.team_from_tags(tags), model)
            self._add_usage(usage.setdefault(key, {}), unit, token_type, qty)
        usage_records = [
            UsageRecord(
                day=k[0],
                provider=k[1],
                account_id=k[2],
                service_name=k[3],
                team_tag=k[4],
                model=k[5],
                tokens={t: v[t] for t in TOKEN_TYPES if t in v},
                requests=v.get("requests", 0),
            )
            for k, v in usage.items()
        ]
        # hourly rows of the last day feed the last-hour burn estimate
        hour_lo = window.last_complete_hour - dt.timedelta(hours=23)
        hourly: dict[tuple[Any, ...], dict[str, int]] = {}
        for ts, prov, acct, svc, tags, model, unit, token_type, qty in con.execute(
            """
            SELECT ts, provider, account_id, service_name, tags, model, unit, token_type, SUM(qty)
            FROM focus WHERE ts >= ? AND ts <= ? AND te - ts = INTERVAL 1 HOUR AND qty IS NOT NULL
              AND unit IN ('tokens', 'token', 'requests', 'request')
            GROUP BY ALL
            """,
            [hour_lo, window.last_complete_hour],
        ).fetchall():
            key = (ts, normalise_provider(prov), acct, svc, self.team_from_tags(tags), model)
            self._add_usage(hourly.setdefault(key, {}), unit, token_type, qty)
        hourly_records = [
            HourlyUsage(
                hour_start=k[0].astimezone(dt.UTC),
                provider=k[1],
                account_id=k[2],
                service_name=k[3],
                team_tag=k[4],
                model=k[5],
                tokens={t: v[t] for t in TOKEN_TYPES if t in v},
                requests=v.get("requests", 0),
            )
            for k, v in hourly.items()
        ]
        accounts = [
            AccountInfo(normalise_provider(p), a, n)
            for p, a, n in con.execute(
                "SELECT provider, account_id, ANY_VALUE(account_name) FROM focus "
                "WHERE account_name IS NOT NULL AND account_id <> '' GROUP BY ALL"
            ).fetchall()
        ]
        through = con.execute("SELECT MAX(te) FROM focus WHERE ts >= ? AND ts < ?", [lo, hi]).fetchone()[0]
        data_through = min(through, window.now) if through is not None else None
        return FetchResult(
            days=window.days(),
            costs=costs,
            usage=usage_records,
            hourly=hourly_records,
            accounts=accounts,
            data_through=data_through,
        )

    @staticmethod
    def _add_usage(acc: dict[str, int], unit: str, token_type: str, qty: float) -> None:
        if unit.startswith("request"):
            acc["requests"] = acc.get("requests", 0) + int(qty)
            return
        tt = TOKEN_TYPE_ALIASES.get(token_type.strip(), "input" if not token_type else None)
        if tt is None:
            return
        acc[tt] = acc.get(tt, 0) + int(qty)
