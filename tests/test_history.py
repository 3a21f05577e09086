"""The history in the cache (exporter.history, App.refresh_history): the real boto3 client against the Cost Explorer
emulator, whose request log shows which days were asked for and what they cost."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from exporter import history
from exporter.app import App
from exporter.config import Config, parse_config
from exporter.scheduler import Scheduler
from exporter.sources import SOURCES
from exporter.status import status_report
from exporter.store import Store
from tests.clock import FIXED_NOW
from tests.conftest import Clock
from tests.emulators.aws_ce import AwsCostExplorerEmulator
from tests.emulators.dataset import Dataset, build_dataset
from tests.helpers import use_static_aws_credentials

TODAY = FIXED_NOW.date()  # 2026-11-20
ACCESS_KEY = "AKIATESTSPENDEXPORTER"
CENT = Decimal("0.01")
DAY = dt.timedelta(days=1)


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_static_aws_credentials(monkeypatch, tmp_path, ACCESS_KEY, "test-only-secret-key-0123456789abcdef", "us-east-1")


@pytest.fixture(scope="module")
def long_dataset() -> Dataset:
    return build_dataset(TODAY, days=500)  # further back than Cost Explorer serves


def emulator(dataset: Dataset) -> AwsCostExplorerEmulator:
    return AwsCostExplorerEmulator(dataset, page_size=5000, caller_account="111111111111", access_key_id=ACCESS_KEY)


@pytest.fixture
def emu(long_dataset: Dataset) -> Iterator[AwsCostExplorerEmulator]:
    with emulator(long_dataset) as e:
        yield e


def config(tmp_path: Path, url: str, history_days: int, **src: Any) -> Config:
    raw = {
        "name": "aws",
        "type": "aws",
        "endpoint_url": url,
        "interval": "24h",
        "jitter": 0,
        "timeout": "30s",
        "max_api_cost_usd_per_day": 10.0,
        **src,
    }
    return parse_config({"cache_path": str(tmp_path / "c.sqlite"), "history_days": history_days, "sources": [raw]})


def expected_by_day(dataset: Dataset) -> dict[dt.date, Decimal]:
    """What Cost Explorer bills per day (credits excluded, as the source's default)."""
    out: dict[dt.date, Decimal] = defaultdict(Decimal)
    for r in dataset.rows("aws"):
        if r.extra.get("record_type") == "Usage":
            out[r.day] += r.amount
    return out


def held_by_day(store: Store, table: str = "cost") -> dict[dt.date, Decimal]:
    rows = store.query(f"SELECT day, SUM(cost_usd) FROM {table} WHERE source='aws' GROUP BY day")
    return {dt.date.fromisoformat(d): Decimal(str(v)).quantize(CENT) for d, v in rows}


def periods(emu: AwsCostExplorerEmulator, since: int = 0) -> list[tuple[dt.date, dt.date]]:
    """(first day, last day) of every GetCostAndUsage request from the ``since``-th on."""
    out = []
    for b in emu.bodies("GetCostAndUsage")[since:]:
        p = b["TimePeriod"]
        out.append((dt.date.fromisoformat(p["Start"]), dt.date.fromisoformat(p["End"]) - DAY))
    return out


def test_reach_and_chunks_are_pure_functions_of_the_day() -> None:
    aws = SOURCES["aws"]
    # Cost Explorer: the current month and the 13 before it
    assert history.reach_start(aws, dt.date(2026, 11, 20)) == dt.date(2025, 10, 1)
    assert history.reach_start(aws, dt.date(2027, 1, 31)) == dt.date(2025, 12, 1)
    assert history.reach_start(SOURCES["oci"], dt.date(2026, 11, 20)) == dt.date(2025, 11, 20)
    assert history.reach_start(SOURCES["focus"], dt.date(2026, 11, 20)) is None
    got = history.chunks(dt.date(2026, 1, 1), dt.date(2026, 3, 10), 31)
    assert got == [
        (dt.date(2026, 2, 8), dt.date(2026, 3, 10)),
        (dt.date(2026, 1, 8), dt.date(2026, 2, 7)),
        (dt.date(2026, 1, 1), dt.date(2026, 1, 7)),
    ]
    assert history.chunks(dt.date(2026, 1, 1), dt.date(2026, 3, 10), None) == [
        (dt.date(2026, 1, 1), dt.date(2026, 3, 10))
    ]
    assert history.chunks(dt.date(2026, 1, 2), dt.date(2026, 1, 1), 31) == []
    # every type says how far back it reaches, in its docs page too
    for spec in SOURCES.values():
        page = (Path(__file__).resolve().parent.parent / spec.docs).read_text()
        assert "## How far back" in page, spec.docs


def test_cold_start_fills_the_history_as_far_as_the_api_reaches(
    tmp_path: Path, emu: AwsCostExplorerEmulator, long_dataset: Dataset
) -> None:
    clock = Clock(FIXED_NOW)
    cfg = config(tmp_path, emu.url, history_days=450)  # 450 days: further than Cost Explorer's 13 months
    app = App(cfg, now=clock)
    sched = Scheduler(app, now=clock)
    try:
        assert not app.history_due("aws")  # nothing before the first refresh
        assert sched.run_pending() == ["aws"]
        assert app.history_due("aws")
        refresh_requests = len(emu.bodies("GetCostAndUsage"))
        assert sched.run_pending_history() == ["aws"]
        assert not app.history_due("aws")

        reach = dt.date(2025, 10, 1)
        want = {d: v for d, v in expected_by_day(long_dataset).items() if d >= reach}
        assert held_by_day(app.store) == want  # every day, to the cent, none beyond the API's reach
        assert min(long_dataset.days()) < reach
        # the history's queries: newest first, 92 days at most, never before the reach, never the refresh's days
        hist = periods(emu, refresh_requests)
        cold_first = dt.date(2026, 10, 1)
        assert hist[0][1] == cold_first - DAY
        assert all((b - a).days < 92 and a >= reach and b < cold_first for a, b in hist)
        assert min(a for a, _ in hist) == reach
        assert "GetCostForecast" not in emu.operations()[-len(hist) :]  # the history asks for days only
        assert app.store.history_state("aws")[0] == reach
        shown = status_report(app)["sources"][0]["history"]
        assert (shown["from"], shown["complete_from"], shown["complete"]) == ("2025-10-01", "2025-10-01", True)

        # the next refresh fetches the restatement window only; the history is never fetched again
        clock.advance(hours=25)
        before = len(emu.bodies("GetCostAndUsage"))
        assert sched.run_pending() == ["aws"]
        assert sched.run_pending_history() == []
        assert all(a >= TODAY - dt.timedelta(days=3) for a, _ in periods(emu, before))
        # the day that came into reach is not fetched either: the history is what was fetched once
        assert held_by_day(app.store) == want
        # the snapshot reads the recent copy, which holds the same rows as the cache from where it starts
        recent_from = dt.date.fromisoformat(app.store.query("SELECT value FROM meta WHERE key='recent_from'")[0][0])
        assert recent_from == clock().date() - dt.timedelta(days=history.RECENT_DAYS)
        assert held_by_day(app.store, "cost_recent") == {d: v for d, v in want.items() if d >= recent_from}
    finally:
        app.close()


def test_history_stops_at_the_data_and_is_pruned_at_history_days(tmp_path: Path) -> None:
    short = build_dataset(TODAY, days=100)  # a new account: less than history_days of data
    with emulator(short) as emu:
        clock = Clock(FIXED_NOW)
        app = App(config(tmp_path, emu.url, history_days=400), now=clock)
        try:
            app.refresh("aws")
            app.refresh_history("aws")
            assert held_by_day(app.store) == expected_by_day(short)
            assert not app.history_due("aws")
        finally:
            app.close()

        # a shorter history_days keeps the cache (it is not a setting of what is fetched) and prunes it
        clock.advance(days=1)
        before = len(emu.bodies("GetCostAndUsage"))
        app = App(config(tmp_path, emu.url, history_days=70), now=clock)
        try:
            app.refresh("aws")
            keep = clock().date() - dt.timedelta(days=70)
            assert all(a >= TODAY - dt.timedelta(days=3) for a, _ in periods(emu, before))  # warm, not cold
            assert held_by_day(app.store) == {d: v for d, v in expected_by_day(short).items() if d >= keep}
        finally:
            app.close()


def test_a_history_cut_by_the_paid_call_cap_resumes_without_fetching_twice(
    tmp_path: Path, emu: AwsCostExplorerEmulator, long_dataset: Dataset
) -> None:
    clock = Clock(FIXED_NOW)
    # a refresh costs 3 requests (costs, Bedrock by usage type, forecast), a history query 2: $0.08 a day
    # leaves $0.05 for the refresh and the day's one more, and room for one history query of 92 days
    cfg = config(tmp_path, emu.url, history_days=200, max_api_cost_usd_per_day=0.08)
    app = App(cfg, now=clock)
    try:
        assert app.refresh("aws").ok
        out = app.refresh_history("aws")
        assert not out.ok and out.error is not None and "kept for today's refreshes" in out.error
        assert out.records > 0
        fetched_from = app.store.history_state("aws")[0]
        target = TODAY - dt.timedelta(days=200)
        assert fetched_from is not None and target < fetched_from < dt.date(2026, 10, 1)
        assert app.store.history_state("aws")[2] == out.error
        shown = status_report(app)["sources"][0]["history"]
        assert (shown["complete"], shown["last_error"]) == (False, out.error)
        want = expected_by_day(long_dataset)
        assert held_by_day(app.store) == {d: v for d, v in want.items() if d >= fetched_from}
        assert app.store.api_cost_on("aws", TODAY) <= 0.08 + 1e-9
        # the refreshes still have their share of the day's cap
        assert not app.cap_reached("aws")
        clock.advance(hours=1)
        assert app.refresh("aws").ok

        # the next day: the history resumes where it stopped, asks for no day twice, and completes
        clock.set(FIXED_NOW + dt.timedelta(days=1))
        before = len(emu.bodies("GetCostAndUsage"))
        assert app.refresh("aws").ok
        refresh = len(periods(emu, before))
        assert app.refresh_history("aws").ok
        resumed = periods(emu, before + refresh)
        assert resumed and resumed[0][1] == fetched_from - DAY
        assert min(a for a, _ in resumed) == clock().date() - dt.timedelta(days=200)
        assert held_by_day(app.store) == {d: v for d, v in want.items() if d >= clock().date() - dt.timedelta(days=200)}
        assert app.store.history_state("aws")[2] is None
    finally:
        app.close()


def test_the_plan_counts_queries_and_dollars_without_calling(tmp_path: Path, emu: AwsCostExplorerEmulator) -> None:
    cfg = parse_config(
        {
            "cache_path": str(tmp_path / "c.sqlite"),
            "history_days": 400,
            "sources": [
                {"name": "aws", "type": "aws", "endpoint_url": emu.url, "max_api_cost_usd_per_day": 0.02},
                {"name": "files", "type": "focus", "paths": [str(tmp_path / "*.csv")]},
                {"name": "bq", "type": "gcp_bigquery", "table": "p.d.t"},
            ],
        }
    )
    aws, files, bq = history.plan_history(cfg, TODAY)
    # Cost Explorer: from its reach (2025-10-01; 400 days would be 2025-10-16) through today, 92 days a query
    assert (aws.first, aws.last) == (dt.date(2025, 10, 16), TODAY)
    assert aws.queries == len(history.chunks(dt.date(2025, 10, 16), TODAY, 92)) == 5
    assert (aws.requests, aws.usd, aws.cap_usd, aws.days_to_finish) == (5, 0.05, 0.02, 3)
    assert (files.first, files.queries, files.usd) == (TODAY - dt.timedelta(days=400), 7, 0.0)  # 62 days a query
    assert bq.usd is None  # billed by the bytes each query scans
    assert emu.requests == []

    # with the cache: only what it does not hold
    clock = Clock(FIXED_NOW)
    app = App(config(tmp_path, emu.url, history_days=400), now=clock)
    try:
        app.refresh("aws")
        left = history.plan_history(app.config, TODAY, app.store)[0]
        assert (left.first, left.last) == (dt.date(2025, 10, 16), dt.date(2026, 9, 30))
        assert left.queries == 4
    finally:
        app.close()


def test_a_stop_longer_than_the_window_leaves_no_gap(tmp_path: Path, focus: Any) -> None:
    """After a stop of months, the refresh fetches a cold start's days: the history fills the days between."""
    first = dt.date(2025, 1, 1)
    rows = [focus.daily(first + i * DAY, (first + i * DAY).day + 0.01) for i in range(300)]
    focus.write(tmp_path / "f" / "a.csv", rows)
    cfg = parse_config(
        {
            "cache_path": str(tmp_path / "c.sqlite"),
            "history_days": 100,
            "sources": [{"name": "aws", "type": "focus", "paths": [str(tmp_path / "f" / "*.csv")], "jitter": 0}],
        }
    )

    def want(today: dt.date) -> dict[dt.date, Decimal]:
        d, out = today - dt.timedelta(days=100), {}
        while d <= today:
            out[d] = Decimal(f"{d.day}.01")
            d += DAY
        return out

    clock = Clock(dt.datetime.combine(first + 200 * DAY, dt.time(12), tzinfo=dt.UTC))
    app = App(cfg, now=clock)
    try:
        app.refresh("aws")
        app.refresh_history("aws")
        assert held_by_day(app.store) == want(clock().date())
        clock.advance(days=80)  # stopped for 80 days: the next refresh's window starts well after the last fetch
        app.refresh("aws")
        assert app.history_due("aws")
        assert app.refresh_history("aws").ok
        assert held_by_day(app.store) == want(clock().date())
    finally:
        app.close()
