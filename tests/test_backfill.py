"""``spend-exporter backfill``: each day's samples are what the live exporter served that day, as OpenMetrics
that promtool reads, on a grid that leaves no gap, joined to the live series by their labels.

Fixed clocks throughout (``tests.clock.FIXED_NOW``); the real promtool and Prometheus run in tests/e2e.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families

from exporter.app import App, build_app
from exporter.backfill import (
    BACKFILLED,
    NOT_BACKFILLED,
    STEP,
    Backfill,
    Range,
    check_step,
    parse_when,
    source_days,
    target_labels,
)
from exporter.cli import _parser, cmd_backfill
from exporter.config import parse_config
from exporter.metrics import EXPORTER_FAMILIES, FAMILIES, GUARD_FAMILIES
from tests.clock import FIXED_NOW

ROOT = Path(__file__).resolve().parent.parent
DAY = dt.timedelta(days=1)
TODAY = FIXED_NOW.date()  # 2026-11-20
FIRST = dt.date(2026, 9, 15)  # the cache holds every day written: history_days reaches further back
NEW = dt.date(2026, 11, 3)  # the first day of a third series
TARGET = 'job="spend-exporter",instance="exporter:9877",'


def midnight(d: dt.date) -> int:
    return int(dt.datetime.combine(d, dt.time(), dt.UTC).timestamp())


def ec2(d: dt.date) -> float:
    return round(20 + (d.toordinal() * 7919 % 13) * 1.25, 2)


def rows(focus: Any, last: dt.date, restated: dict[dt.date, float] | None = None) -> list[dict[str, Any]]:
    """Two series every day from FIRST through ``last``, and a third from ``NEW`` on (a series that appears)."""
    out = []
    d = FIRST
    while d <= last:
        n = d.toordinal()
        out.append(focus.daily(d, (restated or {}).get(d, ec2(d)), Tags='{"team": "a"}'))
        out.append(
            focus.daily(
                d,
                round(3 + (n * 104729 % 11) * 0.5, 2),
                ProviderName="Google Cloud",
                ServiceName="BigQuery",
                SubAccountId="proj-1",
                Tags='{"team": "b"}',
            )
        )
        if d >= NEW:
            out.append(focus.daily(d, 7.5, ServiceName="Amazon S3", Tags='{"team": "a"}'))
        d += DAY
    return out


def app_on(tmp: Path, focus: Any, data: list[dict[str, Any]], now: dt.datetime) -> App:
    focus.write(tmp / "exports" / "a.csv", data)
    raw = {
        "cache_path": str(tmp / "cache.sqlite"),
        "sources": [
            {
                "name": "focus",
                "type": "focus",
                "paths": [str(tmp / "exports" / "*.csv")],
                "jitter": 0,
                "history_days": 70,
            }
        ],
        "budgets": [
            {"name": "all", "amount_usd": 2000},
            {"name": "team-b", "amount_usd": 300, "team": "b"},
            {"name": "team-b-allocated", "amount_usd": 300, "team": "b", "include_shared": True},
        ],
        # S3 (from NEW on) shared by both teams: the shares and budgets as they stood
        "allocation": {"shared": [{"name": "s3", "match": {"service_name": "Amazon S3"}, "to_teams": ["a", "b"]}]},
    }
    app = build_app(parse_config(raw), now=lambda: now)
    assert all(o.ok for o in app.refresh_all(history=True))
    return app


@pytest.fixture
def apps() -> Iterator[list[App]]:
    made: list[App] = []
    yield made
    for a in made:
        a.close()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, focus: Any) -> Iterator[App]:
    """The exporter's cache at FIXED_NOW, filled by a refresh: FIRST through yesterday (the tests only read it)."""
    app = app_on(tmp_path_factory.mktemp("live"), focus, rows(focus, TODAY - DAY), FIXED_NOW)
    yield app
    app.close()


def backfill(app: App, since: int, until: int, **kw: str) -> str:
    out = io.StringIO()
    Backfill(app.config, app.store, **kw).write(Range(since, until), out)
    return out.getvalue()


