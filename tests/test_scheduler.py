"""The scheduler with a fake clock: intervals, jitter, backoff, timeouts, the paid-call cap, month boundaries.

Nothing sleeps: the test moves the clock and calls ``scheduler.run_pending()``, which refreshes
every source due at the clock's time, as the background workers would.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.app import App
from exporter.cli import assemble
from exporter.config import parse_config
from exporter.providers.base import PaidCallCapReached
from exporter.scheduler import Scheduler
from exporter.status import status_report
from exporter.store import SourceState
from exporter.timing import BACKOFF_BASE, backoff_delay, fetch_window
from exporter.web import landing_page
from tests.emulators.aws_ce import AwsCostExplorerEmulator
from tests.emulators.dataset import build_dataset
from tests.helpers import series, use_static_aws_credentials

UTC = dt.UTC
DAY = dt.timedelta(days=1)


def value(app: App, family: str, **labels: str) -> float | None:
    found = [
        v for k, v in series(app.exposition(), family).items() if all(dict(k).get(n) == x for n, x in labels.items())
    ]
    assert len(found) <= 1, f"{family}{labels} matches {len(found)} series"
    return found[0] if found else None


def config(tmp_path: Path, *sources: dict[str, Any], **top: Any) -> Any:
    defaults = {"type": "focus", "interval": "1h", "jitter": 0}
    return parse_config(
        {"cache_path": str(tmp_path / "cache.sqlite"), "sources": [{**defaults, **s} for s in sources], **top}
    )


def focus_source(tmp_path: Path, name: str = "focus", **kw: Any) -> dict[str, Any]:
    return {"name": name, "paths": [str(tmp_path / name / "*.csv"), str(tmp_path / name / "*.parquet")], **kw}


def write_days(focus: Any, path: Path, first: dt.date, last: dt.date, cost: Any = 10.0, **cols: Any) -> Path:
    rows = []
    d = first
    while d <= last:
        rows.append(focus.daily(d, cost(d) if callable(cost) else cost, **cols))
        d += DAY
    return focus.write(path, rows)


@pytest.fixture
def app_factory(clock: Any) -> Iterator[Any]:
    apps: list[App] = []

    def make(cfg: Any, **kw: Any) -> tuple[App, Scheduler]:
        app, scheduler = assemble(cfg, now=clock, **kw)
        apps.append(app)
        return app, scheduler

    yield make
    for a in apps:
        a.close()


def due_in(app: App, name: str, clock: Any) -> float:
    return app.due_at(name) - clock().timestamp()


# --------------------------------------------------------------------------- interval and jitter


def test_interval_is_respected(tmp_path: Path, clock: Any, focus: Any, app_factory: Any) -> None:
    write_days(focus, tmp_path / "focus" / "a.csv", dt.date(2025, 2, 1), clock().date())
    app, scheduler = app_factory(config(tmp_path, focus_source(tmp_path)))
    assert not app.ready()
    assert scheduler.run_pending() == ["focus"]
    assert app.ready()
    assert due_in(app, "focus", clock) == 3600
    for minutes in (1, 30, 58):
        clock.set(dt.datetime(2025, 3, 15, 10, 30, tzinfo=UTC) + dt.timedelta(minutes=minutes))
        assert scheduler.run_pending() == []
    clock.set(dt.datetime(2025, 3, 15, 11, 29, 59, tzinfo=UTC))
    assert scheduler.run_pending() == []
    clock.advance(seconds=1)
    assert scheduler.run_pending() == ["focus"]
    assert scheduler.run_pending() == [], "a source runs once per due time"
    assert status_report(app)["sources"][0]["next_refresh"] == "2025-03-15T12:30:00Z"


def test_jitter_delays_within_its_fraction(tmp_path: Path, clock: Any, focus: Any, app_factory: Any) -> None:
    write_days(focus, tmp_path / "focus" / "a.csv", dt.date(2025, 2, 1), clock().date())
    app, scheduler = app_factory(config(tmp_path, focus_source(tmp_path, jitter=0.2)), rng=random.Random(1))
    delays = []
    for _ in range(6):
        assert scheduler.run_pending() == ["focus"]
        delay = due_in(app, "focus", clock)
        assert 3600 <= delay <= 3600 * 1.2
        delays.append(delay)
        clock.advance(seconds=math.ceil(delay))  # timedelta keeps microseconds only
    assert len(set(delays)) > 1, "jitter spreads refreshes"


def test_fetch_window_cold_and_warm() -> None:
    src = parse_config({"sources": [{"name": "f", "type": "focus", "paths": ["x"]}]}).sources[0]
    now = dt.datetime(2025, 3, 15, 10, 30, tzinfo=UTC)
    cold = fetch_window(src, SourceState("f"), now, cold=True)
    # previous month and 35 days back, whichever is earlier
    assert (cold.start, cold.end) == (dt.date(2025, 2, 1), dt.date(2025, 3, 15))
    early = fetch_window(src, SourceState("f"), dt.datetime(2025, 3, 2, tzinfo=UTC), cold=True)
    assert early.start == dt.date(2025, 1, 26)
    warm = fetch_window(src, SourceState("f", fetched_through=dt.date(2025, 3, 15)), now, cold=False)
    assert (warm.start, warm.end) == (dt.date(2025, 3, 12), dt.date(2025, 3, 15))
    # after a long outage the window reaches back to the last fetch, never further than a cold start
    later = dt.datetime(2025, 3, 20, tzinfo=UTC)
    assert fetch_window(src, SourceState("f", fetched_through=dt.date(2025, 3, 15)), later, False).start == dt.date(
        2025, 3, 12
    )
    ancient = SourceState("f", fetched_through=dt.date(2024, 1, 1))
    assert fetch_window(src, ancient, now, False).start == dt.date(2025, 2, 1)


def test_cold_cache_fetches_history_for_baselines(tmp_path: Path, clock: Any, focus: Any, app_factory: Any) -> None:
    write_days(focus, tmp_path / "focus" / "a.csv", dt.date(2024, 12, 1), clock().date())
    app, scheduler = app_factory(config(tmp_path, focus_source(tmp_path)))
    scheduler.run_pending()
    first, last = app.store.query("SELECT MIN(day), MAX(day) FROM cost")[0]
    assert (first, last) == ("2025-02-01", "2025-03-15")
    assert value(app, "spend_cost_previous_month_usd") == pytest.approx(28 * 10.0)
    assert value(app, "spend_cost_daily_baseline_usd") == pytest.approx(10.0)


def test_the_history_comes_after_the_first_refresh_in_the_worker(
    tmp_path: Path, clock: Any, focus: Any, app_factory: Any
) -> None:
    """``run``'s worker fetches the history right after the refresh, once, in queries of 62 days, to the cent."""
    write_days(focus, tmp_path / "focus" / "a.csv", dt.date(2024, 6, 1), clock().date(), cost=lambda d: d.day + 0.01)
    app, scheduler = app_factory(config(tmp_path, focus_source(tmp_path), history_days=200))
    scheduler.start()
    try:
        deadline = time.monotonic() + 60
        while not app.history_status("focus")["complete"] and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        scheduler.stop()
    first = clock().date() - dt.timedelta(days=200)
    held = dict(app.store.query("SELECT day, ROUND(SUM(cost_usd), 2) FROM cost GROUP BY day"))
    want = {}
    d = first
    while d <= clock().date():
        want[d.isoformat()] = d.day + 0.01
        d += DAY
    assert held == want
    assert not app.history_due("focus")
    assert scheduler.run_pending_history() == []


