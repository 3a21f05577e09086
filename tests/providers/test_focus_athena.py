"""The focus source's Athena engine: the real boto3 Athena client against ``AthenaEmulator`` on 127.0.0.1.

The emulator (``tests/emulators/athena.py``) speaks Athena's wire format in the protocol the installed botocore
uses (awsJson1_1 up to 1.44.8, rest-json from 1.44.9): executions that go QUEUED → RUNNING → SUCCEEDED or
FAILED, bytes scanned, ``GetQueryResults`` in ``NextToken`` pages with the header row first. It runs no SQL: each
test queues the rows its query returns (``seed``).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import build_app
from exporter.config import ConfigError, parse_config
from exporter.model import FetchWindow
from exporter.providers.base import ProviderContext, SourceError, Throttled
from exporter.providers.focus import FocusProvider
from exporter.providers.focus_athena import billing_periods, build_query, scan_cost_usd
from exporter.sources.focus import FocusSource
from tests.emulators.athena import AthenaEmulator, call, has_page_token, operation
from tests.emulators.server import Fault, Request
from tests.helpers import Calls, use_static_aws_credentials

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
WINDOW = FetchWindow(start=dt.date(2026, 10, 1), end=dt.date(2026, 11, 21), now=NOW)
ACCESS_KEY = "AKIATESTATHENAFOCUS"
SECRET_KEY = "test-only-athena-secret-0123456789"
TB = 1024**4


def row(
    day: str,
    provider: str,
    account: str,
    service: str,
    team: str | None,
    currency: str,
    amount: str | None,
    name: str | None,
    end: str,
    model: str = "",
    usage: tuple[str, str, str | None, str] | None = None,  # unit, token type, hour, quantity
) -> tuple[str | None, ...]:
    """One result row of ``build_query``'s query; None is SQL NULL."""
    unit, token_type, hour, quantity = usage or (None, None, None, None)
    return (day, provider, account, service, team, currency, model, unit, token_type, hour, amount, quantity, name, end)


DAY_END = {d: f"2026-11-{int(d[-2:]) + 1:02d} 00:00:00.000" for d in ("2026-11-19", "2026-11-20", "2026-11-21")}
ROWS: list[tuple[str | None, ...]] = [
    row(
        "2026-10-30", "AWS", "111111111111", "Amazon EC2", "search", "USD", "120.50", "prod", "2026-10-31 00:00:00.000"
    ),
    row("2026-11-19", "AWS", "111111111111", "AWS Lambda", None, "USD", "3.25", "prod", DAY_END["2026-11-19"]),
    row("2026-11-20", "Microsoft", "sub-1", "Storage", "data", "EUR", "10.00", None, DAY_END["2026-11-20"]),
    row("2026-11-20", "AWS", "222222222222", "Amazon S3", "payments", "USD", "-2.50", "staging", DAY_END["2026-11-20"]),
    row("2026-11-21", "AWS", "111111111111", "Amazon EC2", "search", "USD", "40.125", "prod", DAY_END["2026-11-21"]),
]
# AI usage in the bill: daily token and request rows, and hourly rows of the last complete hours (NOW is 12:00)
AI = {"model": "gpt-4o"}
AI_ROWS: list[tuple[str | None, ...]] = [
    row(
        "2026-11-20",
        "OpenAI",
        "proj_a",
        "chat",
        None,
        "USD",
        "1.50",
        "A",
        DAY_END["2026-11-20"],
        **AI,
        usage=("tokens", "input", None, "1000"),
    ),
    row(
        "2026-11-20",
        "OpenAI",
        "proj_a",
        "chat",
        None,
        "USD",
        "0.50",
        "A",
        DAY_END["2026-11-20"],
        **AI,
        usage=("tokens", "output", None, "200"),
    ),
    row(
        "2026-11-20",
        "OpenAI",
        "proj_a",
        "chat",
        None,
        "USD",
        None,
        "A",
        DAY_END["2026-11-20"],
        **AI,
        usage=("requests", "", None, "7"),
    ),
    row(
        "2026-11-21",
        "OpenAI",
        "proj_a",
        "chat",
        None,
        "USD",
        "0.10",
        "A",
        "2026-11-21 11:00:00.000",
        **AI,
        usage=("tokens", "input", "2026-11-21 10:00:00.000", "100"),
    ),
    row(
        "2026-11-21",
        "OpenAI",
        "proj_a",
        "chat",
        None,
        "USD",
        "0.05",
        "A",
        "2026-11-21 12:00:00.000",
        **AI,
        usage=("tokens", "cache_read", "2026-11-21 11:00:00.000", "50"),
    ),
]


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_static_aws_credentials(monkeypatch, tmp_path, ACCESS_KEY, SECRET_KEY)


