"""The focus source's Athena engine (``engine: athena``): the FOCUS aggregation as one Athena query over S3.

For organisations whose FOCUS / CUR 2.0 exports are too big for one machine.
The table is the one AWS Data Exports (or a Glue crawler) defines over the
export: lower-case FOCUS column names, ``tags`` a ``map(varchar, varchar)``
and a ``billing_period`` partition (``YYYY-MM``). One refresh runs one query:

- ``WHERE`` names the partitions of the refresh window (the billing months it
  touches), so Athena reads only those, and the charge period bounds;
- ``StartQueryExecution``, then ``GetQueryExecution`` polled until the query
  ends, then every page of ``GetQueryResults``; every request is counted, and a
  throttled one (``TooManyRequestsException``, ``ThrottlingException``) is
  retried with backoff (``throttle_retries``), so that one throttled poll or
  page does not throw away a query already paid for;
- what Athena bills, ``DataScannedInBytes`` × $5 per TB (rounded up to a
  megabyte, 10 MB minimum per query), is counted in
  ``spend_exporter_api_cost_usd_total`` under the operation ``DataScanned``.

It fills what the DuckDB engine fills, from the same aggregation: costs by
day, provider, account, service, team tag and model; token and request usage
(``ConsumedQuantity`` in ``ConsumedUnit`` Tokens or Requests) by day and, over
the last 24 complete hours, by hour; account names; the newest period end.
The AI model and the token type are not FOCUS columns: name them with
``model_column`` and ``token_type_column`` where the table has them (the
DuckDB engine reads ``x_Model`` and ``x_TokenType`` when a file has them).
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import boto3

from exporter.model import AccountInfo, CostRecord, FetchResult, FetchWindow
from exporter.providers.base import ProviderContext, RetryPolicy, SourceError, paginate, utc_midnight
from exporter.providers.boto import boto_call, boto_clients
from exporter.providers.focus_records import add_usage, hourly_records, normalise_provider, usage_records
from exporter.sources.focus import FocusSource

USD_PER_TB = 5.0
MIN_BILLED_BYTES = 10 * 1024 * 1024
PAGE_SIZE = 1000  # GetQueryResults' maximum
MAX_RESULT_PAGES = 100_000  # 10^8 result rows: far beyond what one refresh could hold, so only a token loop reaches it
DONE_STATES = {"SUCCEEDED", "FAILED", "CANCELLED"}


def scan_cost_usd(data_scanned_bytes: int) -> float:
    """What Athena bills for one query: $5 per TB, each query rounded up to a MB, at least 10 MB."""
    if data_scanned_bytes <= 0:
        return 0.0
    mb = 1024 * 1024
    billed = max(math.ceil(data_scanned_bytes / mb) * mb, MIN_BILLED_BYTES)
    return billed / 1024**4 * USD_PER_TB


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def billing_periods(window: FetchWindow) -> list[str]:
    """The ``YYYY-MM`` partitions the window's days fall in."""
    out: list[str] = []
    d = window.start.replace(day=1)
    while d <= window.end:
        out.append(f"{d:%Y-%m}")
        d = (d + dt.timedelta(days=32)).replace(day=1)
    return out


def _ts(t: dt.datetime) -> str:
    return f"TIMESTAMP {_sql_str(f'{t.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}')}"


