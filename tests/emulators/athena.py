"""Athena for tests: moto's server runs the executions, ``AthenaPager`` in front of it speaks the rest of the API.

moto runs no SQL: the results a query returns are seeded through its
``/moto-api/static/athena/query-results`` endpoint, a queue from which an
execution takes the next entry when it starts (or, if the queue was empty then,
at its first ``GetQueryResults``), so a stray request can take another query's
result. Its executions go QUEUED → RUNNING → SUCCEEDED one ``GetQueryExecution``
at a time when its state manager says so. moto returns every row in one page
and reports no bytes scanned, so ``AthenaPager`` (an ``Emulator``, hence fault
injection) splits ``GetQueryResults`` into ``NextToken`` pages, as Athena does
(asking moto for an execution's whole result once, at its first page), sets
``DataScannedInBytes`` (or fails the query) on ``GetQueryExecution``, throttles
in Athena's own form and, given ``results``, seeds each query's rows itself.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from tests.emulators.server import Emulator, Fault, Request, Response

Row = Sequence[str | None]

# the result columns of ``exporter.providers.focus_athena.build_query``, in its order
COLUMNS = [
    *("day", "provider", "account_id", "service_name", "team_tag", "currency", "model"),
    *("unit", "token_type", "hour", "amount", "quantity", "account_name", "period_end"),
]
JSON_1_1 = "application/x-amz-json-1.1"


def post(url: str, body: dict[str, Any]) -> None:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()


def _datum(v: str | None) -> dict[str, str]:
    return {} if v is None else {"VarCharValue": v}


def seed(moto_url: str, rows: Sequence[Row], columns: Sequence[str] = COLUMNS) -> None:
    """Queue one query's result in moto: the header row first, as Athena returns a SELECT's first page."""
    result_rows = [{"Data": [_datum(c) for c in columns]}] + [{"Data": [_datum(v) for v in r]} for r in rows]
    info = [{"Name": c, "Label": c, "Type": "varchar", "Nullable": "UNKNOWN"} for c in columns]
    post(f"{moto_url}/moto-api/static/athena/query-results", {"results": [{"rows": result_rows, "column_info": info}]})


class MotoServer:
    """moto's server on 127.0.0.1 at a port the system picks; ``reset`` forgets every execution and queued result.

    moto's backends are global to the process: every ``MotoServer`` in it shares them.
    """

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.url = ""
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)

    def start(self) -> MotoServer:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    def reset(self) -> None:
        post(f"{self.url}/moto-api/reset", {})


class AthenaPager(Emulator):
    """Forwards to moto; pages ``GetQueryResults`` by ``page_size`` and sets the query's bytes scanned or state.

    With ``results`` (the query string → its rows, without the header), the pager seeds moto with each
    query's rows and starts it in one step, so that any number of refreshes can run and a late request (a
    fault's delayed reply) cannot take another query's result.
    """

    name = "athena-pager"
    throttle_error = "TooManyRequestsException"  # Athena's own (modelled); "ThrottlingException" is AWS's generic one

    def __init__(
        self,
        moto_url: str,
        page_size: int = 2,
        scanned: int = 0,
        fail: str | None = None,
        results: Callable[[str], Sequence[Row]] | None = None,
        columns: Sequence[str] = COLUMNS,
    ) -> None:
        super().__init__()
        self.moto_url = moto_url
        self.page_size = page_size
        self.scanned = scanned
        self.fail = fail
        self.results = results
        self.columns = columns
        self._start_lock = threading.Lock()
        self._results: dict[str, dict[str, Any]] = {}  # moto's whole result of the last execution read

    def operations(self) -> list[str]:
        return [r.headers.get("x-amz-target", "").rsplit(".", 1)[-1] for r in self.requests]

    def throttle_response(self, fault: Fault) -> Response:
        body: dict[str, Any] = {"__type": self.throttle_error, "Message": "Rate exceeded"}
        if self.throttle_error == "TooManyRequestsException":
            body["Reason"] = "CONCURRENT_QUERY_LIMIT_EXCEEDED"
        headers = {"Content-Type": JSON_1_1, "x-amzn-ErrorType": self.throttle_error}
        return Response(400, body, {**headers, "x-amzn-RequestId": str(uuid.uuid4())})

    def _forward(self, request: Request, body: bytes) -> tuple[int, dict[str, Any]]:
        headers = {k: v for k, v in request.headers.items() if k in ("content-type", "x-amz-target", "authorization")}
        req = urllib.request.Request(self.moto_url + request.path, data=body, headers=headers, method=request.method)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def handle(self, request: Request) -> Response:
        op = request.headers.get("x-amz-target", "").rsplit(".", 1)[-1]
        headers = {"Content-Type": JSON_1_1}
        if op == "GetQueryResults":
            body = request.json()
            start = int(body.pop("NextToken", None) or 0)
            size = min(int(body.pop("MaxResults", 1000)), self.page_size)
            qid = str(body.get("QueryExecutionId"))
            whole = self._results.get(qid) if start else None  # later pages: moto's answer does not change
            if whole is None:
                status, whole = self._forward(request, json.dumps(body).encode())
                if status != 200:
                    return Response(status, whole, headers)
                self._results = {qid: whole}  # a refresh reads one query at a time
            rows = whole["ResultSet"]["Rows"]
            data = {**whole, "ResultSet": {**whole["ResultSet"], "Rows": rows[start : start + size]}}
            if start + size < len(rows):
                data["NextToken"] = str(start + size)
            return Response(200, data, headers)
        if op == "StartQueryExecution" and self.results is not None:
            with self._start_lock:  # moto's StartQueryExecution takes the result just queued
                seed(self.moto_url, self.results(request.json()["QueryString"]), self.columns)
                status, data = self._forward(request, request.body)
        else:
            status, data = self._forward(request, request.body)
        if op == "GetQueryExecution" and status == 200:
            ex = data["QueryExecution"]
            ex["Statistics"]["DataScannedInBytes"] = self.scanned
            if self.fail:
                ex["Status"] = {"State": "FAILED", "StateChangeReason": self.fail}
        return Response(status, data, headers)