@pytest.fixture(scope="module")
def athena_server() -> Iterator[AthenaEmulator]:
    emu = AthenaEmulator(access_key_id=ACCESS_KEY)
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def athena(athena_server: AthenaEmulator) -> AthenaEmulator:
    """The module's emulator, reset: Athena's own page cap of 1000 rows, nothing scanned, every query succeeding
    at its first poll; tests change these settings before they start a query."""
    athena_server.reset()
    return athena_server


class Accounting(Calls):
    def ctx(self) -> ProviderContext:
        return ProviderContext("athena", on_call=self.on_call)


def source(url: str, **overrides: Any) -> FocusSource:
    raw: dict[str, Any] = {
        "name": "focus-athena",
        "type": "focus",
        "engine": "athena",
        "database": "cur",
        "table": "focus_export",
        "workgroup": "primary",
        "output_location": "s3://results-bucket/athena/",
        "endpoint_url": url,
        "poll_interval": "1ms",
    }
    raw.update(overrides)
    src = parse_config({"sources": [raw]}).sources[0]
    assert isinstance(src, FocusSource)
    return src


def _queries(url: str) -> list[str]:
    """The query strings the workgroup ran, read back through Athena's API with boto3."""
    client = boto3.client("athena", region_name="us-east-1", endpoint_url=url)
    ids = client.list_query_executions()["QueryExecutionIds"]
    return [client.get_query_execution(QueryExecutionId=i)["QueryExecution"]["Query"] for i in ids]


def test_fetch_aggregates_costs_from_the_query_results(athena: AthenaEmulator) -> None:
    athena.seed(ROWS + AI_ROWS)
    acc = Accounting()
    src = source(athena.url, model_column="x_model", token_type_column="x_tokentype")
    result = FocusProvider(src, acc.ctx()).fetch(WINDOW)

    got = {
        (c.day, c.provider, c.account_id, c.service_name, c.team_tag, c.currency, c.model): c.amount
        for c in result.costs
    }
    assert got == {
        (dt.date(2026, 10, 30), "aws", "111111111111", "Amazon EC2", "search", "USD", ""): 120.50,
        (dt.date(2026, 11, 19), "aws", "111111111111", "AWS Lambda", None, "USD", ""): 3.25,
        (dt.date(2026, 11, 20), "azure", "sub-1", "Storage", "data", "EUR", ""): 10.00,
        (dt.date(2026, 11, 20), "aws", "222222222222", "Amazon S3", "payments", "USD", ""): -2.50,
        (dt.date(2026, 11, 21), "aws", "111111111111", "Amazon EC2", "search", "USD", ""): 40.125,
        # the usage rows of one day and model, split by token type and hour, are one cost record again
        (dt.date(2026, 11, 20), "openai", "proj_a", "chat", None, "USD", "gpt-4o"): 2.00,
        (dt.date(2026, 11, 21), "openai", "proj_a", "chat", None, "USD", "gpt-4o"): pytest.approx(0.15),
    }
    assert sorted((a.provider, a.account_id, a.account_name) for a in result.accounts) == [
        ("aws", "111111111111", "prod"),
        ("aws", "222222222222", "staging"),
        ("openai", "proj_a", "A"),
    ]
    assert result.days == WINDOW.days()
    assert result.data_through == NOW  # the newest period ends after now: capped at now
    usage = {(u.day, u.provider, u.account_id, u.service_name, u.model): (u.tokens, u.requests) for u in result.usage}
    assert usage == {
        (dt.date(2026, 11, 20), "openai", "proj_a", "chat", "gpt-4o"): ({"input": 1000, "output": 200}, 7),
        (dt.date(2026, 11, 21), "openai", "proj_a", "chat", "gpt-4o"): ({"input": 100, "cache_read": 50}, 0),
    }
    assert result.hourly is not None
    hourly = {(h.hour_start, h.provider, h.model): h.tokens for h in result.hourly}
    assert hourly == {
        (dt.datetime(2026, 11, 21, 10, tzinfo=dt.UTC), "openai", "gpt-4o"): {"input": 100},
        (dt.datetime(2026, 11, 21, 11, tzinfo=dt.UTC), "openai", "gpt-4o"): {"cache_read": 50},
    }
    assert acc.op_counts() == Counter(StartQueryExecution=1, GetQueryExecution=1, GetQueryResults=1, DataScanned=1)
    assert all(st == "success" for _, st, _ in acc.calls)

    (query,) = _queries(athena.url)
    assert athena.queries() == [query]
    assert "billing_period IN ('2026-10', '2026-11')" in query
    assert "chargeperiodstart >= TIMESTAMP '2026-10-01 00:00:00'" in query
    assert "chargeperiodstart < TIMESTAMP '2026-11-22 00:00:00'" in query
    assert "SUM(billedcost)" in query and "element_at(tags, 'team')" in query
    assert "COALESCE(x_model, '') AS model" in query and "LOWER(COALESCE(x_tokentype, ''))" in query
    # usage rows: tokens and requests, and the hourly ones of the last 24 complete hours (11:00 is the last)
    assert "LOWER(consumedunit) IN ('tokens', 'token', 'requests', 'request')" in query
    assert "chargeperiodend - chargeperiodstart = INTERVAL '1' HOUR" in query
    assert "chargeperiodstart >= TIMESTAMP '2026-11-20 12:00:00'" in query
    assert "chargeperiodstart <= TIMESTAMP '2026-11-21 11:00:00'" in query