def build_query(
    config: FocusSource,
    window: FetchWindow,
    team_tag_keys: list[str],
    extra_labels: list[tuple[str, list[str]]] | None = None,
) -> str:
    """The aggregation of ``FocusProvider``'s DuckDB engine in Athena SQL.

    One row per (day, provider, account, service, team tag, currency, model), split further only on usage
    rows (token or request counts) by unit, token type and, over the last 24 complete hours, hour: the
    columns ``unit``, ``token_type`` and ``hour`` are NULL on every other row.
    """
    lo, hi = utc_midnight(window.start), utc_midnight(window.end, 1)
    hour_lo = window.last_complete_hour - dt.timedelta(hours=23)
    cost = config.cost_column.lower()
    model = f"COALESCE({config.model_column}, '')" if config.model_column else "''"
    token_type = f"LOWER(COALESCE({config.token_type_column}, ''))" if config.token_type_column else "''"
    usage = "consumedquantity IS NOT NULL AND LOWER(consumedunit) IN ('tokens', 'token', 'requests', 'request')"
    hourly = (
        f"{usage} AND chargeperiodend - chargeperiodstart = INTERVAL '1' HOUR "
        f"AND chargeperiodstart >= {_ts(hour_lo)} AND chargeperiodstart <= {_ts(window.last_complete_hour)}"
    )
    team = (
        "COALESCE(" + ", ".join(f"element_at(tags, {_sql_str(k)})" for k in team_tag_keys) + ")"
        if team_tag_keys
        else "CAST(NULL AS varchar)"
    )
    # the extra labels (attribution.labels) read from tags: column label_<i>, grouped by, after hour
    labels = "".join(
        "COALESCE(" + ", ".join(f"element_at(tags, {_sql_str(k)})" for k in keys) + f") AS label_{i}, "
        for i, (_, keys) in enumerate(extra_labels or [])
        if keys
    )
    n_labels = sum(1 for _, keys in extra_labels or [] if keys)
    where = [
        f"chargeperiodstart >= {_ts(lo)}",
        f"chargeperiodstart < {_ts(hi)}",
        f"({cost} IS NOT NULL OR {usage})",
    ]
    if config.partition_column:
        parts = ", ".join(_sql_str(p) for p in billing_periods(window))
        where.insert(0, f"{config.partition_column} IN ({parts})")
    return (
        "SELECT CAST(date_trunc('day', chargeperiodstart) AS date) AS day, "
        "COALESCE(providername, '') AS provider, "
        "COALESCE(subaccountid, billingaccountid, '') AS account_id, "
        "COALESCE(servicename, '') AS service_name, "
        f"{team} AS team_tag, "
        "UPPER(COALESCE(billingcurrency, '')) AS currency, "
        f"{model} AS model, "
        f"CASE WHEN {usage} THEN LOWER(consumedunit) END AS unit, "
        f"CASE WHEN {usage} THEN {token_type} END AS token_type, "
        f"CASE WHEN {hourly} THEN chargeperiodstart END AS hour, "
        f"{labels}"
        f"CAST(SUM({cost}) AS varchar) AS amount, "
        f"CAST(SUM(CASE WHEN {usage} THEN consumedquantity END) AS varchar) AS quantity, "
        "MAX(COALESCE(subaccountname, billingaccountname)) AS account_name, "
        "MAX(chargeperiodend) AS period_end "
        f'FROM "{config.database}"."{config.table}" '
        f"WHERE {' AND '.join(where)} "
        "GROUP BY " + ", ".join(str(i) for i in range(1, 11 + n_labels))
    )


