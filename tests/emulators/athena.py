"""Amazon Athena, as far as the exporter uses it: query executions whose result rows the tests choose.

Wire format. Athena has two protocols and botocore switched between them: up to botocore 1.44.8 its client
speaks awsJson1_1 (``POST /`` with ``X-Amz-Target: AmazonAthena.<Operation>``,
``Content-Type: application/x-amz-json-1.1`` and the input as the JSON body); from 1.44.9 rest-json
(``POST /query-executions``, ``GET /query-executions``, ``GET /query-executions/{QueryExecutionId}``,
``GET /query-executions/{QueryExecutionId}/results?NextToken=..&MaxResults=..`` and
``POST /query-executions/{QueryExecutionId}/stop``, ``application/json``; botocore's service model
``athena/2017-05-18/service-2.json`` is the reference). ``AthenaEmulator`` takes both and answers in the one it
was asked in. Every request must be signed (SigV4, scope ``athena``; with ``access_key_id``, by that key).
Errors are Athena's in either protocol: HTTP 400 (403 for a missing or foreign signature), body
``{"__type": ..., "Message": ...}`` and the code again in ``x-amzn-ErrorType`` (rest-json clients read the
header, awsJson1_1 ones the body); throttling is ``TooManyRequestsException`` with
``Reason: CONCURRENT_QUERY_LIMIT_EXCEEDED`` (Athena's own) or ``ThrottlingException`` (AWS's generic one).

Implemented:

- ``StartQueryExecution``: the workgroup must exist (``workgroups``, by default only ``primary``; else
  ``InvalidRequestException``, "WorkGroup is not found") and an output location must come from the request
  or the workgroup; the same ``ClientRequestToken`` starts nothing new and returns the same id. The
  execution takes its result there and then: the next one queued with ``seed(rows)``, else
  ``results(query string)``, else no rows.
- ``GetQueryExecution``: the state is ``QUEUED`` for ``polls_per_state`` answers, ``RUNNING`` for as many, then
  ``SUCCEEDED``, or ``FAILED`` with ``fail`` as its ``StateChangeReason``; at the end
  ``Statistics.DataScannedInBytes`` is ``scanned``. ``fail`` and ``scanned`` are read when the query starts.
- ``GetQueryResults``: only once the query ``SUCCEEDED``; pages of ``min(MaxResults, page_size)`` rows, the
  header row (the column names) first on the first page as Athena returns a SELECT's, the next page's
  ``NextToken`` the offset of its first row (accepted only from this execution's own pages), and
  ``ResultSetMetadata.ColumnInfo`` (every column ``varchar``).
- ``ListQueryExecutions``: a workgroup's execution ids, newest first, up to ``MaxResults`` (50) a page.
- ``StopQueryExecution``: an unfinished query ends ``CANCELLED``.

It runs no SQL. Tests change the settings of a running emulator as attributes; ``reset()`` forgets every
execution, queued result, fault and request and restores the settings it was made with. Faults come from the
``Emulator`` base (``tests/emulators/server.py``); ``operation`` and ``has_page_token`` tell its ``when``
predicates what a request is, in either protocol.

Why not moto: moto (5.2.6, the newest) serves Athena only as awsJson1_1 (its ``athena/urls.py`` routes ``/``
alone) while building its router from the installed botocore's model, so with botocore >= 1.44.9 every
Athena call to it is a 404; it also returned all rows in one page and no bytes scanned.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from tests.emulators.server import Emulator, Fault, Request, Response

Row = Sequence[str | None]

# the result columns of ``exporter.providers.focus_athena.build_query``, in its order
COLUMNS = [
    *("day", "provider", "account_id", "service_name", "team_tag", "currency", "model"),
    *("unit", "token_type", "hour", "amount", "quantity", "account_name", "period_end"),
]
JSON_1_1 = "application/x-amz-json-1.1"
REST_JSON = "application/json"
TARGET = "AmazonAthena."
ID = "{QueryExecutionId}"
# rest-json: (method, path with the id as ``{QueryExecutionId}``) -> operation, as in botocore's model
REST_ROUTES = {
    ("POST", "/query-executions"): "StartQueryExecution",
    ("GET", "/query-executions"): "ListQueryExecutions",
    ("GET", f"/query-executions/{ID}"): "GetQueryExecution",
    ("GET", f"/query-executions/{ID}/results"): "GetQueryResults",
    ("POST", f"/query-executions/{ID}/stop"): "StopQueryExecution",
}
# rest-json inputs sent in the query string (GetQueryResults and ListQueryExecutions)
QUERY_STRING_MEMBERS = ("NextToken", "MaxResults", "QueryResultType", "WorkGroup")
RESULTS_PAGE_MAX = 1000  # GetQueryResults' MaxResults: 1 to 1000
LIST_PAGE_MAX = 50  # ListQueryExecutions' MaxResults: 0 to 50
DONE = ("SUCCEEDED", "FAILED", "CANCELLED")
# what tests may change on a running emulator; ``reset`` restores them
SETTINGS = ("page_size", "scanned", "fail", "polls_per_state", "results", "columns", "workgroups", "throttle_error")


class AthenaError(Exception):
    """An error reply in Athena's form: ``__type``, ``Message`` and the members of the error's shape."""

    def __init__(self, code: str, message: str, status: int = 400, **members: Any) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.members = members


def _invalid(message: str) -> AthenaError:
    return AthenaError("InvalidRequestException", message)


def _route(request: Request) -> tuple[str, str | None]:
    """(operation, execution id in the path) of a request in either protocol; ``("", None)`` if it names none."""
    target = request.headers.get("x-amz-target")
    if target is not None:
        return (target.removeprefix(TARGET) if target.startswith(TARGET) else ""), None
    parts = request.path.rstrip("/").split("/")
    qid = None
    if len(parts) > 2 and parts[1] == "query-executions":
        qid, parts[2] = unquote(parts[2]), ID
    return REST_ROUTES.get((request.method, "/".join(parts)), ""), qid


def _input(request: Request) -> tuple[str, dict[str, Any]]:
    """The operation and its input as the model names it; ``AthenaError`` if the body is not a JSON object."""
    op, qid = _route(request)
    try:
        body = json.loads(request.body) if request.body.strip() else {}
    except ValueError:
        raise AthenaError("SerializationException", "Request body is not JSON") from None
    if not isinstance(body, dict):
        raise AthenaError("SerializationException", "Request body must be a JSON object")
    if "x-amz-target" not in request.headers:
        for name in QUERY_STRING_MEMBERS:
            if (v := request.q(name)) is not None:
                body[name] = v
        if qid is not None:
            body["QueryExecutionId"] = qid
    return op, body


def call(request: Request) -> tuple[str, dict[str, Any]]:
    """The operation a request names and its input, in either protocol (``("", {})`` if it names none)."""
    try:
        return _input(request)
    except AthenaError:
        return _route(request)[0], {}


def operation(request: Request) -> str:
    return call(request)[0]


def has_page_token(req: Request) -> bool:
    """Whether a request asks for a page after the first (``NextToken`` in the body or the query string)."""
    return "NextToken" in call(req)[1]


@dataclass
class Execution:
    id: str
    query: str
    workgroup: str
    context: dict[str, Any]
    output: str
    columns: list[str]
    rows: list[Row]  # without the header
    scanned: int
    fail: str | None
    submitted: float = field(default_factory=time.time)
    polls: int = 0  # GetQueryExecution answers so far
    state: str = "QUEUED"
    reason: str | None = None
    completed: float | None = None
    page_tokens: set[str] = field(default_factory=set)

    def end(self, state: str, reason: str | None = None) -> None:
        self.state, self.reason, self.completed = state, reason, time.time()


class AthenaEmulator(Emulator):
    """Athena's query executions in both wire protocols; see the module docstring for what it models.

    ``page_size`` caps a ``GetQueryResults`` page (Athena's own cap, 1000, by default), ``scanned`` is
    each query's ``DataScannedInBytes``, ``fail`` makes queries end ``FAILED`` with that reason,
    ``polls_per_state`` is how many ``GetQueryExecution`` answers a query spends ``QUEUED`` and then
    ``RUNNING``, and ``results`` (the query string → its rows, without the header) answers queries for which
    nothing was queued with ``seed``. ``workgroups`` maps each existing workgroup to its output location
    (None: the request must name one).
    """

    name = "athena"
    throttle_error = "TooManyRequestsException"  # Athena's own (modelled); "ThrottlingException" is AWS's generic one

    def __init__(
        self,
        page_size: int = RESULTS_PAGE_MAX,
        scanned: int = 0,
        fail: str | None = None,
        polls_per_state: int = 0,
        results: Callable[[str], Sequence[Row]] | None = None,
        columns: Sequence[str] = COLUMNS,
        workgroups: dict[str, str | None] | None = None,
        access_key_id: str | None = None,
    ) -> None:
        super().__init__()
        self.page_size = page_size
        self.scanned = scanned
        self.fail = fail
        self.polls_per_state = polls_per_state
        self.results = results
        self.columns = list(columns)
        self.workgroups: dict[str, str | None] = {"primary": None} if workgroups is None else dict(workgroups)
        self.access_key_id = access_key_id
        self._settings = {name: getattr(self, name) for name in SETTINGS}  # what ``reset`` restores
        self._state = threading.Lock()
        self._queued: deque[tuple[list[str], list[Row]]] = deque()
        self.executions: dict[str, Execution] = {}  # in the order they started
        self._by_token: dict[str, str] = {}  # ClientRequestToken -> execution id
        self._list_tokens: dict[str, int] = {}  # ListQueryExecutions' NextToken -> offset

    # -- for tests -----------------------------------------------------------------------------
    def seed(self, rows: Sequence[Row], columns: Sequence[str] = COLUMNS) -> None:
        """Queue one query's result: the next query to start takes it."""
        with self._state:
            self._queued.append((list(columns), list(rows)))

    def reset(self) -> None:
        """Back to how it started: no execution, nothing queued, no fault, no request, its first settings."""
        with self._state:
            self._queued.clear()
            self.executions.clear()
            self._by_token.clear()
            self._list_tokens.clear()
            for name, value in self._settings.items():
                setattr(self, name, copy.copy(value))
        self.clear_faults()
        with self._lock:
            self.requests.clear()

    def operations(self) -> list[str]:
        return [operation(r) for r in self.requests]

    def queries(self) -> list[str]:
        """The query strings started, oldest first."""
        with self._state:
            return [e.query for e in self.executions.values()]

    # -- wire ------------------------------------------------------------------------------------
    def throttle_response(self, fault: Fault) -> Response:
        # the base does not say which protocol the request spoke: botocore reads this body in either
        e = AthenaError(self.throttle_error, "Rate exceeded")
        if self.throttle_error == "TooManyRequestsException":
            e.members["Reason"] = "CONCURRENT_QUERY_LIMIT_EXCEEDED"
        return self._error(e, JSON_1_1)

    @staticmethod
    def _error(e: AthenaError, content_type: str) -> Response:
        body = {"__type": e.code, "Message": str(e), **e.members}
        headers = {"Content-Type": content_type, "x-amzn-ErrorType": e.code, "x-amzn-RequestId": str(uuid.uuid4())}
        return Response(e.status, body, headers)

    def _auth(self, request: Request) -> None:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 Credential="):
            raise AthenaError("MissingAuthenticationTokenException", "Missing Authentication Token", 403)
        key, _, scope = auth.removeprefix("AWS4-HMAC-SHA256 Credential=").partition(",")[0].partition("/")
        if scope.split("/")[2:3] != ["athena"]:
            raise AthenaError("InvalidSignatureException", f"Credential should be scoped to athena: {scope}", 403)
        if self.access_key_id and key != self.access_key_id:
            raise AthenaError(
                "UnrecognizedClientException", "The security token included in the request is invalid.", 403
            )

    def handle(self, request: Request) -> Response:
        json_1_1 = "x-amz-target" in request.headers
        content_type = JSON_1_1 if json_1_1 else REST_JSON
        handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "StartQueryExecution": self._start,
            "GetQueryExecution": self._get_execution,
            "GetQueryResults": self._get_results,
            "ListQueryExecutions": self._list,
            "StopQueryExecution": self._stop,
        }
        try:
            op, body = _input(request)
            if op not in handlers:
                where = request.headers["x-amz-target"] if json_1_1 else f"{request.method} {request.path}"
                raise AthenaError("UnknownOperationException", f"Unknown operation {where}", 400 if json_1_1 else 404)
            self._auth(request)
            sent = request.headers.get("content-type", "")
            if (json_1_1 or request.body) and not sent.startswith(content_type):
                raise AthenaError("SerializationException", f"Content-Type must be {content_type}, not {sent!r}")
            with self._state:
                data = handlers[op](body)
        except AthenaError as e:
            return self._error(e, content_type)
        return Response(200, data, {"Content-Type": content_type, "x-amzn-RequestId": str(uuid.uuid4())})

    # -- operations (under ``_state``) -------------------------------------------------------------
    def _workgroup(self, body: dict[str, Any]) -> str:
        name = str(body.get("WorkGroup") or "primary")
        if name not in self.workgroups:
            raise _invalid("WorkGroup is not found")
        return name

    def _execution(self, body: dict[str, Any]) -> Execution:
        qid = str(body.get("QueryExecutionId") or "")
        if qid not in self.executions:
            raise _invalid(f"QueryExecution {qid} was not found")
        return self.executions[qid]

    @staticmethod
    def _int(body: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
        raw = body.get(name, default)
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise AthenaError("SerializationException", f"{name} is not an integer: {raw!r}") from None
        if not lo <= value <= hi:
            raise _invalid(f"{name} must be between {lo} and {hi}, not {value}")
        return value

    def _start(self, body: dict[str, Any]) -> dict[str, Any]:
        query = body.get("QueryString")
        if not isinstance(query, str) or not query:
            raise _invalid("QueryString is required")
        workgroup = self._workgroup(body)
        token = body.get("ClientRequestToken")
        if token in self._by_token:  # idempotent: a retried start is the same execution
            return {"QueryExecutionId": self._by_token[token]}
        output = (body.get("ResultConfiguration") or {}).get("OutputLocation") or self.workgroups[workgroup]
        if not output:
            raise _invalid(
                "No output location provided. An output location is required either through the Workgroup "
                "result configuration setting or as an API input."
            )
        if self._queued:
            columns, rows = self._queued.popleft()
        else:
            columns, rows = self.columns, (list(self.results(query)) if self.results is not None else [])
        qid = str(uuid.uuid4())
        self.executions[qid] = Execution(
            id=qid,
            query=query,
            workgroup=workgroup,
            context=dict(body.get("QueryExecutionContext") or {}),
            output=f"{output.rstrip('/')}/{qid}.csv",
            columns=columns,
            rows=rows,
            scanned=self.scanned,
            fail=self.fail,
        )
        if token:
            self._by_token[token] = qid
        return {"QueryExecutionId": qid}

    def _get_execution(self, body: dict[str, Any]) -> dict[str, Any]:
        ex = self._execution(body)
        if ex.state not in DONE:
            ex.polls += 1
            if ex.polls > 2 * self.polls_per_state:
                ex.end(*(("FAILED", ex.fail) if ex.fail else ("SUCCEEDED",)))
            elif ex.polls > self.polls_per_state:
                ex.state = "RUNNING"
        status: dict[str, Any] = {"State": ex.state, "SubmissionDateTime": ex.submitted}
        if ex.completed is not None:
            status["CompletionDateTime"] = ex.completed
        if ex.reason:
            status["StateChangeReason"] = ex.reason
        if ex.state == "FAILED":
            status["AthenaError"] = {"ErrorCategory": 2, "Retryable": False, "ErrorMessage": ex.reason}
        millis = int(((ex.completed or time.time()) - ex.submitted) * 1000)
        return {
            "QueryExecution": {
                "QueryExecutionId": ex.id,
                "Query": ex.query,
                "StatementType": "DML",
                "ResultConfiguration": {"OutputLocation": ex.output},
                "ResultReuseConfiguration": {"ResultReuseByAgeConfiguration": {"Enabled": False}},
                "QueryExecutionContext": ex.context,
                "Status": status,
                "Statistics": {
                    "EngineExecutionTimeInMillis": millis,
                    "DataScannedInBytes": ex.scanned if ex.state in DONE else 0,
                    "TotalExecutionTimeInMillis": millis,
                    "QueryQueueTimeInMillis": 0,
                    "ServiceProcessingTimeInMillis": 0,
                    "ResultReuseInformation": {"ReusedPreviousResult": False},
                },
                "WorkGroup": ex.workgroup,
                "EngineVersion": {
                    "SelectedEngineVersion": "AUTO",
                    "EffectiveEngineVersion": "Athena engine version 3",
                },
                "SubstatementType": "SELECT",
            }
        }

    def _get_results(self, body: dict[str, Any]) -> dict[str, Any]:
        ex = self._execution(body)
        if ex.state in ("QUEUED", "RUNNING"):
            raise _invalid(f"Query has not yet finished. Current state: {ex.state}")
        if ex.state != "SUCCEEDED":
            raise _invalid(ex.reason or f"Query did not succeed. Current state: {ex.state}")
        token = body.get("NextToken")
        if token is not None and token not in ex.page_tokens:
            raise _invalid("Invalid NextToken")
        start = int(token or 0)
        size = min(self._int(body, "MaxResults", RESULTS_PAGE_MAX, 1, RESULTS_PAGE_MAX), self.page_size)
        rows = [list(ex.columns), *ex.rows]  # a SELECT's first row is its header
        data: dict[str, Any] = {
            "UpdateCount": 0,
            "ResultSet": {
                "Rows": [{"Data": [{} if v is None else {"VarCharValue": v} for v in r]} for r in rows[start:][:size]],
                "ResultSetMetadata": {
                    "ColumnInfo": [
                        {
                            **{"CatalogName": "hive", "SchemaName": "", "TableName": "", "Name": c, "Label": c},
                            **{"Type": "varchar", "Precision": 2147483647, "Scale": 0, "Nullable": "UNKNOWN"},
                            "CaseSensitive": True,
                        }
                        for c in ex.columns
                    ]
                },
            },
        }
        if start + size < len(rows):
            data["NextToken"] = str(start + size)
            ex.page_tokens.add(data["NextToken"])
        return data

    def _list(self, body: dict[str, Any]) -> dict[str, Any]:
        workgroup = self._workgroup(body)
        size = self._int(body, "MaxResults", LIST_PAGE_MAX, 0, LIST_PAGE_MAX)
        token = body.get("NextToken")
        if token is not None and token not in self._list_tokens:
            raise _invalid("Invalid NextToken")
        start = self._list_tokens.get(token, 0) if token else 0
        ids = [e.id for e in reversed(self.executions.values()) if e.workgroup == workgroup]
        data: dict[str, Any] = {"QueryExecutionIds": ids[start : start + size]}
        if start + size < len(ids):
            data["NextToken"] = uuid.uuid4().hex
            self._list_tokens[data["NextToken"]] = start + size
        return data

    def _stop(self, body: dict[str, Any]) -> dict[str, Any]:
        ex = self._execution(body)
        if ex.state not in DONE:
            ex.end("CANCELLED", "Query cancelled by user")
        return {}
