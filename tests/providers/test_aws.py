"""AWS Cost Explorer provider: the real boto3 client against the local emulator (and moto's server)."""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from exporter.config import parse_config
from exporter.model import FetchResult, FetchWindow
from exporter.providers.aws import AwsProvider, bedrock_edition_model, bedrock_model
from exporter.providers.base import PaidCallCapReached, ProviderContext, SourceError, Throttled
from exporter.sources.aws import AwsSource
from tests.emulators.aws_ce import AwsCostExplorerEmulator, CostExplorerData
from tests.emulators.dataset import CloudRow, Dataset, build_dataset
from tests.emulators.server import Fault
from tests.helpers import (
    Calls,
    assert_allocation,
    assert_to_the_cent,
    month_to_date,
    series,
    use_static_aws_credentials,
)

TODAY = dt.date(2026, 11, 21)
NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
WINDOW = FetchWindow(start=dt.date(2026, 10, 1), end=TODAY, now=NOW)
ACCESS_KEY = "AKIATESTSPENDEXPORTER"
SECRET_KEY = "test-only-secret-key-0123456789abcdef"
CALLER = "111111111111"
CENT = Decimal("0.01")


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_static_aws_credentials(monkeypatch, tmp_path, ACCESS_KEY, SECRET_KEY, region="us-east-1")


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return build_dataset(TODAY)


@pytest.fixture
def emu(dataset: Dataset) -> Iterator[AwsCostExplorerEmulator]:
    e = AwsCostExplorerEmulator(dataset, page_size=100, caller_account=CALLER, access_key_id=ACCESS_KEY)
    with e:
        yield e


class Accounting(Calls):
    """The engine's side of ProviderContext: counts calls and enforces the daily paid-call cap."""

    def __init__(self, cap: float | None = None) -> None:
        super().__init__()
        self.cap = cap

    def check_cap(self, cost: float) -> None:
        if self.cap is not None and self.spent + cost > self.cap + 1e-9:
            raise PaidCallCapReached(f"paid-call cap ${self.cap:.2f} reached")

    def ctx(self) -> ProviderContext:
        return ProviderContext("aws", on_call=self.on_call, check_cap=self.check_cap)


def source(url: str, **overrides: Any) -> AwsSource:
    raw: dict[str, Any] = {
        "name": "aws",
        "type": "aws",
        "endpoint_url": url,
        "throttle_backoff": "10ms",
        "throttle_max_wait": "50ms",
        "timeout": "10s",
        **overrides,
    }
    cfg = parse_config({"sources": [raw]}).sources[0]
    assert isinstance(cfg, AwsSource)
    return cfg


def provider(url: str, acc: Accounting | None = None, **overrides: Any) -> AwsProvider:
    return AwsProvider(source(url, **overrides), (acc or Accounting()).ctx())


# -- expected figures, straight from the dataset --------------------------------------------------------

Key = tuple[dt.date, str, str, str | None, str]  # day, account, service, team, model


def expected(
    rows: list[CloudRow],
    window: FetchWindow,
    *,
    include_credits: bool = False,
    account: Callable[[CloudRow], str] = lambda r: r.account_id,
) -> dict[Key, Decimal]:
    out: dict[Key, Decimal] = defaultdict(Decimal)
    for r in rows:
        if not window.start <= r.day <= window.end:
            continue
        if not include_credits and r.extra.get("record_type") in ("Credit", "Refund"):
            continue
        out[(r.day, account(r), r.service_name, r.team, r.model)] += r.amount
    return dict(out)


def actual(result: FetchResult) -> dict[Key, Decimal]:
    out: dict[Key, Decimal] = defaultdict(Decimal)
    for c in result.costs:
        assert c.provider == "aws"
        assert c.currency == "USD"
        out[(c.day, c.account_id, c.service_name, c.team_tag, c.model)] += Decimal(str(c.amount))
    return dict(out)


