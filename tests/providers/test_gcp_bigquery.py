"""The GCP billing-export source against the local BigQuery emulator, through google-cloud-bigquery."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from google.api_core.exceptions import BadRequest
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from exporter.config import parse_config
from exporter.model import AccountInfo, FetchResult, FetchWindow
from exporter.providers.base import PaidCallCapReached, ProviderContext, SourceError, Throttled
from exporter.providers.gcp_bigquery import QUERY, GcpBigQueryProvider, billable_bytes, model_from_sku
from exporter.sources.gcp_bigquery import GcpBigQuerySource
from tests.emulators.bigquery import BigQueryEmulator
from tests.emulators.dataset import Dataset, build_dataset
from tests.emulators.server import Fault
from tests.helpers import Calls, assert_to_the_cent, series

TODAY = dt.date(2024, 5, 20)
NOW = dt.datetime(2024, 5, 20, 12, 0, tzinfo=dt.UTC)
WINDOW = FetchWindow(start=dt.date(2024, 4, 1), end=TODAY, now=NOW)
CENT = Decimal("0.01")
TIB = 1 << 40

Key = tuple[dt.date, str, str, str | None, str]  # day, project, service, team label, model


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return build_dataset(TODAY)


@pytest.fixture(scope="module")
def _server(dataset: Dataset) -> Iterator[BigQueryEmulator]:
    emu = BigQueryEmulator(dataset, now=NOW)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def emulator(_server: BigQueryEmulator) -> BigQueryEmulator:
    """The module's emulator, reset: no faults, no requests or jobs, default knobs."""
    _server.clear_faults()
    _server.requests.clear()
    _server.jobs.clear()
    _server.page_size = 1000
    _server.pending_polls = 0
    _server.throttle_status = 403
    return _server


def source(emu: BigQueryEmulator, **overrides: Any) -> GcpBigQuerySource:
    raw: dict[str, Any] = {
        "name": "gcp",
        "type": "gcp_bigquery",
        "table": emu.table,
        "api_endpoint": emu.url,
        "credentials": "anonymous",
        "timeout": "10s",
        "retry_deadline": "1s",
        "retry_base_delay": "10ms",
        "retry_max_delay": "50ms",
    }
    raw.update(overrides)
    src = parse_config({"sources": [raw]}).sources[0]
    assert isinstance(src, GcpBigQuerySource)
    return src


def provider(emu: BigQueryEmulator, check_cap: Any = None, **overrides: Any) -> tuple[GcpBigQueryProvider, Calls]:
    calls = Calls()
    ctx = ProviderContext("gcp", on_call=calls, check_cap=check_cap)
    return GcpBigQueryProvider(source(emu, **overrides), ctx), calls


def got_sums(result: FetchResult) -> dict[Key, Decimal]:
    out: dict[Key, Decimal] = defaultdict(Decimal)
    for c in result.costs:
        assert c.provider == "gcp" and c.currency == "USD"
        out[(c.day, c.account_id, c.service_name, c.team_tag, c.model)] += Decimal(str(c.amount))
    return {k: v.quantize(CENT) for k, v in out.items()}


def want_sums(emu: BigQueryEmulator, start: dt.date, end: dt.date) -> dict[Key, Decimal]:
    return dict(emu.expected(start, end))


def billed_cost(emu: BigQueryEmulator, price: float = 6.25) -> float:
    (job,) = emu.jobs.values()
    return float(job["billed"]) / TIB * price


# --------------------------------------------------------------------------- figures


def test_figures_equal_the_dataset_including_credits(emulator: BigQueryEmulator) -> None:
    p, _ = provider(emulator)
    result = p.fetch(WINDOW)

    want = want_sums(emulator, WINDOW.start, WINDOW.end)
    assert got_sums(result) == want
    # credits are in: the net differs from the gross wherever the dataset has a credit
    credits = [r for r in emulator.dataset.rows("gcp") if r.extra.get("credit") and WINDOW.start <= r.day]
    assert credits and sum(Decimal(r.extra["credit"]) for r in credits) < 0
    assert result.days == WINDOW.days()
    assert result.accounts == [AccountInfo("gcp", "proj-alpha", "Alpha"), AccountInfo("gcp", "proj-beta", "Beta")]
    assert result.data_through == NOW  # today's rows end at the last full hour
    assert {c.team_tag for c in result.costs} == {"search", "payments", None}  # untagged stays None
    p.close()


def test_vertex_ai_rows_keep_their_service_and_name_the_model(emulator: BigQueryEmulator) -> None:
    p, _ = provider(emulator)
    result = p.fetch(WINDOW)

    assert {c.model for c in result.costs if c.service_name == "Vertex AI"} == {"gemini-1.5-pro"}
    assert {c.model for c in result.costs if c.service_name != "Vertex AI"} == {""}


