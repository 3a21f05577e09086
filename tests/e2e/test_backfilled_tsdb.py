"""End to end: FOCUS files with 70 days, a refresh fills the cache, ``spend-exporter backfill`` writes
OpenMetrics, the real ``promtool tsdb create-blocks-from openmetrics`` turns it into blocks and a real Prometheus
serves them.

A query at noon of day D+1 equals the dataset's cost of day D to the cent, per provider and team, for D 40 and
10 days back; so does the billing-date form (``offset -1d`` at day D). Queries at a 15 s step across a day's
start find a sample at every step (the 5-minute grid and the lookback delta). A day restated at the source
(changed, refreshed again, backfilled into a fresh TSDB) shows its new figure.

Prometheus runs on the real clock (blocks older than the retention, or in the future, are not loaded), so the
data is dated relative to the real date, and the module waits for a new day when it starts just before 00:00.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.backfill import BACKFILLED
from tests.conftest import daily, write_focus_csv
from tests.e2e.stack import dashboard_queries, prometheus_on, tool

pytestmark = pytest.mark.e2e

DAY = dt.timedelta(days=1)
HISTORY = 70
BACK = (40, 10)  # days D asserted, this many days before today
SERIES = [  # provider name in FOCUS, provider label, team, service
    ("AWS", "aws", "search", "Amazon EC2"),
    ("AWS", "aws", "search", "Amazon S3"),
    ("AWS", "aws", "data", "Amazon RDS"),
    ("Google Cloud", "gcp", "search", "BigQuery"),
    ("Google Cloud", "gcp", "data", "Cloud Storage"),
    ("OpenAI", "openai", "search", "chat"),
    ("AWS", "aws", "platform", "Amazon EKS"),  # the shared pool's line items
]
AI_COLUMNS = {  # the OpenAI series is a model's input tokens, so the AI panels have data too
    "chat": {
        "SubAccountId": "proj_search",
        "x_Model": "gpt-4o",
        "x_TokenType": "input",
        "ConsumedQuantity": 1_000_000,
        "ConsumedUnit": "Tokens",
    }
}
BUDGETS = [{"name": "search", "amount_usd": 100_000, "team": "search"}, {"name": "total", "amount_usd": 500_000}]
POOLS = {"shared": [{"name": "platform", "match": {"team": "platform"}, "split": "proportional"}]}
# per-key AI spend comes only from the OpenAI and Anthropic Admin APIs, which this FOCUS dataset has not:
# tests/test_backfill.py holds its backfilled figures equal to the live ones on the OpenAI emulator, and
# tests/e2e/test_stack.py runs these panels on live data
NOT_IN_THIS_DATASET = {"spend_ai_key_cost_month_to_date_usd", "spend_ai_key_info"}
RESTATED = Decimal("999.99")  # the new figure of day 10 back, for one series
SPIKE = Decimal("9000.00")  # yesterday's figure of the second series: an anomaly for the anomaly panels


def cost(i: int, d: dt.date) -> Decimal:
    """The dataset: a different figure in cents for every series and day."""
    return Decimal(100 + (d.toordinal() * 7919 + i * 104729) % 90_000) / 100


def rows(today: dt.date, restated: dt.date | None = None) -> list[dict[str, Any]]:
    out = []
    for n in range(HISTORY, 0, -1):
        d = today - n * DAY
        for i, (pname, _, team, svc) in enumerate(SERIES):
            usd = RESTATED if (d == restated and i == 0) else cost(i, d)
            usd = SPIKE if (d == today - DAY and i == 1) else usd
            extra = AI_COLUMNS.get(svc, {})
            out.append(
                daily(d, str(usd), ProviderName=pname, ServiceName=svc, Tags=json.dumps({"team": team}), **extra)
            )
    return out


def expected(today: dt.date, d: dt.date, restated: dt.date | None = None) -> dict[tuple[str, str], Decimal]:
    """The dataset's cost of day ``d`` by (provider, team)."""
    out: dict[tuple[str, str], Decimal] = {}
    for i, (_, prov, team, _) in enumerate(SERIES):
        usd = RESTATED if (d == restated and i == 0) else cost(i, d)
        out[(prov, team)] = out.get((prov, team), Decimal(0)) + usd
    return out