def rollup(figures: dict[Key, Decimal]) -> dict[tuple[str, str, str | None], Decimal]:
    out: dict[tuple[str, str, str | None], Decimal] = defaultdict(Decimal)
    for (_, acct, svc, team, _), v in figures.items():
        out[(acct, svc, team)] += v
    return dict(out)


# -- figures ---------------------------------------------------------------------------------------------


def test_linked_accounts_figures_to_the_cent(emu: AwsCostExplorerEmulator, dataset: Dataset) -> None:
    acc = Accounting()
    result = provider(emu.url, acc, group_by_account=True).fetch(WINDOW)

    want = expected(dataset.rows("aws"), WINDOW)
    assert_to_the_cent(actual(result), want)
    assert_to_the_cent(rollup(actual(result)), rollup(want))
    assert result.days == WINDOW.days()
    assert result.data_through == NOW
    assert {(a.account_id, a.account_name) for a in result.accounts} == {
        ("111111111111", "prod"),
        ("222222222222", "staging"),
    }
    # untagged cost keeps no team; Bedrock rows carry the model named by their usage type
    assert any(c.team_tag is None for c in result.costs)
    assert {c.model for c in result.costs if c.service_name == "Amazon Bedrock"} == {"anthropic.claude-3-5-sonnet"}
    assert {c.model for c in result.costs if c.service_name != "Amazon Bedrock"} == {""}

    # one query per account, each followed across >= 3 pages, every request counted at $0.01
    bodies = emu.bodies("GetCostAndUsage")
    per_account = Counter(
        json.dumps(b["Filter"]["And"][0])
        for b in bodies
        if b["GroupBy"][0]["Key"] == "SERVICE" and "And" in b["Filter"]
    )
    assert len(per_account) == 2 and all(n >= 3 for n in per_account.values()), per_account
    assert sum(1 for b in bodies if "NextPageToken" in b) >= 4
    ce_calls = [c for c in acc.calls if c[0] != "GetCallerIdentity"]
    assert len(ce_calls) == len(emu.requests)
    assert all(status == "success" and cost == 0.01 for _, status, cost in ce_calls)
    assert "GetCallerIdentity" not in emu.operations()


def test_tag_group_and_filters_are_sent_as_cost_explorer_expects(emu: AwsCostExplorerEmulator) -> None:
    provider(emu.url, group_by_account=True, team_tag_key="team", cost_metric="AmortizedCost").fetch(WINDOW)
    first = emu.bodies("GetCostAndUsage")[0]
    assert first["Granularity"] == "DAILY"
    assert first["Metrics"] == ["AmortizedCost"]
    assert first["TimePeriod"] == {"Start": "2026-10-01", "End": "2026-11-22"}  # End is exclusive
    assert first["GroupBy"] == [{"Type": "DIMENSION", "Key": "SERVICE"}, {"Type": "TAG", "Key": "team"}]
    assert {"Not": {"Dimensions": {"Key": "RECORD_TYPE", "Values": ["Credit", "Refund"]}}} in first["Filter"]["And"]
    assert all(r.headers["x-amz-target"].startswith("AWSInsightsIndexService.") for r in emu.requests)
    assert all(r.headers["content-type"].startswith("application/x-amz-json-1.1") for r in emu.requests)