# --------------------------------------------------------------------------- failures


def test_backoff_on_failure_keeps_last_good_data_then_recovers(
    tmp_path: Path, clock: Any, focus: Any, app_factory: Any
) -> None:
    path = write_days(focus, tmp_path / "focus" / "a.csv", dt.date(2025, 2, 1), clock().date())
    app, scheduler = app_factory(config(tmp_path, focus_source(tmp_path, backoff_max="5m")))
    scheduler.run_pending()
    mtd = value(app, "spend_cost_month_to_date_usd")
    assert mtd == pytest.approx(150.0)
    assert value(app, "spend_exporter_source_up", source="focus") == 1.0
    good_success = value(app, "spend_exporter_source_last_success_timestamp_seconds", source="focus")

    hidden = path.rename(tmp_path / "a.csv.hidden")  # the glob now matches nothing
    clock.advance(hours=1)
    delays = []
    for failures in range(1, 7):
        assert scheduler.run_pending() == ["focus"]
        st = status_report(app)["sources"][0]
        assert st["up"] is False
        assert st["consecutive_failures"] == failures
        assert "no files match" in st["last_error"]
        assert value(app, "spend_exporter_source_up", source="focus") == 0.0
        assert value(app, "spend_cost_month_to_date_usd") == mtd, "the last good data is still served"
        assert value(app, "spend_exporter_source_last_success_timestamp_seconds", source="focus") == good_success
        delay = due_in(app, "focus", clock)
        delays.append(delay)
        clock.advance(seconds=delay - 1)
        assert scheduler.run_pending() == [], "not before the backoff delay"
        clock.advance(seconds=1)
    assert delays == [BACKOFF_BASE, 60, 120, 240, 300, 300]  # doubling, capped by backoff_max

    hidden.rename(path)
    assert scheduler.run_pending() == ["focus"]
    st = status_report(app)["sources"][0]
    assert st["up"] is True and st["consecutive_failures"] == 0 and st["last_error"] is None
    assert value(app, "spend_exporter_source_up", source="focus") == 1.0
    assert value(app, "spend_exporter_source_last_success_timestamp_seconds", source="focus") == clock().timestamp()
    assert due_in(app, "focus", clock) == 3600


