"""The FOCUS reader: one DuckDB pass over the files, in a process of its own, one per refresh.

``FocusProvider.fetch`` starts it as ``python -m exporter.providers.focus_reader``. It reads a pickled
``(FocusReader, files, FetchWindow)`` on stdin and writes a pickled ``("ok", FocusRead)``, or ``("error",
message)`` for a ``SourceError``, on stdout, then exits. Anything else ends it with a traceback on stderr and a
non-zero exit, which the exporter reports as the refresh's error. It imports DuckDB and this module only (not
the config's models), so that it starts in a fraction of a second; only the exporter talks to it, over its
own pipes.

Real exports are messy, so every column is read as text and cleaned in SQL: ``NULL``/empty strings,
timestamps with or without ``T``/``Z``/fractions/offsets, mixed-case enums, negative costs, hourly and daily
charge periods in one file.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import pickle
import sys
from array import array
from dataclasses import dataclass
from typing import Any, NamedTuple

from exporter.model import FetchWindow
from exporter.osutil import become_background_child
from exporter.providers.base import SourceError, utc_midnight

# Parquet column types used as numbers without a round trip through text
NUMERIC_TYPES: tuple[str, ...] = ("DOUBLE", "FLOAT", "REAL", "DECIMAL", "NUMERIC", "HUGEINT", "BIGINT", "INTEGER")
NUMERIC_TYPES += ("SMALLINT", "TINYINT", "UHUGEINT", "UBIGINT", "UINTEGER", "USMALLINT", "UTINYINT")

USAGE_UNITS = "('tokens', 'token', 'requests', 'request')"


def _ts_literal(t: dt.datetime) -> str:
    return f"TIMESTAMPTZ '{t.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}+00'"


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


def _sql_str(value: str) -> str:
    """A SQL string literal (DuckDB's SET takes no bound parameters)."""
    return "'" + value.replace("'", "''") + "'"


class FocusRead(NamedTuple):
    """What the reader process sends back: the rows of its queries, as DuckDB gave them (builtins only)."""

    bad: int  # rows with no parsable ChargePeriodStart or cost
    through: Any  # newest ChargePeriodEnd in the window
    series: list[tuple[Any, ...]]  # provider, account_id, service_name, currency, tags, model; by id
    # per cost record: day (offset from the window's start), series id, amount; as three arrays, which cross
    # the pipe as their bytes (a million pickled tuples took longer to send than to aggregate)
    costs: tuple[array[int], array[int], array[float]]
    usage: list[tuple[Any, ...]]  # day, provider, account_id, service_name, tags, model, unit, token type, qty
    hourly: list[tuple[Any, ...]]  # hour, then as usage
    accounts: list[tuple[Any, ...]]  # provider, account_id, account_name


@dataclass(frozen=True)
class FocusReader:
    """The SQL of a FOCUS refresh, with the source's settings it needs (sent to the reader process as it is)."""

    cost_column: str
    memory_limit: str | None
    threads: int
    scratch_dir: str | None

    def read(self, files: list[str], window: FetchWindow) -> FocusRead:
        """Everything the refresh needs from the files, in one DuckDB pass (run in the reader process)."""
        import duckdb

        try:
            con = duckdb.connect(config={"threads": self.threads})
        except duckdb.Error as e:
            raise SourceError(f"starting DuckDB failed: {_duckdb_reason(e)}") from None
        try:
            con.execute("SET TimeZone='UTC'")
            con.execute("SET enable_progress_bar = false")  # it would write to the exporter's terminal
            if self.scratch_dir:
                # DuckDB spills to ./.tmp by default: the working directory is read-only in the container
                con.execute("SET temp_directory = " + _sql_str(self.scratch_dir))
            # A refresh shares the machine with the scrapes it exists for: its memory is capped (beyond the cap the
            # aggregation spills to temp_directory), and no query here depends on the files' row order
            if self.memory_limit:
                con.execute("SET memory_limit = " + _sql_str(self.memory_limit))
            con.execute("SET preserve_insertion_order = false")
            self._create_view(con, files)
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
            missing = [c for c in ("ChargePeriodStart", self.cost_column) if c.lower() not in names]
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
                {col(self.cost_column, "number")} AS cost,
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
        keep = f"(ts >= {_ts_literal(utc_midnight(window.start))} AND ts < {_ts_literal(utc_midnight(window.end, 1))})"
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

    def _query(self, con: Any, window: FetchWindow) -> FocusRead:
        self._aggregate(con, window)
        in_window = "day BETWEEN $start AND $end"
        span = {"start": window.start, "end": window.end}
        bad, through = con.execute(
            f"SELECT SUM(bad), MAX(through) FILTER (WHERE {in_window}) FROM agg", span
        ).fetchone()
        # A million rows of eight values cost more to turn into Python objects than to aggregate. The strings of
        # a record are those of its series (provider, account, service, currency, tags, model): each series is
        # fetched once, and each record as numbers (day, series, amount); the exporter then builds the records
        # so that every one shares its series' strings and date (``_result``).
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
        series = con.execute(
            "SELECT provider, account_id, service_name, currency, tags, model FROM series ORDER BY id"
        ).fetchall()
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
        usage_rows = "provider, account_id, service_name, tags, model, u_unit, u_token_type, SUM(qty)"
        usage = con.execute(
            f"SELECT day, {usage_rows} FROM agg WHERE u_unit IS NOT NULL AND {in_window} GROUP BY ALL", span
        ).fetchall()
        # hourly rows of the last day feed the last-hour burn estimate
        hourly = con.execute(f"SELECT h_ts, {usage_rows} FROM agg WHERE h_ts IS NOT NULL GROUP BY ALL").fetchall()
        accounts = con.execute(
            "SELECT provider, account_id, ANY_VALUE(account_name) FROM agg "
            "WHERE account_name IS NOT NULL AND account_id <> '' GROUP BY ALL"
        ).fetchall()
        # (not zip(*rows): with a million iterators that takes ten times as long)
        costs = (array("i", [r[0] for r in rows]), array("i", [r[1] for r in rows]), array("d", [r[2] for r in rows]))
        del rows
        return FocusRead(int(bad or 0), through, series, costs, usage, hourly, accounts)


def main() -> int:
    become_background_child()  # the exporter's scrapes come first; DuckDB's threads inherit the priority
    gc.disable()  # a short life and a million result tuples with no cycles: the cyclic GC would only walk them
    reader, files, window = pickle.loads(sys.stdin.buffer.read())
    try:
        reply: tuple[str, object] = ("ok", reader.read(files, window))
    except SourceError as e:
        reply = ("error", str(e))
    sys.stdout.buffer.write(pickle.dumps(reply, pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    # run as this module under its own name, not as __main__: what it pickles must name a module the exporter has
    from exporter.providers.focus_reader import main as named_main

    sys.exit(named_main())