def samples_at(text: str, t: int) -> dict[str, str]:
    """Sample key (``name{labels}``, the scrape's labels removed) → value, of the samples at unix time ``t``."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, value, ts = line.rsplit(" ", 2)
        if int(ts) == t:
            assert key.count(TARGET) == 1 or key.endswith(TARGET[:-1] + "}"), key
            out[key.replace(TARGET, "")] = value
    return out


def served(app: App) -> dict[str, str]:
    """The live exposition's samples of the backfilled families: key → value."""
    out = {}
    for line in app.snapshot.text.decode().splitlines():
        if not line.startswith("#") and line.split("{")[0].split(" ")[0] in BACKFILLED:
            key, value = line.rsplit(" ", 1)
            out[key] = value
    return out


# --------------------------------------------------------------------------- the figures


@pytest.mark.parametrize(
    "day",
    [
        dt.date(2026, 10, 20),  # mid-month, a baseline that starts before the data (averaged over what is held)
        dt.date(2026, 11, 1),  # the 1st: month to date 0, the previous month complete
        dt.date(2026, 11, 2),
        NEW + DAY,  # the day after a new series' first day
        dt.date(2026, 11, 14),
        TODAY,  # the range's last, partial day
    ],
)
def test_each_day_is_what_the_live_exporter_served_then(
    day: dt.date, cache: App, tmp_path: Path, focus: Any, apps: list[App]
) -> None:
    noon = dt.datetime.combine(day, dt.time(12), dt.UTC)
    text = backfill(cache, midnight(day - DAY), int(FIXED_NOW.timestamp()) + 1 if day == TODAY else midnight(day + DAY))
    # the live exporter at noon of that day, on the days it then had: every day before it
    live = app_on(tmp_path / f"then-{day}", focus, rows(focus, day - DAY), noon)
    apps.append(live)
    want = served(live)
    assert want, "the live exposition has the backfilled families"
    assert {k.split("{")[0] for k in want} >= {
        "spend_cost_daily_usd",
        "spend_cost_month_to_date_usd",
        "spend_cost_daily_baseline_usd",
        "spend_budget_spent_usd",
        "spend_budget_forecast_usd",
        "spend_cost_shared_month_to_date_usd",
        "spend_cost_direct_month_to_date_usd",
    }
    assert samples_at(text, int(noon.timestamp())) == want
    # the same all day: at 00:00 the new day's figures, through 23:55
    assert samples_at(text, midnight(day)) == want
    if day != TODAY:
        assert samples_at(text, midnight(day + DAY) - STEP) == want


def test_daily_is_the_day_before_and_month_to_date_runs_through_it(cache: App) -> None:
    text = backfill(cache, midnight(dt.date(2026, 10, 31)), midnight(dt.date(2026, 11, 6)))
    s3 = 'provider="aws",account_id="111111111111",service_name="Amazon S3",team="a",model=""}'
    ec2_labels = s3.replace("Amazon S3", "Amazon EC2")

    def at(day: dt.date, family: str, labels: str = s3) -> float | None:
        got = samples_at(text, midnight(day) + 3600).get(f"{family}{{{labels}")
        return None if got is None else float(got)

    october = [dt.date(2026, 10, 1) + i * DAY for i in range(31)]
    assert at(dt.date(2026, 10, 31), "spend_cost_daily_usd", ec2_labels) == ec2(dt.date(2026, 10, 30))
    assert at(dt.date(2026, 10, 31), "spend_cost_month_to_date_usd", ec2_labels) == pytest.approx(
        sum(ec2(d) for d in october[:-1])
    )
    assert at(dt.date(2026, 11, 1), "spend_cost_month_to_date_usd", ec2_labels) == 0  # a new month: nothing yet
    assert at(dt.date(2026, 11, 1), "spend_cost_previous_month_usd", ec2_labels) == pytest.approx(
        sum(ec2(d) for d in october)
    )
    assert at(NEW, "spend_cost_daily_usd") is None  # not yet a series
    assert at(NEW + DAY, "spend_cost_daily_usd") == 7.5
    assert at(NEW + DAY, "spend_cost_month_to_date_usd") == 7.5
    assert at(NEW + 2 * DAY, "spend_cost_month_to_date_usd") == 15