@pytest.mark.parametrize(
    ("sku", "model"),
    [
        ("Gemini 1.5 Pro Text Input - Predictions", "gemini-1.5-pro"),
        ("Gemini 2.0 Flash Lite Input Text Tokens", "gemini-2.0-flash-lite"),
        ("Gemini 2.5 Flash Thinking Output Tokens", "gemini-2.5-flash"),
        ("Generate content input token count Gemini 1.5 Flash short input text", "gemini-1.5-flash"),
        ("Claude 3.5 Sonnet Input Tokens", "claude-3-5-sonnet"),
        ("Claude Sonnet 4 Output Tokens", "claude-sonnet-4"),
        ("Llama 3.1 405B Instruct API Input Tokens", "llama-3.1-405b-instruct"),
        ("Imagen 3 Image Generation", "imagen-3"),
        ("Gemini Input", ""),
        ("Vertex AI: Online Prediction Instance Core", ""),
        ("Analysis", ""),
        ("", ""),
        (None, ""),
    ],
)
def test_model_from_sku(sku: str | None, model: str) -> None:
    assert model_from_sku(sku) == model


# --------------------------------------------------------------------------- the query


def test_one_parameterised_query_bounded_by_partition_and_usage_time(emulator: BigQueryEmulator) -> None:
    p, _ = provider(emulator)
    p.fetch(WINDOW)

    posts = [r for r in emulator.requests if r.method == "POST"]
    assert len(posts) == 2  # the dry run, then the query
    dry, query = (r.json() for r in posts)
    assert dry["dryRun"] is True and "dryRun" not in query
    assert query["query"] == dry["query"] == QUERY.format(table=emulator.table)
    params = {q["name"]: q["parameterValue"] for q in query["queryParameters"]}
    assert params["start_time"] == {"value": "2024-04-01 00:00:00+00:00"}
    assert params["end_time"] == {"value": "2024-05-21 00:00:00+00:00"}
    assert params["partition_start"] == {"value": "2024-03-31 00:00:00+00:00"}  # one day of margin
    assert params["team_key"] == {"value": "team"}
    assert params["ai_services"] == {"arrayValues": [{"value": "Vertex AI"}, {"value": "Gemini API"}]}
    assert query["useLegacySql"] is False and query["parameterMode"] == "NAMED"


def test_emulator_rejects_a_query_without_the_partition_filter(emulator: BigQueryEmulator) -> None:
    unbounded = QUERY.format(table=emulator.table).replace("_PARTITIONTIME >= @partition_start\n    AND ", "")
    assert "_PARTITIONTIME" not in unbounded
    client = bigquery.Client(
        project="billing-admin", credentials=AnonymousCredentials(), client_options={"api_endpoint": emulator.url}
    )
    p, _ = provider(emulator)
    config = bigquery.QueryJobConfig(query_parameters=p._params(WINDOW))
    with pytest.raises(BadRequest, match=r"without a filter over column\(s\) '_PARTITIONTIME'"):
        client.query(unbounded, job_config=config, api_method="QUERY", job_retry=None)
    client.close()


def test_the_partition_margin_keeps_the_first_days_rows(emulator: BigQueryEmulator) -> None:
    # the first export of a UTC day lands in the previous (Pacific) day's partition
    p, _ = provider(emulator, partition_margin_days=0)
    got = got_sums(p.fetch(WINDOW))
    want = want_sums(emulator, WINDOW.start, WINDOW.end)
    assert {k for k in want if k[0] == WINDOW.start} and not {k for k in got if k[0] == WINDOW.start}
    assert got == {k: v for k, v in want.items() if k[0] != WINDOW.start}


def test_the_cost_of_the_query_is_its_bytes_billed(emulator: BigQueryEmulator) -> None:
    p, calls = provider(emulator, price_usd_per_tib=5.0)
    p.fetch(WINDOW)

    cost = billed_cost(emulator, price=5.0)
    assert cost > 0
    assert ("jobs.query", "success", cost) in calls.calls
    assert [op for op, _, c in calls.calls if c > 0] == ["jobs.query"]
    assert calls.ops() == [("jobs.query.dryRun", "success"), ("jobs.get", "success"), ("jobs.query", "success")]


def test_a_shorter_window_scans_fewer_bytes(emulator: BigQueryEmulator) -> None:
    p, _ = provider(emulator)
    p.fetch(WINDOW)
    long_job = next(iter(emulator.jobs.values()))
    emulator.jobs.clear()
    p.fetch(FetchWindow(start=TODAY - dt.timedelta(days=3), end=TODAY, now=NOW))
    short_job = next(iter(emulator.jobs.values()))

    assert short_job["processed"] < long_job["processed"] / 5
    expected_rows = sum(
        1
        for r in emulator.dataset.rows("gcp")
        if emulator.partition_of(r) >= dt.datetime.combine(TODAY - dt.timedelta(days=4), dt.time(), tzinfo=dt.UTC)
    )
    assert short_job["processed"] == expected_rows * emulator.bytes_per_row
    assert short_job["billed"] == billable_bytes(short_job["processed"])


