"""Bad provider data through the real engine: a ``focus`` source over crafted FOCUS files.

Each case checks what happens to the bad rows (skipped and counted, or a clear source error), that the
good figures beside them survive to the cent, and that the exposition passes ``promtool check metrics``
and round-trips through prometheus_client's text and OpenMetrics parsers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families

from exporter.app import App, build_app
from exporter.config import parse_config
from exporter.exposition import MAX_LABEL_VALUE_BYTES
from exporter.status import status_report
from tests.helpers import series

UTC = dt.UTC
DAY = dt.timedelta(days=1)
NOW = dt.datetime(2025, 3, 15, 10, 30, tzinfo=UTC)
MONTH = [dt.date(2025, 3, 1) + i * DAY for i in range(14)]  # March 1..14: the complete days of this month


def promtool_ok(app: App) -> None:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    text = app.snapshot.text
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert check.returncode == 0, (check.stdout + check.stderr).decode(errors="replace")[:2000]
    text.decode("utf-8")  # strict: the exposition is valid UTF-8
    om_body, _ = app.snapshot.openmetrics()
    assert list(om_families(om_body.decode("utf-8")))  # parses as OpenMetrics too


def mtd(app: App, key: str = "service_name") -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, v in series(app.exposition(), "spend_cost_month_to_date_usd").items():
        k = dict(labels)[key]
        out[k] = out.get(k, 0.0) + v
    return out


def one(app: App, family: str) -> float:
    (v,) = series(app.exposition(), family).values()
    return v


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Any]:
    apps: list[App] = []

    def make(**top: Any) -> App:
        cfg = parse_config(
            {
                "cache_path": str(tmp_path / "cache.sqlite"),
                "sources": [
                    {
                        "name": "focus",
                        "type": "focus",
                        "paths": [str(tmp_path / "exports" / "*.csv"), str(tmp_path / "exports" / "*.parquet")],
                        "jitter": 0,
                    }
                ],
                "budgets": [{"name": "total", "amount_usd": 10000}],
                **top,
            }
        )
        app = build_app(cfg, now=lambda: NOW)
        apps.append(app)
        return app

    yield make
    for a in apps:
        a.close()


def good_rows(focus: Any) -> list[dict[str, Any]]:
    """The figures that must survive every case: $10 a day of EC2 for the search team."""
    return [focus.daily(d, 10, ServiceName="Amazon EC2", Tags='{"team": "search"}') for d in MONTH]


def assert_good_survives(app: App) -> None:
    assert mtd(app)["Amazon EC2"] == pytest.approx(140.0)
    assert series(app.exposition(), "spend_cost_daily_usd")[
        (
            ("account_id", "111111111111"),
            ("model", ""),
            ("provider", "aws"),
            ("service_name", "Amazon EC2"),
            ("team", "search"),
        )
    ] == pytest.approx(10.0)
    assert one(app, "spend_exporter_source_up") == 1.0


# --------------------------------------------------------------------------- currency


def test_currency_without_a_rate_is_skipped_counted_and_logged(
    env: Any, focus: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = good_rows(focus)
    for d in MONTH:
        rows.append(focus.daily(d, 5, ServiceName="Azure VM", BillingCurrency="EUR"))
        rows.append(focus.daily(d, 1000, ServiceName="Tokyo", BillingCurrency="JPY"))
        rows.append(focus.daily(d, 7, ServiceName="Blank", BillingCurrency=""))
        # one series billed in two currencies: the USD part stays, the JPY part is skipped
        rows.append(focus.daily(d, 2, ServiceName="Mixed"))
        rows.append(focus.daily(d, 300, ServiceName="Mixed", BillingCurrency="jpy"))
    focus.write(tmp_path / "exports" / "a.csv", rows)
    app = env(currency_rates={"EUR": 1.08})
    with caplog.at_level(logging.WARNING):
        assert app.refresh("focus").ok, "a missing rate is a skip, not a source error"
    got = mtd(app)
    assert got == pytest.approx({"Amazon EC2": 140.0, "Azure VM": 14 * 5 * 1.08, "Mixed": 28.0})
    assert "Tokyo" not in got and "Blank" not in got, "never read as USD"
    assert one(app, "spend_exporter_source_records_skipped") == 14 * 3
    st = status_report(app)["sources"][0]
    assert st["records_skipped_last_refresh"] == {"no_rate_JPY": 28, "no_rate_BLANK": 14}
    assert st["month_to_date_usd"] == pytest.approx(140 + 14 * 5 * 1.08 + 28)
    assert one(app, "spend_budget_spent_usd") == pytest.approx(140 + 14 * 5 * 1.08 + 28)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("JPY" in m and "currency_rates" in m and "28" in m for m in msgs), msgs
    assert any("BLANK" in m for m in msgs), msgs
    assert_good_survives(app)
    promtool_ok(app)


# --------------------------------------------------------------------------- amounts


BAD_AMOUNTS = ["NaN", "nan", "inf", "-inf", "Infinity", "-Infinity", "1e400", "-1e400", "12,50", "$3", "1.2.3"]


def test_nan_and_infinite_amounts_are_skipped_and_counted(
    env: Any, focus: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = good_rows(focus)
    day = dt.date(2025, 3, 10)
    for bad in BAD_AMOUNTS:
        rows.append(focus.daily(day, bad, ServiceName="Amazon EC2", Tags='{"team": "search"}'))  # beside good rows
        rows.append(focus.daily(day, bad, ServiceName=f"only {bad}"))  # a series with nothing else
    # a NaN token count must not sink the refresh either (int(NaN) raises)
    rows.append(
        focus.daily(day, 1.0, ServiceName="GPT", x_Model="gpt-4o", ConsumedQuantity="NaN", ConsumedUnit="Tokens")
    )
    rows.append(focus.daily(day, 2.0, ServiceName="GPT", x_Model="gpt-4o", ConsumedQuantity=500, ConsumedUnit="Tokens"))
    focus.write(tmp_path / "exports" / "a.csv", rows)
    # Parquet keeps typed doubles: NaN and ±inf arrive as numbers, not text
    start = dt.datetime.combine(day, dt.time(), tzinfo=UTC)
    pq.write_table(
        pa.table(
            {
                "ChargePeriodStart": pa.array([start] * 4, pa.timestamp("us", tz="UTC")),
                "ChargePeriodEnd": pa.array([start + DAY] * 4, pa.timestamp("us", tz="UTC")),
                "ProviderName": ["AWS"] * 4,
                "SubAccountId": ["111111111111"] * 4,
                "ServiceName": ["Parquet"] * 4,
                "BilledCost": pa.array([float("nan"), float("inf"), float("-inf"), 4.25], pa.float64()),
                "BillingCurrency": ["USD"] * 4,
            }
        ),
        tmp_path / "exports" / "b.parquet",
    )
    app = env()
    with caplog.at_level(logging.WARNING):
        assert app.refresh("focus").ok
    got = mtd(app)
    assert got == pytest.approx({"Amazon EC2": 140.0, "GPT": 3.0, "Parquet": 4.25})
    assert not [k for k in got if k.startswith("only")]
    tokens = series(app.exposition(), "spend_ai_tokens_month_to_date")
    assert sum(tokens.values()) == 500
    # the NaN token count keeps its row's cost (the amount is fine) and drops only its tokens
    bad_rows = 2 * len(BAD_AMOUNTS) + 3
    assert status_report(app)["sources"][0]["records_skipped_last_refresh"] == {"unparsable_row": bad_rows}
    assert one(app, "spend_exporter_source_records_skipped") == bad_rows
    assert any(f"{bad_rows} FOCUS rows" in r.getMessage() for r in caplog.records)
    for line in app.exposition().splitlines():
        assert not line.endswith(("NaN", "Inf")), f"a non-finite figure is served: {line}"
    assert_good_survives(app)
    promtool_ok(app)


# --------------------------------------------------------------------------- dates


def test_absurd_dates_never_reach_a_figure(env: Any, focus: Any, tmp_path: Path) -> None:
    def row(start: str, end: str, svc: str) -> dict[str, Any]:
        return {"ChargePeriodStart": start, "ChargePeriodEnd": end, "BilledCost": 1000, "ServiceName": svc}

    outside = [
        row("1900-01-01T00:00:00Z", "1900-01-02T00:00:00Z", "year 1900"),
        row("2999-12-31T00:00:00Z", "3000-01-01T00:00:00Z", "year 2999"),
        row("1969-12-31T23:00:00Z", "1970-01-01T00:00:00Z", "before epoch"),
        row("0001-01-01", "0001-01-02", "year 1"),
        row("99999-01-01", "99999-01-02", "year 99999"),
        row("2025-03-16T00:00:00Z", "2025-03-17T00:00:00Z", "tomorrow"),  # the future by one day
    ]
    unparsable = [
        row("2025-02-30", "2025-03-01", "Feb 30"),
        row("yesterday", "today", "words"),
        row("", "2025-03-11T00:00:00Z", "blank"),
        row("2025-13-01T00:00:00Z", "2025-13-02T00:00:00Z", "month 13"),
        row("2025-03-10T25:00:00Z", "2025-03-11T00:00:00Z", "hour 25"),
    ]
    # in the window, with an absurd end: counted, and data_through stays at most "now"
    weird_end = [
        row("2025-03-12T00:00:00Z", "99999-01-01", "end 99999"),
        row("2025-03-12T00:00:00Z", "2999-01-01T00:00:00Z", "end 2999"),
        row("2025-03-12T00:00:00Z", "not a date", "end unparsable"),
    ]
    focus.write(tmp_path / "exports" / "a.csv", good_rows(focus) + outside + unparsable + weird_end)
    app = env()
    out = app.refresh("focus")
    assert out.ok, out.error
    got = mtd(app)
    assert got == pytest.approx({"Amazon EC2": 140.0, "end 99999": 1000, "end 2999": 1000, "end unparsable": 1000})
    text = app.exposition()
    for svc in [r["ServiceName"] for r in outside + unparsable]:
        assert f'"{svc}"' not in text, f"{svc} reached the exposition"
    # rows outside the window are history the export holds, not errors; unparsable ones are counted
    assert status_report(app)["sources"][0]["records_skipped_last_refresh"] == {"unparsable_row": len(unparsable)}
    assert one(app, "spend_exporter_source_data_through_timestamp_seconds") <= NOW.timestamp()
    assert_good_survives(app)
    promtool_ok(app)


# --------------------------------------------------------------------------- label values


NASTY = [
    'double "quotes"',
    "back\\slash \\n not a newline",
    "new\nline",
    "carriage\rreturn and\ttab",
    "trailing backslash\\",
    "{braces}=,;#",
    'all of it: \\"\n\\',
    "emoji 💸 and RTL \u202e and é",
]


def test_label_values_with_quotes_newlines_and_backslashes_round_trip(env: Any, focus: Any, tmp_path: Path) -> None:
    rows = good_rows(focus)
    for i, name in enumerate(NASTY):
        for d in MONTH:
            rows.append(
                focus.daily(
                    d,
                    i + 1,
                    ServiceName=name,
                    SubAccountId=f"acct-{i}",
                    SubAccountName=f"name {name}",
                    Tags=json.dumps({"team": f"team {name}"}),
                )
            )
    focus.write(tmp_path / "exports" / "a.csv", rows)
    app = env()
    assert app.refresh("focus").ok
    got = mtd(app)
    for i, name in enumerate(NASTY):
        assert got[name] == pytest.approx(14 * (i + 1)), repr(name)
    teams = {dict(k)["service_name"]: dict(k)["team"] for k in series(app.exposition(), "spend_cost_daily_usd")}
    assert {n: teams[n] for n in NASTY} == {n: f"team {n}" for n in NASTY}
    info = {dict(k)["account_id"]: dict(k)["account_name"] for k in series(app.exposition(), "spend_account_info")}
    assert {info[f"acct-{i}"] for i in range(len(NASTY))} == {f"name {n}" for n in NASTY}
    for line in app.snapshot.text.split(b"\n")[:-1]:
        assert line.startswith((b"# HELP ", b"# TYPE ", b"spend_")), f"a raw newline split a sample: {line[:80]!r}"
    om_body, _ = app.snapshot.openmetrics()
    om = {
        s.labels["service_name"]
        for f in om_families(om_body.decode())
        if f.name == "spend_cost_daily_usd"
        for s in f.samples
    }
    assert set(NASTY) <= om
    assert_good_survives(app)
    promtool_ok(app)


def test_invalid_utf8(env: Any, focus: Any, tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    rows = good_rows(focus)
    # a JSON escape of a lone surrogate (what a tool that writes bytes as \\udcXX leaves in the Tags column)
    rows += [focus.daily(d, 3, ServiceName="Tagged", Tags='{"team": "t\\udcff\\ud800x"}') for d in MONTH]
    focus.write(exports / "a.csv", rows)
    # Parquet: invalid bytes in a binary column
    start = dt.datetime.combine(MONTH[0], dt.time(), tzinfo=UTC)
    pq.write_table(
        pa.table(
            {
                "ChargePeriodStart": pa.array([start], pa.timestamp("us", tz="UTC")),
                "ChargePeriodEnd": pa.array([start + DAY], pa.timestamp("us", tz="UTC")),
                "ProviderName": ["AWS"],
                "SubAccountId": ["111111111111"],
                "ServiceName": pa.array([b"bin\xff\xfe\xc3("], pa.binary()),
                "BilledCost": [4.0],
                "BillingCurrency": ["USD"],
            }
        ),
        exports / "b.parquet",
    )
    app = env()
    out = app.refresh("focus")
    assert out.ok, out.error
    got = mtd(app)
    assert got["Tagged"] == pytest.approx(42.0)
    teams = {dict(k)["team"] for k in series(app.exposition(), "spend_cost_month_to_date_usd")}
    assert "t\ufffd\ufffdx" in teams, teams  # each lone surrogate became U+FFFD
    binary = [k for k in got if k.startswith("bin")]
    assert binary and got[binary[0]] == pytest.approx(4.0)  # DuckDB writes the bytes as \xFF escapes
    assert_good_survives(app)
    promtool_ok(app)

    # raw invalid bytes in a CSV: DuckDB refuses the file. The source goes down with an error naming the file
    # and the reason, and the last good figures are still served (never a partial read of the file)
    (exports / "b.parquet").unlink()
    data = (exports / "a.csv").read_bytes().replace(b"Tagged", b"Tag\xff\xfeged")
    (exports / "a.csv").write_bytes(data)
    before = mtd(app)
    out = app.refresh("focus")
    assert not out.ok
    assert out.error is not None and "utf-8" in out.error and "a.csv" in out.error, out.error
    assert one(app, "spend_exporter_source_up") == 0.0
    assert mtd(app) == before
    assert "utf-8" in status_report(app)["sources"][0]["last_error"]
    promtool_ok(app)


def test_one_megabyte_label_values_are_truncated_and_counted(env: Any, focus: Any, tmp_path: Path) -> None:
    mb = 1 << 20
    big_service = "S" * mb
    big_team = "ü" * (mb // 2)  # 1 MiB of two-byte characters: the cut must fall on a character boundary
    big_account = "A" * (mb - 10)
    twin = "S" * MAX_LABEL_VALUE_BYTES + "a different tail" * 1000  # differs from big_service only after the cut
    rows = good_rows(focus)
    big_days = MONTH[-3:]  # a few days keep the file (and the test) small: each day is 3 MB of labels
    for d in big_days:
        rows.append(focus.daily(d, 1, ServiceName=big_service))
        rows.append(focus.daily(d, 0.5, ServiceName=twin))
        rows.append(focus.daily(d, 2, ServiceName="Team", Tags=json.dumps({"team": big_team}, ensure_ascii=False)))
    rows.append(focus.daily(MONTH[0], 3, ServiceName="Acct", SubAccountId="999", SubAccountName=big_account))
    focus.write(tmp_path / "exports" / "a.csv", rows)
    app = env()
    assert app.refresh("focus").ok
    text = app.exposition()
    cut_service = "S" * MAX_LABEL_VALUE_BYTES + "..."
    cut_team = "ü" * (MAX_LABEL_VALUE_BYTES // 2) + "..."
    got = mtd(app)
    n = len(big_days)
    assert got[cut_service] == pytest.approx(n * 1.5), "the two values equal up to the cut are one series"
    assert got["Team"] == pytest.approx(n * 2.0)
    assert mtd(app, key="team")[cut_team] == pytest.approx(n * 2.0)
    info = {dict(k)["account_id"]: dict(k)["account_name"] for k in series(text, "spend_account_info")}
    assert info["999"] == "A" * MAX_LABEL_VALUE_BYTES + "..."
    # every label value of every sample is at most the limit (plus the "..." mark)
    longest = max(len(v.encode()) for k in series(text, "spend_cost_month_to_date_usd") for _, v in k)
    assert longest == MAX_LABEL_VALUE_BYTES + 3
    assert len(app.snapshot.text) < 2 * mb, "no 1 MB value reached the exposition"
    # the cache never held the long values either
    (held,) = app.store.query(
        "SELECT MAX(LENGTH(CAST(service_name AS BLOB))), MAX(LENGTH(CAST(team AS BLOB))) FROM cost"
    )
    assert max(held) == MAX_LABEL_VALUE_BYTES + 3
    # counted: one per truncated value of each record (2 services and 1 team a day, and 1 account name)
    first = n * 3 + 1
    assert one(app, "spend_exporter_label_values_truncated_total") == first
    assert_good_survives(app)
    promtool_ok(app)
    # a counter: the next refresh (the restatement window) adds what it truncated again
    assert app.refresh("focus").ok
    second = app.exposition()
    window_days = len([d for d in big_days if d >= NOW.date() - 3 * DAY])
    assert one(app, "spend_exporter_label_values_truncated_total") == first + window_days * 3 + 1
    assert mtd(app)[cut_service] == pytest.approx(n * 1.5), "figures unchanged by refreshing"
    assert "# TYPE spend_exporter_label_values_truncated_total counter" in second


def test_the_engine_cleans_every_label_value_a_provider_returns() -> None:
    """What any provider hands over (JSON APIs can decode to lone surrogates) is cleaned before the cache."""
    from exporter.exposition import clean_label_value
    from exporter.model import AccountInfo, CostRecord, FetchResult, HourlyUsage, ProviderForecast, UsageRecord

    day = dt.date(2025, 3, 10)
    long = "x" * (MAX_LABEL_VALUE_BYTES + 1)
    result = FetchResult(
        days=[day],
        costs=[
            CostRecord(day, "aws", "a\udcff", "svc", 1.0, team_tag="t\ud800"),
            CostRecord(day, "aws", "acct", long, 2.0, model="m" * 5000),
            CostRecord(day, "aws", "acct", "plain", 3.0),
        ],
        usage=[UsageRecord(day, "openai", "proj", "api", "€" * 2000)],  # 6000 bytes
        hourly=[HourlyUsage(NOW, "openai", "proj", "api", "gpt\udcff")],
        accounts=[AccountInfo("aws", "acct", "name\udc80" + long)],
        forecasts=[ProviderForecast("aws", "acct\ud83d", 5.0)],
    )
    assert result.clean_labels(clean_label_value) == 4  # service, model, usage model, account name
    c0, c1, c2 = result.costs
    assert (c0.account_id, c0.team_tag) == ("a\ufffd", "t\ufffd")
    assert c1.service_name == "x" * MAX_LABEL_VALUE_BYTES + "..." and c1.model == "m" * MAX_LABEL_VALUE_BYTES + "..."
    assert c2 == CostRecord(day, "aws", "acct", "plain", 3.0)
    assert result.usage[0].model == "€" * (MAX_LABEL_VALUE_BYTES // 3) + "...", "cut on a character boundary"
    assert result.hourly is not None and result.hourly[0].model == "gpt\ufffd"
    assert result.accounts[0].account_name.startswith("name\ufffdxxx")
    assert result.forecasts is not None and result.forecasts[0].account_id == "acct\ufffd"
    for rec in [*result.costs, *result.usage, *result.hourly, *result.accounts, *result.forecasts]:
        for v in vars(rec).values() if hasattr(rec, "__dict__") else [getattr(rec, f) for f in rec.__slots__]:
            if isinstance(v, str):
                v.encode("utf-8")  # strict: storable in SQLite and servable
                assert len(v.encode()) <= MAX_LABEL_VALUE_BYTES + 3