# --------------------------------------------------------------------------- the format


def test_output_is_openmetrics_grouped_by_series_in_time_order(cache: App) -> None:
    until = midnight(dt.date(2026, 11, 1)) + 7 * 3600 + 123  # across a month's end; an end off the grid
    text = backfill(cache, midnight(dt.date(2026, 10, 31)), until)
    assert text.endswith("# EOF\n")
    fams = list(om_families(text))  # prometheus_client's strict parser: families and series not interleaved
    assert [f.name for f in fams] == list(BACKFILLED)
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    seen: set[str] = set()
    prev_key, prev_t = None, -1
    for line in lines:
        key, _, ts = line.rsplit(" ", 2)
        t = int(ts)
        if key != prev_key:
            assert key not in seen, f"{key}: its samples are not together"
            seen.add(key)
            prev_t = -1
        assert prev_t < t < until
        prev_key, prev_t = key, t
    assert all(f.type == "gauge" for f in fams)


def test_the_scrape_labels_come_first_and_are_escaped(cache: App) -> None:
    out = io.StringIO()
    bf = Backfill(cache.config, cache.store, "spend", 'host "a":9877', target_labels(["namespace=mon", "pod=x-1"]))
    bf.write(Range(midnight(TODAY), midnight(TODAY) + STEP), out)
    text = out.getvalue()
    sample = next(ln for ln in text.splitlines() if ln.startswith("spend_cost_daily_usd{"))
    assert sample.startswith(
        'spend_cost_daily_usd{job="spend",instance="host \\"a\\":9877",namespace="mon",pod="x-1",provider="aws",'
    )
    (fam,) = [f for f in om_families(text) if f.name == "spend_cost_daily_usd"]
    assert {s.labels["instance"] for s in fam.samples} == {'host "a":9877'}


# --------------------------------------------------------------------------- spacing and the join


@pytest.mark.parametrize(
    ("since", "until", "step"),
    [
        (midnight(TODAY - 3 * DAY), int(FIXED_NOW.timestamp()), STEP),  # until on the grid
        (midnight(TODAY - 3 * DAY) + 17, int(FIXED_NOW.timestamp()) + 101, STEP),  # neither end on it
        (midnight(TODAY - 2 * DAY), midnight(TODAY), STEP),  # whole days
        (midnight(TODAY - 2 * DAY) + 61, int(FIXED_NOW.timestamp()) + 7, 3600),  # --step 1h
    ],
)
def test_samples_leave_no_gap_and_end_before_until(since: int, until: int, step: int) -> None:
    r = Range(since, until, step)
    ts = [t for d in r.days() for t in r.timestamps(d)]
    assert ts == sorted(set(ts))
    assert ts[0] - since < step and ts[0] >= since
    assert all(b - a <= step for a, b in itertools.pairwise(ts))
    assert ts[-1] == until - 1, "a closing sample: the live range's first scrape at until finds it"
    assert all(t % step == 0 for t in ts[:-1]), "on the epoch's grid, like every dashboard step"
    # each day's samples start at its 00:00 (the day's new figures), so no step reads the previous day
    for d in list(r.days())[1:]:
        assert r.timestamps(d)[0] == midnight(d)


@pytest.mark.parametrize("bad", [30, 90, 7 * 60, 7200, 299.5])
def test_a_step_must_divide_the_day_in_whole_minutes(bad: float) -> None:
    with pytest.raises(ValueError, match="whole minutes"):
        check_step(bad)
    assert [check_step(s) for s in (60, 300, 900, 3600)] == [60, 300, 900, 3600]