def test_the_dry_run_estimate_is_checked_against_the_paid_call_cap(emulator: BigQueryEmulator) -> None:
    asked: list[float] = []

    def cap(cost: float) -> None:
        asked.append(cost)
        raise PaidCallCapReached("paid-call cap reached")

    p, calls = provider(emulator, check_cap=cap)
    with pytest.raises(PaidCallCapReached):
        p.fetch(WINDOW)
    assert len(asked) == 1 and asked[0] > 0
    assert emulator.jobs == {}  # the billed query never ran
    assert calls.ops() == [("jobs.query.dryRun", "success")]


def test_maximum_bytes_billed_is_enforced_and_a_refused_query_costs_nothing(emulator: BigQueryEmulator) -> None:
    p, calls = provider(emulator, maximum_bytes_billed=1024)
    with pytest.raises(SourceError, match="bytesBilledLimitExceeded"):
        p.fetch(WINDOW)
    assert ("jobs.query", "error", 0.0) in calls.calls


# --------------------------------------------------------------------------- paging and waiting


def test_pages_through_get_query_results(emulator: BigQueryEmulator) -> None:
    emulator.page_size = 150
    p, calls = provider(emulator)
    result = p.fetch(WINDOW)

    pages = [r for r in emulator.requests if r.method == "GET" and "/queries/" in r.path]
    assert len(pages) >= 2  # with the first page from jobs.query: at least 3 pages
    assert all(r.q("pageToken") for r in pages)
    assert calls.ops().count(("jobs.getQueryResults", "success")) == len(pages)
    assert got_sums(result) == want_sums(emulator, WINDOW.start, WINDOW.end)


def test_waits_for_a_job_that_is_not_done_yet(emulator: BigQueryEmulator) -> None:
    emulator.pending_polls = 3
    emulator.page_size = 400
    p, calls = provider(emulator)
    result = p.fetch(WINDOW)

    assert got_sums(result) == want_sums(emulator, WINDOW.start, WINDOW.end)
    assert any(r.path.endswith("/jobs/" + next(iter(emulator.jobs))) for r in emulator.requests)
    assert calls.calls[2] == ("jobs.query", "success", billed_cost(emulator))


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("status", [403, 429])
def test_throttling_is_retried_then_succeeds(emulator: BigQueryEmulator, status: int) -> None:
    emulator.throttle_status = status
    emulator.inject(Fault("throttle", times=2))
    p, calls = provider(emulator)
    result = p.fetch(WINDOW)

    assert got_sums(result) == want_sums(emulator, WINDOW.start, WINDOW.end)
    assert calls.ops()[0] == ("jobs.query.dryRun", "success")
    assert sum(1 for r in emulator.requests if r.method == "POST") == 4  # two throttled, dry run, query


@pytest.mark.parametrize("status", [403, 429])
def test_throttling_that_does_not_stop_raises_throttled(emulator: BigQueryEmulator, status: int) -> None:
    emulator.throttle_status = status
    emulator.inject(Fault("throttle", times=-1))
    p, calls = provider(emulator)

    with pytest.raises(Throttled, match="rateLimitExceeded"):
        p.fetch(WINDOW)
    assert calls.ops() == [("jobs.query.dryRun", "throttled")]


@pytest.mark.parametrize("kind", ["500", "503"])
def test_server_errors_raise(emulator: BigQueryEmulator, kind: str) -> None:
    emulator.inject(Fault(kind, times=-1))
    p, _ = provider(emulator)
    with pytest.raises(SourceError, match=kind):
        p.fetch(WINDOW)


def test_a_failing_later_page_fails_the_whole_fetch_and_the_query_is_still_charged(emulator: BigQueryEmulator) -> None:
    emulator.page_size = 150
    emulator.inject(Fault("503", path_contains="/queries/", after=1, times=-1))
    p, calls = provider(emulator)

    with pytest.raises(SourceError, match="reading results"):
        p.fetch(WINDOW)
    assert ("jobs.query", "success", billed_cost(emulator)) in calls.calls
    assert calls.ops()[-1] == ("jobs.getQueryResults", "error")


def test_timeout_raises(emulator: BigQueryEmulator) -> None:
    emulator.inject(Fault("timeout", delay=2.0, times=-1))
    p, _ = provider(emulator, timeout="300ms", retry_deadline="500ms")
    with pytest.raises(SourceError, match="timed out"):
        p.fetch(WINDOW)


