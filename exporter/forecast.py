"""Baseline, standard deviation and month-end forecast: the arithmetic behind the cost families.

Pure functions of dates and of the sums the store aggregates per series (``Store.cost_by_series``):
no I/O, no clock. DESIGN.md defines the figures:

- ``spend_cost_daily_baseline_usd``: mean daily cost over the 28 days before the newest complete day;
- ``spend_cost_daily_baseline_stddev_usd``: the standard deviation over the same days;
- ``spend_cost_forecast_month_end_usd``: month-to-date plus remaining days × mean of the last 7 complete days.

A day with no row for a series counts as a day of 0; a source that holds fewer days than a window
is averaged over the days it holds, so a new source's baseline is not diluted by days it never had.
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
from dataclasses import dataclass

BASELINE_DAYS = 28
FORECAST_DAYS = 7

_DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Dates:
    """The calendar a snapshot is built for, from ``now`` (UTC)."""

    now: dt.datetime

    @property
    def today(self) -> dt.date:
        return self.now.date()

    @property
    def month_start(self) -> dt.date:
        return self.today.replace(day=1)

    @property
    def prev_month_end(self) -> dt.date:
        return self.month_start - dt.timedelta(days=1)

    @property
    def prev_month_start(self) -> dt.date:
        return self.prev_month_end.replace(day=1)

    @property
    def days_in_month(self) -> int:
        return calendar.monthrange(self.today.year, self.today.month)[1]

    @property
    def last_complete_hour(self) -> dt.datetime:
        return self.now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)


def baseline_window(day: dt.date) -> tuple[dt.date, dt.date]:
    """The ``BASELINE_DAYS`` days before ``day`` (first, last; inclusive)."""
    return day - BASELINE_DAYS * _DAY, day - _DAY


def recent_window(day: dt.date) -> tuple[dt.date, dt.date]:
    """The ``FORECAST_DAYS`` days ending with ``day`` (first, last; inclusive): the forecast's daily rate."""
    return day - (FORECAST_DAYS - 1) * _DAY, day


def days_held(window: tuple[dt.date, dt.date], oldest: dt.date | None, most: int, least: int = 0) -> int:
    """How many days of ``window`` fall on or after ``oldest`` (the first day the source holds), in [least, most].

    ``most`` without ``oldest`` (the source holds no complete day).
    """
    if oldest is None:
        return most
    first, last = window
    return max(least, min(most, (last - max(oldest, first)).days + 1))


def baseline(total: float, total_sq: float, days: int) -> tuple[float, float] | None:
    """Mean and (population) standard deviation of daily costs, from their sum and sum of squares over ``days``.

    None over no days. A variance that rounding makes slightly negative is 0.
    """
    if days <= 0:
        return None
    mean = total / days
    return mean, math.sqrt(max(total_sq / days - mean * mean, 0.0))


def remaining_days(day: dt.date, month_start: dt.date, days_in_month: int) -> int:
    """Days of the month after ``day``; the whole month when ``day`` is before ``month_start``."""
    return days_in_month - day.day if day >= month_start else days_in_month


def month_end(complete: float, remaining: int, recent_total: float, recent_days: int) -> float:
    """Forecast month-end cost: ``complete`` (month-to-date through the newest complete day) plus
    ``remaining`` days at the mean daily cost of the recent window."""
    return complete + remaining * (recent_total / recent_days)


def combined_stddev(a: float, b: float) -> float:
    """Standard deviation of the sum of two independent series (the root of their summed variances)."""
    return math.sqrt(a**2 + b * b)
