"""The burn rate: window arithmetic, pricing, scaling, staleness (pure), then the engine and the scheduler with a
fixed clock against the OpenAI emulator serving a usage schedule (``tests.emulators.scenario``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from exporter import burn
from exporter.app import App, _source_hash, burn_backoff, burn_next_at
from exporter.config import parse_config
from exporter.model import MinuteUsage, MinuteUsageResult, burn_bounds
from exporter.scheduler import Scheduler
from exporter.sources.openai import OpenAISource
from exporter.status import status_report
from tests.conftest import Clock
from tests.emulators.ai_dataset import GPT4O, LABS, build_ai_dataset
from tests.emulators.openai_admin import DEFAULT_ADMIN_KEY, OpenAIAdminEmulator
from tests.emulators.scenario import Scenario, runaway_schedule
from tests.emulators.server import Fault
from tests.helpers import series

UTC = dt.UTC
T0 = dt.datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
ENV = "OPENAI_ADMIN_KEY_BURN_TEST"
MIN = dt.timedelta(minutes=1)


# --------------------------------------------------------------------------- pure


def test_window_ends_at_the_newest_minute_complete_given_the_delay() -> None:
    now = dt.datetime(2026, 11, 20, 12, 7, 59, tzinfo=UTC)
    # 12:07:59 − 5m = 12:02:59: the minute 12:02–12:03 is still filling in, 12:01–12:02 is complete
    assert burn_bounds(now, 900, 300) == (
        dt.datetime(2026, 11, 20, 11, 47, tzinfo=UTC),
        dt.datetime(2026, 11, 20, 12, 2, tzinfo=UTC),
    )
    assert burn_bounds(now.replace(second=0), 300, 60)[1] == dt.datetime(2026, 11, 20, 12, 6, tzinfo=UTC)


def _row(minute: int, tokens: dict[str, int], key: str = "k1", model: str = "m", account: str = "p1") -> MinuteUsage:
    return MinuteUsage(T0 + minute * MIN, "openai", account, "chat", model, key, tokens)


def _estimate(prices: Mapping[str, float]) -> burn.Estimate:
    """USD per token of each model's output; a model not in ``prices`` is unpriced."""

    def estimate(provider: str, model: str, tokens: Mapping[str, int]) -> tuple[float, int]:
        if model not in prices:
            return 0.0, sum(tokens.values())
        return sum(n * prices[model] for n in tokens.values()), 0

    return estimate


def _labels(m: MinuteUsage) -> tuple[str, ...]:
    return (m.provider, m.account_id, m.service_name, "team-" + m.account_id, m.model)


def test_priced_scaled_to_one_hour_and_by_the_ratio() -> None:
    # 15 minutes: 3 rows of 100k tokens at $10/1M = $3.00 in 15 minutes = $12.00/h; × ratio 0.8 = $9.60/h
    rows = [_row(i, {"output": 100_000}, key=f"k{i % 2}") for i in (0, 7, 14)]
    res = MinuteUsageResult(T0, T0 + 15 * MIN, rows)
    data = burn.burn_data(res, _labels, _estimate({"m": 10 / 1e6}), lambda *_: None)
    assert data.rates == {("openai", "p1", "chat", "team-p1", "m"): pytest.approx(12.0)}
    assert data.keys == {("openai", "p1", "m"): ("k0", "k1")}
    scaled = burn.burn_data(res, _labels, _estimate({"m": 10 / 1e6}), lambda p, a, m: 0.8 if a == "p1" else None)
    assert scaled.rates[("openai", "p1", "chat", "team-p1", "m")] == pytest.approx(9.6)
    assert burn.per_hour(1.25, 300) == 15.0


def test_unpriced_usage_has_no_figure_and_is_counted() -> None:
    res = MinuteUsageResult(T0, T0 + 5 * MIN, [_row(0, {"output": 7}, model="mystery"), _row(1, {"output": 5})])
    data = burn.burn_data(res, _labels, _estimate({"m": 1.0}), lambda *_: None)
    assert data.unpriced == {("openai", "mystery"): 7}
    assert set(data.rates) == {("openai", "p1", "chat", "team-p1", "m")}  # no 0 for the unpriced model


