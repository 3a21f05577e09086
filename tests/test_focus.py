"""The FOCUS source over messy CSV and Parquet exports, through DuckDB.

Most tests call the provider directly (``fetch(window)``); currency conversion, skipped records and
files appearing later go through the engine, because that is where those happen.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import App
from exporter.cli import assemble
from exporter.config import parse_config
from exporter.model import FetchResult, FetchWindow
from exporter.providers.base import ProviderContext, SourceError
from exporter.providers.focus import FocusProvider
from exporter.providers.focus_records import normalise_provider
from exporter.scheduler import Scheduler
from exporter.sources.focus import FocusSource
from exporter.status import status_report

UTC = dt.UTC
NOW = dt.datetime(2025, 3, 15, 10, 30, tzinfo=UTC)
WINDOW = FetchWindow(start=dt.date(2025, 3, 1), end=dt.date(2025, 3, 15), now=NOW)


def provider(
    tmp_path: Path, cost_column: str = "BilledCost", keys: tuple[str, ...] = ("team", "Team")
) -> FocusProvider:
    raw = {
        "name": "f",
        "type": "focus",
        "paths": [str(tmp_path / "*.csv"), str(tmp_path / "**" / "*.parquet")],
        "cost_column": cost_column,
    }
    src = parse_config({"sources": [raw]}).sources[0]
    assert isinstance(src, FocusSource)
    return FocusProvider(src, ProviderContext("f", team_tag_keys=list(keys)))


def fetch(tmp_path: Path, window: FetchWindow = WINDOW, **kw: Any) -> FetchResult:
    return provider(tmp_path, **kw).fetch(window)


def cost_by(result: FetchResult, *fields: str) -> dict[Any, float]:
    out: dict[Any, float] = defaultdict(float)
    for c in result.costs:
        key = tuple(getattr(c, f) for f in fields)
        out[key[0] if len(key) == 1 else key] += c.amount
    return dict(out)


def raw_row(start: str, end: str, cost: str, **cols: str) -> dict[str, str]:
    return {"ChargePeriodStart": start, "ChargePeriodEnd": end, "BilledCost": cost, **cols}


def to_parquet(csv_path: Path, parquet_path: Path) -> None:
    """Typed columns, as AWS Data Exports and Azure FocusCost write them."""
    con = duckdb.connect()
    # materialised first: DuckDB would push the casts into the CSV reader, which fails on "NULL"
    con.execute(f"CREATE TABLE t AS SELECT * FROM read_csv('{csv_path}', all_varchar = true, header = true)")
    con.execute(
        "COPY (SELECT * REPLACE (TRY_CAST(BilledCost AS DOUBLE) AS BilledCost, "
        "TRY_CAST(EffectiveCost AS DOUBLE) AS EffectiveCost, "
        "CAST(ChargePeriodStart AS TIMESTAMPTZ) AS ChargePeriodStart, "
        "CAST(ChargePeriodEnd AS TIMESTAMPTZ) AS ChargePeriodEnd, "
        "TRY_CAST(ConsumedQuantity AS DOUBLE) AS ConsumedQuantity) "
        f"FROM t) TO '{parquet_path}' (FORMAT parquet)"
    )
    con.close()
    csv_path.unlink()


# --------------------------------------------------------------------------- timestamps


TIMESTAMPS = [
    ("2025-03-10T00:00:00Z", dt.date(2025, 3, 10)),
    ("2025-03-10 00:00:00", dt.date(2025, 3, 10)),  # no T, no zone: UTC
    ("2025-03-10T05:06:07.123Z", dt.date(2025, 3, 10)),
    ("2025-03-10T05:06:07.123456+00:00", dt.date(2025, 3, 10)),
    ("2025-03-10 23:59:59.999", dt.date(2025, 3, 10)),
    ("2025-03-11T01:00:00+02:00", dt.date(2025, 3, 10)),  # 23:00 UTC the day before
    ("2025-03-10T22:30:00-05:00", dt.date(2025, 3, 11)),  # 03:30 UTC the day after
    ("2025-03-11T00:00Z", dt.date(2025, 3, 11)),  # OCI: no seconds
    ("2025-03-11", dt.date(2025, 3, 11)),
    ("2025-03-11T00:00:00.000000000Z", dt.date(2025, 3, 11)),  # nanoseconds
    ("2025-03-11T12:00:00+0530", dt.date(2025, 3, 11)),
    ("  2025-03-11T12:00:00Z  ", dt.date(2025, 3, 11)),
]


def test_timestamps_in_every_shape(tmp_path: Path, focus: Any) -> None:
    rows = [raw_row(ts, "", "1.5", ServiceName=f"svc-{i:02d}") for i, (ts, _) in enumerate(TIMESTAMPS)]
    focus.write(tmp_path / "a.csv", rows)
    result = fetch(tmp_path)
    got = {c.service_name: c.day for c in result.costs}
    assert got == {f"svc-{i:02d}": day for i, (_, day) in enumerate(TIMESTAMPS)}
    assert all(c.amount == 1.5 for c in result.costs)
    assert result.days == WINDOW.days()


def test_rows_outside_the_window_are_left_out(tmp_path: Path, focus: Any) -> None:
    focus.write(
        tmp_path / "a.csv",
        [
            raw_row("2025-02-28T23:59:59Z", "", "1"),
            raw_row("2025-03-01T00:00:00Z", "", "2"),
            raw_row("2025-03-15T23:00:00Z", "", "4"),
            raw_row("2025-03-16T00:00:00Z", "", "8"),
        ],
    )
    assert cost_by(fetch(tmp_path), "day") == {dt.date(2025, 3, 1): 2.0, dt.date(2025, 3, 15): 4.0}


def test_only_the_window_is_aggregated_but_older_rows_still_count(tmp_path: Path, focus: Any) -> None:
    """A warm refresh's window starts a few days back: rows before it are not aggregated by day and series, yet they
    still name accounts and count as unparsable, and hourly usage of the last 24 hours is kept across its start."""
    rows = [
        raw_row("2025-02-01T00:00:00Z", "", "5", SubAccountId="acc-1", SubAccountName="Old name", ServiceName="s1"),
        raw_row("2025-02-01T00:00:00Z", "", "n/a", SubAccountId="acc-1", ServiceName="s2"),
        raw_row("2025-03-15T01:00:00Z", "", "3", SubAccountId="acc-1", ServiceName="s1"),
    ]
    for h in (20, 23):  # yesterday, before the window, but within the last 24 complete hours
        t = dt.datetime(2025, 3, 14, h, tzinfo=UTC)
        rows.append(
            raw_row(
                t.isoformat(),
                (t + dt.timedelta(hours=1)).isoformat(),
                "0.5",
                ProviderName="OpenAI",
                SubAccountId="proj",
                ServiceName="responses",
                x_Model="gpt-5",
                x_TokenType="input",
                ConsumedQuantity="100",
                ConsumedUnit="Tokens",
            )
        )
    focus.write(tmp_path / "a.csv", rows)
    result = fetch(tmp_path, FetchWindow(start=NOW.date(), end=NOW.date(), now=NOW))
    assert cost_by(result, "day", "service_name") == {(dt.date(2025, 3, 15), "s1"): 3.0}
    assert result.usage == []
    assert result.hourly is not None
    assert sorted(h.hour_start.hour for h in result.hourly) == [20, 23]
    assert ("acc-1", "Old name") in {(a.account_id, a.account_name) for a in result.accounts}
    assert result.skipped == {"unparsable_row": 1}


def test_duckdb_settings_do_not_invalidate_the_cache() -> None:
    from exporter.app import _source_hash

    base = {"name": "f", "type": "focus", "paths": ["x.csv"]}
    hashes = {
        _source_hash(parse_config({"sources": [{**base, **extra}]}).sources[0])
        for extra in ({}, {"memory_limit": "2GB", "threads": 8}, {"memory_limit": None})
    }
    assert len(hashes) == 1


def test_unparsable_rows_are_left_out_with_a_warning(
    tmp_path: Path, focus: Any, caplog: pytest.LogCaptureFixture
) -> None:
    focus.write(
        tmp_path / "a.csv",
        [
            raw_row("2025-03-10T00:00:00Z", "", "3"),
            raw_row("03/10/2025", "", "100"),  # not ISO 8601
            raw_row("2025-03-10T00:00:00Z", "", "n/a"),
            raw_row("NULL", "", "100"),
        ],
    )
    with caplog.at_level(logging.WARNING):
        result = fetch(tmp_path)
    assert cost_by(result, "day") == {dt.date(2025, 3, 10): 3.0}
    assert "3 FOCUS rows have no parsable ChargePeriodStart or cost" in caplog.text


# --------------------------------------------------------------------------- NULLs, enums, signs


def test_literal_null_and_empty_strings(tmp_path: Path, focus: Any) -> None:
    day = "2025-03-10T00:00:00Z"
    focus.write(
        tmp_path / "a.csv",
        [
            raw_row(day, "", "1", ProviderName="NULL", ServiceProviderName="Amazon Web Services", Tags="NULL"),
            raw_row(
                day,
                "",
                "2",
                SubAccountId="",
                BillingAccountId="999999999999",
                BillingAccountName="Payer",
                SubAccountName="NULL",
                Tags="",
            ),
            raw_row(day, "", "4", SubAccountId="null", BillingAccountId="888", ServiceName="", Tags="{}"),
            raw_row(day, "", "NULL", ServiceName="Nothing"),
            raw_row(day, "", "", ServiceName="Nothing"),
            raw_row(day, "", "8", ServiceName="Tagged", Tags='{"team": "NULL", "Team": "  "}'),
            raw_row(day, "", "16", ServiceName="Spaces", SubAccountName="  Prod  ", Tags='{"team": " search "}'),
        ],
    )
    result = fetch(tmp_path)
    recs = sorted(result.costs, key=lambda c: c.amount)
    assert [(c.provider, c.account_id, c.service_name, c.team_tag, c.amount) for c in recs] == [
        ("aws", "111111111111", "Amazon EC2", None, 1.0),
        ("aws", "999999999999", "Amazon EC2", None, 2.0),
        ("aws", "888", "", None, 4.0),
        ("aws", "111111111111", "Tagged", None, 8.0),
        ("aws", "111111111111", "Spaces", "search", 16.0),
    ]
    names = {(a.provider, a.account_id): a.account_name for a in result.accounts}
    assert names[("aws", "999999999999")] == "Payer"
    assert names[("aws", "111111111111")] == "Prod"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("AWS", "aws"),
        ("aws", "aws"),
        ("Amazon Web Services", "aws"),
        ("  amazon web services ", "aws"),
        ("Microsoft", "azure"),
        ("Microsoft Azure", "azure"),
        ("Google Cloud", "gcp"),
        ("GOOGLE CLOUD PLATFORM", "gcp"),
        ("Oracle", "oci"),
        ("Oracle Cloud Infrastructure", "oci"),
        ("OpenAI", "openai"),
        ("Anthropic", "anthropic"),
        ("Snowflake", "snowflake"),
        ("Some Vendor Inc", "some_vendor_inc"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_provider_name_normalisation(name: str | None, expected: str) -> None:
    assert normalise_provider(name) == expected


def test_mixed_case_enums(tmp_path: Path, focus: Any) -> None:
    day, end = "2025-03-10T00:00:00Z", "2025-03-11T00:00:00Z"
    rows = [raw_row(day, end, "1", ProviderName=p) for p in ("AWS", "aws", "Amazon Web Services")]
    for unit, tt, n in (("TOKENS", "INPUT", 100), ("tokens", "Output", 20), ("Tokens", "Cache_Read", 5)):
        rows.append(
            raw_row(
                day,
                end,
                "0.5",
                ProviderName="OPENAI",
                ServiceName="chat",
                SubAccountId="proj_a",
                x_Model="gpt-4o",
                ConsumedUnit=unit,
                x_TokenType=tt,
                ConsumedQuantity=str(n),
            )
        )
    rows.append(
        raw_row(
            day,
            end,
            "0",
            ProviderName="openai",
            ServiceName="chat",
            SubAccountId="proj_a",
            x_Model="gpt-4o",
            ConsumedUnit="REQUESTS",
            ConsumedQuantity="7",
        )
    )
    focus.write(tmp_path / "a.csv", rows)
    result = fetch(tmp_path)
    assert cost_by(result, "provider") == {"aws": 3.0, "openai": 1.5}
    (usage,) = result.usage
    assert (usage.provider, usage.model, usage.day) == ("openai", "gpt-4o", dt.date(2025, 3, 10))
    assert usage.tokens == {"input": 100, "output": 20, "cache_read": 5}
    assert usage.requests == 7


def test_negative_costs(tmp_path: Path, focus: Any) -> None:
    focus.write(
        tmp_path / "a.csv",
        [
            raw_row("2025-03-10T00:00:00Z", "", "50.25"),
            raw_row("2025-03-10T00:00:00Z", "", "-20.00", ServiceName="Amazon EC2"),  # a credit
            raw_row("2025-03-11T00:00:00Z", "", "-12.5"),  # a refund larger than the day
            raw_row("2025-03-12T00:00:00Z", "", "-0.0001e2"),
        ],
    )
    assert cost_by(fetch(tmp_path), "day") == {
        dt.date(2025, 3, 10): pytest.approx(30.25),
        dt.date(2025, 3, 11): -12.5,
        dt.date(2025, 3, 12): pytest.approx(-0.01),
    }


def test_hourly_and_daily_periods_in_one_file(tmp_path: Path, focus: Any) -> None:
    rows = [raw_row("2025-03-13T00:00:00Z", "2025-03-14T00:00:00Z", "24", ServiceName="EC2")]
    start = dt.datetime(2025, 3, 14, tzinfo=UTC)
    for h in range(24):
        t = start + dt.timedelta(hours=h)
        e = t + dt.timedelta(hours=1)
        rows.append(raw_row(t.isoformat(), e.isoformat(), "1", ServiceName="EC2"))
        rows.append(
            raw_row(
                t.strftime("%Y-%m-%dT%H:%M:%SZ"),
                e.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "0.1",
                ProviderName="Anthropic",
                SubAccountId="wrk",
                ServiceName="messages",
                x_Model="claude-sonnet-4-5",
                x_TokenType="input",
                ConsumedQuantity="1000",
                ConsumedUnit="Tokens",
            )
        )
    # the current day, hour by hour up to now (10:30): 10:00 is not complete
    for h in range(11):
        t = NOW.replace(hour=h, minute=0)
        rows.append(
            raw_row(
                t.isoformat(),
                (t + dt.timedelta(hours=1)).isoformat(),
                "0.1",
                ProviderName="Anthropic",
                SubAccountId="wrk",
                ServiceName="messages",
                x_Model="claude-sonnet-4-5",
                x_TokenType="output",
                ConsumedQuantity="10",
                ConsumedUnit="Tokens",
            )
        )
    focus.write(tmp_path / "a.csv", rows)
    result = fetch(tmp_path)
    ec2 = {c.day: c.amount for c in result.costs if c.service_name == "EC2"}
    assert ec2 == {dt.date(2025, 3, 13): 24.0, dt.date(2025, 3, 14): pytest.approx(24.0)}
    usage = {u.day: u.tokens for u in result.usage}
    assert usage == {dt.date(2025, 3, 14): {"input": 24000}, dt.date(2025, 3, 15): {"output": 110}}
    # hourly buckets of the last 24 complete hours (09:00 is the last complete one), none of the daily rows
    assert result.hourly is not None
    hours = sorted(h.hour_start for h in result.hourly)
    assert hours[0] == dt.datetime(2025, 3, 14, 10, tzinfo=UTC)
    assert hours[-1] == dt.datetime(2025, 3, 15, 9, tzinfo=UTC)
    assert len(hours) == 24
    assert result.data_through == NOW, "the newest bucket ends at 11:00, after now"


# --------------------------------------------------------------------------- tags


def test_tags_keys_trimmed_and_case_insensitive(tmp_path: Path, focus: Any) -> None:
    day = "2025-03-10T00:00:00Z"
    tags = {
        "a": '{"team": "search"}',
        "b": '{" Team ": "payments"}',
        "c": '{"TEAM": "data"}',
        "d": '{"owner": "x", "team": " ml "}',
        "e": '{"cost-center": "42"}',
        "f": "not json",
        "g": '["team", "search"]',
        "h": '{"Team": 42}',
        "i": '{"project": "p", "OWNER": "ops"}',
    }
    focus.write(tmp_path / "a.csv", [raw_row(day, "", "1", ServiceName=s, Tags=t) for s, t in tags.items()])
    got = {c.service_name: c.team_tag for c in fetch(tmp_path).costs}
    assert got == {
        "a": "search",
        "b": "payments",
        "c": "data",
        "d": "ml",
        "e": None,
        "f": None,
        "g": None,
        "h": "42",
        "i": None,
    }
    # the order of team_tag_keys decides between two present keys
    got = {c.service_name: c.team_tag for c in fetch(tmp_path, keys=(" Owner", "team")).costs}
    assert got["d"] == "x" and got["i"] == "ops" and got["a"] == "search"


# --------------------------------------------------------------------------- formats and files


def test_csv_and_parquet_together(tmp_path: Path, focus: Any) -> None:
    day = "2025-03-10T00:00:00Z"
    focus.write(tmp_path / "a.csv", [raw_row(day, "2025-03-11T00:00:00Z", "10", ServiceName="From CSV")])
    sub = tmp_path / "azure" / "2025-03"
    sub.mkdir(parents=True)
    focus.write(
        sub / "part-0.csv",
        [
            raw_row(
                "2025-03-10T00:00:00+00:00",
                "2025-03-11T00:00:00+00:00",
                "5.5",
                ProviderName="Microsoft",
                ServiceName="From Parquet",
                SubAccountId="sub-1",
                SubAccountName="Prod",
                BillingCurrency="EUR",
                Tags='{"team": "data"}',
            ),
            raw_row(
                "2025-03-11T23:00:00-01:00",
                "2025-03-12T23:00:00-01:00",
                "NULL",
                ProviderName="Microsoft",
                ServiceName="From Parquet",
                SubAccountId="sub-1",
            ),
            raw_row(
                "2025-03-12T00:00:00Z",
                "2025-03-13T00:00:00Z",
                "-1.25",
                ProviderName="Microsoft",
                ServiceName="From Parquet",
                SubAccountId="sub-1",
                Tags="NULL",
                BillingCurrency=" usd ",
            ),
        ],
    )
    to_parquet(sub / "part-0.csv", sub / "part-0.parquet")
    result = fetch(tmp_path)
    got = {(c.service_name, c.day): (c.amount, c.currency, c.team_tag, c.provider) for c in result.costs}
    assert got == {
        ("From CSV", dt.date(2025, 3, 10)): (10.0, "USD", None, "aws"),
        ("From Parquet", dt.date(2025, 3, 10)): (5.5, "EUR", "data", "azure"),
        ("From Parquet", dt.date(2025, 3, 12)): (-1.25, "USD", None, "azure"),
    }
    assert ("azure", "sub-1", "Prod") in {(a.provider, a.account_id, a.account_name) for a in result.accounts}


def test_files_with_different_columns_and_header_case(tmp_path: Path, focus: Any) -> None:
    day = "2025-03-10T00:00:00Z"
    focus.write(tmp_path / "a.csv", [raw_row(day, "", "1")])
    # another export: fewer columns, another order, lower-case names
    (tmp_path / "b.csv").write_text(
        "servicename,billedcost,chargeperiodstart,providername\nS3,2.5,2025-03-10T00:00:00Z,aws\n"
    )
    assert cost_by(fetch(tmp_path), "service_name") == {"Amazon EC2": 1.0, "S3": 2.5}


def test_effective_cost_or_billed_cost(tmp_path: Path, focus: Any) -> None:
    focus.write(
        tmp_path / "a.csv",
        [
            raw_row("2025-03-10T00:00:00Z", "", "100", EffectiveCost="62.5"),  # a savings plan
            raw_row("2025-03-11T00:00:00Z", "", "0", EffectiveCost="62.5"),  # amortised upfront fee
            raw_row("2025-03-12T00:00:00Z", "", "10", EffectiveCost="NULL"),
        ],
    )
    assert cost_by(fetch(tmp_path), "day") == {
        dt.date(2025, 3, 10): 100.0,
        dt.date(2025, 3, 11): 0.0,
        dt.date(2025, 3, 12): 10.0,
    }
    assert cost_by(fetch(tmp_path, cost_column="EffectiveCost"), "day") == {
        dt.date(2025, 3, 10): 62.5,
        dt.date(2025, 3, 11): 62.5,
    }


def test_no_matching_files_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no files match .*\*\.csv"):
        fetch(tmp_path)


def test_corrupt_parquet_is_an_error(tmp_path: Path, focus: Any) -> None:
    focus.write(tmp_path / "a.csv", [raw_row("2025-03-10T00:00:00Z", "", "1")])
    (tmp_path / "b.parquet").write_bytes(b"PAR1\x00\x00garbage")
    with pytest.raises(SourceError, match="reading FOCUS files failed"):
        fetch(tmp_path)


def test_a_file_that_is_not_a_focus_export_is_an_error(tmp_path: Path, focus: Any) -> None:
    focus.write(tmp_path / "a.csv", [raw_row("2025-03-10T00:00:00Z", "", "1")])
    (tmp_path / "b.csv").write_text("name,amount\nfoo,1\n")
    with pytest.raises(SourceError):
        fetch(tmp_path)


# --------------------------------------------------------------------------- the reader process


def _children() -> set[int]:
    """This process's child processes (by any of its threads), from /proc."""
    out: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        out.update(int(p) for p in (task / "children").read_text().split())
    return out


