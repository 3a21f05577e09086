"""The snapshot: aggregation, the cardinality cap, escaping, and the exposition formats.

Expositions are checked with prometheus_client's own parsers (text and OpenMetrics) and with
``promtool check metrics``.
"""

from __future__ import annotations

import datetime as dt
import gzip
import math
import shutil
import statistics
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from exporter.app import App, build_app
from exporter.cardinality import OTHER
from exporter.config import parse_config
from exporter.exposition import escape_label_value, format_value, render_samples
from exporter.metrics import COST_LABELS, EXPORTER_FAMILIES, FAMILIES, NOT_FROM_BILLING
from exporter.status import month_to_date, status_report
from tests.helpers import series

UTC = dt.UTC
DAY = dt.timedelta(days=1)
NOW = dt.datetime(2025, 3, 15, 10, 30, tzinfo=UTC)
NASTY = 'Svc "quoted" \\ back\\slash\nsecond line, café ☕'


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def promtool_check(text: bytes) -> subprocess.CompletedProcess[bytes]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH (make promtool-deps installs it)")
    return subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)


def days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + i * DAY for i in range((last - first).days + 1)]


def make_app(tmp_path: Path, rows: list[dict[str, Any]], focus: Any, **top: Any) -> App:
    focus.write(tmp_path / "exports" / "a.csv", rows)
    raw = {
        "cache_path": str(tmp_path / "cache.sqlite"),
        "sources": [{"name": "focus", "type": "focus", "paths": [str(tmp_path / "exports" / "*.csv")], "jitter": 0}],
        **top,
    }
    app = build_app(parse_config(raw), now=lambda: NOW)
    outcomes = app.refresh_all()
    assert all(o.ok for o in outcomes), outcomes
    return app


@pytest.fixture
def apps() -> Iterator[list[App]]:
    made: list[App] = []
    yield made
    for a in made:
        a.close()


# --------------------------------------------------------------------------- figures


def test_cost_families_from_known_figures(tmp_path: Path, focus: Any, apps: list[App]) -> None:
    def cost(d: dt.date) -> float:
        return round(1 + (d.toordinal() * 7919 % 13) * 1.5, 2)  # varied, reproducible

    all_days = days(dt.date(2025, 1, 20), NOW.date())
    app = make_app(tmp_path, [focus.daily(d, cost(d)) for d in all_days], focus)
    apps.append(app)
    text = app.exposition()
    newest = dt.date(2025, 3, 14)  # the newest complete day
    base = [cost(d) for d in days(newest - 28 * DAY, newest - DAY)]
    march = [cost(d) for d in days(dt.date(2025, 3, 1), NOW.date())]
    complete = [cost(d) for d in days(dt.date(2025, 3, 1), newest)]
    last7 = [cost(d) for d in days(newest - 6 * DAY, newest)]

    def one(family: str) -> float:
        (v,) = series(text, family).values()
        return v

    assert one("spend_cost_month_to_date_usd") == pytest.approx(sum(march))
    assert one("spend_cost_daily_usd") == pytest.approx(cost(newest))
    assert one("spend_cost_daily_baseline_usd") == pytest.approx(statistics.mean(base), abs=1e-6)
    assert one("spend_cost_daily_baseline_stddev_usd") == pytest.approx(statistics.pstdev(base), abs=1e-5)
    assert one("spend_cost_previous_month_usd") == pytest.approx(
        sum(cost(d) for d in days(dt.date(2025, 2, 1), dt.date(2025, 2, 28)))
    )
    assert one("spend_cost_forecast_month_end_usd") == pytest.approx(
        sum(complete) + 17 * statistics.mean(last7), abs=1e-5
    )
    labels = dict(next(iter(series(text, "spend_cost_daily_usd"))))
    assert labels == {
        "provider": "aws",
        "account_id": "111111111111",
        "service_name": "Amazon EC2",
        "team": "unallocated",
        "model": "",
    }