@pytest.mark.parametrize("include_credits", [False, True])
def test_include_credits_both_ways(emu: AwsCostExplorerEmulator, dataset: Dataset, include_credits: bool) -> None:
    result = provider(emu.url, account_id=CALLER, include_credits=include_credits, forecast=False).fetch(WINDOW)
    want = expected(dataset.rows("aws"), WINDOW, include_credits=include_credits, account=lambda r: CALLER)
    assert_to_the_cent(actual(result), want)
    credits = [r for r in dataset.rows("aws") if r.extra["record_type"] == "Credit" and WINDOW.start <= r.day]
    assert credits, "the dataset must have credits in the window for this test to mean anything"
    ec2_search = sum(
        (Decimal(str(c.amount)) for c in result.costs if c.service_name.endswith("Compute") and c.team_tag == "search"),
        Decimal(0),
    )
    without = sum(
        (
            r.amount
            for r in dataset.rows("aws")
            if WINDOW.start <= r.day and r.service_name.endswith("Compute") and r.team == "search"
            if r.extra["record_type"] == "Usage"
        ),
        Decimal(0),
    )
    delta = sum((r.amount for r in credits), Decimal(0)) if include_credits else Decimal(0)
    assert ec2_search.quantize(CENT) == (without + delta).quantize(CENT)
    body = emu.bodies("GetCostAndUsage")[0]
    assert ("Filter" in body) is not include_credits


def test_account_from_sts_when_not_configured(emu: AwsCostExplorerEmulator, dataset: Dataset) -> None:
    p = provider(emu.url, forecast=False)
    first = p.fetch(WINDOW)
    p.fetch(WINDOW)
    assert {c.account_id for c in first.costs} == {CALLER}
    assert emu.operations().count("GetCallerIdentity") == 1  # asked once per process
    assert_to_the_cent(actual(first), expected(dataset.rows("aws"), WINDOW, account=lambda r: CALLER))


def test_linked_accounts_are_discovered_once_a_day(emu: AwsCostExplorerEmulator) -> None:
    p = provider(emu.url, group_by_account=True, forecast=False)
    p.fetch(WINDOW)
    p.fetch(FetchWindow(TODAY - dt.timedelta(days=3), TODAY, NOW + dt.timedelta(hours=6)))
    assert emu.operations().count("GetDimensionValues") == 1
    p.fetch(FetchWindow(TODAY - dt.timedelta(days=3), TODAY, NOW + dt.timedelta(hours=25)))
    assert emu.operations().count("GetDimensionValues") == 2


# -- the provider's forecast ----------------------------------------------------------------------


def forecast_expected(dataset: Dataset, account: str | None, remaining_days: int) -> Decimal:
    last7 = [
        r
        for r in dataset.rows("aws")
        if TODAY - dt.timedelta(days=7) <= r.day < TODAY
        and r.extra["record_type"] == "Usage"
        and (account is None or r.account_id == account)
    ]
    return sum((r.amount for r in last7), Decimal(0)) / 7 * remaining_days


def test_provider_forecast_for_the_rest_of_the_month(emu: AwsCostExplorerEmulator, dataset: Dataset) -> None:
    result = provider(emu.url, group_by_account=True).fetch(WINDOW)
    assert result.forecasts is not None
    got = {f.account_id: f for f in result.forecasts}
    assert set(got) == {"111111111111", "222222222222"}
    for account, f in got.items():
        assert f.currency == "USD"
        want = forecast_expected(dataset, account, remaining_days=9)  # 22..30 November
        assert Decimal(str(f.remaining_amount)).quantize(CENT) == want.quantize(CENT)
    body = emu.bodies("GetCostForecast")[0]
    assert body["TimePeriod"] == {"Start": "2026-11-22", "End": "2026-12-01"}
    assert body["Metric"] == "UNBLENDED_COST"


def test_no_forecast_call_when_no_day_remains(dataset: Dataset) -> None:
    last_day = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)
    ds = build_dataset(last_day.date())
    e = AwsCostExplorerEmulator(ds, page_size=500)
    with e:
        result = provider(e.url, account_id=CALLER).fetch(FetchWindow(dt.date(2026, 11, 1), last_day.date(), last_day))
        assert "GetCostForecast" not in e.operations()
    assert result.forecasts is not None
    assert [(f.account_id, f.remaining_amount) for f in result.forecasts] == [(CALLER, 0.0)]