def _fetch_in_thread(p: FocusProvider) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = p.fetch(WINDOW)
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_reader_that_dies_fails_the_refresh_and_says_how(tmp_path: Path, focus: Any) -> None:
    focus.write(tmp_path / "a.csv", [raw_row("2025-03-10T00:00:00Z", "", "1")])
    before = _children()
    t, box = _fetch_in_thread(provider(tmp_path))
    deadline = time.monotonic() + 30
    while not (new := _children() - before) and time.monotonic() < deadline:
        time.sleep(0.002)
    assert new, "no reader process was started"
    for pid in new:  # the reader needs a few hundred ms to import DuckDB: it is still at work
        os.kill(pid, signal.SIGKILL)
    t.join(30)
    assert isinstance(box.get("error"), SourceError)
    assert "the FOCUS reader process was killed by signal 9 (out of memory? see memory_limit)" in str(box["error"])
    assert _children() == before


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_reader_past_the_refresh_timeout_is_stopped(tmp_path: Path, focus: Any) -> None:
    focus.write(tmp_path / "a.csv", [raw_row("2025-03-10T00:00:00Z", "", "1")])
    src = provider(tmp_path).config
    deadline = time.monotonic() + 0.1  # shorter than the reader's start
    p = FocusProvider(src, ProviderContext("f", deadline=lambda: deadline))
    before = _children()
    t0 = time.monotonic()
    with pytest.raises(
        SourceError, match=r"reading the FOCUS files took longer than the 0.1s left for this refresh; stopped"
    ):
        p.fetch(WINDOW)
    assert time.monotonic() - t0 < 10
    assert _children() == before  # killed and reaped