def test_without_model_and_token_type_columns_the_query_names_none(athena: AthenaEmulator) -> None:
    q = build_query(source(athena.url), WINDOW, ["team"])
    assert "x_model" not in q and "x_tokentype" not in q
    assert "'' AS model" in q
    # token counts without a token type are input tokens, as with the DuckDB engine
    athena.seed(
        [
            row(
                "2026-11-20",
                "OpenAI",
                "p",
                "chat",
                None,
                "USD",
                "1",
                None,
                DAY_END["2026-11-20"],
                usage=("tokens", "", None, "10"),
            )
        ],
    )
    (u,) = FocusProvider(source(athena.url), Accounting().ctx()).fetch(WINDOW).usage
    assert u.tokens == {"input": 10} and u.model == ""


def test_the_query_names_only_the_partitions_of_the_window(athena: AthenaEmulator) -> None:
    warm = FetchWindow(start=dt.date(2026, 11, 18), end=dt.date(2026, 11, 21), now=NOW)
    assert billing_periods(warm) == ["2026-11"]
    assert billing_periods(FetchWindow(dt.date(2025, 12, 30), dt.date(2026, 2, 1), NOW)) == [
        "2025-12",
        "2026-01",
        "2026-02",
    ]
    src = source(athena.url, cost_column="EffectiveCost", partition_column="month")
    q = build_query(src, warm, ["team", "Team"])
    assert "month IN ('2026-11') AND" in q
    assert "SUM(effectivecost)" in q
    assert "COALESCE(element_at(tags, 'team'), element_at(tags, 'Team'))" in q
    assert '"cur"."focus_export"' in q
    q = build_query(source(athena.url, partition_column=None), warm, ["o'brien"])
    assert "billing_period" not in q and " IN ('2026-" not in q and "element_at(tags, 'o''brien')" in q


def test_polls_until_the_query_finishes(athena: AthenaEmulator) -> None:
    # each execution answers 3 GetQueryExecution calls QUEUED, the next 3 RUNNING, then SUCCEEDED
    athena.polls_per_state = 3
    athena.seed(ROWS)
    acc = Accounting()
    result = FocusProvider(source(athena.url), acc.ctx()).fetch(WINDOW)
    assert len(result.costs) == len(ROWS)
    assert acc.op_counts()["GetQueryExecution"] >= 3
    assert acc.op_counts()["GetQueryExecution"] == 7  # it stops polling at the first SUCCEEDED
    assert [e.state for e in athena.executions.values()] == ["SUCCEEDED"]


