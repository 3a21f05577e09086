"""The month boundary and clock jumps, on a fake clock, through the real engine and a FOCUS source.

At 00:00 UTC on the 1st month-to-date starts over at 0 (the series carry on, they do not vanish),
the previous month becomes the month just closed, budgets start over and forecast the new month.
Clock jumps forwards and backwards never crash, never give a negative duration, never stall the
schedule, and leave exactly one row per day and series in the store.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.app import App
from exporter.cli import assemble
from exporter.config import parse_config
from exporter.scheduler import Scheduler
from exporter.status import status_report
from tests.helpers import series

UTC = dt.UTC
DAY = dt.timedelta(days=1)

Labels = tuple[tuple[str, str], ...]


def at(y: int, m: int, d: int, hh: int = 0, mm: int = 0, ss: int = 0) -> dt.datetime:
    return dt.datetime(y, m, d, hh, mm, ss, tzinfo=UTC)


def days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + i * DAY for i in range((last - first).days + 1)]


def promtool_ok(app: App) -> None:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    check = subprocess.run([promtool, "check", "metrics"], input=app.snapshot.text, capture_output=True, timeout=60)
    assert check.returncode == 0, (check.stdout + check.stderr).decode()


def by(text: str, family: str, key: str = "service_name") -> dict[str, float]:
    """One family's samples keyed by one label (the tests make that label unique)."""
    out: dict[str, float] = {}
    for labels, v in series(text, family).items():
        k = dict(labels)[key]
        assert k not in out, f"{family}: two series with {key}={k}"
        out[k] = v
    return out


# three cost series (two teams, one AI model with tokens and requests), a varied figure per day
SERIES: dict[str, dict[str, str]] = {
    "Amazon EC2": {"ProviderName": "AWS", "SubAccountId": "111111111111", "Tags": '{"team": "search"}'},
    "Virtual Machines": {"ProviderName": "Microsoft", "SubAccountId": "sub-1", "Tags": '{"team": "web"}'},
    "GPT-4o": {"ProviderName": "OpenAI", "SubAccountId": "proj_a", "x_Model": "gpt-4o", "Tags": '{"team": "ml"}'},
}
BASE = {"Amazon EC2": 3.0, "Virtual Machines": 1.5, "GPT-4o": 4.0}


def cost(svc: str, d: dt.date) -> float:
    return round(BASE[svc] + (d.toordinal() % 5) * 0.25 + (0.5 if d.month % 2 else 0.0), 2)


def tokens(d: dt.date) -> tuple[int, int, int]:
    """input, output tokens and requests of GPT-4o on day ``d``."""
    return 1000 + d.day * 10, 200 + d.day, 10 + d.day % 3


def rows_for(d: dt.date, services: tuple[str, ...] = tuple(SERIES)) -> list[dict[str, Any]]:
    start = dt.datetime.combine(d, dt.time(), tzinfo=UTC)
    end = start + DAY
    out: list[dict[str, Any]] = []
    for svc in services:
        cols = {"ChargePeriodStart": start, "ChargePeriodEnd": end, "ServiceName": svc, **SERIES[svc]}
        if svc == "GPT-4o":
            inp, outp, req = tokens(d)
            c = cost(svc, d)
            # the cost split over the input and output rows; requests in a row of their own with no cost
            out.append({**cols, "BilledCost": round(c * 0.75, 4), "ConsumedQuantity": inp, "ConsumedUnit": "Tokens",
                        "x_TokenType": "input"})  # fmt: skip
            out.append({**cols, "BilledCost": round(c - round(c * 0.75, 4), 4), "ConsumedQuantity": outp,
                        "ConsumedUnit": "Tokens", "x_TokenType": "output"})  # fmt: skip
            out.append({**cols, "ConsumedQuantity": req, "ConsumedUnit": "Requests"})
        else:
            out.append({**cols, "BilledCost": cost(svc, d)})
    return out


class Clock:
    def __init__(self, t: dt.datetime) -> None:
        self.t = t

    def __call__(self) -> dt.datetime:
        return self.t


