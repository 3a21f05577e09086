"""Azure Cost Management provider: the real SDK and Azure CLI credential against the local ARM emulator."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from exporter.config import parse_config
from exporter.model import FetchResult, FetchWindow
from exporter.providers.azure import AzureProvider
from exporter.providers.azure_results import openai_model, scope_account
from exporter.providers.base import ProviderContext, SourceError, Throttled
from exporter.sources.azure import AzureSource
from tests import helpers
from tests.emulators.azure_cost import AzureCostEmulator
from tests.emulators.dataset import CloudRow, Dataset, build_dataset
from tests.emulators.server import Fault
from tests.helpers import assert_allocation, assert_to_the_cent, month_to_date, series

TODAY = dt.date(2026, 11, 21)
NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
WINDOW = FetchWindow(start=dt.date(2026, 10, 1), end=TODAY, now=NOW)
TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.test-only-arm-token"
SUB_PROD = "00000000-0000-0000-0000-000000000001"
SUB_EU = "00000000-0000-0000-0000-000000000002"
SCOPES = [f"/subscriptions/{SUB_PROD}", f"/subscriptions/{SUB_EU}"]
CENT = Decimal("0.01")


@pytest.fixture(autouse=True)
def azure_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Only the stub CLI can give a token: no environment secrets, no managed identity endpoint."""
    return helpers.use_az_stub(monkeypatch, tmp_path, TOKEN)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return build_dataset(TODAY)


@pytest.fixture
def emu(dataset: Dataset) -> Iterator[AzureCostEmulator]:
    e = AzureCostEmulator(dataset, token=TOKEN, page_size=100, column_order="reversed")
    with e:
        yield e