def test_corrupt_file_fails_the_refresh(tmp_path: Path, clock: Any, focus: Any, app_factory: Any) -> None:
    write_days(focus, tmp_path / "focus" / "a.csv", dt.date(2025, 2, 1), clock().date())
    app, scheduler = app_factory(config(tmp_path, focus_source(tmp_path)))
    scheduler.run_pending()
    (tmp_path / "focus" / "b.parquet").write_bytes(b"PAR1" + bytes(range(256)) * 4)
    clock.advance(hours=1)
    scheduler.run_pending()
    assert value(app, "spend_exporter_source_up", source="focus") == 0.0
    assert value(app, "spend_cost_month_to_date_usd") == pytest.approx(150.0)
    assert status_report(app)["sources"][0]["last_error"].startswith("reading FOCUS files failed")
    assert due_in(app, "focus", clock) == BACKOFF_BASE


def test_backoff_honours_retry_after_within_backoff_max() -> None:
    src = parse_config({"sources": [{"name": "f", "type": "focus", "paths": ["x"], "backoff_max": "10m"}]}).sources[0]
    assert backoff_delay(src, 1) == 30
    assert backoff_delay(src, 3) == 120
    assert backoff_delay(src, 30) == 600
    assert backoff_delay(src, 1, retry_after=200) == 200
    assert backoff_delay(src, 1, retry_after=5000) == 600
    short = parse_config({"sources": [{"name": "f", "type": "focus", "paths": ["x"], "interval": "2m"}]}).sources[0]
    assert backoff_delay(short, 10) == 120, "never longer than the interval"


@pytest.mark.real_timers  # which of two timeouts fires first is decided by timed waits
def test_refresh_timeout(tmp_path: Path, clock: Any, focus: Any, app_factory: Any) -> None:
    write_days(focus, tmp_path / "focus" / "a.csv", dt.date(2025, 2, 1), clock().date())
    # 1 ms: reading files through DuckDB always takes longer
    app, _ = app_factory(config(tmp_path, focus_source(tmp_path, timeout="1ms")))
    out = app.refresh("focus")
    assert not out.ok
    assert out.error == "refresh timed out after 0.001s"
    assert value(app, "spend_exporter_source_up", source="focus") == 0.0
    assert app.ready(), "a source that failed once counts as ready"


def test_one_failing_source_never_stops_another(tmp_path: Path, clock: Any, focus: Any, app_factory: Any) -> None:
    write_days(focus, tmp_path / "good" / "a.csv", dt.date(2025, 2, 1), clock().date(), ServiceName="Good")
    write_days(focus, tmp_path / "late" / "a.csv", dt.date(2025, 2, 1), clock().date(), cost=2.0, ServiceName="Late")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.parquet").write_bytes(b"not parquet at all")
    cfg = config(
        tmp_path,
        focus_source(tmp_path, "good"),
        focus_source(tmp_path, "broken"),
        focus_source(tmp_path, "empty"),
        focus_source(tmp_path, "late", timeout="1ms"),
    )
    app, scheduler = app_factory(cfg)
    assert scheduler.run_pending() == ["good", "broken", "empty", "late"]
    up = {dict(k)["source"]: v for k, v in series(app.exposition(), "spend_exporter_source_up").items()}
    assert up == {"good": 1.0, "broken": 0.0, "empty": 0.0, "late": 0.0}
    assert value(app, "spend_cost_month_to_date_usd", service_name="Good") == pytest.approx(150.0)
    assert app.ready()
    # the failing ones retry on their backoff while the good one keeps its interval
    clock.advance(seconds=30)
    assert scheduler.run_pending() == ["broken", "empty", "late"]
    clock.advance(minutes=60)
    assert "good" in scheduler.run_pending()
    assert value(app, "spend_exporter_source_up", source="good") == 1.0


# --------------------------------------------------------------------------- the paid-call cap