@pytest.fixture
def env(
    tmp_path: Path, focus: Any
) -> Iterator[Callable[..., tuple[App, Scheduler, Clock, Callable[[list[dt.date]], None]]]]:
    apps: list[App] = []

    def make(
        start: dt.datetime, source: dict[str, Any] | None = None, **top: Any
    ) -> tuple[App, Scheduler, Clock, Callable[[list[dt.date]], None]]:
        clock = Clock(start)
        path = tmp_path / "exports" / "focus.csv"

        def write(data_days: list[dt.date]) -> None:
            focus.write(path, [r for d in data_days for r in rows_for(d)])

        cfg = parse_config(
            {
                "cache_path": str(tmp_path / "cache.sqlite"),
                "sources": [
                    {
                        "name": "focus",
                        "type": "focus",
                        "paths": [str(path)],
                        "interval": "1h",
                        "jitter": 0.1,
                        **(source or {}),
                    }
                ],
                "budgets": [
                    {"name": "total", "amount_usd": 1000},
                    {"name": "search", "amount_usd": 200, "team": "search"},
                    {"name": "ai", "amount_usd": 300, "match": {"provider": ["openai"]}, "warning_ratio": 0.9},
                ],
                **top,
            }
        )
        app, scheduler = assemble(cfg, now=clock)
        apps.append(app)
        return app, scheduler, clock, write

    yield make
    for a in apps:
        a.close()


def expected_forecast(svc: str, today: dt.date, newest: dt.date) -> float:
    """DESIGN.md's forecast, written out: complete days of this month + days left × mean of the last 7."""
    month_start = today.replace(day=1)
    next_month = (month_start + 32 * DAY).replace(day=1)
    days_in_month = (next_month - month_start).days
    mean7 = sum(cost(svc, newest - i * DAY) for i in range(7)) / 7
    if newest >= month_start:
        complete = sum(cost(svc, d) for d in days(month_start, newest))
        return complete + (days_in_month - newest.day) * mean7
    return days_in_month * mean7


def budget(text: str, family: str) -> dict[str, float]:
    return by(text, family, key="budget")


# --------------------------------------------------------------------------- month boundary