class AthenaFocus:
    """Runs the focus source's aggregation on Athena (boto3 client ``athena``)."""

    COLUMNS = (
        *("day", "provider", "account_id", "service_name", "team_tag", "currency", "model"),
        *("unit", "token_type", "hour", "amount", "quantity", "account_name", "period_end"),
    )

    def __init__(self, config: FocusSource, ctx: ProviderContext, sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg = config
        self.ctx = ctx
        self._sleep = sleep
        self._retry = RetryPolicy.from_settings(config)
        self._session = boto3.Session(region_name=config.region)

    def close(self) -> None:
        pass

    def _client(self) -> Any:
        (athena,) = boto_clients(
            self._session, self.ctx, self.cfg.timeout, self.cfg.endpoint_url, ("athena",), max_read_timeout=60.0
        )
        return athena

    def _call(self, operation: str, method: Callable[..., Any], **params: Any) -> dict[str, Any]:
        """One request through the context, retried with backoff while Athena throttles."""
        return boto_call(
            self.ctx, self._retry, operation, method, params, label=f"Athena {operation}", sleep=self._sleep
        )

    def fetch(self, window: FetchWindow) -> FetchResult:
        client = self._client()
        query = build_query(self.cfg, window, self.ctx.team_tag_keys, self.ctx.extra_labels)
        # the scan is billed after the fact: check the cap against the minimum a query costs
        self.ctx.check_cap(scan_cost_usd(1))
        params: dict[str, Any] = {
            "QueryString": query,
            "QueryExecutionContext": {"Database": self.cfg.database},
            "WorkGroup": self.cfg.workgroup,
        }
        if self.cfg.output_location:
            params["ResultConfiguration"] = {"OutputLocation": self.cfg.output_location}
        started = self._call("StartQueryExecution", client.start_query_execution, **params)
        qid = started.get("QueryExecutionId")
        if not isinstance(qid, str) or not qid:
            raise SourceError("Athena StartQueryExecution: malformed response (no QueryExecutionId)")
        execution = self._wait(client, qid)
        stats = execution.get("Statistics") or {}
        scanned = int(stats.get("DataScannedInBytes") or 0)
        self.ctx.record_call("DataScanned", "success", scan_cost_usd(scanned))
        self.ctx.log.info(
            "source %s: Athena query %s scanned %d bytes ($%.6f)",
            self.ctx.source_name,
            qid,
            scanned,
            scan_cost_usd(scanned),
        )
        return self._results(client, qid, window)

    def _wait(self, client: Any, qid: str) -> dict[str, Any]:
        while True:
            resp = self._call("GetQueryExecution", client.get_query_execution, QueryExecutionId=qid)
            execution = resp.get("QueryExecution")
            if not isinstance(execution, dict):
                raise SourceError("Athena GetQueryExecution: malformed response (no QueryExecution)")
            status = execution.get("Status") or {}
            state = str(status.get("State") or "")
            if state == "SUCCEEDED":
                return execution
            if state in DONE_STATES:
                reason = str(status.get("StateChangeReason") or "no reason given")
                stats = execution.get("Statistics") or {}
                # a failed query is still billed for what it scanned
                self.ctx.record_call("DataScanned", "error", scan_cost_usd(int(stats.get("DataScannedInBytes") or 0)))
                raise SourceError(f"Athena query {qid} {state.lower()}: {reason}")
            if self.ctx.remaining_seconds(self.cfg.timeout) <= self.cfg.poll_interval:
                try:
                    self._call("StopQueryExecution", client.stop_query_execution, QueryExecutionId=qid)
                except SourceError:
                    pass
                raise SourceError(f"Athena query {qid} still {state or 'pending'} when the refresh timed out")
            self._sleep(self.cfg.poll_interval)

    def _results(self, client: Any, qid: str, window: FetchWindow) -> FetchResult:
        rows: list[list[str | None]] = []
        index: dict[str, int] = {}

        def page(token: str | None) -> tuple[list[Any], str | None]:
            req: dict[str, Any] = {"QueryExecutionId": qid, "MaxResults": PAGE_SIZE}
            if token:
                req["NextToken"] = token
            got = self._call("GetQueryResults", client.get_query_results, **req)
            rs = got.get("ResultSet")
            if not isinstance(rs, dict) or not isinstance(rs.get("Rows"), list):
                raise SourceError("Athena GetQueryResults: malformed response (no ResultSet.Rows)")
            page_rows: list[Any] = rs["Rows"]
            if token is None:
                names = [
                    str(c.get("Name") or "").lower() for c in rs.get("ResultSetMetadata", {}).get("ColumnInfo", [])
                ]
                index.update((n, i) for i, n in enumerate(names))
                n_labels = sum(1 for _, keys in self.ctx.extra_labels if keys)
                wanted = (*self.COLUMNS, *(f"label_{i}" for i in range(n_labels)))
                missing = [c for c in wanted if c not in index]
                if missing:
                    raise SourceError(f"Athena GetQueryResults: result has no column {missing[0]!r}")
                # the first row of a SELECT's first page is the header
                if page_rows and [_value(d) for d in page_rows[0].get("Data", [])] == names:
                    page_rows = page_rows[1:]
            return page_rows, got.get("NextToken") or None

        for page_rows in paginate("Athena GetQueryResults", page, max_pages=MAX_RESULT_PAGES):
            for row in page_rows:
                v = [_value(d) for d in row.get("Data", [])]
                if len(v) < len(index):
                    raise SourceError("Athena GetQueryResults: a row has fewer values than columns")
                rows.append(v)
        label_names = [name for name, keys in self.ctx.extra_labels if keys]
        return self._aggregate(rows, index, window, label_names)

    @staticmethod
    def _aggregate(
        rows: list[list[str | None]], index: dict[str, int], window: FetchWindow, label_names: list[str] | None = None
    ) -> FetchResult:
        """The result rows as ``FocusProvider``'s DuckDB engine returns them (usage rows summed back to records)."""
        costs: dict[tuple[Any, ...], float] = {}
        usage: dict[tuple[Any, ...], dict[str, int]] = {}
        hourly: dict[tuple[Any, ...], dict[str, int]] = {}
        accounts: dict[tuple[str, str], str] = {}
        through: dt.datetime | None = None
        for v in rows:
            col = {name: v[i] for name, i in index.items()}.get
            raw_day, raw_amount, raw_qty = col("day"), col("amount"), col("quantity")
            try:
                day = dt.date.fromisoformat(str(raw_day)[:10])
                amount = None if raw_amount is None else float(Decimal(raw_amount))
                qty = None if raw_qty is None else float(Decimal(raw_qty))
            except (ValueError, InvalidOperation):
                raise SourceError(
                    f"Athena GetQueryResults: unparsable day, amount or quantity ({raw_day!r}, {raw_amount!r}, "
                    f"{raw_qty!r})"
                ) from None
            team = col("team_tag")
            provider = normalise_provider(col("provider"))
            account_id, service_name, model = col("account_id") or "", col("service_name") or "", col("model") or ""
            series = (provider, account_id, service_name, team.strip() if team and team.strip() else None, model)
            if amount is not None:
                labels = tuple(
                    (name, str(lv).strip())
                    for i, name in enumerate(label_names or [])
                    if (lv := col(f"label_{i}")) and str(lv).strip()
                )
                key = (day, *series, col("currency") or "", labels)
                costs[key] = costs.get(key, 0.0) + amount
            unit, token_type = col("unit"), col("token_type") or ""
            if unit and qty is not None:
                add_usage(usage.setdefault((day, *series), {}), unit, token_type, qty)
                hour = _timestamp(col("hour"))
                if hour is not None:
                    add_usage(hourly.setdefault((hour, *series), {}), unit, token_type, qty)
            name = col("account_name")
            if name and account_id:
                accounts[(provider, account_id)] = name
            end = _timestamp(col("period_end"))
            if end is not None and (through is None or end > through):
                through = end
        return FetchResult(
            days=window.days(),
            costs=[
                CostRecord(
                    day=k[0],
                    provider=k[1],
                    account_id=k[2],
                    service_name=k[3],
                    amount=amount,
                    currency=k[6],
                    team_tag=k[4],
                    model=k[5],
                    labels=k[7],
                )
                for k, amount in costs.items()
            ],
            usage=usage_records(usage),
            hourly=hourly_records(hourly),
            accounts=[AccountInfo(p, a, n) for (p, a), n in sorted(accounts.items())],
            data_through=min(through, window.now) if through is not None else None,
        )


def _timestamp(raw: str | None) -> dt.datetime | None:
    """An Athena timestamp cell (``2026-11-21 09:00:00.000``, UTC) as an aware datetime; None if empty or not one."""
    if not raw:
        return None
    try:
        t = dt.datetime.fromisoformat(raw.replace(" UTC", "").replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def _value(datum: dict[str, Any]) -> str | None:
    """A cell of GetQueryResults: ``{"VarCharValue": "..."}``, or ``{}`` for NULL."""
    value = datum.get("VarCharValue")
    return None if value is None else str(value)