def test_pages_through_results_and_counts_the_bytes_scanned(athena: AthenaEmulator) -> None:
    athena.page_size, athena.scanned = 2, 3 * TB
    athena.seed(ROWS)
    acc = Accounting()
    result = FocusProvider(source(athena.url), acc.ctx()).fetch(WINDOW)
    ops = athena.operations()
    assert len(result.costs) == len(ROWS)
    # header + 5 rows in pages of 2: 3 pages, each request counted
    assert ops.count("GetQueryResults") == 3
    assert acc.op_counts()["GetQueryResults"] == 3
    # the NextToken of each later page, in the body (awsJson1_1) or the query string (rest-json)
    tokens = [call(r)[1]["NextToken"] for r in athena.requests if has_page_token(r)]
    assert tokens == ["2", "4"]
    assert acc.spent == pytest.approx(15.0)  # 3 TB x $5
    assert [c for op, _, c in acc.calls if op == "DataScanned"] == [pytest.approx(15.0)]


def test_scan_cost_rounds_up_to_a_megabyte_with_a_10_mb_minimum() -> None:
    assert scan_cost_usd(0) == 0.0
    assert scan_cost_usd(1) == pytest.approx(10 * 1024**2 / TB * 5)
    assert scan_cost_usd(10 * 1024**2 + 1) == pytest.approx(11 * 1024**2 / TB * 5)
    assert scan_cost_usd(TB) == pytest.approx(5.0)


def test_a_failed_query_raises_and_its_scan_is_still_counted(athena: AthenaEmulator) -> None:
    athena.scanned, athena.fail = TB, "TABLE_NOT_FOUND: line 1:1: Table cur.focus_export does not exist"
    athena.seed(ROWS)
    acc = Accounting()
    with pytest.raises(SourceError, match="failed: TABLE_NOT_FOUND"):
        FocusProvider(source(athena.url), acc.ctx()).fetch(WINDOW)
    assert ("DataScanned", "error", pytest.approx(5.0)) in acc.calls
    assert acc.op_counts()["GetQueryResults"] == 0


def test_a_failed_page_fails_the_whole_fetch(athena: AthenaEmulator) -> None:
    athena.page_size = 2
    athena.seed(ROWS)
    acc = Accounting()
    # start, one poll, the first page: the second page gets a 500
    athena.inject(Fault("500", after=3))
    with pytest.raises(SourceError, match="GetQueryResults failed: HTTP 500"):
        FocusProvider(source(athena.url), acc.ctx()).fetch(WINDOW)
    assert ("GetQueryResults", "error", 0.0) in acc.calls


def _polls(r: Request) -> bool:
    return operation(r) == "GetQueryExecution"


def test_a_throttled_poll_is_retried_with_backoff_without_running_the_query_again(athena: AthenaEmulator) -> None:
    athena.page_size = 10
    athena.seed(ROWS)
    acc = Accounting()
    src = source(athena.url, throttle_retries=2, throttle_backoff="1ms")
    # Athena's own form: HTTP 400 with the JSON __type TooManyRequestsException
    athena.inject(Fault("throttle", times=2, when=_polls))
    result = FocusProvider(src, acc.ctx()).fetch(WINDOW)
    assert len(result.costs) == len(ROWS)
    assert acc.ops()[:4] == [
        ("StartQueryExecution", "success"),
        ("GetQueryExecution", "throttled"),
        ("GetQueryExecution", "throttled"),
        ("GetQueryExecution", "success"),
    ]
    assert athena.operations().count("StartQueryExecution") == 1
    # AWS's generic form, once more than the retries allow: the refresh fails as throttled
    athena.throttle_error = "ThrottlingException"
    athena.inject(Fault("throttle", times=3, when=_polls))
    with pytest.raises(Throttled, match=r"throttled by AWS \(ThrottlingException\) on 3 attempts"):
        FocusProvider(src, acc.ctx()).fetch(WINDOW)


def test_a_result_without_the_expected_columns_is_an_error(athena: AthenaEmulator) -> None:
    athena.seed(rows=[("2026-11-20", "AWS")], columns=["day", "provider"])
    with pytest.raises(SourceError, match="no column 'account_id'"):
        FocusProvider(source(athena.url), Accounting().ctx()).fetch(WINDOW)