def test_the_reader_reports_its_errors_as_the_source_error(tmp_path: Path, focus: Any) -> None:
    """A SourceError inside the reader comes back with its message, not as a crash of the reader."""
    focus.write(tmp_path / "a.csv", [raw_row("2025-03-10T00:00:00Z", "", "1")])
    (tmp_path / "b.parquet").write_bytes(b"PAR1\x00\x00garbage")
    with pytest.raises(SourceError) as e:
        fetch(tmp_path)
    assert str(e.value).startswith("reading FOCUS files failed: ")
    assert "reader process" not in str(e.value)


# --------------------------------------------------------------------------- through the engine


@pytest.fixture
def engine(tmp_path: Path, clock: Any) -> Iterator[Any]:
    apps: list[App] = []

    def make(**top: Any) -> tuple[App, Scheduler]:
        raw: dict[str, Any] = {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "sources": [
                {"name": "focus", "type": "focus", "paths": [str(tmp_path / "exports" / "*.csv")], "jitter": 0}
            ],
            **top,
        }
        app, scheduler = assemble(parse_config(raw), now=clock)
        apps.append(app)
        return app, scheduler

    yield make
    for a in apps:
        a.close()


def samples(app: App, family: str) -> dict[str, float]:
    """service_name (or source) → value."""
    return {
        s.labels.get("service_name", s.labels.get("source", "")): s.value
        for f in text_string_to_metric_families(app.exposition())
        for s in f.samples
        if s.name == family
    }