class Calls(helpers.Calls):
    """Calls, and the waits between retries (the provider sleeps through ``sleep``)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        time.sleep(seconds)

    def ctx(self) -> ProviderContext:
        return ProviderContext("azure", on_call=self.on_call)


def source(url: str, **overrides: Any) -> AzureSource:
    raw: dict[str, Any] = {
        "name": "azure",
        "type": "azure",
        "base_url": url,
        "credential": "cli",
        "scopes": SCOPES,
        "throttle_backoff": "10ms",
        "timeout": "10s",
        **overrides,
    }
    cfg = parse_config({"sources": [raw]}).sources[0]
    assert isinstance(cfg, AzureSource)
    return cfg


def provider(url: str, calls: Calls | None = None, **overrides: Any) -> AzureProvider:
    calls = calls or Calls()
    return AzureProvider(source(url, **overrides), calls.ctx(), sleep=calls.sleep)


Key = tuple[dt.date, str, str, str | None, str, str]  # day, account, service, team, model, currency


def expected(rows: list[CloudRow], window: FetchWindow) -> dict[Key, Decimal]:
    out: dict[Key, Decimal] = defaultdict(Decimal)
    for r in rows:
        if window.start <= r.day <= window.end:
            out[(r.day, r.account_id, r.service_name, r.team, r.model, r.currency)] += r.amount
    return dict(out)


def actual(result: FetchResult) -> dict[Key, Decimal]:
    out: dict[Key, Decimal] = defaultdict(Decimal)
    for c in result.costs:
        assert c.provider == "azure"
        out[(c.day, c.account_id, c.service_name, c.team_tag, c.model, c.currency)] += Decimal(str(c.amount))
    return dict(out)


# -- figures ---------------------------------------------------------------------------------------------


def test_figures_to_the_cent_per_subscription_service_team(emu: AzureCostEmulator, dataset: Dataset) -> None:
    calls = Calls()
    result = provider(emu.url, calls).fetch(WINDOW)

    assert_to_the_cent(actual(result), expected(dataset.rows("azure"), WINDOW))
    assert result.days == WINDOW.days()
    assert result.data_through == NOW
    # the EUR subscription stays in EUR: the engine converts with currency_rates
    assert {c.currency for c in result.costs if c.account_id == SUB_EU} == {"EUR"}
    assert {c.currency for c in result.costs if c.account_id == SUB_PROD} == {"USD"}
    assert any(c.team_tag is None for c in result.costs)
    assert {c.model for c in result.costs if c.service_name == "Azure OpenAI"} == {"gpt-4o"}
    assert {c.model for c in result.costs if c.service_name != "Azure OpenAI"} == {""}
    assert {(a.account_id, a.account_name) for a in result.accounts} == {(SUB_PROD, "sub-prod"), (SUB_EU, "sub-eu")}
    assert all(status == "success" and cost == 0.0 for _, status, cost in calls.calls)


def test_pages_follow_nextlink_with_skiptoken(emu: AzureCostEmulator) -> None:
    provider(emu.url, forecast=False, openai_models=False).fetch(WINDOW)
    queries = [r for r in emu.requests if r.path.endswith("/query")]
    by_scope = Counter(r.path for r in queries)
    assert len(by_scope) == 2 and all(n >= 3 for n in by_scope.values()), by_scope
    tokens = [r.q("$skiptoken") for r in queries]
    assert sum(1 for t in tokens if t) == len(queries) - 2
    bodies = {r.body for r in queries if r.path == queries[0].path}
    assert len(bodies) == 1  # the same query, posted again with each $skiptoken


def test_request_shape_and_headers(emu: AzureCostEmulator) -> None:
    provider(emu.url, cost_type="AmortizedCost", cost_column="Cost").fetch(WINDOW)
    query = next(r for r in emu.requests if r.path.endswith("/query"))
    assert query.path == f"/subscriptions/{SUB_PROD}/providers/Microsoft.CostManagement/query"
    assert query.q("api-version")
    body = query.json()
    assert body["type"] == "AmortizedCost"
    assert body["timeframe"] == "Custom"
    assert body["timePeriod"] == {"from": "2026-10-01T00:00:00Z", "to": "2026-11-21T23:59:59Z"}
    assert body["dataset"]["granularity"] == "Daily"
    assert body["dataset"]["aggregation"] == {"Cost": {"name": "Cost", "function": "Sum"}}
    assert body["dataset"]["grouping"] == [
        {"type": "Dimension", "name": "ServiceName"},
        {"type": "TagKey", "name": "team"},
    ]
    for r in emu.requests:
        assert r.headers.get("clienttype") == "spend-exporter"
        assert r.headers.get("authorization") == f"Bearer {TOKEN}"
    meter = [r.json() for r in emu.requests if r.path.endswith("/query") and "filter" in r.json()["dataset"]]
    assert meter and meter[0]["dataset"]["grouping"][0] == {"type": "Dimension", "name": "Meter"}
    assert meter[0]["dataset"]["filter"] == {
        "dimensions": {"name": "ServiceName", "operator": "In", "values": ["Azure OpenAI"]}
    }


def test_columns_are_read_by_name_in_any_order(dataset: Dataset) -> None:
    results = []
    for order in ("default", "reversed"):
        e = AzureCostEmulator(dataset, token=TOKEN, column_order=order)
        with e:
            results.append(actual(provider(e.url, forecast=False).fetch(WINDOW)))
    assert results[0] == results[1]


# -- forecast ----------------------------------------------------------------------------------------


def test_provider_forecast_in_the_subscription_currency(emu: AzureCostEmulator, dataset: Dataset) -> None:
    result = provider(emu.url).fetch(WINDOW)
    assert result.forecasts is not None
    got = {f.account_id: f for f in result.forecasts}
    assert set(got) == {SUB_PROD, SUB_EU}
    for sub, currency in ((SUB_PROD, "USD"), (SUB_EU, "EUR")):
        last7 = [
            r for r in dataset.rows("azure") if r.account_id == sub and TODAY - dt.timedelta(days=7) <= r.day < TODAY
        ]
        want = sum((r.amount for r in last7), Decimal(0)) / 7 * 9  # 22..30 November
        assert got[sub].currency == currency
        assert Decimal(str(got[sub].remaining_amount)).quantize(CENT) == want.quantize(CENT)
    forecast = next(r for r in emu.requests if r.path.endswith("/forecast")).json()
    assert forecast["timePeriod"] == {"from": "2026-11-22T00:00:00Z", "to": "2026-11-30T23:59:59Z"}
    assert forecast["includeActualCost"] is False


def test_no_forecast_call_on_the_last_day() -> None:
    last = dt.datetime(2026, 11, 30, 18, tzinfo=dt.UTC)
    e = AzureCostEmulator(build_dataset(last.date()), token=TOKEN)
    with e:
        result = provider(e.url, scopes=[SCOPES[1]]).fetch(FetchWindow(dt.date(2026, 11, 1), last.date(), last))
        assert "forecast" not in e.operations()
    assert result.forecasts is not None
    assert [(f.account_id, f.remaining_amount, f.currency) for f in result.forecasts] == [(SUB_EU, 0.0, "EUR")]


# -- throttling and failures -------------------------------------------------------------------------------


def test_throttling_honours_the_cost_management_retry_after_headers(emu: AzureCostEmulator, dataset: Dataset) -> None:
    emu.inject(Fault("throttle", times=2, after=1, retry_after=0.05))
    calls = Calls()
    result = provider(emu.url, calls).fetch(WINDOW)
    assert_to_the_cent(actual(result), expected(dataset.rows("azure"), WINDOW))
    assert [s for _, s, _ in calls.calls].count("throttled") == 2
    assert calls.waits == [0.05, 0.05]  # the header's value, not a guess


def test_throttled_until_retries_run_out(emu: AzureCostEmulator) -> None:
    emu.inject(Fault("throttle", times=-1, retry_after=0.01))
    calls = Calls()
    with pytest.raises(Throttled) as info:
        provider(emu.url, calls, throttle_retries=2).fetch(WINDOW)
    assert info.value.retry_after == pytest.approx(0.01)
    assert len(emu.operations()) == 3 and set(emu.operations()) == {"query"}


def test_a_long_retry_after_is_left_to_the_scheduler(emu: AzureCostEmulator) -> None:
    emu.inject(Fault("throttle", times=1, retry_after=120))
    calls = Calls()
    with pytest.raises(Throttled) as info:
        provider(emu.url, calls).fetch(WINDOW)
    assert info.value.retry_after == 120
    assert calls.waits == []  # not slept on: the scheduler backs off with the hint


@pytest.mark.parametrize("kind", ["500", "503"])
def test_server_error_mid_pagination_raises(emu: AzureCostEmulator, kind: str) -> None:
    emu.inject(Fault(kind, after=1))
    with pytest.raises(SourceError, match=f"query.usage failed: HTTP {kind}"):
        provider(emu.url).fetch(WINDOW)


def test_timeout_raises(emu: AzureCostEmulator) -> None:
    emu.inject(Fault("timeout", delay=3.0, after=1))
    with pytest.raises(SourceError, match=r"query.usage failed: .*[Tt]imed? ?out"):
        provider(emu.url, timeout="1s").fetch(WINDOW)


@pytest.mark.parametrize("kind", ["malformed", "wrong_shape"])
def test_malformed_bodies_raise(emu: AzureCostEmulator, kind: str) -> None:
    emu.inject(Fault(kind, after=1))
    with pytest.raises(SourceError, match="malformed"):
        provider(emu.url).fetch(WINDOW)


def test_missing_column_raises(dataset: Dataset) -> None:
    class NoCurrency(AzureCostEmulator):
        def handle(self, request):  # type: ignore[no-untyped-def]
            resp = super().handle(request)
            if isinstance(resp.body, dict) and "properties" in resp.body:
                props = resp.body["properties"]
                i = [c["name"] for c in props["columns"]].index("Currency")
                props["columns"].pop(i)
                props["rows"] = [r[:i] + r[i + 1 :] for r in props["rows"]]
            return resp

    e = NoCurrency(dataset, token=TOKEN)
    with e, pytest.raises(SourceError, match="no Currency"):
        provider(e.url).fetch(WINDOW)


def test_unauthorised_raises_without_the_token(emu: AzureCostEmulator, azure_env: Path) -> None:
    helpers.write_az_stub(azure_env, "a-token-the-emulator-does-not-accept")
    with pytest.raises(SourceError, match="authentication failed \\(HTTP 401\\)") as info:
        provider(emu.url).fetch(WINDOW)
    assert "a-token-the-emulator-does-not-accept" not in str(info.value)


def test_no_cli_means_a_clear_credential_error(
    emu: AzureCostEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(SourceError, match="credential 'cli' could not get a token"):
        provider(emu.url).fetch(WINDOW)
    assert emu.requests == []


def test_token_is_registered_for_scrubbing(emu: AzureCostEmulator) -> None:
    calls = Calls()
    ctx = calls.ctx()
    AzureProvider(source(emu.url, forecast=False), ctx).fetch(WINDOW)
    assert ctx.scrub(f"Authorization: Bearer {TOKEN}") == "Authorization: Bearer <redacted>"


def test_missing_subscription_name_is_not_fatal(dataset: Dataset) -> None:
    class NoNames(AzureCostEmulator):
        def handle(self, request):  # type: ignore[no-untyped-def]
            if request.method == "GET":
                from tests.emulators.server import Response

                return Response(403, {"error": {"code": "AuthorizationFailed", "message": "no subscriptions/read"}})
            return super().handle(request)

    e = NoNames(dataset, token=TOKEN)
    with e:
        result = provider(e.url, forecast=False).fetch(WINDOW)
    assert result.accounts == []
    assert_to_the_cent(actual(result), expected(dataset.rows("azure"), WINDOW))


# -- names ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("meter", "model"),
    [
        ("gpt-4o-0806-Inp-glbl Tokens", "gpt-4o"),
        ("gpt-4o-mini-0718-Outp-regnl Tokens", "gpt-4o-mini"),
        ("gpt 4o 0513 Input regional Tokens", "gpt-4o"),
        ("gpt-35-turbo-16k Output Tokens", "gpt-35-turbo-16k"),
        ("GPT-4.1 Inp Glbl Tokens", "gpt-4.1"),
        ("o3-mini-0131-cached-Inp-glbl Tokens", "o3-mini"),
        ("text-embedding-3-large Tokens", "text-embedding-3-large"),
        ("D2s v3", ""),
        ("Hot LRS Data Stored", ""),
    ],
)
def test_openai_meter_to_model(meter: str, model: str) -> None:
    assert openai_model(meter) == model


def test_scope_to_account() -> None:
    assert scope_account(f"/subscriptions/{SUB_PROD.upper()}/resourceGroups/rg") == SUB_PROD
    assert scope_account(f"subscriptions/{SUB_PROD}") == SUB_PROD
    mg = "/providers/Microsoft.Management/managementGroups/finance"
    assert scope_account(mg + "/") == mg


# -- through the engine: build_app, /metrics, last good data ---------------------------------------

EUR_RATE = Decimal("1.08")


def test_metrics_through_the_engine_and_last_good_data(
    emu: AzureCostEmulator, dataset: Dataset, tmp_path: Path
) -> None:
    from exporter.app import build_app

    cfg = parse_config(
        {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "currency_rates": {"EUR": float(EUR_RATE)},
            "sources": [
                {
                    "name": "azure",
                    "type": "azure",
                    "base_url": emu.url,
                    "credential": "cli",
                    "scopes": SCOPES,
                    "throttle_backoff": "10ms",
                    "timeout": "20s",
                }
            ],
        }
    )
    want: dict[tuple[str, str, str, str], Decimal] = defaultdict(Decimal)
    for r in dataset.rows("azure"):
        if TODAY.replace(day=1) <= r.day <= TODAY:
            usd = r.amount * (EUR_RATE if r.currency == "EUR" else 1)
            want[(r.account_id, r.service_name, r.team or "unallocated", r.model)] += usd
    up_key = (("provider", "azure"), ("source", "azure"))

    app = build_app(cfg, now=lambda: NOW)
    try:
        assert all(o.ok for o in app.refresh_all())
        text = app.exposition()
        got = month_to_date(text, "azure")
        assert set(got) == set(want)
        assert all(abs(got[k] - float(want[k])) < 0.005 for k in want), "month-to-date differs from the dataset"
        assert series(text, "spend_exporter_source_up")[up_key] == 1
        info = series(text, "spend_account_info")
        assert (("account_id", SUB_EU), ("account_name", "sub-eu"), ("provider", "azure")) in info

        # Cost Management fails: the last good figures stay, the source is down
        emu.inject(Fault("500", times=-1))
        assert not any(o.ok for o in app.refresh_all())
        text = app.exposition()
        assert month_to_date(text, "azure") == got
        assert series(text, "spend_exporter_source_up")[up_key] == 0

        # and recovers
        emu.clear_faults()
        assert all(o.ok for o in app.refresh_all())
        text = app.exposition()
        assert month_to_date(text, "azure") == got
        assert series(text, "spend_exporter_source_up")[up_key] == 1
    finally:
        app.close()


# -- shared-cost pools through the engine ---------------------------------------------------------------

POOLS: list[dict[str, Any]] = [
    # the untagged VMs are the platform's: shared by the tagged teams in proportion to their own spend
    {"name": "platform", "match": {"team": "unallocated", "service_name": "Virtual Machines"}},
    {
        "name": "eu",
        "match": {"account_id": SUB_EU},
        "split": "weights",
        "weights": {"search": 2, "payments": 1, "data": 1},
        "to_teams": ["search", "payments", "data"],
    },
    {"name": "openai", "match": {"provider": "azure", "service_name": ["Azure OpenAI"]}, "split": "even"},
]


def test_shared_pools_split_the_datasets_cost_to_the_cent(
    emu: AzureCostEmulator, dataset: Dataset, tmp_path: Path
) -> None:
    from exporter.app import build_app

    cfg = parse_config(
        {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "currency_rates": {"EUR": float(EUR_RATE)},
            "sources": [{"name": "azure", "type": "azure", "base_url": emu.url, "credential": "cli", "scopes": SCOPES}],
            "allocation": {"shared": POOLS},
        }
    )
    month_start = TODAY.replace(day=1)
    prev_start = (month_start - dt.timedelta(days=1)).replace(day=1)
    periods = {
        "month_to_date": (month_start, TODAY),
        "previous_month": (prev_start, month_start - dt.timedelta(days=1)),
    }
    app = build_app(cfg, now=lambda: NOW)
    try:
        assert all(o.ok for o in app.refresh_all())
        text = app.exposition()
        for period, (first, last) in periods.items():
            items: dict[tuple[str, str, str, str, str], Decimal] = defaultdict(Decimal)
            for r in dataset.rows("azure"):
                if first <= r.day <= last:
                    usd = r.amount * (EUR_RATE if r.currency == "EUR" else 1)
                    items[("azure", r.account_id, r.service_name, r.team or "unallocated", r.model)] += usd
            assert_allocation(text, items, POOLS, period)
    finally:
        app.close()


# -- extra labels (attribution.labels) ------------------------------------------------------------------------


def test_extra_labels_reach_the_metrics_to_the_cent(emu: AzureCostEmulator, dataset: Dataset, tmp_path: Path) -> None:
    from exporter.app import build_app

    cfg = parse_config(
        {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "currency_rates": {"EUR": float(EUR_RATE)},
            "attribution": {
                "labels": [
                    {"name": "environment", "tag_keys": ["env", "environment"]},
                    {"name": "customer_id", "tag_keys": ["customer"]},
                ]
            },
            "sources": [
                {
                    "name": "azure",
                    "type": "azure",
                    "base_url": emu.url,
                    "credential": "cli",
                    "scopes": SCOPES,
                    "forecast": False,
                    "timeout": "20s",
                }
            ],
        }
    )
    want: dict[tuple[str, ...], Decimal] = defaultdict(Decimal)
    for r in dataset.rows("azure"):
        if TODAY.replace(day=1) <= r.day <= TODAY:
            usd = r.amount * (EUR_RATE if r.currency == "EUR" else 1)
            env, customer = r.extra.get("tag:environment", ""), r.extra.get("tag:customer", "")
            want[(r.account_id, r.service_name, r.team or "unallocated", r.model, env, customer)] += usd
    app = build_app(cfg, now=lambda: NOW)
    try:
        assert all(o.ok for o in app.refresh_all())
        got: dict[tuple[str, ...], Decimal] = defaultdict(Decimal)
        for labels, v in series(app.exposition(), "spend_cost_month_to_date_usd").items():
            d = dict(labels)
            key = (d["account_id"], d["service_name"], d["team"], d["model"], d["environment"], d["customer_id"])
            got[key] += Decimal(str(v))
        assert set(got) == set(want)
        assert all(abs(got[k] - want[k]) < Decimal("0.005") for k in want), "month-to-date differs from the dataset"
    finally:
        app.close()


def test_a_second_tag_key_counts_only_where_the_first_has_no_value(emu: AzureCostEmulator, dataset: Dataset) -> None:
    """Cost Management filters have no "not": the second key's cells are taken out by inclusion-exclusion."""
    calls = Calls()
    ctx = ProviderContext("azure", on_call=calls.on_call, extra_labels=[("who", ["customer", "environment"])])
    result = AzureProvider(source(emu.url), ctx).fetch(WINDOW)
    want: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for r in dataset.rows("azure"):
        if WINDOW.start <= r.day <= WINDOW.end:
            who = r.extra.get("tag:customer") or r.extra.get("tag:environment", "")
            want[(r.account_id, r.service_name, who)] += r.amount
    got: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    for c in result.costs:
        got[(c.account_id, c.service_name, dict(c.labels).get("who", ""))] += Decimal(str(c.amount))
    assert_to_the_cent(dict(got), dict(want))