def test_month_to_date_starts_over_at_zero_and_never_vanishes(env: Any) -> None:
    app, scheduler, clock, write = env(at(2025, 3, 31, 12))
    write(days(dt.date(2025, 2, 1), dt.date(2025, 3, 31)))
    assert scheduler.run_pending() == ["focus"]
    march = days(dt.date(2025, 3, 1), dt.date(2025, 3, 31))

    clock.t = at(2025, 3, 31, 23, 59, 59)
    app.rebuild_snapshot()
    before = app.exposition()
    mtd = by(before, "spend_cost_month_to_date_usd")
    assert mtd == pytest.approx({s: sum(cost(s, d) for d in march) for s in SERIES})
    spent_march = budget(before, "spend_budget_spent_usd")
    assert spent_march["search"] == pytest.approx(mtd["Amazon EC2"])
    assert spent_march["ai"] == pytest.approx(mtd["GPT-4o"])
    assert by(before, "spend_ai_requests_month_to_date")["GPT-4o"] == sum(tokens(d)[2] for d in march)
    series_before = {
        f: set(series(before, f)) for f in ("spend_cost_month_to_date_usd", "spend_ai_tokens_month_to_date")
    }

    # 00:00 UTC on the 1st: the hourly snapshot rebuild, before any refresh, and then a refresh with no April data
    # yet (the provider has nothing for the new day): neither may drop a series
    for step in ("rebuild", "refresh"):
        clock.t = at(2025, 4, 1, 0, 0, 0)
        if step == "rebuild":
            app.rebuild_snapshot()
        else:
            assert app.refresh("focus").ok
        text = app.exposition()
        for fam, labels in series_before.items():
            assert set(series(text, fam)) == labels, f"{step}: {fam} series must carry on across the 1st"
        assert set(by(text, "spend_cost_month_to_date_usd").values()) == {0.0}, "month-to-date starts over at 0"
        assert set(by(text, "spend_ai_requests_month_to_date").values()) == {0.0}
        assert set(series(text, "spend_ai_tokens_month_to_date").values()) == {0.0}
        assert by(text, "spend_cost_previous_month_usd") == pytest.approx(mtd), "March is now the previous month"
        assert by(text, "spend_cost_daily_usd") == pytest.approx({s: cost(s, dt.date(2025, 3, 31)) for s in SERIES})
        forecast = {s: expected_forecast(s, dt.date(2025, 4, 1), dt.date(2025, 3, 31)) for s in SERIES}
        assert by(text, "spend_cost_forecast_month_end_usd") == pytest.approx(forecast)
        # budgets start over: spent 0 for each (present, not absent), limit unchanged, forecast is April's
        assert budget(text, "spend_budget_spent_usd") == {"total": 0.0, "search": 0.0, "ai": 0.0}
        assert budget(text, "spend_budget_limit_usd") == {"total": 1000.0, "search": 200.0, "ai": 300.0}
        assert budget(text, "spend_budget_forecast_usd") == pytest.approx(
            {"total": sum(forecast.values()), "search": forecast["Amazon EC2"], "ai": forecast["GPT-4o"]}
        )
        assert [b["used_ratio"] for b in status_report(app)["budgets"]] == [0.0, 0.0, 0.0]
        assert status_report(app)["sources"][0]["month_to_date_usd"] == 0.0
        promtool_ok(app)

    # the first April data arrives (today's partial day counts in month-to-date, not in the daily figure)
    clock.t = at(2025, 4, 1, 9)
    write(days(dt.date(2025, 2, 1), dt.date(2025, 4, 1)))
    assert app.refresh("focus").ok
    text = app.exposition()
    assert by(text, "spend_cost_month_to_date_usd") == pytest.approx({s: cost(s, dt.date(2025, 4, 1)) for s in SERIES})
    assert by(text, "spend_ai_requests_month_to_date") == {"GPT-4o": tokens(dt.date(2025, 4, 1))[2]}
    assert budget(text, "spend_budget_spent_usd")["search"] == pytest.approx(cost("Amazon EC2", dt.date(2025, 4, 1)))
    assert by(text, "spend_cost_daily_usd") == pytest.approx({s: cost(s, dt.date(2025, 3, 31)) for s in SERIES})
    promtool_ok(app)


def test_a_series_without_cost_this_month_reads_zero_until_it_ages_out(env: Any, focus: Any, tmp_path: Path) -> None:
    """A service used in February and not since: 0 month-to-date all through March, gone in May."""
    app, _, clock, _ = env(at(2025, 3, 10, 12))
    rows = [r for d in days(dt.date(2025, 2, 1), dt.date(2025, 5, 1)) for r in rows_for(d, ("Amazon EC2",))]
    rows += [r for d in days(dt.date(2025, 2, 1), dt.date(2025, 2, 20)) for r in rows_for(d, ("Virtual Machines",))]
    focus.write(tmp_path / "exports" / "focus.csv", rows)
    assert app.refresh("focus").ok
    text = app.exposition()
    assert by(text, "spend_cost_month_to_date_usd")["Virtual Machines"] == 0.0
    assert by(text, "spend_cost_previous_month_usd")["Virtual Machines"] == pytest.approx(
        sum(cost("Virtual Machines", d) for d in days(dt.date(2025, 2, 1), dt.date(2025, 2, 20)))
    )
    clock.t = at(2025, 4, 1, 0)
    app.rebuild_snapshot()
    assert by(app.exposition(), "spend_cost_month_to_date_usd")["Virtual Machines"] == 0.0, "in the baseline's days"
    clock.t = at(2025, 5, 1, 0)
    assert app.refresh("focus").ok
    assert "Virtual Machines" not in by(app.exposition(), "spend_cost_month_to_date_usd")
    assert "Amazon EC2" in by(app.exposition(), "spend_cost_month_to_date_usd"), "cost in March: still served"
    promtool_ok(app)


