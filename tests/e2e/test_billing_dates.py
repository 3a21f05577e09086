"""The dashboards' billing-date queries on a real Prometheus over blocks of a known history.

The history is what the exporter serves, written as ``spend-exporter backfill`` writes it (a sample every 5
minutes, one exactly at each 00:00 UTC) and turned into blocks by the real ``promtool tsdb
create-blocks-from openmetrics``: at any moment of UTC day D+1, ``spend_cost_daily_usd`` is day D (a
preliminary figure until noon, then the restated one); in month M+1, ``spend_cost_previous_month_usd`` is month
M (restated from the 10th); month to date runs through yesterday. The panels' queries, exactly as shipped (the
variables at All), are run as Grafana runs them: range queries every 1d from 00:00 UTC. The dates are fixed, so
the test is the same on every day; they span a 28-day February between two 31-day months.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.stack import Query, dashboard_queries, prometheus_on, tool

pytestmark = pytest.mark.e2e

UTC = dt.UTC
START = dt.datetime(2026, 1, 20, tzinfo=UTC)  # the oldest sample
END = dt.datetime(2026, 4, 3, 12, tzinfo=UTC)  # the newest, "now": day D+1 = 3 April, half of it
STEP = dt.timedelta(minutes=5)
SERIES = [  # (provider, account_id, service_name, team): cost labels, model empty
    ("aws", "111111111111", "Amazon EC2", "search"),
    ("aws", "111111111111", "Amazon S3", "data"),
    ("gcp", "proj-1", "BigQuery", "data"),
]
PRELIMINARY_DAY = 1.5  # a day's figure until noon of the day after is this much lower, then restated
PRELIMINARY_MONTH = 10.0  # a month's figure until the 10th of the month after


def cost(k: int, day: dt.date) -> float:
    """Series ``k``'s cost of ``day``: distinct for every day and series, in cents."""
    return (day.toordinal() % 89) * (k + 1) + 0.25 * k + 3


