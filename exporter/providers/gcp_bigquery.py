"""GCP billing export in BigQuery: daily cost by project, service, team label and AI model.

One parameterised GoogleSQL query per refresh over the standard usage cost
export table (``gcp_billing_export_v1_*``), through ``google-cloud-bigquery``:

1. a dry run (``jobs.query`` with ``dryRun``, free) that tells how many bytes
   the query will scan, so that the source's ``max_api_cost_usd_per_day`` is
   checked before anything is billed;
2. the query (``jobs.query``), then ``jobs.get`` for its statistics, then one
   ``jobs.getQueryResults`` per further page of rows.

The query's real cost, ``totalBytesBilled`` × ``price_usd_per_tib``, is
counted against the ``jobs.query`` call once known. It sums ``cost`` plus the
credits (``UNNEST(credits)``) by UTC day of ``usage_start_time``, project,
``service.description``, team label (resource label, else project label),
currency and, for AI services, the SKU, whose model name goes to ``model``
(see ``model_from_sku``). ``_PARTITIONTIME`` bounds the scan: the export is
partitioned by export time, so partitions from ``partition_margin_days``
before the first day fetched are read.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import re
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import requests
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from google.cloud.bigquery.retry import DEFAULT_RETRY

from exporter.model import AccountInfo, CostRecord, FetchResult, FetchWindow, RawFetch
from exporter.providers.base import ProviderContext, SourceError, Throttled, utc_midnight
from exporter.sources.gcp_bigquery import GcpBigQuerySource

PROVIDER = "gcp"
TIB = 1 << 40
MIB = 1 << 20
MIN_BILLED_BYTES = 10 * MIB  # on-demand minimum per table referenced
PAGE_SIZE = 10_000
AI_SERVICES = ("Vertex AI", "Gemini API")
THROTTLE_REASONS = {"rateLimitExceeded", "quotaExceeded"}
T = TypeVar("T")

QUERY_TEMPLATE = """
WITH usage AS (
  SELECT
    DATE(usage_start_time) AS day,
    COALESCE(project.id, billing_account_id) AS account_id,
    project.name AS account_name,
    service.description AS service_name,
    COALESCE(
      (SELECT l.value FROM UNNEST(labels) AS l WHERE l.key = @team_key LIMIT 1),
      (SELECT pl.value FROM UNNEST(project.labels) AS pl WHERE pl.key = @team_key LIMIT 1)
    ) AS team,{label_columns}
    IF(service.description IN UNNEST(@ai_services), sku.description, '') AS sku,
    currency,
    cost,
    IFNULL((SELECT SUM(c.amount) FROM UNNEST(credits) AS c), 0) AS credits,
    usage_end_time
  FROM `{table}`
  WHERE _PARTITIONTIME >= @partition_start
    AND usage_start_time >= @start_time
    AND usage_start_time < @end_time
)
SELECT
  day,
  account_id,
  ANY_VALUE(account_name) AS account_name,
  service_name,
  team,{label_names}
  sku,
  currency,
  SUM(cost) AS cost,
  SUM(credits) AS credits,
  MAX(usage_end_time) AS usage_end