def test_year_boundary(env: Any) -> None:
    app, _, clock, write = env(at(2025, 12, 31, 18))
    write(days(dt.date(2025, 11, 1), dt.date(2025, 12, 31)))
    assert app.refresh("focus").ok
    december = days(dt.date(2025, 12, 1), dt.date(2025, 12, 31))
    clock.t = at(2026, 1, 1, 0)
    app.rebuild_snapshot()
    text = app.exposition()
    assert set(by(text, "spend_cost_month_to_date_usd").values()) == {0.0}
    assert by(text, "spend_cost_previous_month_usd") == pytest.approx(
        {s: sum(cost(s, d) for d in december) for s in SERIES}
    ), "December 2025, not November nor December 2026"
    forecast = by(text, "spend_cost_forecast_month_end_usd")
    assert forecast == pytest.approx(
        {s: expected_forecast(s, dt.date(2026, 1, 1), dt.date(2025, 12, 31)) for s in SERIES}
    )
    assert forecast["Amazon EC2"] == pytest.approx(31 * sum(cost("Amazon EC2", d) for d in december[-7:]) / 7)
    assert budget(text, "spend_budget_spent_usd") == {"total": 0.0, "search": 0.0, "ai": 0.0}
    promtool_ok(app)

    clock.t = at(2026, 1, 2, 6)
    write(days(dt.date(2025, 11, 1), dt.date(2026, 1, 2)))
    assert app.refresh("focus").ok
    text = app.exposition()
    jan = days(dt.date(2026, 1, 1), dt.date(2026, 1, 2))
    assert by(text, "spend_cost_month_to_date_usd") == pytest.approx({s: sum(cost(s, d) for d in jan) for s in SERIES})
    assert by(text, "spend_cost_daily_usd") == pytest.approx({s: cost(s, dt.date(2026, 1, 1)) for s in SERIES})


@pytest.mark.parametrize(
    ("now", "days_in_month"),
    [
        (at(2024, 2, 15, 12), 29),  # leap year
        (at(2025, 2, 15, 12), 28),
        (at(2024, 2, 29, 12), 29),  # the leap day itself: newest complete day Feb 28, one day left
        (at(2025, 2, 28, 23, 59, 59), 28),
        (at(2024, 3, 1, 0), 31),  # the 1st after a leap February
        (at(2025, 3, 1, 0), 31),
        (at(2024, 2, 1, 0), 29),  # the 1st of a leap February: the whole month at the mean of January's last week
        (at(2025, 2, 1, 0), 28),
    ],
    ids=lambda v: v.strftime("%Y-%m-%dT%H:%M") if isinstance(v, dt.datetime) else str(v),
)
def test_forecast_in_february(env: Any, now: dt.datetime, days_in_month: int) -> None:
    app, _, _, write = env(now)
    today = now.date()
    newest = today - DAY
    write(days(today.replace(day=1) - 40 * DAY, today))  # today's partial day too: month-to-date only
    assert app.refresh("focus").ok
    text = app.exposition()
    got = by(text, "spend_cost_forecast_month_end_usd")
    month_start = today.replace(day=1)
    for svc in SERIES:
        mean7 = sum(cost(svc, newest - i * DAY) for i in range(7)) / 7
        complete = sum(cost(svc, d) for d in days(month_start, newest)) if newest >= month_start else 0.0
        left = days_in_month - newest.day if newest >= month_start else days_in_month
        assert got[svc] == pytest.approx(complete + left * mean7), svc
    mtd = by(text, "spend_cost_month_to_date_usd")
    assert mtd == pytest.approx({s: sum(cost(s, d) for d in days(month_start, today)) for s in SERIES})
    promtool_ok(app)


# --------------------------------------------------------------------------- clock jumps