def test_athena_errors_name_the_operation(athena: AthenaEmulator) -> None:
    # an unknown workgroup: Athena answers InvalidRequestException
    with pytest.raises(
        SourceError, match="StartQueryExecution failed: HTTP 400 InvalidRequestException: WorkGroup is not found"
    ):
        FocusProvider(source(athena.url, workgroup="no-such-workgroup"), Accounting().ctx()).fetch(WINDOW)


def test_config_requires_the_keys_of_each_engine() -> None:
    with pytest.raises(ConfigError, match="paths: needed with engine duckdb"):
        parse_config({"sources": [{"name": "f", "type": "focus"}]})
    with pytest.raises(ConfigError, match="database and table: needed with engine athena"):
        parse_config({"sources": [{"name": "f", "type": "focus", "engine": "athena", "table": "t"}]})
    with pytest.raises(ConfigError, match=r"sources\[0\]\.table"):
        parse_config(
            {"sources": [{"name": "f", "type": "focus", "engine": "athena", "database": "d", "table": "t; DROP"}]}
        )


def test_end_to_end_metrics_and_api_cost(athena: AthenaEmulator, tmp_path: Path) -> None:
    athena.page_size, athena.scanned = 3, 2 * TB
    athena.seed(ROWS + AI_ROWS)
    src = source(athena.url, model_column="x_model", token_type_column="x_tokentype").model_dump(mode="json")
    cfg = parse_config(
        {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "currency_rates": {"EUR": 1.08},
            "sources": [src],
        }
    )
    app = build_app(cfg, now=lambda: NOW)
    try:
        (out,) = app.refresh_all()
        assert out.ok, out.error
        text = app.exposition()
    finally:
        app.close()
    # the newest complete day is 2026-11-20: EUR 10 at 1.08 plus three USD lines
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("spend_cost_daily_usd{")
    }
    assert sum(samples.values()) == pytest.approx(10.00 * 1.08 - 2.50 + 2.00)
    assert 'spend_exporter_api_cost_usd_total{source="focus-athena"} 10.0' in text
    assert 'operation="GetQueryResults",status="success"} 4.0' in text  # header + 10 rows in pages of 3
    tokens = {
        s.labels["token_type"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "spend_ai_tokens_month_to_date"
        for s in f.samples
    }
    assert tokens == {"input": 1100.0, "output": 200.0, "cache_read": 50.0, "cache_write": 0.0}
    assert 'spend_ai_requests_month_to_date{provider="openai",account_id="proj_a"' in text
    assert 'model="gpt-4o"' in text


def test_extra_labels_are_columns_of_the_query(athena: AthenaEmulator) -> None:
    """attribution.labels: one more column per label, from the tags map, grouped by; its values on the records."""
    columns = [*athena_columns(), "label_0", "label_1"]
    athena.seed(
        [
            (*ROWS[0], "prod", "acme"),
            (*ROWS[0][:6], "", None, None, None, "2.25", None, "prod", ROWS[0][-1], "staging", None),
            (*ROWS[0][:6], "", None, None, None, "1.00", None, "prod", ROWS[0][-1], None, None),
        ],
        columns=columns,
    )
    labels = [("environment", ["env", "environment"]), ("customer_id", ["customer"]), ("cost_center", [])]
    ctx = ProviderContext("athena", on_call=Calls().on_call, extra_labels=labels)
    result = FocusProvider(source(athena.url), ctx).fetch(WINDOW)
    got = {c.labels: c.amount for c in result.costs}
    assert got == {
        (("environment", "prod"), ("customer_id", "acme")): 120.50,
        (("environment", "staging"),): 2.25,
        (): 1.00,
    }
    (query,) = _queries(athena.url)
    assert "COALESCE(element_at(tags, 'env'), element_at(tags, 'environment')) AS label_0" in query
    assert "COALESCE(element_at(tags, 'customer')) AS label_1" in query and "label_2" not in query
    assert query.endswith("GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12")


def athena_columns() -> list[str]:
    from tests.emulators.athena import COLUMNS

    return list(COLUMNS)