def test_no_forecast_without_history_is_not_a_failure(dataset: Dataset) -> None:
    young = Dataset(today=TODAY, cloud=[r for r in dataset.cloud if r.provider == "aws" and r.day == TODAY])
    e = AwsCostExplorerEmulator(young)
    with e:
        result = provider(e.url, account_id=CALLER).fetch(FetchWindow(TODAY, TODAY, NOW))
    assert result.forecasts == []
    assert result.costs


# -- throttling, failures, the paid-call cap ------------------------------------------------------


def test_throttling_then_success(emu: AwsCostExplorerEmulator, dataset: Dataset) -> None:
    emu.inject(Fault("throttle", times=2, after=1))  # the second and third requests are throttled
    acc = Accounting()
    result = provider(emu.url, acc, account_id=CALLER, forecast=False).fetch(WINDOW)
    assert_to_the_cent(actual(result), expected(dataset.rows("aws"), WINDOW, account=lambda r: CALLER))
    assert [s for _, s, _ in acc.calls].count("throttled") == 2
    assert all(cost == 0.01 for _, _, cost in acc.calls)  # Cost Explorer bills throttled requests too


def test_throttled_until_retries_run_out(emu: AwsCostExplorerEmulator) -> None:
    emu.inject(Fault("throttle", times=-1))
    acc = Accounting()
    with pytest.raises(Throttled, match="LimitExceededException"):
        provider(emu.url, acc, account_id=CALLER, throttle_retries=2).fetch(WINDOW)
    assert len(emu.requests) == 3
    assert [s for _, s, _ in acc.calls] == ["throttled"] * 3


@pytest.mark.parametrize("kind", ["500", "503"])
def test_server_error_mid_pagination_raises(emu: AwsCostExplorerEmulator, kind: str) -> None:
    emu.inject(Fault(kind, after=1))
    with pytest.raises(SourceError, match=f"GetCostAndUsage failed: HTTP {kind}"):
        provider(emu.url, account_id=CALLER).fetch(WINDOW)


def test_timeout_raises(emu: AwsCostExplorerEmulator) -> None:
    emu.inject(Fault("timeout", delay=3.0, after=1))
    with pytest.raises(SourceError, match=r"GetCostAndUsage failed: .*[Tt]imeout"):
        provider(emu.url, account_id=CALLER, timeout="1s").fetch(WINDOW)


def test_connection_reset_raises(emu: AwsCostExplorerEmulator) -> None:
    emu.inject(Fault("reset", after=2))
    with pytest.raises(SourceError, match="GetCostAndUsage failed"):
        provider(emu.url, account_id=CALLER).fetch(WINDOW)


@pytest.mark.parametrize("kind", ["malformed", "wrong_shape"])
def test_malformed_bodies_raise(emu: AwsCostExplorerEmulator, kind: str) -> None:
    emu.inject(Fault(kind, after=1))
    with pytest.raises(SourceError, match="malformed"):
        provider(emu.url, account_id=CALLER).fetch(WINDOW)


def test_bad_credentials_raise_without_leaking_the_secret(emu: AwsCostExplorerEmulator) -> None:
    emu.access_key_id = "AKIASOMEONEELSE"
    acc = Accounting()
    with pytest.raises(SourceError) as info:
        provider(emu.url, acc, account_id=CALLER).fetch(WINDOW)
    assert "HTTP 403" in str(info.value)
    assert SECRET_KEY not in str(info.value)


def test_secret_key_is_registered_for_scrubbing(emu: AwsCostExplorerEmulator) -> None:
    acc = Accounting()
    ctx = acc.ctx()
    AwsProvider(source(emu.url, account_id=CALLER, forecast=False), ctx).fetch(WINDOW)
    assert ctx.scrub(f"oops {SECRET_KEY}") == "oops <redacted>"


def test_paid_call_cap_stops_calls(emu: AwsCostExplorerEmulator) -> None:
    acc = Accounting(cap=0.05)
    with pytest.raises(PaidCallCapReached):
        provider(emu.url, acc, group_by_account=True).fetch(WINDOW)
    assert len(emu.requests) == 5  # the sixth request was never sent
    assert acc.spent == pytest.approx(0.05)