def test_daily_paid_call_cap(
    tmp_path: Path, clock: Any, focus: Any, app_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    write_days(focus, tmp_path / "focus" / "a.csv", dt.date(2025, 2, 1), clock().date())
    app, scheduler = app_factory(config(tmp_path, focus_source(tmp_path, max_api_cost_usd_per_day=0.05)))
    scheduler.run_pending()
    ctx = app._fetchers["focus"].context()
    for _ in range(5):
        with ctx.api_call("GetCostAndUsage", cost_usd=0.01):
            pass
    with ctx.api_call("read_files"):  # free calls are never held back by the cap
        pass
    made = []
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(PaidCallCapReached) as e,
        ctx.api_call("GetCostAndUsage", cost_usd=0.01),
    ):
        made.append(1)
    assert made == [], "the call over the cap is not made"
    assert "paid-call cap reached" in str(e.value)
    assert "no more paid calls until 2025-03-16 00:00 UTC" in str(e.value)
    assert "paid-call cap reached" in caplog.text
    assert app.store.api_cost_on("focus", clock().date()) == pytest.approx(0.05)

    st = status_report(app)["sources"][0]
    assert st["paid_call_cap_reached"] is True
    assert st["api_cost_usd_today"] == pytest.approx(0.05)
    assert st["max_api_cost_usd_per_day"] == 0.05
    assert "paid-call cap reached for today" in landing_page(app)

    # the scheduler makes no refresh for the rest of the UTC day
    reads = app.store.query("SELECT SUM(requests) FROM api_calls WHERE operation='read_files'")[0][0]
    clock.advance(hours=2)
    assert scheduler.run_pending() == ["focus"]
    out = app.refresh("focus")
    assert out.skipped and not out.ok and out.error == "paid-call cap reached for today"
    assert app.store.query("SELECT SUM(requests) FROM api_calls WHERE operation='read_files'")[0][0] == reads
    assert status_report(app)["sources"][0]["next_refresh"] == "2025-03-16T00:00:00Z"
    clock.set(dt.datetime(2025, 3, 15, 23, 59, 59, tzinfo=UTC))
    assert scheduler.run_pending() == []

    app.rebuild_snapshot()
    assert value(app, "spend_exporter_api_cost_usd_total", source="focus") == pytest.approx(0.05)
    assert value(app, "spend_exporter_api_requests_total", operation="GetCostAndUsage", status="success") == 5
    assert value(app, "spend_exporter_source_up", source="focus") == 1.0, "the cached data is still good"

    # a new UTC day: the cap starts again
    clock.set(dt.datetime(2025, 3, 16, 0, 0, tzinfo=UTC))
    assert status_report(app)["sources"][0]["paid_call_cap_reached"] is False
    assert scheduler.run_pending() == ["focus"]
    assert status_report(app)["sources"][0]["up"] is True
    with ctx.api_call("GetCostAndUsage", cost_usd=0.01):
        pass
    assert app.store.api_cost_on("focus", clock().date()) == pytest.approx(0.01)
    app.rebuild_snapshot()
    assert value(app, "spend_exporter_api_cost_usd_total", source="focus") == pytest.approx(0.06)


def test_failed_paid_call_is_still_charged(tmp_path: Path, clock: Any, app_factory: Any) -> None:
    app, _ = app_factory(config(tmp_path, focus_source(tmp_path, max_api_cost_usd_per_day=0.02)))
    ctx = app._fetchers["focus"].context()
    for _ in range(2):
        with pytest.raises(RuntimeError), ctx.api_call("GetCostAndUsage", cost_usd=0.01):
            raise RuntimeError("HTTP 500")
    with pytest.raises(PaidCallCapReached), ctx.api_call("GetCostAndUsage", cost_usd=0.01):
        pass
    assert app.store.api_totals() == [("focus", "GetCostAndUsage", "error", 2, pytest.approx(0.02))]


def test_no_cap_configured_means_no_limit(tmp_path: Path, clock: Any, app_factory: Any) -> None:
    app, _ = app_factory(config(tmp_path, focus_source(tmp_path)))
    ctx = app._fetchers["focus"].context()
    for _ in range(300):
        with ctx.api_call("Paid", cost_usd=0.01):
            pass
    assert app.store.api_cost_on("focus", clock().date()) == pytest.approx(3.0)
    assert status_report(app)["sources"][0]["paid_call_cap_reached"] is False


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_static_aws_credentials(monkeypatch, tmp_path, "AKIATESTSCHEDULER", "test-only-scheduler-secret-0123456789")