FROM usage
GROUP BY day, account_id, service_name, team, {label_group}sku, currency
ORDER BY day, account_id, service_name, team, {label_group}sku, currency
"""


def build_query(table: str, label_keys: list[int]) -> str:
    """``QUERY`` on ``table``, with a column ``label_<i>`` per extra label (``attribution.labels``): the value of
    its first label key (``@label_<i>_<j>``) on the resource's labels, else on the project's, in key order."""
    columns = []
    for i, n in enumerate(label_keys):
        parts = [
            f"(SELECT l.value FROM UNNEST(labels) AS l WHERE l.key = @label_{i}_{j} LIMIT 1),\n      "
            f"(SELECT pl.value FROM UNNEST(project.labels) AS pl WHERE pl.key = @label_{i}_{j} LIMIT 1)"
            for j in range(n)
        ]
        sep = ",\n      "
        value = "COALESCE(\n      " + sep.join(parts) + "\n    )" if n else "CAST(NULL AS STRING)"
        columns.append(f"\n    {value} AS label_{i},")
    names = "".join(f"\n  label_{i}," for i in range(len(label_keys)))
    group = "".join(f"label_{i}, " for i in range(len(label_keys)))
    return QUERY_TEMPLATE.format(table=table, label_columns="".join(columns), label_names=names, label_group=group)


QUERY = build_query("{table}", [])
"""The query without extra labels; ``{table}`` to fill in."""


# -- model names from SKU descriptions -------------------------------------------------------
_FAMILIES = ("gemini", "gemma", "claude", "llama", "mistral", "mixtral", "codestral", "jamba", "imagen", "veo")
_VARIANTS = {
    "pro",
    "flash",
    "lite",
    "ultra",
    "nano",
    "haiku",
    "sonnet",
    "opus",
    "instant",
    "large",
    "medium",
    "small",
    "nemo",
    "instruct",
    "vision",
    "fast",
    "maverick",
    "scout",
}
_TOKEN = re.compile(r"[A-Za-z]+|\d+(?:\.\d+)*[A-Za-z]?")
_VERSION = re.compile(r"\d+(?:\.\d+)*[A-Za-z]?")


def model_from_sku(description: str | None) -> str:
    """The model a Vertex AI / Gemini API SKU description names, else "".

    The first model family word (Gemini, Gemma, Claude, Llama, Mistral,
    Mixtral, Codestral, Jamba, Imagen, Veo) and the version numbers, sizes and
    variant words right after it, lower-cased and joined with "-":
    "Gemini 1.5 Pro Text Input - Predictions" → "gemini-1.5-pro",
    "Gemini 2.0 Flash Lite Input Tokens" → "gemini-2.0-flash-lite",
    "Llama 3.1 405B Instruct ..." → "llama-3.1-405b-instruct". Claude versions
    use "-" as Anthropic's model ids do: "Claude 3.5 Sonnet ..." →
    "claude-3-5-sonnet". A family word with nothing after it names no model.
    """
    if not description:
        return ""
    tokens = _TOKEN.findall(description)
    for i, tok in enumerate(tokens):
        family = tok.lower()
        if family not in _FAMILIES:
            continue
        parts = [family]
        for nxt in tokens[i + 1 :]:
            low = nxt.lower()
            if _VERSION.fullmatch(low):
                parts.append(low.replace(".", "-") if family == "claude" else low)
            elif low in _VARIANTS:
                parts.append(low)
            else:
                break
        return "-".join(parts) if len(parts) > 1 else ""
    return ""


def billable_bytes(processed: int) -> int:
    """On-demand billing of ``processed`` bytes: rounded up to 1 MiB, at least 10 MiB (one table)."""
    if processed <= 0:
        return 0
    return max(-(-processed // MIB) * MIB, MIN_BILLED_BYTES)


class GcpBigQueryProvider:
    """Daily GCP cost from the Cloud Billing export in BigQuery.

    Credentials are Google's Application Default Credentials, or
    ``AnonymousCredentials`` with ``credentials: anonymous`` (emulators).
    """

    def __init__(self, config: GcpBigQuerySource, ctx: ProviderContext) -> None:
        self.cfg = config
        self.ctx = ctx
        self.project = config.project or config.table.rsplit(".", 2)[0]
        self._client: Any = None

    def _bq(self) -> Any:
        if self._client is None:
            options = {"api_endpoint": self.cfg.api_endpoint} if self.cfg.api_endpoint else None
            credentials = AnonymousCredentials() if self.cfg.credentials == "anonymous" else None  # type: ignore[no-untyped-call]
            try:
                self._client = bigquery.Client(
                    project=self.project,
                    credentials=credentials,
                    client_options=options,
                    location=self.cfg.location,
                )
            except auth_exceptions.DefaultCredentialsError as e:
                raise SourceError(f"no Google credentials found (Application Default Credentials): {e}") from None
            except Exception as e:
                raise SourceError(f"cannot create the BigQuery client: {e.__class__.__name__}: {e}") from None
        return self._client

    def _retry(self, budget: float) -> Retry:
        # bigquery's own predicate (rateLimitExceeded, backendError, 5xx, connection errors), bounded by config
        retry: Retry = DEFAULT_RETRY.with_timeout(min(self.cfg.retry_deadline, budget)).with_delay(
            initial=self.cfg.retry_base_delay, maximum=self.cfg.retry_max_delay
        )
        return retry

    def _label_keys(self) -> list[tuple[str, list[str]]]:
        """The extra labels read from labels (one set by rules only has no column): column ``label_<i>`` each."""
        return [(name, keys) for name, keys in self.ctx.extra_labels if keys]

    def _params(self, window: FetchWindow) -> list[Any]:
        start = utc_midnight(window.start)
        return [
            bigquery.ScalarQueryParameter("start_time", "TIMESTAMP", start),
            bigquery.ScalarQueryParameter("end_time", "TIMESTAMP", utc_midnight(window.end, 1)),
            bigquery.ScalarQueryParameter(
                "partition_start", "TIMESTAMP", start - dt.timedelta(days=self.cfg.partition_margin_days)
            ),
            bigquery.ScalarQueryParameter("team_key", "STRING", self.cfg.team_label_key),
            bigquery.ArrayQueryParameter("ai_services", "STRING", list(AI_SERVICES)),
            *(
                bigquery.ScalarQueryParameter(f"label_{i}_{j}", "STRING", key)
                for i, (_, keys) in enumerate(self._label_keys())
                for j, key in enumerate(keys)
            ),
        ]

    def cost_of(self, billed_bytes: int) -> float:
        return billed_bytes / TIB * self.cfg.price_usd_per_tib

    # -- fetching ---------------------------------------------------------------------------
    def fetch(self, window: FetchWindow) -> FetchResult:
        client = self._bq()
        budget = self.ctx.remaining_seconds(self.cfg.timeout)
        retry = self._retry(budget)
        sql = build_query(self.cfg.table, [len(keys) for _, keys in self._label_keys()])
        params = self._params(window)

        def run(config: Any) -> Any:
            return client.query(
                sql,
                job_config=config,
                project=self.project,
                location=self.cfg.location,
                api_method="QUERY",
                retry=retry,
                job_retry=None,
                timeout=budget,
            )

        with self.ctx.api_call("jobs.query.dryRun"):
            dry = self._call("dry run", lambda: run(bigquery.QueryJobConfig(dry_run=True, query_parameters=params)))
            estimated_bytes = billable_bytes(int(dry.total_bytes_processed or 0))
        self.ctx.check_cap(self.cost_of(estimated_bytes))

        config = bigquery.QueryJobConfig(query_parameters=params)
        if self.cfg.maximum_bytes_billed is not None:
            config.maximum_bytes_billed = self.cfg.maximum_bytes_billed
        job: Any = None
        status = "error"
        try:
            job = self._call("query", lambda: run(config))
            status = "success"
        except Throttled:
            status = "throttled"
            raise
        finally:
            if job is None:  # not run, not billed
                self.ctx.record_call("jobs.query", status, 0.0)
        try:
            with self.ctx.api_call("jobs.get"):
                rows = self._call(
                    "waiting for the query", lambda: job.result(page_size=PAGE_SIZE, retry=retry, timeout=budget)
                )
        finally:
            # the query ran: charge what BigQuery billed, or the dry run's estimate if jobs.get failed
            self.ctx.record_call("jobs.query", "success", self.cost_of(_bytes_billed(job, estimated_bytes)))
        request = {
            "method": "POST",
            "operation": "bigquery:jobs.query",
            "params": {
                "query": sql,
                "parameters": {
                    p.name: _jsonable(p.values if isinstance(p, bigquery.ArrayQueryParameter) else p.value)
                    for p in params
                },
                "project": self.project,
                "location": self.cfg.location,
            },
        }
        return self.parse(window, self._read(rows, request))

    def _read(self, rows: Any, request: dict[str, Any]) -> RawFetch:
        """Every page of the query's result rows into a ``RawFetch``: the rows as JSON (dates as ISO strings)."""
        total = rows.total_rows
        if total is None:
            raise SourceError("BigQuery returned no result set for the billing query")
        raw = RawFetch()
        received = 0
        if total > 0:
            pages = iter(rows.pages)

            def next_page() -> list[Any] | None:
                page = next(pages, None)
                return None if page is None else list(page)  # rows are parsed here, inside the call

            # the first page came with the jobs.query (or the wait's getQueryResults) response;
            # each further page is one jobs.getQueryResults call
            page = self._call("reading results", next_page)
            operation = "jobs.query"
            while page is not None:
                received += len(page)
                # as BigQuery's wire format has them, a row is a list under the page's field names: a dict per
                # row would hold the names again in every row, a cost when a refresh reads millions
                # the client's Row objects as they are (a row indexes like a list): turned into JSON only when
                # the page is kept (_page_json), so a refresh without raw_retention converts nothing
                fields = list(page[0].keys()) if page else []
                raw.add(operation, request, {"fields": fields, "rows": page}, as_json=_page_json)
                if rows.next_page_token is None:
                    break
                operation = "jobs.getQueryResults"
                request = {"method": "GET", "operation": "bigquery:jobs.getQueryResults", "params": {}}
                with self.ctx.api_call("jobs.getQueryResults"):
                    page = self._call("reading results", next_page)
        if received != total:
            raise SourceError(f"BigQuery returned {received} of {total} result rows")
        return raw

    def parse(self, window: FetchWindow, raw: RawFetch) -> FetchResult:
        """The records of the result rows ``fetch`` kept (live or from the cache); no API call."""
        sums: dict[tuple[Any, ...], float] = defaultdict(float)
        names_of_labels = [name for name, _ in self._label_keys()]
        names: dict[str, str] = {}
        data_through: dt.datetime | None = None
        try:
            for page in raw.pages:
                # a row live is the client's Row (DATE and TIMESTAMP as date and datetime); kept, a JSON list
                # (the two as ISO strings): read by position either way
                at = {f: i for i, f in enumerate(page.body["fields"])}
                i_day, i_account, i_name, i_service = (
                    at["day"],
                    at["account_id"],
                    at["account_name"],
                    at["service_name"],
                )
                i_team, i_currency, i_sku, i_cost = at["team"], at["currency"], at["sku"], at["cost"]
                i_credits, i_end = at["credits"], at["usage_end"]
                i_labels = [(name, at[f"label_{i}"]) for i, name in enumerate(names_of_labels)]
                for row in page.body["rows"]:
                    if len(row) != len(at):
                        raise ValueError("a row does not match the fields")
                    day = _date(row[i_day])
                    account = row[i_account] or ""
                    service = row[i_service] or "unknown"
                    team = row[i_team] or None
                    currency = (row[i_currency] or "").strip().upper()
                    model = model_from_sku(row[i_sku])
                    amount = float(row[i_cost] or 0.0) + float(row[i_credits] or 0.0)
                    labels = tuple(
                        (name, str(row[i]).strip()) for name, i in i_labels if row[i] and str(row[i]).strip()
                    )
                    sums[(day, account, service, team, model, currency, labels)] += amount
                    if row[i_name]:
                        names[account] = row[i_name]
                    end = _timestamp(row[i_end])
                    if end is not None and (data_through is None or end > data_through):
                        data_through = end
        except (KeyError, TypeError, ValueError) as e:
            raise SourceError(f"BigQuery returned rows of an unexpected shape: {e.__class__.__name__}: {e}") from None
        costs = [
            CostRecord(day, PROVIDER, account, service, amount, currency, team, model, labels)
            for (day, account, service, team, model, currency, labels), amount in sorted(
                sums.items(), key=lambda kv: tuple("" if x is None else str(x) for x in kv[0])
            )
        ]
        accounts = [AccountInfo(PROVIDER, a, n) for a, n in sorted(names.items())]
        return FetchResult(days=window.days(), costs=costs, accounts=accounts, data_through=data_through, raw=raw)

    # -- errors -----------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except SourceError:
            raise
        except gexc.RetryError as e:
            cause = e.cause
            if isinstance(cause, gexc.GoogleAPICallError) and _throttled(cause):
                raise Throttled(
                    f"BigQuery {what}: throttled ({_reason(cause)}), retried for {self.cfg.retry_deadline:g}s"
                ) from None
            detail = _describe(cause) if isinstance(cause, BaseException) else str(e)
            raise SourceError(f"BigQuery {what}: gave up retrying: {detail}") from None
        except gexc.GoogleAPICallError as e:
            if _throttled(e):
                raise Throttled(f"BigQuery {what}: throttled ({_reason(e)})") from None
            raise SourceError(f"BigQuery {what}: {_describe(e)}") from None
        except requests.exceptions.JSONDecodeError as e:
            raise SourceError(f"BigQuery {what}: malformed response: {e}") from None
        except (concurrent.futures.TimeoutError, requests.exceptions.Timeout):
            raise SourceError(f"BigQuery {what}: timed out") from None
        except requests.exceptions.RequestException as e:
            raise SourceError(f"BigQuery {what}: request failed: {e.__class__.__name__}") from None
        except auth_exceptions.GoogleAuthError as e:
            raise SourceError(f"BigQuery {what}: authentication failed: {e}") from None
        except ValueError as e:  # the body was not JSON
            raise SourceError(f"BigQuery {what}: malformed response: {e}") from None
        except (KeyError, TypeError, AttributeError) as e:
            raise SourceError(
                f"BigQuery {what}: response of an unexpected shape: {e.__class__.__name__}: {e}"
            ) from None

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None