def test_since_and_until_forms() -> None:
    assert parse_when("2026-11-20") == midnight(TODAY)
    assert parse_when("2026-11-20T09:30:00Z") == midnight(TODAY) + 9 * 3600 + 1800
    assert parse_when(str(midnight(TODAY))) == midnight(TODAY)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_when("yesterday")


# --------------------------------------------------------------------------- families and docs


def test_every_family_is_backfilled_or_says_why_not() -> None:
    names = {f.name for f in FAMILIES + EXPORTER_FAMILIES + GUARD_FAMILIES}
    assert set(BACKFILLED) | set(NOT_BACKFILLED) == names
    assert not set(BACKFILLED) & set(NOT_BACKFILLED)
    assert [f.name for f in FAMILIES if f.name in BACKFILLED] == list(BACKFILLED), "in /metrics order"
    doc = (ROOT / "docs" / "backfill.md").read_text()
    for name in NOT_BACKFILLED:
        if not name.startswith(("spend_exporter_", "spend_guard_")):
            assert f"`{name}`" in doc, f"docs/backfill.md: say why {name} is not backfilled"
    assert "`spend_exporter_*`" in doc and "`spend_guard_*`" in doc
    assert f"{STEP // 60} minutes" in doc


def test_source_days_names_the_runs_it_lacks(cache: App) -> None:
    held = source_days(cache.store, "focus", dt.date(2026, 9, 10), dt.date(2026, 10, 5))
    assert (held.first, held.last) == (FIRST, TODAY - DAY)
    assert held.missing == [(dt.date(2026, 9, 10), dt.date(2026, 9, 14))]
    assert "2026-09-10..2026-09-14" in held.describe() and "5 days" in held.describe()


# --------------------------------------------------------------------------- the command


def run_cli(app: App, tmp_path: Path, *argv: str) -> int:
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(f"cache_path: {app.config.cache_path}\nsources:\n  - {{name: focus, type: focus, paths: ['x']}}\n")
    args = _parser().parse_args(["backfill", "--config.file", str(cfg), *argv])
    return cmd_backfill(app.config, args, now=lambda: FIXED_NOW)