def test_a_series_seen_in_the_last_hour_reads_zero_then_goes() -> None:
    first = burn.burn_data(
        MinuteUsageResult(T0, T0 + 5 * MIN, [_row(0, {"output": 60})]), _labels, _estimate({"m": 1.0}), lambda *_: None
    )
    assert first.rates == {("openai", "p1", "chat", "team-p1", "m"): 720.0}
    quiet = MinuteUsageResult(T0 + 30 * MIN, T0 + 35 * MIN, [_row(31, {"output": 0}, account="p2")])
    later = burn.burn_data(quiet, _labels, _estimate({"m": 1.0}), lambda *_: None, first)
    assert later.rates == {("openai", "p1", "chat", "team-p1", "m"): 0.0, ("openai", "p2", "chat", "team-p2", "m"): 0.0}
    gone = MinuteUsageResult(T0 + 66 * MIN, T0 + 71 * MIN, [])
    assert burn.burn_data(gone, _labels, _estimate({"m": 1.0}), lambda *_: None, later).rates == {}


def test_staleness_and_the_fragments() -> None:
    end = T0 + 15 * MIN
    newest = end + 45 * MIN  # three 15-minute windows later
    assert not burn.is_stale(end, newest + 5 * MIN + dt.timedelta(seconds=59), 900, 300)
    assert burn.is_stale(end, newest + 6 * MIN, 900, 300)
    data = burn.BurnData(T0, end, {("openai", "p", "chat", "t", "m"): 1.234567891})
    frags, overflow = burn.fragments("src", "openai", data, False, 100)
    assert overflow == 0
    assert b'model="m"} 1.234568\n' in frags[burn.RATE]
    assert series(frags[burn.WINDOW_END].decode(), "spend_ai_burn_window_end_timestamp_seconds") == {
        (("provider", "openai"), ("source", "src")): end.timestamp()
    }
    stale, _ = burn.fragments("src", "openai", data, True, 100)
    assert stale[burn.RATE] == b"" and stale[burn.WINDOW_END] == frags[burn.WINDOW_END]


def test_the_cap_folds_burn_series_into_other() -> None:
    rates = {("openai", f"p{i}", "chat", "t", "m"): float(i) for i in range(5)}
    frags, overflow = burn.fragments("src", "openai", burn.BurnData(T0, T0 + 15 * MIN, rates), False, 3)
    got = series(frags[burn.RATE].decode(), burn.RATE)
    assert overflow == 3
    assert {dict(k)["account_id"]: v for k, v in got.items()} == {"p4": 4.0, "p3": 3.0, "__other__": 0.0 + 1.0 + 2.0}


def test_burn_keys_keep_the_cache() -> None:
    base = {"name": "o", "type": "openai"}
    same = OpenAISource.model_validate({**base, "burn_window": "30m", "burn_interval": "5m", "burn_delay": "10m"})
    assert _source_hash(OpenAISource.model_validate(base)) == _source_hash(same)


def test_backoff_doubles_from_the_interval_up_to_the_window() -> None:
    src = OpenAISource.model_validate({"name": "o", "type": "openai"})
    assert [burn_backoff(src, n) for n in (1, 2, 3, 4, 5)] == [120, 240, 480, 900, 900]
    assert burn_backoff(src, 1, retry_after=300) == 300


# --------------------------------------------------------------------------- the engine and the scheduler


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + dt.timedelta(minutes=10, seconds=30))


@pytest.fixture
def emu(clock: Clock) -> Iterator[OpenAIAdminEmulator]:
    scenario = Scenario([runaway_schedule(T0)], clock, start=T0 - dt.timedelta(hours=2))
    with OpenAIAdminEmulator(build_ai_dataset(T0, days=3), scenario=scenario) as e:
        yield e