def real_today() -> dt.date:
    """Today (UTC), at least 5 minutes before the next 00:00: the module's days do not move under it."""
    now = dt.datetime.now(dt.UTC)
    midnight = dt.datetime.combine(now.date() + DAY, dt.time(), dt.UTC)
    if midnight - now < dt.timedelta(minutes=5):
        time.sleep((midnight - now).total_seconds() + 1)
    return dt.datetime.now(dt.UTC).date()


def exporter(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", "import sys; from exporter.cli import main; sys.exit(main())", *args]
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def blocks(om: Path, tsdb: Path) -> None:
    """promtool's blocks, as docs/backfill.md runs it (a long block duration: one parse per block)."""
    promtool = tool("promtool")
    argv = [promtool, "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=1458h", str(om), str(tsdb)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def api(url: str, path: str, **params: Any) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=10) as r:
        res = json.load(r)
    assert res["status"] == "success", res
    return list(res["data"]["result"])


def by_provider_team(result: list[dict[str, Any]]) -> dict[tuple[str, str], Decimal]:
    return {
        (r["metric"]["provider"], r["metric"]["team"]): Decimal(r["value"][1]).quantize(Decimal("0.01")) for r in result
    }


def at(d: dt.date, hour: int = 12) -> float:
    return dt.datetime.combine(d, dt.time(hour), dt.UTC).timestamp()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The cache filled by a refresh, backfilled and turned into blocks; then restated, refreshed and again."""
    tool("promtool")
    tool("prometheus")
    tmp = tmp_path_factory.mktemp("backfill")
    today = real_today()
    restated = today - BACK[1] * DAY
    write_focus_csv(tmp / "exports" / "focus.csv", rows(today))
    # history_days: the cold refresh reads 70 days; restatement_days: the refresh after the change reads day 10 back
    source = {"name": "focus", "type": "focus", "paths": ["exports/*.csv"], "history_days": HISTORY}
    source["restatement_days"] = BACK[1] + 2
    cfg = {"cache_path": "cache.sqlite", "sources": [source], "budgets": BUDGETS, "allocation": POOLS}
    (tmp / "config.yml").write_text(yaml.safe_dump(cfg))
    since = (today - (BACK[0] + 1) * DAY).isoformat()  # noon of day 40 back, and of the day after it
    exporter("once", "--config.file", "config.yml", "--output", "once.prom", cwd=tmp)
    first = exporter("backfill", "--config.file", "config.yml", "--output", "first.om", "--since", since, cwd=tmp)
    blocks(tmp / "first.om", tmp / "tsdb-first")
    write_focus_csv(tmp / "exports" / "focus.csv", rows(today, restated))
    exporter("once", "--config.file", "config.yml", "--output", "once.prom", cwd=tmp)
    exporter("backfill", "--config.file", "config.yml", "--output", "second.om", "--since", since, cwd=tmp)
    blocks(tmp / "second.om", tmp / "tsdb-second")
    return {"tmp": tmp, "today": today, "restated": restated, "since": since, "stderr": first.stderr}


def test_day_d_at_noon_of_d_plus_1_to_the_cent_per_provider_and_team(run: dict[str, Any]) -> None:
    today = run["today"]
    with prometheus_on(run["tmp"] / "tsdb-first", retention="5y") as url:
        for back in BACK:
            d = today - back * DAY
            got = by_provider_team(
                api(url, "query", query="sum by (provider, team) (spend_cost_daily_usd)", time=at(d + DAY))
            )
            assert got == expected(today, d), f"day {d} ({back} days back)"
            # by billing date: the bar of day d is the gauge one day later
            billing = "sum by (provider, team) (spend_cost_daily_usd offset -1d)"
            assert by_provider_team(api(url, "query", query=billing, time=at(d))) == expected(today, d)
        # the series carry the live scrape's labels (docs/backfill.md: --job, --instance)
        labels = api(url, "query", query="spend_cost_daily_usd", time=at(today - DAY))[0]["metric"]
        assert (labels["job"], labels["instance"]) == ("spend-exporter", "exporter:9877")


def test_no_gap_at_any_zoom(run: dict[str, Any]) -> None:
    today = run["today"]
    d = today - BACK[1] * DAY
    with prometheus_on(run["tmp"] / "tsdb-first", retention="5y") as url:
        q = 'spend_cost_daily_usd{service_name="Amazon EC2"}'
        # a 15 s step across 00:00 of d: every step has a sample, and the figure changes at 00:00
        start, end = at(d, 0) - 3600, at(d, 0) + 3600
        (series,) = api(url, "query_range", query=q, start=start, end=end, step=15)
        assert len(series["values"]) == 7200 // 15 + 1
        before = {v for t, v in series["values"] if t < at(d, 0)}
        after = {v for t, v in series["values"] if t >= at(d, 0)}
        assert before == {str(cost(0, d - 2 * DAY))} and after == {str(cost(0, d - DAY))}
        # a 1 h step over the whole range: a point at every step
        start, end = at(today - BACK[0] * DAY, 0), at(today, 0) - 3600
        (series,) = api(url, "query_range", query=q, start=start, end=end, step=3600)
        assert len(series["values"]) == int((end - start) // 3600) + 1


def test_a_restated_day_shows_its_new_figure(run: dict[str, Any]) -> None:
    today, d = run["today"], run["restated"]
    with prometheus_on(run["tmp"] / "tsdb-second", retention="5y") as url:
        got = by_provider_team(
            api(url, "query", query="sum by (provider, team) (spend_cost_daily_usd)", time=at(d + DAY))
        )
    want = expected(today, d, restated=d)
    assert got == want
    assert want != expected(today, d), "the restatement changed the figure"


def test_nothing_missing_is_reported(run: dict[str, Any]) -> None:
    # the range's days are all in the cache: no warning on stderr, only the summary
    assert "have none" not in run["stderr"], run["stderr"]
    assert "wrote " in run["stderr"]


def _families(expr: str) -> set[str]:
    """The series names a query reads: exporter families and recording rules (``level:name:op``)."""
    return set(re.findall(r"\b(spend_[a-z0-9_]+|[a-z_]+:spend_[a-z0-9_]+:[a-z0-9_]+)\b", expr))


def test_every_dashboard_query_on_backfilled_families_returns_data(run: dict[str, Any]) -> None:
    """Every panel query that reads only backfilled families returns data on the backfilled TSDB alone, at the
    moment Grafana evaluates its newest point (``Query.at``: now, yesterday's 00:00 for a billing-date chart,
    last month's last day for a monthly one), with the offsets as shipped (1d, 7d, a month back). Queries of
    recording rules or of live-only families (docs/backfill.md) have no history to read; they are listed, so a
    query that moves between the two is seen."""
    now = dt.datetime.now(dt.UTC)
    queries = dashboard_queries({"__rate_interval": "5m", "__range": "1d", "__interval": "5m"})
    with_history = set(BACKFILLED) - NOT_IN_THIS_DATASET
    covered = [q for q in queries if _families(q.expr) and _families(q.expr) <= with_history]
    assert len(covered) >= 50, [q.id for q in covered]
    empty = []
    with prometheus_on(run["tmp"] / "tsdb-first", retention="5y") as url:
        for q in covered:
            if not api(url, "query", query=q.expr, time=q.at(now).timestamp()):
                empty.append(q.id)
    assert not empty, empty