@pytest.mark.parametrize("kind", ["malformed", "wrong_shape"])
@pytest.mark.parametrize(
    ("where", "after", "op"),
    [("/queries", 1, "jobs.query"), ("/jobs/", 0, "jobs.get"), ("/queries/", 0, "jobs.getQueryResults")],
)
def test_malformed_bodies_raise_source_error(
    emulator: BigQueryEmulator, kind: str, where: str, after: int, op: str
) -> None:
    emulator.page_size = 150
    emulator.inject(Fault(kind, path_contains=where, after=after))
    p, calls = provider(emulator)
    with pytest.raises(SourceError, match=r"malformed response|unexpected shape"):
        p.fetch(WINDOW)
    assert (op, "error") in calls.ops()


def test_wrong_table_is_an_error_not_empty_data(emulator: BigQueryEmulator) -> None:
    p, _ = provider(emulator, table="billing-admin.billing_export.other_table")
    with pytest.raises(SourceError, match="400 invalidQuery"):
        p.fetch(WINDOW)


# --------------------------------------------------------------------------- through the engine


def test_metrics_equal_the_dataset_then_keep_last_good_data_while_the_api_fails(
    emulator: BigQueryEmulator, tmp_path: Path
) -> None:
    from exporter.app import build_app

    emulator.page_size = 300
    cfg = parse_config(
        {"cache_path": str(tmp_path / "cache.sqlite"), "sources": [source(emulator).model_dump(mode="json")]}
    )
    app = build_app(cfg, now=lambda: NOW)
    try:
        assert app.refresh_all()[0].ok
        text = app.exposition()
        mtd = series(text, "spend_cost_month_to_date_usd")
        want: dict[tuple[tuple[str, str], ...], Decimal] = defaultdict(Decimal)
        for (_day, project, service, team, model), amount in emulator.expected(TODAY.replace(day=1), TODAY).items():
            labels = {
                "provider": "gcp",
                "account_id": project,
                "service_name": service,
                "team": team or "unallocated",
                "model": model,
            }
            want[tuple(sorted(labels.items()))] += amount
        assert {k: Decimal(str(v)).quantize(CENT) for k, v in mtd.items()} == dict(want)
        assert series(text, "spend_exporter_source_up") == {(("provider", "gcp"), ("source", "gcp")): 1.0}
        api_cost = series(text, "spend_exporter_api_cost_usd_total")
        assert api_cost == {(("source", "gcp"),): pytest.approx(billed_cost(emulator), abs=1e-6)}
        assert series(text, "spend_account_info") == {
            (("account_id", "proj-alpha"), ("account_name", "Alpha"), ("provider", "gcp")): 1.0,
            (("account_id", "proj-beta"), ("account_name", "Beta"), ("provider", "gcp")): 1.0,
        }

        emulator.inject(Fault("500", times=-1))
        out = app.refresh_all()
        assert not out[0].ok
        text = app.exposition()
        assert series(text, "spend_exporter_source_up") == {(("provider", "gcp"), ("source", "gcp")): 0.0}
        assert series(text, "spend_cost_month_to_date_usd") == mtd

        emulator.clear_faults()
        assert app.refresh_all()[0].ok
        text = app.exposition()
        assert series(text, "spend_exporter_source_up") == {(("provider", "gcp"), ("source", "gcp")): 1.0}
        assert series(text, "spend_cost_month_to_date_usd") == mtd
    finally:
        app.close()


# --------------------------------------------------------------------------- extra labels


def test_extra_labels_from_the_labels_array_to_the_cent(emulator: BigQueryEmulator) -> None:
    calls = Calls()
    labels = [("environment", ["env", "environment"]), ("customer_id", ["customer"]), ("cost_center", [])]
    p = GcpBigQueryProvider(source(emulator), ProviderContext("gcp", on_call=calls, extra_labels=labels))
    result = p.fetch(WINDOW)
    want: dict[tuple[str, str, str, str], Decimal] = defaultdict(Decimal)
    for r in emulator.dataset.rows("gcp"):
        if WINDOW.start <= r.day <= WINDOW.end:
            key = (r.account_id, r.service_name, r.extra.get("tag:environment", ""), r.extra.get("tag:customer", ""))
            want[key] += r.amount + Decimal(r.extra.get("credit", "0"))
    got: dict[tuple[str, str, str, str], Decimal] = defaultdict(Decimal)
    for c in result.costs:
        d = dict(c.labels)
        assert "cost_center" not in d  # set by rules only: no column
        got[(c.account_id, c.service_name, d.get("environment", ""), d.get("customer_id", ""))] += Decimal(
            str(c.amount)
        )
    assert_to_the_cent(dict(got), dict(want))
    # one query, as without labels: the labels are more columns of it
    (job,) = emulator.jobs.values()
    assert "@label_0_1" in job["query"] and "AS label_1" in job["query"] and "label_2" not in job["query"]
    p.close()
