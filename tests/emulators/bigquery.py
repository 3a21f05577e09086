"""Emulator of the BigQuery REST API for the billing-export query.

Endpoints, in the wire format of the BigQuery v2 reference:

* ``POST /bigquery/v2/projects/{p}/queries`` (jobs.query, QueryRequest →
  QueryResponse, also ``dryRun``),
* ``GET /bigquery/v2/projects/{p}/jobs/{jobId}`` (jobs.get, the Job resource
  with ``statistics.query.totalBytesBilled``),
* ``GET /bigquery/v2/projects/{p}/queries/{jobId}`` (jobs.getQueryResults,
  ``pageToken`` / ``maxResults`` / ``fields``),

rows encoded as ``{"f": [{"v": ...}]}`` with a schema, TIMESTAMPs as int64
microseconds when ``formatOptions.useInt64Timestamp`` asks for it, and errors
as ``{"error": {"code", "message", "errors": [{"reason", ...}], "status"}}``
(throttling is ``403 rateLimitExceeded`` by default, or ``429``).

There is no SQL engine. The emulator holds the query to a contract, as the
real service holds it to the table's ``require_partition_filter``: it must
read the configured table, filter ``_PARTITIONTIME >= @partition_start`` (a
query without a partition filter is rejected with the real error) and
``usage_start_time`` against ``@start_time`` / ``@end_time``, add the credits
from ``UNNEST(credits)``, read the team from ``labels`` with ``@team_key``,
and return the documented columns. It then computes that aggregation from the
``gcp`` rows of ``dataset.py`` for the parameters passed.

Data model: each dataset row is one day of one project, service, SKU and
label; it stands for many export rows, ``bytes_per_row`` bytes of the columns
the query reads. Partitions are by export time, not usage time; the emulator
dates them in Pacific time (a fixed UTC-8), so a day's first export, four hours
after UTC midnight, lands in the partition dated the day before. That is the
case a query's partition margin exists for, and a test shows that without the
margin the first day is lost. Bytes processed are those of every partition the
filter keeps; bytes billed follow on-demand rules (rounded up to 1 MiB, at
least 10 MiB per table).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections import defaultdict
from decimal import Decimal
from typing import Any

from tests.emulators.common import PageTokens
from tests.emulators.dataset import CloudRow, Dataset
from tests.emulators.server import Emulator, Fault, Request, Response

MIB = 1 << 20
MIN_BILLED = 10 * MIB
COLUMNS = [
    ("day", "DATE"),
    ("account_id", "STRING"),
    ("account_name", "STRING"),
    ("service_name", "STRING"),
    ("team", "STRING"),
    ("sku", "STRING"),
    ("currency", "STRING"),
    ("cost", "FLOAT"),
    ("credits", "FLOAT"),
    ("usage_end", "TIMESTAMP"),
]
PARAM_TYPES = {
    "start_time": "TIMESTAMP",
    "end_time": "TIMESTAMP",
    "partition_start": "TIMESTAMP",
    "team_key": "STRING",
    "ai_services": "ARRAY<STRING>",
}
# What the query must contain, as (pattern, what it is for).
CONTRACT = [
    (r"usage_start_time\s*>=\s*@start_time", "the usage_start_time >= @start_time filter"),
    (r"usage_start_time\s*<\s*@end_time", "the usage_start_time < @end_time filter"),
    (r"UNNEST\(\s*credits\s*\)", "the credits (UNNEST(credits))"),
    (r"UNNEST\(\s*labels\s*\)[^)]*key\s*=\s*@team_key", "the team label (UNNEST(labels) ... key = @team_key)"),
    (r"DATE\(\s*usage_start_time\s*\)", "the day (DATE(usage_start_time))"),
    (r"service\.description\s+IN\s+UNNEST\(\s*@ai_services\s*\)", "the AI services' SKU (IN UNNEST(@ai_services))"),
]
PARTITION_FILTER = re.compile(r"_PARTITIONTIME\s*>=\s*@partition_start")
EXPORT_LAG = dt.timedelta(hours=4)  # first export of a day's usage, after usage_start_time
PACIFIC = dt.timezone(dt.timedelta(hours=-8))  # partitions are Pacific dates; PST is enough for the model


def _error(status: int, reason: str, message: str, location: str | None = None) -> Response:
    err: dict[str, Any] = {"message": message, "domain": "global", "reason": reason}
    if location:
        err.update(location=location, locationType="parameter")
    grpc_status = {
        400: "INVALID_ARGUMENT",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
    }.get(status, "UNKNOWN")
    return Response(status, {"error": {"code": status, "message": message, "errors": [err], "status": grpc_status}})


def _parse_ts(value: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(value.strip().replace(" ", "T").replace("Z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def _ms(t: dt.datetime) -> str:
    return str(int(t.timestamp() * 1000))


class BigQueryEmulator(Emulator):
    """BigQuery jobs.query / jobs.get / jobs.getQueryResults over the ``gcp`` rows of a dataset."""

    name = "bigquery"

    def __init__(
        self,
        dataset: Dataset,
        *,
        table: str = "billing-admin.billing_export.gcp_billing_export_v1_0123AB_456CDE_789FAB",
        label_key: str = "team",
        page_size: int = 1000,
        bytes_per_row: int = 32 * 1024,
        throttle_status: int = 403,
        pending_polls: int = 0,
        now: dt.datetime | None = None,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.table = table
        self.label_key = label_key
        self.page_size = page_size
        self.bytes_per_row = bytes_per_row
        self.throttle_status = throttle_status
        self.pending_polls = pending_polls
        self.now = now or dt.datetime.combine(dataset.today, dt.time(12), tzinfo=dt.UTC)
        self.jobs: dict[str, dict[str, Any]] = {}
        self._tokens: PageTokens[tuple[str, int]] = PageTokens(upper=True)  # token -> (job, offset)

    # -- errors ---------------------------------------------------------------------
    def throttle_response(self, fault: Fault) -> Response:
        if self.throttle_status == 429:
            return _error(
                429, "rateLimitExceeded", "Quota exceeded: Your project exceeded quota for concurrent queries."
            )
        return _error(
            403,
            "rateLimitExceeded",
            "Exceeded rate limits: too many api requests per user per method for this user_method. For more "
            "information, see https://cloud.google.com/bigquery/docs/troubleshoot-quotas",
        )

    def wrong_shape_body(self, request: Request) -> Any:
        if "/jobs/" in request.path:
            return {"kind": "bigquery#job", "jobReference": ["not", "an", "object"], "status": "DONE"}
        return {"kind": "bigquery#queryResponse", "jobComplete": True, "rows": "not a list"}

    # -- routing --------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        m = re.fullmatch(r"/bigquery/v2/projects/([^/]+)/(queries|jobs)(?:/([^/]+))?", request.path)
        if m is None:
            return _error(404, "notFound", f"Not found: URL {request.path}")
        project, kind, job_id = m.groups()
        if kind == "queries" and job_id is None and request.method == "POST":
            return self._query(project, request)
        if kind == "queries" and job_id is not None and request.method == "GET":
            return self._get_query_results(project, job_id, request)
        if kind == "jobs" and job_id is not None and request.method == "GET":
            return self._get_job(project, job_id)
        return _error(404, "notFound", f"Not found: {request.method} {request.path}")

    # -- jobs.query -------------------------------------------------------------------
    def _query(self, project: str, request: Request) -> Response:
        try:
            body = request.json()
        except ValueError:
            return _error(400, "parseError", "Parse error: the request body is not JSON.")
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return _error(400, "invalid", "Required parameter is missing: query")
        sql: str = body["query"]
        if body.get("useLegacySql", True):
            return _error(400, "invalidQuery", "The emulator speaks GoogleSQL only (useLegacySql: false).")
        if f"`{self.table}`" not in sql:
            return _error(400, "invalidQuery", f"The query does not read the billing export table `{self.table}`.", "q")
        if not PARTITION_FILTER.search(sql):
            return _error(
                400,
                "invalidQuery",
                f"Cannot query over table '{self.table}' without a filter over column(s) '_PARTITIONTIME' that can be "
                "used for partition elimination",
                "q",
            )
        for pattern, what in CONTRACT:
            if not re.search(pattern, sql, re.IGNORECASE | re.DOTALL):
                return _error(400, "invalidQuery", f"The emulator's query contract is not met: missing {what}.", "q")
        for name, _ in COLUMNS:
            if not re.search(rf"\bAS\s+{name}\b|\b{name}\s*,|\b{name}\s*$", sql, re.IGNORECASE | re.MULTILINE):
                return _error(400, "invalidQuery", f"The query does not return column {name}.", "q")
        try:
            params = self._params(body)
        except ValueError as e:
            return _error(400, "invalidQuery", str(e), "q")
        for i in range(len(params["labels"])):
            if not re.search(rf"UNNEST\(\s*labels\s*\)[^)]*key\s*=\s*@label_{i}_0\b.*\bAS\s+label_{i}\b", sql, re.S):
                return _error(400, "invalidQuery", f"The query does not return column label_{i} from labels.", "q")
        columns = COLUMNS + [(f"label_{i}", "STRING") for i in range(len(params["labels"]))]

        rows, scanned = self._aggregate(params)
        processed = scanned * self.bytes_per_row
        billed = max(-(-processed // MIB) * MIB, MIN_BILLED)
        location = body.get("location") or "US"
        limit = body.get("maximumBytesBilled")
        if not body.get("dryRun") and limit is not None and billed > int(limit):
            return _error(
                400,
                "bytesBilledLimitExceeded",
                f"Query exceeded limit for bytes billed: {int(limit)}. {billed} or higher required.",
            )
        if body.get("dryRun"):
            return Response(
                200,
                {
                    "kind": "bigquery#queryResponse",
                    "schema": self._schema(columns),
                    "jobReference": {"projectId": project, "location": location},
                    "totalBytesProcessed": str(processed),
                    "jobComplete": True,
                    "cacheHit": False,
                },
            )
        job_id = "job_" + uuid.uuid4().hex[:24]
        created = self.now
        job = {
            "project": project,
            "location": location,
            "query": sql,
            "parameters": body.get("queryParameters", []),
            "rows": rows,
            "columns": columns,
            "processed": processed,
            "billed": billed,
            "created": created,
            "polls_left": self.pending_polls,
        }
        with self._lock:
            self.jobs[job_id] = job
        out: dict[str, Any] = {
            "kind": "bigquery#queryResponse",
            "jobReference": {"projectId": project, "jobId": job_id, "location": location},
            "jobComplete": job["polls_left"] == 0,
        }
        if out["jobComplete"]:
            int64 = bool((body.get("formatOptions") or {}).get("useInt64Timestamp"))
            out.update(self._page(job_id, job, 0, body.get("maxResults"), int64))
            out.update(
                totalBytesProcessed=str(processed),
                totalBytesBilled=str(billed),
                cacheHit=False,
                creationTime=_ms(created),
                startTime=_ms(created),
                endTime=_ms(created + dt.timedelta(seconds=2)),
            )
        return Response(200, out)

    def _params(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("parameterMode") != "NAMED":
            raise ValueError("Query parameters must be NAMED.")
        got: dict[str, Any] = {}
        for p in body.get("queryParameters") or []:
            name = p.get("name")
            ptype = p.get("parameterType") or {}
            typ = ptype.get("type")
            if typ == "ARRAY":
                typ = f"ARRAY<{(ptype.get('arrayType') or {}).get('type')}>"
                got[name] = (typ, [v.get("value") for v in (p.get("parameterValue") or {}).get("arrayValues") or []])
            else:
                got[name] = (typ, (p.get("parameterValue") or {}).get("value"))
        out: dict[str, Any] = {}
        for name, typ in PARAM_TYPES.items():
            if name not in got:
                raise ValueError(f"Query parameter '{name}' not found")
            if got[name][0] != typ:
                raise ValueError(f"Query parameter '{name}' has type {got[name][0]}, expected {typ}")
            value = got[name][1]
            out[name] = _parse_ts(value) if typ == "TIMESTAMP" else value
        # the extra labels (attribution.labels): @label_<i>_<j> is label i's j-th label key, returned as label_<i>
        labels: dict[int, dict[int, str]] = {}
        for name, (typ, value) in got.items():
            m = re.fullmatch(r"label_(\d+)_(\d+)", name or "")
            if m:
                if typ != "STRING":
                    raise ValueError(f"Query parameter '{name}' has type {typ}, expected STRING")
                labels.setdefault(int(m.group(1)), {})[int(m.group(2))] = value
        out["labels"] = [[keys[j] for j in sorted(keys)] for _, keys in sorted(labels.items())]
        return out

    # -- the data ---------------------------------------------------------------------
    def partition_of(self, row: CloudRow) -> dt.datetime:
        """The partition (a Pacific date as a UTC-midnight timestamp) that holds the row's first export."""
        exported = dt.datetime.combine(row.day, dt.time(), tzinfo=dt.UTC) + EXPORT_LAG
        return dt.datetime.combine(exported.astimezone(PACIFIC).date(), dt.time(), tzinfo=dt.UTC)

    def _aggregate(self, params: dict[str, Any]) -> tuple[list[list[Any]], int]:
        sums: dict[tuple[Any, ...], list[Any]] = {}
        scanned = 0
        ai_services = set(params["ai_services"])
        for r in self.dataset.rows("gcp"):
            if self.partition_of(r) < params["partition_start"]:
                continue
            scanned += 1
            start = dt.datetime.combine(r.day, dt.time(), tzinfo=dt.UTC)
            if not params["start_time"] <= start < params["end_time"]:
                continue
            team = r.team if params["team_key"] == self.label_key else None
            sku = r.extra.get("sku", "") if r.service_name in ai_services else ""
            extra = tuple(
                next((r.extra[f"tag:{k}"] for k in keys if r.extra.get(f"tag:{k}")), None) for keys in params["labels"]
            )
            key = (r.day, r.account_id, r.service_name, team, sku, r.currency, *extra)
            end = min(start + dt.timedelta(days=1), self.now.replace(minute=0, second=0, microsecond=0))
            agg = sums.setdefault(key, [r.account_name, Decimal(0), Decimal(0), end])
            agg[1] += r.amount
            agg[2] += Decimal(r.extra.get("credit", "0"))
            agg[3] = max(agg[3], end)
        rows = []
        for key in sorted(sums, key=lambda k: tuple("" if x is None else str(x) for x in k)):
            day, account, service, team, sku, currency = key[:6]
            name, cost, credits, end = sums[key]
            rows.append([day, account, name, service, team, sku, currency, cost, credits, end, *key[6:]])
        return rows, scanned

    # -- results ------------------------------------------------------------------------
    def _schema(self, columns: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        return {"fields": [{"name": n, "type": t, "mode": "NULLABLE"} for n, t in columns or COLUMNS]}

    @staticmethod
    def _cell(value: Any, typ: str, int64: bool) -> Any:
        if value is None:
            return None
        if typ == "DATE":
            return value.isoformat()
        if typ == "FLOAT":
            return str(value)
        if typ == "TIMESTAMP":
            micros = int(value.timestamp()) * 1_000_000
            return str(micros) if int64 else f"{micros / 1e6:.6E}"
        return str(value)

    def _page(self, job_id: str, job: dict[str, Any], offset: int, max_results: Any, int64: bool) -> dict[str, Any]:
        size = self.page_size if max_results is None else min(self.page_size, int(max_results))
        rows = job["rows"]
        chunk = rows[offset : offset + size] if size > 0 else []
        columns = job.get("columns", COLUMNS)
        out: dict[str, Any] = {"schema": self._schema(columns), "totalRows": str(len(rows))}
        if chunk:
            out["rows"] = [
                {"f": [{"v": self._cell(v, t, int64)} for v, (_, t) in zip(r, columns, strict=True)]} for r in chunk
            ]
        nxt = offset + len(chunk)
        if size > 0 and nxt < len(rows):
            out["pageToken"] = self._tokens.issue((job_id, nxt))
        return out

    def _job_or_404(self, project: str, job_id: str) -> dict[str, Any] | Response:
        with self._lock:
            job = self.jobs.get(job_id)
        if job is None or job["project"] != project:
            return _error(404, "notFound", f"Not found: Job {project}:{job_id}")
        return job

    def _poll(self, job: dict[str, Any]) -> bool:
        """One poll of a pending job; True once it is done."""
        with self._lock:
            if job["polls_left"] > 0:
                job["polls_left"] -= 1
                return False
            return True

    def _get_query_results(self, project: str, job_id: str, request: Request) -> Response:
        job = self._job_or_404(project, job_id)
        if isinstance(job, Response):
            return job
        ref = {"projectId": project, "jobId": job_id, "location": job["location"]}
        if not self._poll(job):
            return Response(
                200, {"kind": "bigquery#getQueryResultsResponse", "jobReference": ref, "jobComplete": False}
            )
        offset = 0
        token = request.q("pageToken")
        if token:
            found = self._tokens.get(token)
            if found is None or found[0] != job_id:
                return _error(400, "invalid", f"Invalid page token: {token}")
            offset = found[1]
        elif request.q("startIndex"):
            offset = int(request.q("startIndex") or 0)
        int64 = (request.q("formatOptions.useInt64Timestamp") or "").lower() == "true"
        out: dict[str, Any] = {
            "kind": "bigquery#getQueryResultsResponse",
            "etag": uuid.uuid4().hex,
            "jobReference": ref,
            "jobComplete": True,
            "totalBytesProcessed": str(job["processed"]),
            "cacheHit": False,
        }
        out.update(self._page(job_id, job, offset, request.q("maxResults"), int64))
        fields = request.q("fields")
        if fields:
            keep = {f.strip() for f in fields.split(",")}
            out = {k: v for k, v in out.items() if k in keep}
        return Response(200, out)

    def _get_job(self, project: str, job_id: str) -> Response:
        job = self._job_or_404(project, job_id)
        if isinstance(job, Response):
            return job
        done = self._poll(job)
        created: dt.datetime = job["created"]
        stats: dict[str, Any] = {"creationTime": _ms(created), "startTime": _ms(created)}
        if done:
            stats.update(
                endTime=_ms(created + dt.timedelta(seconds=2)),
                totalBytesProcessed=str(job["processed"]),
                totalSlotMs="1234",
                query={
                    "totalBytesProcessed": str(job["processed"]),
                    "totalBytesBilled": str(job["billed"]),
                    "totalPartitionsProcessed": "0",
                    "billingTier": 1,
                    "cacheHit": False,
                    "statementType": "SELECT",
                    "totalSlotMs": "1234",
                    "schema": self._schema(job.get("columns")),
                },
            )
        resource = {
            "kind": "bigquery#job",
            "etag": uuid.uuid4().hex,
            "id": f"{project}:{job['location']}.{job_id}",
            "selfLink": f"{self.url}/bigquery/v2/projects/{project}/jobs/{job_id}?location={job['location']}",
            "user_email": "spend-exporter@example.iam.gserviceaccount.com",
            "configuration": {
                "query": {
                    "query": job["query"],
                    "destinationTable": {
                        "projectId": project,
                        "datasetId": "_anon0123",
                        "tableId": "anon" + job_id[4:],
                    },
                    "writeDisposition": "WRITE_TRUNCATE",
                    "priority": "INTERACTIVE",
                    "useLegacySql": False,
                    "parameterMode": "NAMED",
                    "queryParameters": job["parameters"],
                },
                "jobType": "QUERY",
            },
            "jobReference": {"projectId": project, "jobId": job_id, "location": job["location"]},
            "statistics": stats,
            "status": {"state": "DONE" if done else "RUNNING"},
            "principal_subject": "serviceAccount:spend-exporter@example.iam.gserviceaccount.com",
            "jobCreationReason": {"code": "REQUESTED"},
        }
        return Response(200, resource)

    # -- for tests --------------------------------------------------------------------------
    def expected(self, start: dt.date, end: dt.date) -> dict[tuple[Any, ...], Decimal]:
        """Net cost (cost + credits) by (day, project, service, team, model) for usage days ``start..end``."""
        out: dict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
        for r in self.dataset.rows("gcp"):
            if start <= r.day <= end:
                out[(r.day, r.account_id, r.service_name, r.team, r.model)] += r.amount + Decimal(
                    r.extra.get("credit", "0")
                )
        return out