def test_dry_run_prints_the_range_the_cache_and_the_fetch_hook(
    cache: App, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(cache, tmp_path, "--dry-run", "--since", "2026-09-01") == 0
    out = capsys.readouterr().out
    assert "backfill 2026-09-01T00:00:00Z to 2026-11-20T12:00:00Z" in out
    assert "source focus: the cache holds 2026-09-15..2026-11-19" in out
    assert "2026-08-31..2026-09-14" in out  # what the range lacks
    assert "history fetch, source focus" in out  # exporter.history.plan_history, calling nothing
    got = re.search(r"about (\d+) series .*, ([\d,]+) samples, ([\d,]+) MB", out)
    assert got, out
    series, samples, size = (int(g.replace(",", "")) for g in got.groups())
    until = int(FIXED_NOW.timestamp())
    text = backfill(cache, parse_when("2026-09-01"), until)
    assert series == len(samples_at(text, until - 1))
    # series that appear in the range make it an upper bound (none before 2026-09-15 here)
    assert samples >= sum(1 for ln in text.splitlines() if not ln.startswith("#"))
    assert size >= len(text) / 1e6
    # over days with the same series, close
    rng = Range(midnight(NEW + DAY), until)
    _, n, size_b = Backfill(cache.config, cache.store).estimate(rng)
    text = backfill(cache, rng.since, rng.until)
    assert n == sum(1 for ln in text.splitlines() if not ln.startswith("#"))
    assert size_b == pytest.approx(len(text), rel=0.02)
    assert not list(tmp_path.glob("*.om"))


def test_backfill_writes_the_file_and_reports_missing_days(
    cache: App, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out" / "backfill.om"
    assert run_cli(cache, tmp_path, "--output", str(out), "--since", "2026-09-14", "--until", "2026-09-17") == 0
    err = capsys.readouterr().err
    assert "2026-09-13..2026-09-14" in err, err  # the days before the cache's first
    assert re.search(r"wrote \d+ series, \d+ samples", err)
    assert out.read_text().endswith("# EOF\n")
    assert [p.name for p in out.parent.iterdir()] == ["backfill.om"], "no temporary file left"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "yesterday", "--output", "x.om"], "--since"),
        (["--until", "2026-11-21", "--output", "x.om"], "--until: in the future"),
        (["--since", "2026-11-20", "--until", "2026-11-19", "--output", "x.om"], "--since: not before --until"),
        ([], "--output: required"),
        (["--dry-run", "--label", "team=x"], "--label: 'team': the exporter's own label"),
        (["--dry-run", "--label", "pod"], "--label: 'pod': expected NAME=VALUE"),
        (["--dry-run", "--step", "7m"], "--step: 420s: whole minutes"),
        (["--dry-run", "--step", "300"], "--step: invalid duration '300'"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    cache: App, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert run_cli(cache, tmp_path, *argv) == 2
    assert message in capsys.readouterr().err


def test_a_label_of_attribution_labels_is_not_a_target_label() -> None:
    """The cost families carry the extra labels already: a --label of the same name would overwrite them."""
    assert target_labels(["environment=prod"]) == {"environment": "prod"}
    with pytest.raises(ValueError, match="'environment': the exporter's own label"):
        target_labels(["environment=prod"], ["environment", "customer_id"])


# --------------------------------------------------------------------------- an AI source: tokens, requests, ratio

OPENAI_ENV = "OPENAI_ADMIN_KEY_BACKFILL_TEST"


def openai_app(tmp: Path, dataset: Any, now: dt.datetime) -> tuple[App, Any]:
    from tests.emulators.openai_admin import OpenAIAdminEmulator

    emu = OpenAIAdminEmulator(dataset)
    emu.start()
    source = {"name": "oai", "type": "openai", "admin_key_env": OPENAI_ENV, "base_url": emu.url + "/v1"}
    raw = {"cache_path": str(tmp / "cache.sqlite"), "sources": [{**source, "history_days": 40, "jitter": 0}]}
    app = App(parse_config(raw), now=lambda: now)
    assert all(o.ok for o in app.refresh_all(history=True))
    return app, emu


@pytest.mark.parametrize("day", [dt.date(2026, 11, 1), dt.date(2026, 11, 17)])
def test_ai_tokens_requests_and_price_ratio_are_what_the_live_exporter_served(
    day: dt.date, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OpenAI Admin API emulator; the live exporter just after 00:00 of ``day``: its API has every hour
    before it and none of ``day`` yet (the hour in progress is not complete)."""
    from tests.emulators.ai_dataset import AIDataset, build_ai_dataset
    from tests.emulators.openai_admin import DEFAULT_ADMIN_KEY

    monkeypatch.setenv(OPENAI_ENV, DEFAULT_ADMIN_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    full = build_ai_dataset(FIXED_NOW, days=40)
    cache, emu = openai_app(tmp_path / "cache", full, FIXED_NOW)
    then = dt.datetime.combine(day, dt.time(0, 30), dt.UTC)
    past = AIDataset(
        now=then,
        start=full.start,
        usage=[r for r in full.usage if r.hour + dt.timedelta(hours=1) <= then],  # complete hours
        extra_costs=[c for c in full.extra_costs if c.day < day],
    )
    live, live_emu = openai_app(tmp_path / "then", past, then)
    try:
        text = backfill(cache, midnight(day), midnight(day + DAY))
        want = served(live)
        assert {k.split("{")[0] for k in want} >= {
            "spend_ai_tokens_month_to_date",
            "spend_ai_requests_month_to_date",
            "spend_ai_price_ratio",
            "spend_cost_daily_usd",
            "spend_ai_key_cost_month_to_date_usd",
        }
        assert samples_at(text, int(then.timestamp())) == want
    finally:
        for a in (cache, live):
            a.close()
        emu.stop()
        live_emu.stop()