def month_cost(k: int, year: int, month: int) -> float:
    first = dt.date(year, month, 1)
    days = (first.replace(year=year + month // 12, month=month % 12 + 1) - first).days
    return math.fsum(cost(k, first + dt.timedelta(days=i)) for i in range(days))


def served(k: int, t: dt.datetime) -> dict[str, float]:
    """What the exporter serves for series ``k`` at ``t``."""
    today = t.date()
    yesterday = today - dt.timedelta(days=1)
    daily = cost(k, yesterday) - (PRELIMINARY_DAY if t.hour < 12 else 0)
    prev = (today.replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    previous = month_cost(k, prev.year, prev.month) - (PRELIMINARY_MONTH if today.day < 10 else 0)
    mtd = math.fsum(cost(k, today.replace(day=d)) for d in range(1, today.day))
    return {
        "spend_cost_daily_usd": round(daily, 2),
        "spend_cost_previous_month_usd": round(previous, 2),
        "spend_cost_month_to_date_usd": round(mtd, 2),
    }


def openmetrics() -> str:
    times = [START + i * STEP for i in range(int((END - START) / STEP) + 1)]
    values = [[served(k, t) for t in times] for k in range(len(SERIES))]
    out = []
    for family in ("spend_cost_daily_usd", "spend_cost_previous_month_usd", "spend_cost_month_to_date_usd"):
        out.append(f"# TYPE {family} gauge")
        for k, (provider, account, service, team) in enumerate(SERIES):
            labels = f'provider="{provider}",account_id="{account}",service_name="{service}",team="{team}",model=""'
            out += [
                f"{family}{{{labels}}} {v[family]} {t.timestamp():.0f}" for t, v in zip(times, values[k], strict=True)
            ]
    return "\n".join([*out, "# EOF", ""])


class Prom:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: Any) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}?{urllib.parse.urlencode(params)}", timeout=10) as r:
            res = json.load(r)
        assert res["status"] == "success", res
        return res["data"]["result"]

    def instant(self, q: Query, at: dt.datetime) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/query", query=q.expr, time=at.timestamp()))

    def daily(self, q: Query, start: dt.datetime, end: dt.datetime) -> dict[str, dict[dt.date, float]]:
        """A range query every 1d from 00:00 UTC, as Grafana sends it: {legend label values: {date: value}}."""
        res = self.get("/api/v1/query_range", query=q.expr, start=start.timestamp(), end=end.timestamp(), step=86400)
        return {
            ",".join(f"{k}={v}" for k, v in sorted(s["metric"].items())): {
                dt.datetime.fromtimestamp(ts, UTC).date(): float(val) for ts, val in s["values"]
            }
            for s in res
        }


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prom]:
    promtool = tool("promtool")
    tmp = tmp_path_factory.mktemp("billing-dates")
    (tmp / "history.om").write_text(openmetrics())
    data = tmp / "data"
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=720h", "-q"]
        + [str(tmp / "history.om"), str(data)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with prometheus_on(data) as url:
        yield Prom(url)


def _query(uid: str, panel: str, ref: str = "A") -> Query:
    (q,) = [q for q in dashboard_queries() if (q.dashboard, q.panel, q.ref) == (uid, panel, ref)]
    return q


def _days(a: dt.date, b: dt.date) -> list[dt.date]:
    return [a + dt.timedelta(days=i) for i in range((b - a).days + 1)]


def _by(label: int, key: str) -> list[int]:
    return [k for k, s in enumerate(SERIES) if s[label] == key]


def test_each_daily_bar_is_its_billing_day_restated(prom: Prom) -> None:
    """The bar at 00:00 of day D is day D's cost as restated during D+1; the newest is yesterday's, today has
    none. The sample at exactly 00:00 of D+2 (day D+1's) does not leak into day D."""
    got = prom.daily(_query("spend-overview", "Daily spend by provider"), START, END)
    days = _days(START.date(), END.date() - dt.timedelta(days=1))
    assert set(got) == {"provider=aws", "provider=gcp"}
    for provider in ("aws", "gcp"):
        assert list(got[f"provider={provider}"]) == days  # 20 January to 2 April: no bar for 3 April
        for day in days:
            want = round(math.fsum(cost(k, day) for k in _by(0, provider)), 2)
            assert round(got[f"provider={provider}"][day], 2) == want, (provider, day)


def test_daily_bars_by_team(prom: Prom) -> None:
    got = prom.daily(_query("spend-teams", "Daily spend by team"), START, END)
    for team in ("search", "data"):
        series = got[f"team={team}"]
        for day in _days(START.date(), END.date() - dt.timedelta(days=1)):
            assert round(series[day], 2) == round(math.fsum(cost(k, day) for k in _by(3, team)), 2), (team, day)


def test_each_monthly_bar_is_its_billing_month_at_its_last_day(prom: Prom) -> None:
    """One point per month, at 00:00 of its last day: the month's cost as it stood on the 28th of the month
    after, or now (March: on 3 April, the preliminary figure). April, not complete, has no bar."""
    start = dt.datetime(2025, 12, 1, tzinfo=UTC)
    for uid, panel, label, keys in [
        ("spend-overview", "Monthly spend by provider, 13 months", 0, ("aws", "gcp")),
        ("spend-teams", "Monthly spend by team, 13 months", 3, ("search", "data")),
    ]:
        got = prom.daily(_query(uid, panel), start, END)
        name = "provider" if label == 0 else "team"
        for key in keys:
            ks = _by(label, key)
            months = {(2025, 12): 0.0, (2026, 1): 0.0, (2026, 2): 0.0, (2026, 3): PRELIMINARY_MONTH}
            want = {
                (dt.date(y + m // 12, m % 12 + 1, 1) - dt.timedelta(days=1)): round(
                    math.fsum(month_cost(k, y, m) - less for k in ks), 2
                )
                for (y, m), less in months.items()
            }
            assert {d: round(v, 2) for d, v in got[f"{name}={key}"].items()} == want, (panel, key)


@pytest.mark.parametrize(
    ("now", "same_day"),
    [
        (dt.datetime(2026, 3, 15, 10, tzinfo=UTC), dt.datetime(2026, 2, 15, 10, tzinfo=UTC)),  # February: 28d
        (dt.datetime(2026, 2, 25, 10, tzinfo=UTC), dt.datetime(2026, 1, 25, 10, tzinfo=UTC)),  # January: 31d
        (dt.datetime(2026, 4, 2, 10, tzinfo=UTC), dt.datetime(2026, 3, 2, 10, tzinfo=UTC)),  # March: 31d
        (dt.datetime(2026, 3, 30, 10, tzinfo=UTC), None),  # February had no 30th: all of it
    ],
)
def test_month_to_date_against_last_month_same_day(prom: Prom, now: dt.datetime, same_day: dt.datetime | None) -> None:
    q = _query("spend-overview", "Last month, same day")
    assert _query("spend-overview", "Month to date against last month", "B").expr == q.expr
    (res,) = prom.instant(q, now)
    if same_day is None:
        want = math.fsum(served(k, now)["spend_cost_previous_month_usd"] for k in range(len(SERIES)))
    else:
        want = math.fsum(served(k, same_day)["spend_cost_month_to_date_usd"] for k in range(len(SERIES)))
    assert round(float(res["value"][1]), 2) == round(want, 2)


@pytest.mark.parametrize(("name", "days"), [("day over day", 1), ("week over week", 7)])
def test_top_movers_by_team(prom: Prom, name: str, days: int) -> None:
    """At 10:00 on 15 March the newest day is 14 March (its preliminary figure, as is the one compared with)."""
    now = dt.datetime(2026, 3, 15, 10, tzinfo=UTC)
    cols = {}
    for ref in "ABC":
        res = prom.instant(_query("spend-teams", f"Top movers by team, {name}", ref), now)
        cols[ref] = {r["metric"]["team"]: round(float(r["value"][1]), 2) for r in res}
    for team in ("search", "data"):
        ks = _by(3, team)
        newest = math.fsum(served(k, now)["spend_cost_daily_usd"] for k in ks)
        before = math.fsum(served(k, now - dt.timedelta(days=days))["spend_cost_daily_usd"] for k in ks)
        assert cols["B"][team] == round(newest, 2) and cols["C"][team] == round(before, 2)
        assert cols["A"][team] == round(newest - before, 2)


def test_top_movers_stay_empty_without_the_compared_day(prom: Prom) -> None:
    """Six days into the history there is no day a week before: no table of every service as "new"."""
    now = START + dt.timedelta(days=6)
    for ref in "ABC":
        assert prom.instant(_query("spend-overview", "Top movers by service, week over week", ref), now) == []
    assert prom.instant(_query("spend-overview", "Top movers by service, day over day"), now)


def test_the_history_is_what_the_test_says() -> None:
    """The fixture's own arithmetic: day D's figure is served all of D+1 and at no other time."""
    d = dt.date(2026, 2, 28)
    at = dt.datetime(2026, 3, 1, tzinfo=UTC)
    assert served(0, at)["spend_cost_daily_usd"] == round(cost(0, d) - PRELIMINARY_DAY, 2)
    assert served(0, at + dt.timedelta(hours=12))["spend_cost_daily_usd"] == round(cost(0, d), 2)
    assert served(0, at + dt.timedelta(days=1))["spend_cost_daily_usd"] != round(cost(0, d), 2)
    assert served(0, at)["spend_cost_month_to_date_usd"] == 0
    assert served(0, at)["spend_cost_previous_month_usd"] == round(month_cost(0, 2026, 2) - PRELIMINARY_MONTH, 2)
