"""The snapshot's arithmetic, on figures worked out by hand: calendar, baseline, forecast, the cardinality cap."""

from __future__ import annotations

import datetime as dt

import pytest

from exporter.cardinality import OTHER, cost_weight, fold
from exporter.forecast import (
    BASELINE_DAYS,
    FORECAST_DAYS,
    Dates,
    baseline,
    baseline_window,
    combined_stddev,
    days_held,
    month_end,
    recent_window,
    remaining_days,
)

D = dt.date


def test_dates_of_a_day_in_march() -> None:
    dates = Dates(dt.datetime(2025, 3, 15, 10, 30, tzinfo=dt.UTC))
    assert dates.today == D(2025, 3, 15)
    assert dates.month_start == D(2025, 3, 1)
    assert (dates.prev_month_start, dates.prev_month_end) == (D(2025, 2, 1), D(2025, 2, 28))
    assert dates.days_in_month == 31
    assert dates.last_complete_hour == dt.datetime(2025, 3, 15, 9, 0, tzinfo=dt.UTC)


def test_dates_across_a_year_and_a_leap_february() -> None:
    january = Dates(dt.datetime(2025, 1, 5, 0, 10, tzinfo=dt.UTC))
    assert (january.prev_month_start, january.prev_month_end) == (D(2024, 12, 1), D(2024, 12, 31))
    assert january.last_complete_hour == dt.datetime(2025, 1, 4, 23, 0, tzinfo=dt.UTC)
    assert Dates(dt.datetime(2024, 2, 10, tzinfo=dt.UTC)).days_in_month == 29


def test_windows() -> None:
    # Feb 14..28 is 15 days, Mar 1..13 another 13: 28
    assert baseline_window(D(2025, 3, 14)) == (D(2025, 2, 14), D(2025, 3, 13))
    assert recent_window(D(2025, 3, 14)) == (D(2025, 3, 8), D(2025, 3, 14))
    assert (BASELINE_DAYS, FORECAST_DAYS) == (28, 7)


@pytest.mark.parametrize(
    ("oldest", "base", "recent"),
    [
        (None, 28, 7),  # no complete day held: the full windows
        (D(2025, 1, 1), 28, 7),  # history before both windows
        (D(2025, 3, 4), 10, 7),  # Mar 4..13 of the baseline; all of Mar 8..14
        (D(2025, 3, 10), 4, 5),  # Mar 10..13; Mar 10..14
        (D(2025, 3, 14), 0, 1),  # nothing before the newest day: no baseline, the forecast's rate from one day
        (D(2025, 3, 20), 0, 1),  # (an oldest day after the newest cannot happen; the bounds still hold)
    ],
)
def test_days_held(oldest: dt.date | None, base: int, recent: int) -> None:
    day = D(2025, 3, 14)
    assert days_held(baseline_window(day), oldest, BASELINE_DAYS) == base
    assert days_held(recent_window(day), oldest, FORECAST_DAYS, least=1) == recent


def test_baseline_mean_and_standard_deviation() -> None:
    # 2, 4, 4, 4, 5, 5, 7, 9: sum 40, squares 232; mean 5, variance 232/8 - 25 = 4
    assert baseline(40.0, 232.0, 8) == (5.0, 2.0)
    # 3 and 3 held over 4 days (two days without a row are days of 0): mean 1.5, variance 18/4 - 2.25 = 2.25
    assert baseline(6.0, 18.0, 4) == (1.5, 1.5)
    assert baseline(5.0, 25.0, 0) is None


def test_baseline_of_a_constant_cost_has_no_spread() -> None:
    # 0.7 a day for 7 days: sum and squares round so that variance comes out -2.2e-16, not 0
    total, squares = sum([0.7] * 7), sum([0.7 * 0.7] * 7)
    assert squares / 7 - (total / 7) ** 2 < 0
    assert baseline(total, squares, 7) == (pytest.approx(0.7), 0.0)


def test_remaining_days() -> None:
    assert remaining_days(D(2025, 3, 14), D(2025, 3, 1), 31) == 17
    assert remaining_days(D(2025, 3, 31), D(2025, 3, 1), 31) == 0
    # on the 1st the newest complete day is last month's: all of this month is still to come
    assert remaining_days(D(2025, 2, 28), D(2025, 3, 1), 31) == 31


def test_month_end() -> None:
    # 100 so far, 17 days to go at the mean of 70 over 7 days
    assert month_end(100.0, 17, 70.0, 7) == 270.0
    assert month_end(100.0, 0, 70.0, 7) == 100.0
    assert month_end(0.0, 31, 3.0, 1) == 93.0


def test_combined_stddev() -> None:
    assert combined_stddev(3.0, 4.0) == 5.0
    assert combined_stddev(0.0, 2.5) == 2.5


def test_cost_weight() -> None:
    v = {"spend_cost_month_to_date_usd": -5.0, "spend_cost_previous_month_usd": 10.0}
    assert cost_weight(v | {"spend_cost_daily_baseline_usd": 0.5}) == 5.0 + 10.0 + 0.5 * 28


def test_fold_keeps_the_heaviest_and_folds_the_rest_per_provider() -> None:
    def row(provider: str, svc: str, mtd: float, sd: float) -> tuple[tuple[str, ...], dict[str, float]]:
        labels = (provider, "acct", svc, "team", "")
        return labels, {"spend_cost_month_to_date_usd": mtd, "spend_cost_daily_baseline_stddev_usd": sd}

    rows = [row("aws", "a", 50.0, 1.0), row("aws", "b", 1.0, 3.0), row("aws", "c", 2.0, 4.0), row("gcp", "d", 3.0, 2.0)]
    kept, folded = fold(rows, 3, cost_weight)
    assert folded == 2  # cap 3: the 2 heaviest are kept, the other 2 become one series, 3 in all
    assert kept[:2] == [rows[0], rows[3]]
    other = dict(kept[2:])
    assert other == {
        ("aws", OTHER, OTHER, OTHER, OTHER): {
            "spend_cost_month_to_date_usd": 3.0,
            "spend_cost_daily_baseline_stddev_usd": 5.0,  # sqrt(3² + 4²)
        }
    }
    assert fold(rows, 4, cost_weight) == (rows, 0)