def test_currency_conversion_and_missing_rates(
    tmp_path: Path, focus: Any, engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rows = []
    for d in range(1, 16):
        day = dt.date(2025, 3, d)
        rows.append(focus.daily(day, 100.0, ServiceName="Euro", BillingCurrency="eur"))
        rows.append(focus.daily(day, 10.0, ServiceName="Dollar", BillingCurrency="USD"))
        rows.append(focus.daily(day, 5000.0, ServiceName="Yen", BillingCurrency="JPY"))
        rows.append(focus.daily(day, 1.0, ServiceName="Blank", BillingCurrency=""))
    focus.write(tmp_path / "exports" / "a.csv", rows)
    app, _ = engine(currency_rates={"EUR": 1.08})
    with caplog.at_level(logging.WARNING):
        (out,) = app.refresh_all()
    assert out.ok
    mtd = samples(app, "spend_cost_month_to_date_usd")
    assert mtd == {"Euro": pytest.approx(15 * 108.0), "Dollar": pytest.approx(150.0)}, "no rate: never taken as USD"
    assert samples(app, "spend_exporter_source_records_skipped") == {"focus": 30.0}
    st = status_report(app)["sources"][0]
    assert st["records_skipped_last_refresh"] == {"no_rate_JPY": 15, "no_rate_BLANK": 15}
    assert "currency with no rate (JPY)" in caplog.text
    assert "add it to currency_rates" in caplog.text


def test_files_added_later_are_picked_up(tmp_path: Path, focus: Any, engine: Any, clock: Any) -> None:
    focus.write(tmp_path / "exports" / "2025-03-a.csv", [focus.daily(dt.date(2025, 3, 14), 10.0, ServiceName="A")])
    app, scheduler = engine()
    scheduler.run_pending()
    assert samples(app, "spend_cost_month_to_date_usd") == {"A": 10.0}
    focus.write(tmp_path / "exports" / "2025-03-b.csv", [focus.daily(dt.date(2025, 3, 14), 2.0, ServiceName="B")])
    clock.advance(minutes=30)
    assert scheduler.run_pending() == [], "not before the interval"
    assert samples(app, "spend_cost_month_to_date_usd") == {"A": 10.0}
    clock.advance(minutes=30)
    assert scheduler.run_pending() == ["focus"]
    assert samples(app, "spend_cost_month_to_date_usd") == {"A": 10.0, "B": 2.0}


def test_accounts_teams_and_models_reach_metrics(tmp_path: Path, focus: Any, engine: Any) -> None:
    rows = [
        focus.daily(
            dt.date(2025, 3, 14),
            3.0,
            ProviderName="OpenAI",
            SubAccountId="proj_x",
            SubAccountName="X",
            ServiceName="chat",
            x_Model="gpt-4o",
            x_TokenType="input",
            ConsumedQuantity=1000,
            ConsumedUnit="Tokens",
        ),
        focus.daily(dt.date(2025, 3, 14), 7.0, ServiceName="Tagged", Tags='{"Team": "payments"}'),
    ]
    focus.write(tmp_path / "exports" / "a.csv", rows)
    app, _ = engine(
        attribution={"team_tag_keys": ["team"], "rules": [{"match": {"account_id": "proj_x"}, "team": "ml"}]}
    )
    app.refresh_all()
    fams = {f.name: f for f in text_string_to_metric_families(app.exposition())}
    daily = {s.labels["service_name"]: s.labels for s in fams["spend_cost_daily_usd"].samples}
    assert (
        daily["chat"]["team"] == "ml" and daily["chat"]["model"] == "gpt-4o" and daily["chat"]["provider"] == "openai"
    )
    assert daily["Tagged"]["team"] == "payments"
    info = [s.labels for s in fams["spend_account_info"].samples]
    assert {"provider": "openai", "account_id": "proj_x", "account_name": "X"} in info
    tokens = {s.labels["token_type"]: s.value for s in fams["spend_ai_tokens_month_to_date"].samples}
    assert tokens == {"input": 1000.0, "output": 0.0, "cache_read": 0.0, "cache_write": 0.0}


def test_one_hour_cache_writes_from_focus_are_kept_apart(tmp_path: Path, focus: Any, engine: Any) -> None:
    """``x_TokenType`` cache_write_1h: shown within cache_write, priced at its own rate (the price ratio is 1)."""
    day = dt.date(2025, 3, 14)

    def row(token_type: str, usd: float) -> dict[str, Any]:
        return focus.daily(
            day,
            usd,
            ProviderName="Anthropic",
            SubAccountId="wrkspc_x",
            ServiceName="messages",
            x_Model="claude-sonnet-4-20250514",
            x_TokenType=token_type,
            ConsumedQuantity=1_000_000,
            ConsumedUnit="Tokens",
        )

    # Claude Sonnet 4's list prices: 5-minute writes $3.75, 1-hour writes $6.00 per 1M tokens
    focus.write(tmp_path / "exports" / "a.csv", [row("cache_write_5m", 3.75), row("cache_write_1h", 6.00)])
    app, _ = engine()
    app.refresh_all()
    fams = {f.name: f for f in text_string_to_metric_families(app.exposition())}
    tokens = {s.labels["token_type"]: s.value for s in fams["spend_ai_tokens_month_to_date"].samples}
    assert tokens == {"input": 0.0, "output": 0.0, "cache_read": 0.0, "cache_write": 2_000_000.0}
    ratio = {s.labels["model"]: s.value for s in fams["spend_ai_price_ratio"].samples}
    assert ratio == {"claude-sonnet-4-20250514": 1.0}  # both at 3.75 would read 9.75 / 7.50 = 1.3
    assert app.builder.price_ratio("anthropic", "wrkspc_x", "claude-sonnet-4-20250514") == 1.0
    app.close()
    # a restart on the saved snapshot loads the ratio when the burn rate first needs it, before any build
    again, _ = engine()
    assert again.snapshot_restored
    assert again.builder.price_ratio("anthropic", "wrkspc_x", "claude-sonnet-4-20250514") is None  # not at start
    again.load_price_ratios()  # what refresh_burn does first
    assert again.builder.price_ratio("anthropic", "wrkspc_x", "claude-sonnet-4-20250514") == 1.0


def test_price_ratio_counts_only_days_with_both_costs_and_usage(tmp_path: Path, focus: Any, engine: Any) -> None:
    """Costs on three days, tokens on one: the ratio compares that day's cost with its tokens (1.0), not the
    three days' cost with one day's tokens (13 / 3)."""
    model = "claude-sonnet-4-20250514"

    def row(day: dt.date, usd: float, **usage: Any) -> dict[str, Any]:
        return focus.daily(
            day, usd, ProviderName="Anthropic", SubAccountId="wrkspc_x", ServiceName="messages", x_Model=model, **usage
        )

    tokens = {"x_TokenType": "input", "ConsumedQuantity": 1_000_000, "ConsumedUnit": "Tokens"}
    rows = [row(dt.date(2025, 3, 12), 5.0), row(dt.date(2025, 3, 13), 5.0), row(dt.date(2025, 3, 14), 3.0, **tokens)]
    focus.write(tmp_path / "exports" / "a.csv", rows)  # Claude Sonnet 4 input: $3.00 per 1M tokens, list price
    app, _ = engine()
    app.refresh_all()
    fams = {f.name: f for f in text_string_to_metric_families(app.exposition())}
    assert {s.labels["model"]: s.value for s in fams["spend_ai_price_ratio"].samples} == {model: 1.0}
    app.close()