def test_paid_call_cap_with_cost_explorer(tmp_path: Path, clock: Any, app_factory: Any, aws_env: None) -> None:
    """The real AWS provider (boto3) against the Cost Explorer emulator: every request costs $0.01."""
    clock.set(dt.datetime(2025, 3, 15, 12, 0, tzinfo=UTC))
    with AwsCostExplorerEmulator(build_dataset(clock().date())) as emu:
        src = {"name": "aws", "type": "aws", "endpoint_url": emu.url, "interval": "2h"}
        app, scheduler = app_factory(config(tmp_path, {**src, "max_api_cost_usd_per_day": 0.06}))
        assert scheduler.run_pending() == ["aws"]
        assert status_report(app)["sources"][0]["up"] is True
        first_day_cost = app.store.api_cost_on("aws", clock().date())
        assert 0 < first_day_cost <= 0.06

        # refreshes go on until the next one would pass the cap; then nothing is sent until midnight
        for _ in range(10):
            clock.advance(hours=2, minutes=30)
            if clock().date() != dt.date(2025, 3, 15):
                break
            scheduler.run_pending()
            if status_report(app)["sources"][0]["paid_call_cap_reached"]:
                break
        st = status_report(app)["sources"][0]
        assert st["paid_call_cap_reached"] is True
        assert "paid-call cap reached" in st["last_error"]
        assert st["api_cost_usd_today"] <= 0.06
        assert st["next_refresh"] == "2025-03-16T00:00:00Z"
        sent = len(emu.requests)
        clock.set(dt.datetime(2025, 3, 15, 23, 0, tzinfo=UTC))
        assert scheduler.run_pending() == []
        assert app.refresh("aws").skipped
        assert len(emu.requests) == sent, "no request reaches Cost Explorer once the cap is reached"
        assert value(app, "spend_exporter_api_cost_usd_total", source="aws") == pytest.approx(st["api_cost_usd_today"])

        clock.set(dt.datetime(2025, 3, 16, 0, 0, tzinfo=UTC))
        assert scheduler.run_pending() == ["aws"]
        assert len(emu.requests) > sent
        assert status_report(app)["sources"][0]["up"] is True
        assert status_report(app)["sources"][0]["paid_call_cap_reached"] is False


# --------------------------------------------------------------------------- month boundary


def test_month_boundary(tmp_path: Path, clock: Any, focus: Any, app_factory: Any) -> None:
    clock.set(dt.datetime(2025, 3, 31, 12, 0, tzinfo=UTC))
    path = tmp_path / "focus" / "a.csv"
    write_days(focus, path, dt.date(2025, 2, 1), dt.date(2025, 3, 31), cost=lambda d: 2.0 if d.month == 2 else 3.0)
    app, scheduler = app_factory(config(tmp_path, focus_source(tmp_path)))
    scheduler.run_pending()
    assert value(app, "spend_cost_month_to_date_usd") == pytest.approx(31 * 3.0)
    assert value(app, "spend_cost_previous_month_usd") == pytest.approx(28 * 2.0)
    assert value(app, "spend_cost_daily_usd") == pytest.approx(3.0)

    clock.set(dt.datetime(2025, 3, 31, 23, 59, 59, tzinfo=UTC))
    app.rebuild_snapshot()
    assert value(app, "spend_cost_month_to_date_usd") == pytest.approx(31 * 3.0)
    assert value(app, "spend_cost_previous_month_usd") == pytest.approx(28 * 2.0)

    # 00:00 UTC on the 1st: what the snapshot ticker rebuilds when the hour turns, before any refresh
    clock.set(dt.datetime(2025, 4, 1, 0, 0, tzinfo=UTC))
    app.rebuild_snapshot()
    assert all(v == 0 for v in series(app.exposition(), "spend_cost_month_to_date_usd").values()), (
        "month-to-date starts over"
    )
    assert value(app, "spend_cost_previous_month_usd") == pytest.approx(31 * 3.0), "March is now the previous month"
    assert value(app, "spend_cost_daily_usd") == pytest.approx(3.0)  # March 31, now complete
    assert value(app, "spend_cost_forecast_month_end_usd") == pytest.approx(30 * 3.0)  # 30 April days at 3/day

    # the first April data arrives
    write_days(focus, path, dt.date(2025, 2, 1), dt.date(2025, 4, 1), cost=lambda d: {2: 2.0, 3: 3.0, 4: 5.0}[d.month])
    assert scheduler.run_pending() == ["focus"]
    assert value(app, "spend_cost_month_to_date_usd") == pytest.approx(5.0)
    assert value(app, "spend_cost_previous_month_usd") == pytest.approx(31 * 3.0)
    assert status_report(app)["sources"][0]["month_to_date_usd"] == pytest.approx(5.0)
