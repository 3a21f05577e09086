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
import threading
from typing import Any

from exporter.config import FocusSource
from exporter.model import (
    TOKEN_TYPES,
    AccountInfo,
    CostRows,
    FetchResult,
    FetchWindow,
    HourlyUsage,
    UsageRecord,
)
from exporter.osutil import lower_thread_priority
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


# Parquet column types used as numbers without a round trip through text
NUMERIC_TYPES: tuple[str, ...] = ("DOUBLE", "FLOAT", "REAL", "DECIMAL", "NUMERIC", "HUGEINT", "BIGINT", "INTEGER")
NUMERIC_TYPES += ("SMALLINT", "TINYINT", "UHUGEINT", "UBIGINT", "UINTEGER", "USMALLINT", "UTINYINT")

USAGE_UNITS = "('tokens', 'token', 'requests', 'request')"


def _ts_literal(t: dt.datetime) -> str:
    return f"TIMESTAMPTZ '{t.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}+00'"


def _midnight(day: dt.date, plus_days: int = 0) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=plus_days), dt.time(), tzinfo=dt.UTC)


def _duckdb_reason(e: Exception) -> str:
    """DuckDB's first line, plus the line saying why and the file (a CSV error's first line only says where)."""
    lines = [ln.strip() for ln in str(e).splitlines()]
    # the reason is a sentence: not the offending row (commas), a setting (=) or a hint
    why = next((ln for ln in lines[1:] if ln and not ln.startswith(("Original Line", "Possible Solution", "LINE "))
                and "=" not in ln and "," not in ln), "")  # fmt: skip
    file = next((ln.split("=", 1)[1].strip() for ln in lines if ln.startswith("file =")), "")
    out = lines[0] if lines else e.__class__.__name__
    if why:
        out += f" {why}"
    if file:
        out += f" (file {os.path.basename(file)})"
    return out[:500]


@functools.lru_cache(maxsize=4096)  # called once per aggregated row: 1M calls on a 1M-row export
def normalise_provider(name: str | None) -> str:
    n = (name or "").strip().lower()
    return PROVIDER_NAMES.get(n, n.replace(" ", "_") or "unknown")


def _connect(threads: int) -> Any:
    """An in-memory DuckDB whose worker threads yield the CPU to serving (nice 10).

    DuckDB starts its workers when the database opens, and on Linux they inherit the nice value of the thread
    opening it: a short-lived thread here, so that the refresh's own thread, whose Python code holds the GIL that
    the HTTP handlers need, keeps its priority (lowered, it would stall them while waiting for the CPU).
    """
    import duckdb

    box: dict[str, Any] = {}

    def run() -> None:
        lower_thread_priority()
        try:
            box["con"] = duckdb.connect(config={"threads": threads})
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, name="duckdb-open", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["con"]


def _sql_str(value: str) -> str:
    """A SQL string literal (DuckDB's SET takes no bound parameters)."""
    return "'" + value.replace("'", "''") + "'"


UsageKey = tuple[Any, ...]  # (day, or hour start), provider, account_id, service_name, team tag, model