# -- Bedrock model names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage_type", "model"),
    [
        ("USE1-Claude3.5Sonnet-input-tokens", "anthropic.claude-3-5-sonnet"),
        ("USE1-Claude3.5Sonnet-output-tokens", "anthropic.claude-3-5-sonnet"),
        ("USW2-Claude3Haiku-cache-read-input-token-count", "anthropic.claude-3-haiku"),
        ("EUC1-NovaPro-batch-input-tokens", "amazon.nova-pro"),
        ("USE1-Llama3-70B-Instruct-output-tokens", "meta.llama-3-70b-instruct"),
        ("USE1-MistralLarge-input-tokens", "mistral.mistral-large"),
        ("USE1-TitanEmbeddingsG1-Text-input-tokens", "amazon.titan-embeddings-g1-text"),
        ("USE1-ProvisionedThroughput-Claude-Hours", ""),
        ("USE1-ModelStorage", ""),
    ],
)
def test_bedrock_usage_type_to_model(usage_type: str, model: str) -> None:
    assert bedrock_model(usage_type) == model


def test_bedrock_edition_service_to_model() -> None:
    assert bedrock_edition_model("Claude 3.5 Sonnet (Amazon Bedrock Edition)") == "anthropic.claude-3-5-sonnet"
    assert bedrock_edition_model("Amazon Bedrock") == ""


# -- the same provider test against moto's server, a peer's emulator -------------------------------


@pytest.fixture
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10).read()
    try:
        yield url
    finally:
        server.stop()