def test_cardinality_cap_folds_into_other(tmp_path: Path, focus: Any, apps: list[App]) -> None:
    rows = []
    for i in range(10):
        for d in days(dt.date(2025, 2, 1), dt.date(2025, 3, 15)):
            rows.append(focus.daily(d, float(i + 1), ServiceName=f"svc-{i:02d}", Tags=f'{{"team": "t{i % 2}"}}'))
    # a second provider: its one heavy series is kept on merit
    rows += [
        focus.daily(d, 100.0, ProviderName="Microsoft", ServiceName="VMs")
        for d in days(dt.date(2025, 3, 1), dt.date(2025, 3, 15))
    ]
    budgets = [
        {"name": "small-service", "amount_usd": 100, "match": {"service_name": "svc-00"}},
        {"name": "team-t0", "amount_usd": 1000, "team": "t0"},
        {"name": "total", "amount_usd": 100000},
    ]
    app = make_app(tmp_path, rows, focus, max_series_per_source=4, budgets=budgets)
    apps.append(app)
    text = app.exposition()
    mtd = {dict(k)["service_name"]: (dict(k), v) for k, v in series(text, "spend_cost_month_to_date_usd").items()}
    assert len(mtd) == 4, "max_series_per_source series per family, __other__ included"
    # the three heaviest stay; the rest fold into one __other__ series per provider
    assert {"svc-09", "svc-08", "VMs", OTHER} == set(mtd)
    other_labels, other = mtd[OTHER]
    assert other_labels == {
        "provider": "aws",
        "account_id": OTHER,
        "service_name": OTHER,
        "team": OTHER,
        "model": OTHER,
    }
    assert other == pytest.approx(15 * sum(range(1, 9)))  # svc-00..svc-07 at 1..8 a day, 15 March days
    assert mtd["svc-09"][1] == pytest.approx(150.0)
    assert series(text, "spend_exporter_series_overflow") == {(("source", "focus"),): 8.0}
    # every cost family is folded the same way, and sums are preserved
    for fam in ("spend_cost_previous_month_usd", "spend_cost_daily_usd", "spend_cost_forecast_month_end_usd"):
        assert len(series(text, fam)) <= 4
    prev = series(text, "spend_cost_previous_month_usd")
    assert sum(prev.values()) == pytest.approx(28 * sum(range(1, 11)))
    # budgets are computed from the unfolded figures
    budget = {dict(k)["budget"]: v for k, v in series(text, "spend_budget_spent_usd").items()}
    assert budget["small-service"] == pytest.approx(15.0)
    assert budget["team-t0"] == pytest.approx(15 * (1 + 3 + 5 + 7 + 9))
    assert budget["total"] == pytest.approx(15 * 55 + 1500)
    assert promtool_check(app.snapshot.text).returncode == 0


def test_status_month_to_date_is_what_metrics_serves(tmp_path: Path, focus: Any, apps: list[App]) -> None:
    """``/status``'s month-to-date of a source is the sum of its served month-to-date series, folding included."""
    march = days(dt.date(2025, 3, 1), NOW.date())
    clouds = [
        focus.daily(d, 1.0 + i / 3, ServiceName=f"svc-{i}", Tags=f'{{"team": "t{i % 2}"}}')
        for i in range(6)
        for d in days(dt.date(2025, 2, 20), NOW.date())
    ]
    clouds += [focus.daily(d, 7.77, ProviderName="Microsoft", BillingCurrency="EUR", ServiceName="VMs") for d in march]
    ai = [focus.daily(d, 0.333, ProviderName="OpenAI", SubAccountId="proj_a", ServiceName="chat") for d in march]
    focus.write(tmp_path / "clouds" / "a.csv", clouds)
    focus.write(tmp_path / "ai" / "a.csv", ai)
    raw = {
        "cache_path": str(tmp_path / "cache.sqlite"),
        "currency_rates": {"EUR": 1.08},
        "max_series_per_source": 3,  # clouds: 7 series, 5 folded into __other__
        "sources": [
            {"name": name, "type": "focus", "paths": [str(tmp_path / name / "*.csv")], "jitter": 0}
            for name in ("clouds", "ai")
        ],
    }
    app = build_app(parse_config(raw), now=lambda: NOW)
    apps.append(app)
    assert all(o.ok for o in app.refresh_all())
    text = app.exposition()
    served = series(text, "spend_cost_month_to_date_usd")
    assert any(dict(k)["service_name"] == OTHER for k in served)
    status = {s["name"]: s["month_to_date_usd"] for s in status_report(app)["sources"]}
    providers = {"clouds": {"aws", "azure"}, "ai": {"openai"}}
    for name, provs in providers.items():
        got = math.fsum(v for k, v in served.items() if dict(k)["provider"] in provs)
        assert status[name] == round(got, 2)
        assert month_to_date(app.snapshot, name) == pytest.approx(got)  # spend-exporter check prints this one
    assert status["clouds"] == pytest.approx(
        round(sum(15 * (1.0 + i / 3) for i in range(6)) + 15 * 7.77 * 1.08, 2), abs=0.005
    )
    assert status["ai"] == pytest.approx(round(15 * 0.333, 2), abs=0.005)


def test_no_overflow_under_the_cap(tmp_path: Path, focus: Any, apps: list[App]) -> None:
    rows = [focus.daily(d, 1.0, ServiceName=f"s{i}") for i in range(3) for d in days(dt.date(2025, 3, 1), NOW.date())]
    app = make_app(tmp_path, rows, focus, max_series_per_source=3)
    apps.append(app)
    text = app.exposition()
    assert series(text, "spend_exporter_series_overflow") == {(("source", "focus"),): 0.0}
    assert f'"{OTHER}"' not in text