def usage_records(usage: dict[UsageKey, dict[str, int]]) -> list[UsageRecord]:
    """Daily usage summed by ``FocusProvider._add_usage`` under ``UsageKey``s, as records."""
    return [
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


def hourly_records(hourly: dict[UsageKey, dict[str, int]]) -> list[HourlyUsage]:
    """Hourly usage summed by ``FocusProvider._add_usage`` under ``UsageKey``s, as records."""
    return [
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
                    # a JSON escape like "\udcff" decodes to a lone surrogate, which no UTF-8 store accepts
                    team = str(v).strip().encode("utf-16", "surrogatepass").decode("utf-16", "replace")
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
        con = _connect(self.config.threads)
        try:
            con.execute("SET TimeZone='UTC'")
            con.execute("SET enable_progress_bar = false")  # it would write to the exporter's terminal
            if self.ctx.scratch_dir:
                # DuckDB spills to ./.tmp by default: the working directory is read-only in the container
                con.execute("SET temp_directory = " + _sql_str(self.ctx.scratch_dir))
            # A refresh shares the machine with the scrapes it exists for: its memory is capped (beyond the cap the
            # aggregation spills to temp_directory), and no query here depends on the files' row order
            if self.config.memory_limit:
                con.execute("SET memory_limit = " + _sql_str(self.config.memory_limit))
            con.execute("SET preserve_insertion_order = false")
            self._create_view(con, files)
            with self.ctx.api_call("read_files"):
                return self._query(con, window)
        except duckdb.Error as e:
            raise SourceError(f"reading FOCUS files failed: {_duckdb_reason(e)}") from None
        finally:
            con.close()

    def _check_columns(self, con: Any, files: list[str]) -> dict[str, tuple[str, str]]:
        """A file in the glob that is not a FOCUS export must fail the refresh, not read as a month of nothing.

        Returns the columns of all files (lower-case name → name, type), as DuckDB's ``union_by_name`` reads them:
        a column typed differently in two Parquet files is read as text.
        """
        present: dict[str, tuple[str, str]] = {}
        for f in files:
            reader = "read_parquet" if f.lower().endswith(".parquet") else "read_csv"
            opts = "" if reader == "read_parquet" else ", all_varchar = true, header = true"
            cols = con.execute(f"DESCRIBE SELECT * FROM {reader}({f!r}{opts})").fetchall()
            names = {str(r[0]).lower() for r in cols}
            missing = [c for c in ("ChargePeriodStart", self.config.cost_column) if c.lower() not in names]
            if missing:
                raise SourceError(f"{os.path.basename(f)} is not a FOCUS export: no column {', '.join(missing)}")
            for name, typ, *_ in cols:
                seen = present.setdefault(str(name).lower(), (str(name), str(typ).upper()))
                if seen[1] != str(typ).upper():
                    present[str(name).lower()] = (seen[0], "VARCHAR")
        return present

    def _create_view(self, con: Any, files: list[str]) -> None:
        """The view ``focus``: one cleaned, typed row per file row (CSV read as text, Parquet's typed columns kept)."""
        csv = [f for f in files if not f.lower().endswith(".parquet")]
        parquet = [f for f in files if f.lower().endswith(".parquet")]
        selects = []
        if csv:
            # buffer_size: DuckDB's default of 32 MB per file is held from the view's creation to the end of the
            # query; 8 MB (4 lines of the 2 MB max_line_size) reads as fast and holds ~100 MB less at 4 files
            part = (
                f"SELECT * FROM read_csv({csv!r}, all_varchar = true, header = true, union_by_name = true, "
                "buffer_size = 8388608, nullstr = ['NULL', 'null', ''], ignore_errors = false)"
            )
            selects.append(self._clean_select(part, self._check_columns(con, csv)))
        if parquet:
            part = f"SELECT * FROM read_parquet({parquet!r}, union_by_name = true)"
            selects.append(self._clean_select(part, self._check_columns(con, parquet)))
        con.execute("CREATE TEMP VIEW focus AS " + " UNION ALL BY NAME ".join(selects))

    def _clean_select(self, part: str, present: dict[str, tuple[str, str]]) -> str:

        def col(c: str, kind: str = "text") -> str:
            """Text is trimmed, with '' and 'NULL' as NULL; a typed Parquet column is used as it is."""
            if c.lower() not in present:
                return "CAST(NULL AS VARCHAR)" if kind == "text" else "NULL"
            name, typ = present[c.lower()]
            ref = f'"{name}"'
            if kind == "timestamp" and typ.startswith(("TIMESTAMP", "DATE")):
                return f"CAST({ref} AS TIMESTAMPTZ)"
            if kind == "number" and typ.startswith(NUMERIC_TYPES):
                return finite(f"CAST({ref} AS DOUBLE)")
            text = f"NULLIF(NULLIF(TRIM(CAST({ref} AS VARCHAR)), ''), 'NULL')"
            if kind == "timestamp":
                return f"TRY_CAST({text} AS TIMESTAMPTZ)"
            if kind == "number":
                return finite(f"TRY_CAST({text} AS DOUBLE)")
            return text

        def finite(x: str) -> str:
            # NaN and ±inf (or 1e400) are not amounts: the row is unparsable, so one NaN row cannot turn its
            # whole day and series into NaN (and the good rows with it)
            return f"(CASE WHEN isfinite({x}) THEN {x} END)"

        return f"""
            SELECT
                {col("ChargePeriodStart", "timestamp")} AS ts,
                {col("ChargePeriodEnd", "timestamp")} AS te,
                COALESCE({col("ProviderName")}, {col("ServiceProviderName")}, '') AS provider,
                COALESCE({col("SubAccountId")}, {col("BillingAccountId")}, '') AS account_id,
                COALESCE({col("SubAccountName")}, {col("BillingAccountName")}) AS account_name,
                COALESCE({col("ServiceName")}, '') AS service_name,
                {col(self.config.cost_column, "number")} AS cost,
                UPPER(COALESCE({col("BillingCurrency")}, '')) AS currency,
                {col("Tags")} AS tags,
                {col("ConsumedQuantity", "number")} AS qty,
                LOWER(COALESCE({col("ConsumedUnit")}, '')) AS unit,
                COALESCE({col("x_Model")}, '') AS model,
                LOWER(COALESCE({col("x_TokenType")}, '')) AS token_type
            FROM ({part})
            """

    def _aggregate(self, con: Any, window: FetchWindow) -> None:
        """One pass over the files, into the table ``agg``: everything the refresh needs, aggregated once.

        Its grain is the cost record's (day, provider, account, service, tags, currency, model), split further
        only on usage rows (token or request counts), by unit, token type and, over the last 24 complete
        hours, hour. The columns ``u_unit``, ``u_token_type`` and ``h_ts`` are NULL on every other row, so a
        cost-only export aggregates exactly to its cost records.
        """
        hour_lo = _ts_literal(window.last_complete_hour - dt.timedelta(hours=23))
        hour_hi = _ts_literal(window.last_complete_hour)
        # A row outside the window (and the last 24 hours) is only counted (bad rows) and read for account names:
        # its other keys are NULL, so a warm refresh's hash table holds the few days it fetches, not every day of
        # every file (at 100k series, 50k groups instead of 700k, and a few hundred MB less at its peak).
        keep = f"(ts >= {_ts_literal(_midnight(window.start))} AND ts < {_ts_literal(_midnight(window.end, 1))})"
        keep = f"({keep} OR (ts >= {hour_lo} AND ts <= {hour_hi}))"
        con.execute(
            f"""
            CREATE TEMP TABLE agg AS
            WITH f AS (
                SELECT *, (qty IS NOT NULL AND unit IN {USAGE_UNITS}) AS is_usage, COALESCE({keep}, false) AS keep
                FROM focus
            )
            SELECT
                CASE WHEN keep THEN CAST(ts AS DATE) END AS day, provider, account_id,
                CASE WHEN keep THEN service_name END AS service_name,
                CASE WHEN keep THEN tags END AS tags,
                CASE WHEN keep THEN currency END AS currency,
                CASE WHEN keep THEN model END AS model,
                CASE WHEN keep AND is_usage THEN unit END AS u_unit,
                CASE WHEN keep AND is_usage THEN token_type END AS u_token_type,
                CASE WHEN is_usage AND te - ts = INTERVAL 1 HOUR AND ts >= {hour_lo} AND ts <= {hour_hi}
                    THEN ts END AS h_ts,
                SUM(cost) AS cost,
                SUM(qty) AS qty,
                ANY_VALUE(account_name) AS account_name,
                MAX(te) AS through,
                COUNT(*) FILTER (WHERE ts IS NULL OR (cost IS NULL AND unit NOT IN {USAGE_UNITS})) AS bad
            FROM f
            GROUP BY ALL
            """
        )

    def _query(self, con: Any, window: FetchWindow) -> FetchResult:
        self._aggregate(con, window)
        in_window = "day BETWEEN $start AND $end"
        span = {"start": window.start, "end": window.end}
        bad, through = con.execute(
            f"SELECT SUM(bad), MAX(through) FILTER (WHERE {in_window}) FROM agg", span
        ).fetchone()
        if bad:
            self.ctx.log.warning(
                "source %s: %d FOCUS rows have no parsable ChargePeriodStart or cost", self.ctx.source_name, bad
            )
        # A million rows of eight values cost more to turn into Python objects than to aggregate. The strings of
        # a record are those of its series (provider, account, service, currency, tags, model): each series is
        # fetched once, with its provider normalised and its team found once here, and each record as numbers
        # (day, series, amount), so that every record shares its series' strings and date.
        con.execute(
            f"""
            CREATE TEMP TABLE series AS
            SELECT CAST(ROW_NUMBER() OVER () - 1 AS INTEGER) AS id, * FROM (
                SELECT DISTINCT provider, account_id, service_name, currency, COALESCE(tags, '') AS tags, model
                FROM agg WHERE cost IS NOT NULL AND {in_window}
            )
            """,
            span,
        )
        series = [
            (normalise_provider(p), a, s, cur, self.team_from_tags(t), m)
            for p, a, s, cur, t, m in con.execute(
                "SELECT provider, account_id, service_name, currency, tags, model FROM series ORDER BY id"
            ).fetchall()
        ]
        days = window.days()
        rows = con.execute(
            f"""
            WITH c AS (
                SELECT day, provider, account_id, service_name, currency, tags, model, cost FROM agg
                WHERE u_unit IS NULL AND cost IS NOT NULL AND {in_window}
                UNION ALL
                -- usage rows are split by unit, token type and hour: one record again
                SELECT day, provider, account_id, service_name, currency, tags, model, SUM(cost) FROM agg
                WHERE u_unit IS NOT NULL AND cost IS NOT NULL AND {in_window}
                GROUP BY day, provider, account_id, service_name, currency, tags, model
            )
            SELECT CAST(c.day - $start AS INTEGER), s.id, c.cost
            FROM c JOIN series s ON c.provider = s.provider AND c.account_id = s.account_id
                AND c.service_name = s.service_name AND c.currency = s.currency
                AND COALESCE(c.tags, '') = s.tags AND c.model = s.model
            """,
            span,
        ).fetchall()
        # in CostRecord's field order
        costs = CostRows(
            [(days[d], p, a, s, amount, cur, t, m) for d, i, amount in rows for p, a, s, cur, t, m in (series[i],)]
        )
        usage_rows = "provider, account_id, service_name, tags, model, u_unit, u_token_type, SUM(qty)"
        usage: dict[tuple[Any, ...], dict[str, int]] = {}
        for day, prov, acct, svc, tags, model, unit, token_type, qty in con.execute(
            f"SELECT day, {usage_rows} FROM agg WHERE u_unit IS NOT NULL AND {in_window} GROUP BY ALL", span
        ).fetchall():
            key = (day, normalise_provider(prov), acct, svc, self.team_from_tags(tags), model)
            self._add_usage(usage.setdefault(key, {}), unit, token_type, qty)
        # hourly rows of the last day feed the last-hour burn estimate
        hourly: dict[tuple[Any, ...], dict[str, int]] = {}
        for ts, prov, acct, svc, tags, model, unit, token_type, qty in con.execute(
            f"SELECT h_ts, {usage_rows} FROM agg WHERE h_ts IS NOT NULL GROUP BY ALL"
        ).fetchall():
            key = (ts, normalise_provider(prov), acct, svc, self.team_from_tags(tags), model)
            self._add_usage(hourly.setdefault(key, {}), unit, token_type, qty)
        accounts = [
            AccountInfo(normalise_provider(p), a, n)
            for p, a, n in con.execute(
                "SELECT provider, account_id, ANY_VALUE(account_name) FROM agg "
                "WHERE account_name IS NOT NULL AND account_id <> '' GROUP BY ALL"
            ).fetchall()
        ]
        if through is not None and not isinstance(through, dt.datetime):
            through = window.now  # DuckDB gives a string for a year Python cannot hold (ChargePeriodEnd 99999-01-01)
        data_through = min(through, window.now) if through is not None else None
        return FetchResult(
            days=window.days(),
            costs=costs,
            usage=usage_records(usage),
            hourly=hourly_records(hourly),
            accounts=accounts,
            data_through=data_through,
            skipped={"unparsable_row": int(bad)} if bad else {},
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