def seed_moto(url: str, results: list[dict[str, Any]]) -> None:
    req = urllib.request.Request(
        f"{url}/moto-api/static/ce/cost-and-usage-results",
        data=json.dumps({"results": results}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201


@pytest.mark.parametrize("backend", ["emulator", "moto"])
def test_payer_view_figures_to_the_cent(backend: str, request: pytest.FixtureRequest, dataset: Dataset) -> None:
    """One provider test, two servers: ours, and moto's replaying the answers we seed in order."""
    if backend == "emulator":
        emulator = request.getfixturevalue("emu")
        url, caller = emulator.url, CALLER
    else:
        url, caller = request.getfixturevalue("moto_url"), "123456789012"  # moto's default account
        data = CostExplorerData(dataset, page_size=100)
        period = {"Start": "2026-10-01", "End": "2026-11-22"}
        not_credits = {"Not": {"Dimensions": {"Key": "RECORD_TYPE", "Values": ["Credit", "Refund"]}}}
        tag = {"Type": "TAG", "Key": "team"}
        base = {"TimePeriod": period, "Granularity": "DAILY", "Metrics": ["UnblendedCost"]}
        main = data.cost_and_usage_pages(
            {**base, "GroupBy": [{"Type": "DIMENSION", "Key": "SERVICE"}, tag], "Filter": not_credits}
        )
        bedrock_filter = {"And": [{"Dimensions": {"Key": "SERVICE", "Values": ["Amazon Bedrock"]}}, not_credits]}
        bedrock = data.cost_and_usage_pages(
            {**base, "GroupBy": [{"Type": "DIMENSION", "Key": "USAGE_TYPE"}, tag], "Filter": bedrock_filter}
        )
        assert len(main) >= 3
        seed_moto(url, main + bedrock)

    acc = Accounting()
    p = provider(url, acc, forecast=False)
    result = p.fetch(WINDOW)

    want = expected(dataset.rows("aws"), WINDOW, account=lambda r: caller)
    assert_to_the_cent(actual(result), want)
    assert {c.model for c in result.costs if c.service_name == "Amazon Bedrock"} == {"anthropic.claude-3-5-sonnet"}
    ops = acc.op_counts()
    assert ops["GetCallerIdentity"] == 1
    assert ops["GetCostAndUsage"] >= 4  # >= 3 pages of the main query and the Bedrock breakdown
    assert acc.spent == pytest.approx(0.01 * ops["GetCostAndUsage"])


# -- through the engine: build_app, /metrics, last good data ---------------------------------------


def test_metrics_through_the_engine_and_last_good_data(
    emu: AwsCostExplorerEmulator, dataset: Dataset, tmp_path: Path
) -> None:
    from exporter.app import build_app

    cfg = parse_config(
        {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "sources": [
                {
                    "name": "aws",
                    "type": "aws",
                    "endpoint_url": emu.url,
                    "group_by_account": True,
                    "throttle_backoff": "10ms",
                    "timeout": "20s",
                }
            ],
        }
    )
    month = FetchWindow(TODAY.replace(day=1), TODAY, NOW)
    want: dict[tuple[str, str, str, str], Decimal] = defaultdict(Decimal)
    for (_, acct, svc, team, model), v in expected(dataset.rows("aws"), month).items():
        want[(acct, svc, team or "unallocated", model)] += v

    app = build_app(cfg, now=lambda: NOW)
    try:
        assert all(o.ok for o in app.refresh_all())
        text = app.exposition()
        got = month_to_date(text, "aws")
        assert set(got) == set(want)
        assert all(abs(got[k] - float(want[k])) < 0.005 for k in want), "month-to-date differs from the dataset"
        up = series(text, "spend_exporter_source_up")
        assert up[(("provider", "aws"), ("source", "aws"))] == 1
        forecast = series(text, "spend_provider_forecast_month_end_usd")
        for account in ("111111111111", "222222222222"):
            mtd = sum((v for k, v in want.items() if k[0] == account), Decimal(0))
            total = mtd + forecast_expected(dataset, account, remaining_days=9)
            assert abs(forecast[(("account_id", account), ("provider", "aws"))] - float(total)) < 0.01
        cost = series(text, "spend_exporter_api_cost_usd_total")
        assert cost[(("source", "aws"),)] == pytest.approx(0.01 * len(emu.requests))

        # Cost Explorer fails: the last good figures stay, the source is down
        emu.inject(Fault("503", times=-1))
        assert not any(o.ok for o in app.refresh_all())
        text = app.exposition()
        assert month_to_date(text, "aws") == got
        assert series(text, "spend_exporter_source_up")[(("provider", "aws"), ("source", "aws"))] == 0

        # and recovers
        emu.clear_faults()
        assert all(o.ok for o in app.refresh_all())
        text = app.exposition()
        assert month_to_date(text, "aws") == got
        assert series(text, "spend_exporter_source_up")[(("provider", "aws"), ("source", "aws"))] == 1
    finally:
        app.close()


# -- shared-cost pools through the engine ---------------------------------------------------------------

POOLS: list[dict[str, Any]] = [
    {"name": "storage", "match": {"service_name": "Amazon Simple Storage Service"}},  # proportional
    # the staging account's S3 is in "storage" already: the first pool that matches takes an item
    {"name": "staging", "match": {"account_id": "222222222222"}, "split": "even"},
    {
        "name": "lambda",
        "match": {"service_name": "AWS Lambda", "team": "search"},
        "split": "weights",
        "weights": {"payments": 3, "ml": 1},
        "to_teams": ["payments", "ml"],  # ml has no direct spend: weights give it a share all the same
    },
]


def test_shared_pools_split_the_datasets_cost_to_the_cent(
    emu: AwsCostExplorerEmulator, dataset: Dataset, tmp_path: Path
) -> None:
    from exporter.app import build_app

    cfg = parse_config(
        {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "sources": [{"name": "aws", "type": "aws", "endpoint_url": emu.url, "group_by_account": True}],
            "allocation": {"shared": POOLS},
        }
    )
    month_start = TODAY.replace(day=1)
    prev_start = (month_start - dt.timedelta(days=1)).replace(day=1)
    periods = {
        "month_to_date": FetchWindow(month_start, TODAY, NOW),
        "previous_month": FetchWindow(prev_start, month_start - dt.timedelta(days=1), NOW),
    }
    app = build_app(cfg, now=lambda: NOW)
    try:
        assert all(o.ok for o in app.refresh_all())
        text = app.exposition()
        for period, window in periods.items():
            items: dict[tuple[str, str, str, str, str], Decimal] = defaultdict(Decimal)
            for (_, acct, svc, team, model), v in expected(dataset.rows("aws"), window).items():
                items[("aws", acct, svc, team or "unallocated", model)] += v
            assert_allocation(text, items, POOLS, period)
    finally:
        app.close()


# -- extra labels (attribution.labels) ------------------------------------------------------------------------


def test_extra_labels_split_exactly_and_reach_the_metrics(
    emu: AwsCostExplorerEmulator, dataset: Dataset, tmp_path: Path
) -> None:
    """Two labels from tags (one with two tag keys): every cell to the cent, and the requests counted are the
    ones docs/providers/aws.md says: one GetTags per tag key and (values + 1) x (values + 1) queries, twice with
    Bedrock, per account."""
    from exporter.app import build_app

    cfg = parse_config(
        {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "attribution": {
                "labels": [
                    {"name": "environment", "tag_keys": ["env", "environment"]},
                    {"name": "customer_id", "tag_keys": ["customer"]},
                ],
            },
            "sources": [
                {"name": "aws", "type": "aws", "endpoint_url": emu.url, "forecast": False, "timeout": "20s"},
            ],
        }
    )
    month = FetchWindow(TODAY.replace(day=1), TODAY, NOW)
    want: dict[tuple[str, str, str, str, str], Decimal] = defaultdict(Decimal)
    for r in dataset.rows("aws"):
        if month.start <= r.day <= month.end and r.extra.get("record_type") not in ("Credit", "Refund"):
            env, customer = r.extra.get("tag:environment", ""), r.extra.get("tag:customer", "")
            want[(CALLER, r.service_name, r.team or "unallocated", env, customer)] += r.amount
    app = build_app(cfg, now=lambda: NOW)
    try:
        assert all(o.ok for o in app.refresh_all())
        got: dict[tuple[str, str, str, str, str], Decimal] = defaultdict(Decimal)
        for labels, v in series(app.exposition(), "spend_cost_month_to_date_usd").items():
            d = dict(labels)
            got[(d["account_id"], d["service_name"], d["team"], d["environment"], d["customer_id"])] += Decimal(str(v))
        assert_to_the_cent(dict(got), dict(want))
    finally:
        app.close()
    ops = Counter(emu.operations())
    # env has no values, environment 2 (prod, staging), customer 2 (acme, globex): 3 x 3 cells, Bedrock too
    assert ops["GetTags"] == 3
    assert ops["GetCostAndUsage"] >= 2 * 9
    tags = emu.bodies("GetTags")
    assert [b["TagKey"] for b in tags] == ["env", "environment", "customer"]
    first_pages = [b for b in emu.bodies("GetCostAndUsage") if "NextPageToken" not in b]
    assert len(first_pages) == 2 * 9
    acme = {"Tags": {"Key": "customer", "Values": ["acme"], "MatchOptions": ["EQUALS"]}}
    # acme x (any, prod, staging), twice with Bedrock
    assert sum(acme in b["Filter"].get("And", []) for b in first_pages) == 2 * 3


def test_without_extra_labels_no_more_requests(emu: AwsCostExplorerEmulator) -> None:
    provider(emu.url).fetch(WINDOW)
    assert "GetTags" not in emu.operations()
    first_pages = [b for b in emu.bodies("GetCostAndUsage") if "NextPageToken" not in b]
    assert [b["GroupBy"][0]["Key"] for b in first_pages] == ["SERVICE", "USAGE_TYPE"]  # as before: no slices