def store_days(app: App) -> list[str]:
    """The days held for the source; fails on a duplicated (day, series) row."""
    dup = app.store.query(
        "SELECT day, provider, account_id, service_name, team, model, COUNT(*) FROM cost WHERE source='focus' "
        "GROUP BY day, provider, account_id, service_name, team, model HAVING COUNT(*) > 1"
    )
    assert not dup, f"duplicated rows: {dup[:3]}"
    return [r[0] for r in app.store.query("SELECT DISTINCT day FROM cost WHERE source='focus' ORDER BY day")]


def check_sane(app: App, clock: Clock, slack: float = 0.0) -> None:
    text = app.exposition()
    durations = series(text, "spend_exporter_source_refresh_duration_seconds").values()
    assert durations and all(v >= 0 for v in durations), "no negative durations"
    interval = app.source("focus").interval
    due_in = app.due_at("focus") - clock().timestamp()
    assert due_in <= interval * 1.1 + slack + 1, "the schedule never stalls"
    assert series(text, "spend_exporter_source_up") == {(("provider", "focus"), ("source", "focus")): 1.0}
    promtool_ok(app)


@pytest.mark.parametrize("jump_days", [3, 40, 60, 200])
def test_clock_jumps_forwards(env: Any, jump_days: int) -> None:
    start = at(2025, 3, 10, 12)
    end = start + jump_days * DAY
    app, scheduler, clock, write = env(start)
    write(days(dt.date(2024, 12, 1), end.date()))  # the provider has every day; the exporter asks up to "today"
    assert scheduler.run_pending() == ["focus"]
    first_days = store_days(app)
    assert first_days[-1] == "2025-03-10"

    clock.t = end
    assert scheduler.run_pending() == ["focus"], "due at once after a jump forwards"
    held = store_days(app)
    today = end.date()
    assert held[-1] == today.isoformat()
    # no day lost: every day a figure reads (the previous month, the baseline's 28 days, this month) is held;
    # days skipped over that no figure reads any more are not fetched (they are final)
    prev_start = (today.replace(day=1) - DAY).replace(day=1)
    needed = days(min(prev_start, today - 29 * DAY), today)
    assert not {d.isoformat() for d in needed} - set(held), "a day a figure needs is missing"
    text = app.exposition()
    month = days(today.replace(day=1), today)
    prev_end = today.replace(day=1) - DAY
    prev = days(prev_end.replace(day=1), prev_end)
    assert by(text, "spend_cost_month_to_date_usd") == pytest.approx(
        {s: sum(cost(s, d) for d in month) for s in SERIES}
    )
    assert by(text, "spend_cost_previous_month_usd") == pytest.approx(
        {s: sum(cost(s, d) for d in prev) for s in SERIES}
    )
    assert by(text, "spend_cost_daily_usd") == pytest.approx({s: cost(s, today - DAY) for s in SERIES})
    check_sane(app, clock)
    # and the schedule carries on from the new time
    clock.t = end + dt.timedelta(minutes=30)
    assert scheduler.run_pending() == []
    clock.t = end + dt.timedelta(hours=1, minutes=7)
    assert scheduler.run_pending() == ["focus"]