# --------------------------------------------------------------------------- escaping and formats


def test_label_values_are_escaped_and_round_trip(tmp_path: Path, focus: Any, apps: list[App]) -> None:
    rows = [
        focus.daily(d, 2.5, ServiceName=NASTY, SubAccountName='Acct "\\ name"\nline 2', Tags='{"team": "a\\"b"}')
        for d in days(dt.date(2025, 3, 1), NOW.date())
    ]
    app = make_app(tmp_path, rows, focus)
    apps.append(app)
    raw = app.snapshot.text
    assert b'service_name="Svc \\"quoted\\" \\\\ back\\\\slash\\nsecond line, caf\xc3\xa9 \xe2\x98\x95"' in raw
    for line in raw.decode().splitlines():
        assert line.startswith(("# HELP", "# TYPE", "spend_")), f"a raw newline split a sample: {line!r}"
    (labels,) = series(app.exposition(), "spend_cost_month_to_date_usd")
    assert dict(labels)["service_name"] == NASTY
    assert dict(labels)["team"] == 'a"b'
    (info,) = series(app.exposition(), "spend_account_info")
    assert dict(info)["account_name"] == 'Acct "\\ name"\nline 2'
    # and through OpenMetrics
    om_body, _ = app.snapshot.openmetrics()
    got = [s.labels for f in om_families(om_body.decode()) for s in f.samples if f.name == "spend_cost_daily_usd"]
    assert got and got[0]["service_name"] == NASTY
    check = promtool_check(raw)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(
    "value",
    [0.0, 1.0, -1.0, 0.1, 1 / 3, 123456789.123, 1e-7, 1.5e-10, 1e21, 2.5e22, -3.75e-5, 1e15, 1e16, 12345678901234567.0],
)
def test_numbers_are_written_as_prometheus_writes_them(value: float) -> None:
    assert format_value(value) == floatToGoString(value)
    assert float(format_value(value)) == value


def test_special_values() -> None:
    assert format_value(math.inf) == "+Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN"


def test_render_matches_prometheus_client() -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily

    names = sorted(COST_LABELS)  # prometheus_client sorts label names; ours keep COST_LABELS order
    rows = [
        (("1", "", "aws", NASTY, "t"), 12.5),
        (("p", "m", "gcp", "BigQuery", "unallocated"), 0.001),
        (("p", "m", "gcp", "Compute", "unallocated"), 1234567.89),
        (("p", "m", "gcp", "Storage", "unallocated"), -2.5e-7),
    ]

    class Coll:
        def collect(self) -> Iterator[GaugeMetricFamily]:
            g = GaugeMetricFamily("spend_cost_daily_usd", "h", labels=names)
            for labels, v in rows:
                g.add_metric(list(labels), v)
            yield g

    reg = CollectorRegistry()
    reg.register(Coll())  # type: ignore[arg-type]
    expected = generate_latest(reg).split(b"\n", 2)[2]  # without HELP and TYPE
    assert render_samples("spend_cost_daily_usd", names, rows) == expected
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory, focus: Any) -> Iterator[App]:
    """Every kind of data: clouds, a currency, tags, AI tokens and requests by day and by hour, budgets."""
    tmp = tmp_path_factory.mktemp("rich")
    rows: list[dict[str, Any]] = []
    for d in days(dt.date(2025, 1, 25), NOW.date()):
        rows.append(focus.daily(d, 40.0, ServiceName="Amazon EC2", Tags='{"team": "search"}'))
        rows.append(
            focus.daily(
                d,
                30.0,
                ProviderName="Microsoft",
                SubAccountId="sub-1",
                SubAccountName="Prod",
                ServiceName="Virtual Machines",
                BillingCurrency="EUR",
                Tags='{" Team ": "data"}',
            )
        )
        rows.append(focus.daily(d, 5.0, ProviderName="Oracle", SubAccountId="ocid1.tenancy..x", ServiceName=NASTY))
        for model in ("gpt-4o", "gpt-4o-mini"):
            for tt, n in (("input", 100000), ("output", 20000), ("cache_read", 5000)):
                rows.append(
                    focus.daily(
                        d,
                        n / 1e5,
                        ProviderName="OpenAI",
                        SubAccountId="proj_a",
                        ServiceName="chat",
                        x_Model=model,
                        x_TokenType=tt,
                        ConsumedQuantity=n,
                        ConsumedUnit="Tokens",
                    )
                )
            rows.append(
                focus.daily(
                    d,
                    0,
                    ProviderName="OpenAI",
                    SubAccountId="proj_a",
                    ServiceName="chat",
                    x_Model=model,
                    ConsumedQuantity=50,
                    ConsumedUnit="Requests",
                )
            )
    hour = NOW.replace(minute=0) - dt.timedelta(hours=3)
    while hour < NOW.replace(minute=0):
        for tt, n in (("input", 10000), ("output", 2000)):
            rows.append(
                {
                    "ChargePeriodStart": hour,
                    "ChargePeriodEnd": hour + dt.timedelta(hours=1),
                    "BilledCost": n / 1e6,
                    "ProviderName": "Anthropic",
                    "SubAccountId": "wrk_1",
                    "ServiceName": "messages",
                    "x_Model": "claude-sonnet-4-5",
                    "x_TokenType": tt,
                    "ConsumedQuantity": n,
                    "ConsumedUnit": "Tokens",
                }
            )
        hour += dt.timedelta(hours=1)
    budgets = [
        {"name": "search", "amount_usd": 1000, "team": "search"},
        {"name": "ai", "amount_usd": 500, "warning_ratio": 0.9, "match": {"provider": ["openai", "anthropic"]}},
    ]
    app = make_app(
        tmp,
        rows,
        focus,
        currency_rates={"EUR": 1.1},
        budgets=budgets,
        attribution={"team_tag_keys": ["team"], "rules": [{"match": {"provider": "openai"}, "team": "ml"}]},
    )
    yield app
    app.close()