def _date(value: Any) -> dt.date:
    """The ``day`` cell: a date (live) or its ISO string (kept)."""
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise SourceError(f"BigQuery returned a row without a day: {value!r}") from None


def _timestamp(value: Any) -> dt.datetime | None:
    """The ``usage_end`` cell: a datetime (live) or its ISO string (kept); None if it is neither."""
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value)
    return None


def _page_json(body: dict[str, Any]) -> dict[str, Any]:
    """A page of ``Row`` objects as it is kept: each row a list in the fields' order, dates as ISO strings."""
    fields = body["fields"]
    return {"fields": fields, "rows": [[_jsonable(r[f]) for f in fields] for r in body["rows"]]}


def _jsonable(value: Any) -> Any:
    """A result value as JSON keeps it: a date or timestamp as its ISO string, a NUMERIC as its decimal string."""
    if isinstance(value, dt.date):  # a datetime too
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _bytes_billed(job: Any, fallback: int) -> int:
    try:
        billed = job.total_bytes_billed
    except Exception:  # statistics of an unexpected shape
        billed = None
    return int(billed) if billed is not None else fallback


def _reason(e: gexc.GoogleAPICallError) -> str:
    for err in e.errors or []:
        if isinstance(err, dict) and err.get("reason"):
            return str(err["reason"])
    return str(e.code or "")


def _throttled(e: gexc.GoogleAPICallError) -> bool:
    return isinstance(e, gexc.TooManyRequests) or _reason(e) in THROTTLE_REASONS


def _describe(e: BaseException) -> str:
    if isinstance(e, gexc.GoogleAPICallError):
        # e.message, not str(e): a failed job's exception carries the query text in its debug message
        message = (e.message or "").strip().splitlines()
        reason = _reason(e)
        head = f"{e.code} {reason}" if reason != str(e.code) else str(e.code)
        return f"{head}: {message[0] if message else ''}".strip()
    if isinstance(e, requests.exceptions.Timeout | concurrent.futures.TimeoutError):
        return "timed out"
    return f"{e.__class__.__name__}: {e}"