@pytest.fixture
def app(emu: OpenAIAdminEmulator, clock: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    monkeypatch.setenv(ENV, DEFAULT_ADMIN_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    cfg = parse_config(
        {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "attribution": {"rules": [{"match": {"account_id": LABS}, "team": "ml-platform"}]},
            "sources": [
                {"name": "oai", "type": "openai", "admin_key_env": ENV, "base_url": emu.url + "/v1", "timeout": "10s"}
            ],
        }
    )
    a = App(cfg, now=clock)
    yield a
    a.close()


LABELS = (("account_id", LABS), ("model", GPT4O), ("provider", "openai"), ("service_name", "chat"))


def rate(app: App) -> float | None:
    got = series(app.exposition(), "spend_ai_burn_rate_usd_per_hour")
    return got.get((*LABELS[:2], *LABELS[2:3], LABELS[3], ("team", "ml-platform")))  # sorted label pairs


def window_end(app: App) -> float | None:
    got = series(app.exposition(), "spend_ai_burn_window_end_timestamp_seconds")
    return got.get((("provider", "openai"), ("source", "oai")))


def calls(app: App) -> dict[tuple[str, str], float]:
    return {
        (dict(k)["operation"], dict(k)["status"]): v
        for k, v in series(app.exposition(), "spend_exporter_api_requests_total").items()
    }


def test_refresh_burn_publishes_the_rate_the_end_and_the_keys(app: App, clock: Clock) -> None:
    assert rate(app) is None and window_end(app) is None
    out = app.refresh_burn("oai")
    assert out.ok, out.error
    assert round(rate(app) or 0, 2) == 165.00  # (10 × 10 + 475 × 5) / 60 dollars in 15 minutes, per hour
    assert window_end(app) == (T0 + 5 * MIN).timestamp()
    assert app.burning_keys("openai", LABS, GPT4O) == ["key_labs_D4"]
    assert app.burning_keys("openai", LABS, "gpt-4o-mini") == []
    assert calls(app) == {("usage_completions_minutes", "success"): 1.0}
    assert app.store.get_state("oai").last_success is None  # the daily state is untouched


def test_failure_keeps_the_last_good_window_then_stale_withdraws_it(
    app: App, emu: OpenAIAdminEmulator, clock: Clock
) -> None:
    assert app.refresh_burn("oai").ok
    good = rate(app)
    emu.inject(Fault("500", times=-1, path_contains="/usage/completions"))
    clock.advance(minutes=2)
    out = app.refresh_burn("oai")
    assert not out.ok and out.error and DEFAULT_ADMIN_KEY not in out.error
    assert rate(app) == good and window_end(app) == (T0 + 5 * MIN).timestamp()
    assert app.burn_due_at("oai") == clock().timestamp() + 120  # first failure: burn_interval
    assert calls(app)[("usage_completions_minutes", "success")] == 1.0
    assert sum(v for (op, st), v in calls(app).items() if st != "success") == 1.0
    clock.advance(minutes=44)  # the window held now ends 46 min before the newest complete minute
    assert not app.refresh_burn("oai").ok
    assert rate(app) is None  # withdrawn: a stale figure neither pages nor hides a runaway
    assert window_end(app) == (T0 + 5 * MIN).timestamp()  # the age stays visible
    st = status_report(app)["sources"][0]["burn"]
    assert st["stale"] is True and st["consecutive_failures"] == 2 and "HTTP 500" in st["last_error"]
    assert st["window_end"] == "2026-11-20T12:05:00Z"


def test_scheduler_runs_the_burn_on_its_interval_beside_the_daily_refresh(app: App, clock: Clock) -> None:
    sched = Scheduler(app, now=clock)
    assert sched.run_pending() == ["oai"]
    assert sched.run_pending_burn() == ["oai"]
    assert sched.run_pending_burn() == []
    ends = [window_end(app)]
    for _ in range(3):
        clock.advance(minutes=2)
        assert sched.run_pending() == []  # the daily refresh is not due again (15m); the burn is, every 2m
        assert sched.run_pending_burn() == ["oai"]
        ends.append(window_end(app))
    assert [e - ends[0] for e in ends if e and ends[0]] == [0, 120, 240, 360]
    assert app.store.get_state("oai").last_success == (T0 + dt.timedelta(minutes=10, seconds=30)).timestamp()
    # the runaway keeps running: 15 minutes of $475/h once the window is past T0
    clock.advance(minutes=20)
    sched.run_pending_burn()
    assert round(rate(app) or 0, 2) == 475.00


def test_a_wrong_key_fails_the_burn_without_showing_it(
    app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk-admin-WRONGkey0123456789abcdefXYZ"
    monkeypatch.setenv(ENV, wrong)
    out = app.refresh_burn("oai")
    assert not out.ok and out.error and "HTTP 401" in out.error
    for text in (out.error, caplog.text, app.exposition(), str(status_report(app))):
        assert wrong not in text


B = 1_800_000_000.0  # a minute boundary (unix)


@pytest.mark.parametrize(
    ("now", "interval", "want"),
    [
        (B + 5.3, 120, B + 125),  # on phase: every interval
        (B + 40, 120, B + 125),  # off phase (the first refresh): the next one comes early, on phase
        (B + 4, 120, B + 65),
        (B + 5, 60, B + 65),
        (B + 40, 60, B + 65),
        (B + 4.9, 60, B + 65),  # never a second refresh 0.1 s after the first
        (B + 55, 60, B + 125),  # nor 10 s after it
        (B + 5, 300, B + 305),
    ],
)
def test_burn_refreshes_run_just_after_a_minute_boundary(now: float, interval: float, want: float) -> None:
    got = burn_next_at(now, interval)
    assert got == want
    assert 15 <= got - now < interval + 15


def test_after_a_good_burn_refresh_the_next_is_on_the_minute_phase(app: App, clock: Clock) -> None:
    assert app.refresh_burn("oai").ok
    now = clock().timestamp()
    due = app.burn_due_at("oai")
    assert due == burn_next_at(now, 120) and due % 60 == 5