@pytest.mark.parametrize(
    "back",
    [dt.timedelta(days=1), dt.timedelta(days=3), dt.timedelta(minutes=10), dt.timedelta(hours=13)],
    ids=["1d", "3d", "10min", "13h-across-midnight"],
)
def test_clock_jumps_backwards(env: Any, back: dt.timedelta) -> None:
    ahead = at(2025, 4, 2, 8)  # the clock ran ahead into April, then NTP puts it back
    app, scheduler, clock, write = env(ahead)
    write(days(dt.date(2025, 1, 1), dt.date(2025, 4, 30)))
    assert app.refresh("focus").ok
    clock.t = ahead - back
    today = clock.t.date()
    if back < dt.timedelta(hours=1):
        # a small correction: the next refresh is a little later than planned, never stalled
        assert scheduler.run_pending() == []
        assert app.due_at("focus") - clock.t.timestamp() <= 3600 * 1.1 + back.total_seconds()
    else:
        assert scheduler.run_pending() == ["focus"], "a refresh due a day ahead would stall the schedule"
    text = app.exposition()
    # figures follow the corrected clock: days after today (held from the clock that ran ahead) count nowhere
    month = days(today.replace(day=1), today)
    assert by(text, "spend_cost_month_to_date_usd") == pytest.approx(
        {s: sum(cost(s, d) for d in month) for s in SERIES}
    )
    prev_end = today.replace(day=1) - DAY
    prev = days(prev_end.replace(day=1), prev_end)
    assert by(text, "spend_cost_previous_month_usd") == pytest.approx(
        {s: sum(cost(s, d) for d in prev) for s in SERIES}
    )
    assert status_report(app)["sources"][0]["month_to_date_usd"] == pytest.approx(
        round(sum(cost(s, d) for s in SERIES for d in month), 2)
    )
    check_sane(app, clock, slack=back.total_seconds() if back < dt.timedelta(hours=1) else 0.0)
    store_days(app)

    # time moves on normally from the corrected clock; the days the clock ran ahead over are fetched again
    clock.t = ahead + dt.timedelta(hours=2)
    assert scheduler.run_pending() == ["focus"]
    held = store_days(app)
    assert held == [d.isoformat() for d in days(dt.date.fromisoformat(held[0]), ahead.date())]
    april = days(dt.date(2025, 4, 1), ahead.date())
    assert by(app.exposition(), "spend_cost_month_to_date_usd") == pytest.approx(
        {s: sum(cost(s, d) for d in april) for s in SERIES}
    )
    check_sane(app, clock)


def test_a_new_month_refreshes_at_once_then_keeps_its_interval(env: Any, tmp_path: Path) -> None:
    """At 00:00 UTC on the 1st a source refreshes without waiting out its interval, once: the previous month
    closes and the provider's own forecast (kept from the last refresh) becomes the new month's."""
    app, scheduler, clock, write = env(at(2025, 3, 31, 22), source={"interval": "6h", "backoff_max": "1h"})
    write(days(dt.date(2025, 2, 1), dt.date(2025, 3, 31)))
    assert scheduler.run_pending() == ["focus"]
    clock.t = at(2025, 3, 31, 23, 59, 59)
    assert scheduler.run_pending() == []
    clock.t = at(2025, 4, 1, 0, 0, 0)
    assert scheduler.run_pending() == ["focus"], "due at the turn of the month"
    assert scheduler.run_pending() == [], "once"
    clock.t = at(2025, 4, 1, 5, 0)
    assert scheduler.run_pending() == []
    clock.t = at(2025, 4, 1, 6, 40)
    assert scheduler.run_pending() == ["focus"], "then every interval again"

    # a source that fails at the turn of the month backs off as usual (no refresh loop)
    clock.t = at(2025, 5, 1, 0, 0, 0)
    (tmp_path / "exports" / "focus.csv").write_text("not,a,focus,file\n")
    assert scheduler.run_pending() == ["focus"]
    assert status_report(app)["sources"][0]["up"] is False
    assert scheduler.run_pending() == []
    assert 0 < app.due_at("focus") - clock.t.timestamp() <= 3600 * 1.1
    promtool_ok(app)


def test_a_paid_call_cap_reached_on_a_day_the_clock_went_back_over_is_lifted(env: Any) -> None:
    app, _, clock, write = env(at(2025, 3, 12, 20))
    write(days(dt.date(2025, 2, 1), dt.date(2025, 3, 12)))
    assert app.refresh("focus").ok
    # the cap was reached on the 12th (as _check_cap records it): no paid call until midnight
    app._fetchers["focus"].cap_reached_until = dt.datetime(2025, 3, 13, tzinfo=UTC).timestamp()
    assert app.cap_reached("focus")
    clock.t = at(2025, 3, 12, 8)  # a correction of 12 h: still the 12th, whose cap stays
    assert app.cap_reached("focus")
    clock.t = at(2025, 3, 11, 8)  # a day back: that was "tomorrow's" cap, not today's
    assert not app.cap_reached("focus")
    assert app.refresh("focus").ok