def test_full_exposition_passes_promtool(rich: App) -> None:
    check = promtool_check(rich.snapshot.text)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout == b"" and check.stderr == b""
    fams = families(rich.exposition())
    with_samples = {n for n, f in fams.items() if f.samples}
    for name, *_ in FAMILIES + EXPORTER_FAMILIES:
        assert name.removesuffix("_total") in fams, name
    assert {
        "spend_cost_month_to_date_usd",
        "spend_cost_daily_baseline_stddev_usd",
        "spend_ai_tokens_month_to_date",
        "spend_ai_requests_month_to_date",
        "spend_ai_cost_last_hour_usd",
        "spend_budget_forecast_usd",
        "spend_account_info",
    } <= with_samples


def test_exposition_follows_naming_rules(rich: App) -> None:
    text = rich.exposition()
    for f in text_string_to_metric_families(text):
        assert f.name.startswith("spend_")
        assert f.type in ("gauge", "counter")
        if f.type == "counter":
            assert all(s.name.endswith("_total") for s in f.samples)
        for s in f.samples:
            assert s.timestamp is None, "no sample timestamps"
            assert not {"service", "region", "customer", "env", "cluster", "owner", "date", "day"} & set(s.labels)
    for line in text.splitlines():
        if line.startswith("# HELP spend_") and not line.startswith("# HELP spend_exporter_"):
            # revenue_file's family comes from no billing API: its HELP must not say it does
            cached = line.split(" ")[2] not in NOT_FROM_BILLING
            assert ("Cached" in line and "FinOps FOCUS files" in line) == cached, line
    tokens = series(text, "spend_ai_tokens_month_to_date")
    assert {dict(k)["token_type"] for k in tokens} == {"input", "output", "cache_read", "cache_write"}
    eur = series(text, "spend_cost_daily_usd")
    vm = [v for k, v in eur.items() if dict(k)["service_name"] == "Virtual Machines"]
    assert vm == [pytest.approx(33.0)]  # 30 EUR at 1.1
    teams = {dict(k)["service_name"]: dict(k)["team"] for k in eur}
    assert teams["Amazon EC2"] == "search" and teams["Virtual Machines"] == "data" and teams["chat"] == "ml"


def test_openmetrics_output_parses(rich: App) -> None:
    body, body_gz = rich.snapshot.openmetrics()
    assert body.endswith(b"# EOF\n")
    assert gzip.decompress(body_gz) == body
    fams = {f.name: f for f in om_families(body.decode())}
    assert fams["spend_exporter_api_requests"].type == "counter"
    assert any(s.name == "spend_exporter_api_requests_total" for s in fams["spend_exporter_api_requests"].samples)
    text_fams = families(rich.exposition())
    for name, f in text_fams.items():
        assert name in fams, name
        assert sorted((s.name, sorted(s.labels.items()), s.value) for s in f.samples) == sorted(
            (s.name, sorted(s.labels.items()), s.value) for s in fams[name].samples
        )
    assert rich.snapshot.openmetrics() is rich.snapshot.openmetrics(), "rendered once, on first request"


def test_snapshot_is_prebuilt_and_gzipped(rich: App) -> None:
    snap = rich.snapshot
    assert gzip.decompress(snap.text_gz) == snap.text
    assert rich.snapshot is snap, "reading the snapshot builds nothing"
    assert snap.series == sum(1 for line in snap.text.splitlines() if not line.startswith(b"#"))
