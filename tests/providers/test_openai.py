"""The OpenAI source: the real ``openai`` SDK's admin client against the Admin API emulator.

Figures are checked against the shared AI dataset to the cent (costs) and to
the token (usage), per project, model, team and token type; then end to end
through ``build_app`` into ``/metrics``, including the runaway-burn scenario.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from exporter.config import parse_config
from exporter.model import TOKEN_TYPES, FetchResult, FetchWindow
from exporter.pricing import PriceTable
from exporter.providers.base import SourceError, Throttled
from exporter.providers.openai import OpenAIProvider, completion_tokens, parse_line_item, token_type_of
from exporter.sources.openai import OpenAISource
from tests.clock import FIXED_NOW
from tests.conftest import Clock
from tests.emulators.ai_dataset import (
    EMBED,
    GPT4O,
    LABS,
    RUNAWAY_FACTOR,
    SANDBOX,
    SEARCH,
    UNPRICED_MODEL,
    AIDataset,
    build_ai_dataset,
    runaway,
)
from tests.emulators.openai_admin import DEFAULT_ADMIN_KEY, OpenAIAdminEmulator
from tests.emulators.scenario import Scenario, runaway_schedule
from tests.emulators.server import Fault
from tests.helpers import FetchHarness, check_key_list_failure_spares_the_refresh, family_samples

NOW = dt.datetime(2026, 11, 22, 9, 41, 7, tzinfo=dt.UTC)
MONTH_START = dt.date(2026, 11, 1)
WINDOW = FetchWindow(start=dt.date(2026, 10, 1), end=NOW.date(), now=NOW)
LAST_HOUR = WINDOW.last_complete_hour
CENT = 0.005  # "equal to the cent": within half a cent
ENV = "OPENAI_ADMIN_KEY_TEST"


@pytest.fixture(scope="module")
def ds() -> AIDataset:
    return build_ai_dataset(NOW)


@pytest.fixture
def emu(ds: AIDataset) -> Iterator[OpenAIAdminEmulator]:
    emulator = OpenAIAdminEmulator(ds)
    with emulator:
        yield emulator


class Harness(FetchHarness):
    name = "openai"
    window = WINDOW

    def __init__(self, emu: OpenAIAdminEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.emu = emu
        monkeypatch.setenv(ENV, DEFAULT_ADMIN_KEY)
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)

    def provider(self, **cfg: Any) -> OpenAIProvider:
        settings: dict[str, Any] = {
            "name": "openai",
            "type": "openai",
            "admin_key_env": ENV,
            "base_url": self.emu.url + "/v1",
            "request_timeout": "5s",
        }
        settings.update(cfg)
        return OpenAIProvider(OpenAISource.model_validate(settings), self.ctx())


@pytest.fixture
def h(emu: OpenAIAdminEmulator, monkeypatch: pytest.MonkeyPatch) -> Harness:
    return Harness(emu, monkeypatch)


def _d(x: float) -> Decimal:
    return Decimal(repr(x))


# --------------------------------------------------------------------------- figures


def test_costs_equal_the_dataset_to_the_cent(h: Harness, ds: AIDataset) -> None:
    res = h.fetch()
    assert res.days == WINDOW.days()
    assert {c.currency for c in res.costs} == {"USD"}
    assert {c.provider for c in res.costs} == {"openai"}
    # every record: one day, project, API family and model
    expected: dict[tuple[dt.date, str, str, str], Decimal] = defaultdict(Decimal)
    for row in ds.costs("openai"):
        if WINDOW.start <= row.day <= WINDOW.end:
            expected[(row.day, row.account_id or "", row.service_name, row.model)] += row.amount
    got = {(c.day, c.account_id, c.service_name, c.model): c.amount for c in res.costs}
    assert len(got) == len(res.costs)
    assert got.keys() == expected.keys()
    for key, amount in got.items():
        assert abs(_d(amount) - expected[key]) < Decimal(CENT), key
    # and every dataset cost row is covered: totals per model, per project, per team, month to date
    mtd = [c for c in res.costs if c.day >= MONTH_START]
    assert sum(c.amount for c in mtd) == pytest.approx(float(ds.cost_sum("openai", start=MONTH_START)), abs=CENT)
    assert sum(c.amount for c in res.costs) == pytest.approx(
        float(ds.cost_sum("openai", start=WINDOW.start, end=WINDOW.end)), abs=CENT
    )
    teams = ds.teams("openai")
    for team in set(teams.values()):
        got = sum(c.amount for c in mtd if teams[c.account_id] == team)
        assert got == pytest.approx(float(ds.cost_sum("openai", start=MONTH_START, team=team)), abs=CENT), team
    for model in {c.model for c in res.costs}:
        got = sum(c.amount for c in mtd if c.model == model)
        assert got == pytest.approx(float(ds.cost_sum("openai", start=MONTH_START, model=model)), abs=CENT), model


def test_costs_name_model_and_api_family(h: Harness) -> None:
    res = h.fetch()
    kinds = {(c.service_name, c.model) for c in res.costs}
    assert ("chat", GPT4O) in kinds
    assert ("chat", UNPRICED_MODEL) in kinds  # billed, even though the price table does not know it
    assert ("embeddings", EMBED) in kinds
    assert ("web_search", "") in kinds  # a product billed without a model
    assert {c.account_id for c in res.costs} == {SEARCH, "proj_PAYMENTSd4e5", LABS, SANDBOX}


def test_daily_tokens_and_requests_equal_the_dataset(h: Harness, ds: AIDataset) -> None:
    res = h.fetch(usage_endpoints=["completions", "embeddings"])
    start = dt.datetime.combine(MONTH_START, dt.time(), dt.UTC)
    got: dict[tuple[str, str, str], int] = defaultdict(int)
    for u in res.usage:
        assert u.provider == "openai"
        assert u.service_name == ("embeddings" if u.model == EMBED else "chat")
        if u.day >= MONTH_START:
            for tt, n in u.tokens.items():
                got[(u.account_id, u.model, tt)] += n
    keys = {(r.account_id or "", r.model) for r in ds.rows("openai")}
    for account, model in keys:
        for tt in TOKEN_TYPES:
            expected = ds.token_sum("openai", tt, start=start, account_id=account, model=model)
            assert got.get((account, model, tt), 0) == expected, (account, model, tt)
    # requests: num_model_requests, summed over API keys
    requests = sum(u.requests for u in res.usage if u.day >= MONTH_START and u.model == GPT4O and u.account_id == LABS)
    assert requests == sum(
        r.requests for r in ds.rows("openai") if r.hour >= start and r.model == GPT4O and r.account_id == LABS
    )
    # one record per day, project, family and model: API keys are summed
    assert len({(u.day, u.account_id, u.service_name, u.model) for u in res.usage}) == len(res.usage)


def test_hourly_usage_of_the_last_day(h: Harness, ds: AIDataset) -> None:
    res = h.fetch()
    assert res.hourly is not None
    hours = sorted({x.hour_start for x in res.hourly})
    assert hours[-1] == LAST_HOUR
    assert hours[0] == LAST_HOUR - dt.timedelta(hours=23)
    assert len(hours) == 24
    last = [x for x in res.hourly if x.hour_start == LAST_HOUR]
    for x in last:
        for tt in TOKEN_TYPES:
            expected = ds.token_sum(
                "openai",
                tt,
                start=LAST_HOUR,
                end=LAST_HOUR + dt.timedelta(hours=1),
                account_id=x.account_id,
                model=x.model,
                endpoints=["completions"],
            )
            assert x.tokens.get(tt, 0) == expected, (x, tt)
    assert {(x.account_id, x.model) for x in last} == {
        (r.account_id, r.model) for r in ds.rows("openai") if r.hour == LAST_HOUR and r.endpoint == "completions"
    }
    assert res.data_through == LAST_HOUR + dt.timedelta(hours=1)


def test_runaway_hour_shows_in_hourly_usage(h: Harness, ds: AIDataset) -> None:
    before = h.fetch()
    h.emu.dataset = runaway(ds)
    after = h.fetch()
    assert before.hourly is not None and after.hourly is not None

    def hour_of(res: FetchResult) -> dict[tuple[str, str], dict[str, int]]:
        assert res.hourly is not None
        return {(x.account_id, x.model): x.tokens for x in res.hourly if x.hour_start == LAST_HOUR}

    b, a = hour_of(before), hour_of(after)
    for tt in ("input", "output", "cache_read"):
        assert a[(LABS, GPT4O)][tt] == RUNAWAY_FACTOR * b[(LABS, GPT4O)][tt]
    assert {k: v for k, v in a.items() if k != (LABS, GPT4O)} == {k: v for k, v in b.items() if k != (LABS, GPT4O)}
    table = PriceTable.load(at=FIXED_NOW)
    cost_before = table.estimate("openai", GPT4O, b[(LABS, GPT4O)])
    cost_after = table.estimate("openai", GPT4O, a[(LABS, GPT4O)])
    assert cost_before.unpriced_tokens == cost_after.unpriced_tokens == 0
    assert cost_after.usd == pytest.approx(RUNAWAY_FACTOR * cost_before.usd, rel=1e-3)
    # the day's costs follow, as on the real API
    labs_today = [c.amount for c in after.costs if c.day == NOW.date() and c.account_id == LABS and c.model == GPT4O]
    assert labs_today[0] > 5 * sum(
        c.amount for c in before.costs if c.day == NOW.date() and c.account_id == LABS and c.model == GPT4O
    )


def test_projects_become_account_info(h: Harness, ds: AIDataset) -> None:
    res = h.fetch()
    assert {(a.account_id, a.account_name) for a in res.accounts} == {
        (a.account_id, a.name) for a in ds.accounts["openai"]
    }  # archived projects too: their past spend needs a name


# --------------------------------------------------------------------------- wire


def test_requests_follow_the_documented_wire_format(h: Harness) -> None:
    h.fetch(usage_endpoints=["completions", "embeddings", "images"])
    reqs = h.emu.requests
    assert all(r.headers["authorization"] == f"Bearer {DEFAULT_ADMIN_KEY}" for r in reqs)
    paths = {r.path for r in reqs}
    assert paths == {
        "/v1/organization/projects",
        "/v1/organization/costs",
        "/v1/organization/usage/completions",
        "/v1/organization/usage/embeddings",
        "/v1/organization/usage/images",
        # the keys of each project with usage by an API key: names for spend_ai_key_info
        *(f"/v1/organization/projects/{p}/api_keys" for p in (SEARCH, "proj_PAYMENTSd4e5", LABS, SANDBOX)),
    }
    keys = [r for r in reqs if r.path.endswith("/api_keys")]
    assert {(r.q("limit"), r.q("owner_project_access")) for r in keys} == {("100", "any")}
    start = int(dt.datetime(2026, 10, 1, tzinfo=dt.UTC).timestamp())
    end = int(dt.datetime(2026, 11, 23, tzinfo=dt.UTC).timestamp())
    costs = [r for r in reqs if r.path.endswith("/costs")]
    assert costs[0].q("start_time") == str(start) and costs[0].q("end_time") == str(end)
    assert costs[0].q("bucket_width") == "1d"
    assert costs[0].query["group_by[]"] == ["project_id", "line_item"]
    daily = [r for r in reqs if r.path.endswith("/completions") and r.q("bucket_width") == "1d"]
    assert daily[0].query["group_by[]"] == ["model", "project_id", "api_key_id"]
    assert len(daily) == 2  # 53 days in 31-day pages
    assert daily[1].q("page") is not None
    hourly = [r for r in reqs if r.path.endswith("/completions") and r.q("bucket_width") == "1h"]
    assert [r.q("start_time") for r in hourly] == [str(int((LAST_HOUR - dt.timedelta(hours=23)).timestamp()))]
    assert [r.q("end_time") for r in hourly] == [str(int((LAST_HOUR + dt.timedelta(hours=1)).timestamp()))]
    assert h.calls and all(status == "success" and cost == 0.0 for _, status, cost in h.calls)
    assert {op for op, _, _ in h.calls} == {
        "projects",
        "costs",
        "usage_completions",
        "usage_completions_hourly",
        "usage_embeddings",
        "usage_embeddings_hourly",
        "usage_images",
        "usage_images_hourly",
        "project_api_keys",
    }


def test_pagination_gives_the_same_figures(h: Harness) -> None:
    whole = h.fetch()
    h.emu.page_size_cap = 4
    h.emu.requests.clear()
    paged = h.fetch()
    assert paged.costs == whole.costs
    assert paged.usage == whole.usage
    assert paged.hourly == whole.hourly
    assert paged.accounts == whole.accounts
    by_path: dict[str, int] = defaultdict(int)
    for r in h.emu.requests:
        by_path[r.path] += 1
    assert by_path["/v1/organization/costs"] == 14  # 53 days, 4 buckets a page
    assert by_path["/v1/organization/projects"] == 2  # 5 projects, 4 a page
    later = [r for r in h.emu.requests if r.path.endswith("/costs")][1:]
    assert later and all(r.q("page") for r in later)


def test_legacy_usage_fields_give_the_same_tokens(h: Harness) -> None:
    current = h.fetch()
    h.emu.legacy_usage_fields = True  # no input_uncached_tokens / input_cache_write_tokens
    legacy = h.fetch()
    assert legacy.usage == current.usage
    assert legacy.hourly == current.hourly


# --------------------------------------------------------------------------- failures


def test_throttled_then_success(h: Harness) -> None:
    h.emu.inject(Fault("throttle", retry_after=0.02, path_contains="/usage/completions"))
    h.emu.inject(Fault("throttle", retry_after=0.02, path_contains="/costs"))
    res = h.fetch()
    assert res.costs and res.usage
    statuses = [(op, status) for op, status, _ in h.calls]
    assert ("costs", "throttled") in statuses
    assert statuses[statuses.index(("costs", "throttled")) + 1] == ("costs", "success")
    assert ("usage_completions", "throttled") in statuses


def test_throttled_with_a_long_retry_after_raises(h: Harness) -> None:
    h.emu.inject(Fault("throttle", retry_after=3600, path_contains="/costs"))
    with pytest.raises(Throttled) as e:
        h.fetch()
    assert e.value.retry_after == 3600
    assert ("costs", "throttled") in [(op, s) for op, s, _ in h.calls]
    assert len([r for r in h.emu.requests if r.path.endswith("/costs")]) == 1  # not retried


def test_throttled_more_than_max_retries_raises(h: Harness) -> None:
    h.emu.inject(Fault("throttle", retry_after=0.01, times=-1, path_contains="/projects"))
    with pytest.raises(Throttled):
        h.fetch(max_retries=2)
    assert len(h.emu.requests) == 3


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (lambda: Fault("500", path_contains="/costs"), "costs: HTTP 500"),
        (lambda: Fault("503", after=1, path_contains="/usage/completions"), "usage_completions: HTTP 503"),
        (lambda: Fault("403", path_contains="/projects"), "HTTP 403"),
        (lambda: Fault("reset", path_contains="/costs"), "closed or reset the connection"),
        (lambda: Fault("malformed", path_contains="/usage/completions"), "not valid JSON"),
        (lambda: Fault("wrong_shape", path_contains="/costs"), "unexpected response shape"),
        (lambda: Fault("wrong_shape", path_contains="/projects"), "unexpected response shape"),
        (lambda: Fault("timeout", delay=1.5, path_contains="/costs"), "timed out"),
    ],
    ids=["500", "503-second-page", "403", "reset", "malformed", "wrong-shape", "wrong-shape-projects", "timeout"],
)
def test_failures_raise_and_never_return_partial_data(
    h: Harness, fault: Callable[[], Fault], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    h.emu.inject(fault())  # a fresh one each run: a Fault counts down as it is used
    with pytest.raises(SourceError) as e:
        h.fetch(request_timeout="0.5s", max_retries=0)
    assert message in str(e.value)
    assert "error" in [s for _, s, _ in h.calls]
    assert DEFAULT_ADMIN_KEY not in str(e.value)
    assert DEFAULT_ADMIN_KEY not in caplog.text


def test_wrong_key_is_a_clear_error_without_the_key(
    h: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "sk-admin-WRONGkeyWRONGkeyWRONGkey0000"
    monkeypatch.setenv(ENV, wrong)
    with pytest.raises(SourceError) as e:
        h.fetch()
    text = str(e.value)
    assert "HTTP 401" in text and ENV in text
    assert wrong not in text  # the emulator echoes it in its error message
    assert wrong not in caplog.text
    assert "<redacted>" in text


def test_missing_admin_key_names_the_variable(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV)
    with pytest.raises(SourceError, match=ENV):
        h.fetch()
    assert h.emu.requests == []


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("line_item", "expected"),
    [
        ("gpt-4o-2024-08-06, input", ("gpt-4o-2024-08-06", "input", "chat")),
        ("gpt-4o-2024-08-06, Output", ("gpt-4o-2024-08-06", "output", "chat")),
        ("gpt-4o-mini-2024-07-18, cached input", ("gpt-4o-mini-2024-07-18", "cache_read", "chat")),
        ("gpt-6-astra, input_tokens", ("gpt-6-astra", "input", "chat")),
        ("gpt-5, cache write", ("gpt-5", "cache_write", "chat")),
        ("text-embedding-3-small, input", ("text-embedding-3-small", "input", "embeddings")),
        ("whisper-1", ("whisper-1", None, "audio")),
        ("gpt-4o-mini-tts, output", ("gpt-4o-mini-tts", "output", "audio")),
        ("dall-e-3", ("dall-e-3", None, "images")),
        ("gpt-4o-mini", ("gpt-4o-mini", None, "chat")),
        (f"{UNPRICED_MODEL}, input", (UNPRICED_MODEL, "input", "chat")),
        ("web search tool calls", ("", None, "web_search")),
        ("Code Interpreter sessions", ("", None, "code_interpreter")),
        ("GPT-4 Turbo", ("", None, "gpt_4_turbo")),
        (None, ("", None, "other")),
    ],
)
def test_parse_line_item(line_item: str | None, expected: tuple[str, str | None, str]) -> None:
    assert parse_line_item(line_item) == expected


def test_token_type_words() -> None:
    assert token_type_of(" Cached Input ") == "cache_read"
    assert token_type_of("input_cached") == "cache_read"
    assert token_type_of("images") is None
    assert token_type_of("") is None


def test_input_tokens_include_cached_and_cache_write() -> None:
    class R:  # the fields of an older completions result
        input_tokens = 1000
        input_cached_tokens = 300
        input_cache_write_tokens = 100
        output_tokens = 50

    assert completion_tokens(R()) == {"input": 600, "output": 50, "cache_read": 300, "cache_write": 100}


# --------------------------------------------------------------------------- end to end


def _app_config(tmp_path: Path, emu: OpenAIAdminEmulator, ds: AIDataset) -> Any:
    return parse_config(
        {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "attribution": {"rules": ds.attribution_rules()},
            "sources": [
                {
                    "name": "openai",
                    "type": "openai",
                    "admin_key_env": ENV,
                    "base_url": emu.url + "/v1",
                    "usage_endpoints": ["completions", "embeddings"],
                    "request_timeout": "5s",
                }
            ],
        },
        env={},
    )


def test_metrics_equal_the_dataset_and_show_the_runaway_hour(h: Harness, ds: AIDataset, tmp_path: Path) -> None:
    from exporter.app import build_app

    app = build_app(_app_config(tmp_path, h.emu, ds), now=lambda: NOW)
    try:
        outcomes = app.refresh_all()
        assert [o.ok for o in outcomes] == [True], outcomes
        text = app.exposition()
        teams = ds.teams("openai")

        # month to date, per series: to the cent, with the team of the project's rule
        mtd = family_samples(text, "spend_cost_month_to_date_usd")
        assert mtd
        for labels, value in mtd:
            assert labels["provider"] == "openai"
            assert labels["team"] == teams[labels["account_id"]]
            expected = ds.cost_sum(
                "openai",
                start=MONTH_START,
                end=NOW.date(),
                account_id=labels["account_id"],
                model=labels["model"],
                service_name=labels["service_name"],
            )
            assert value == pytest.approx(float(expected), abs=CENT), labels
        assert sum(v for _, v in mtd) == pytest.approx(float(ds.cost_sum("openai", start=MONTH_START)), abs=CENT)
        for team in set(teams.values()):
            got = sum(v for lab, v in mtd if lab["team"] == team)
            assert got == pytest.approx(float(ds.cost_sum("openai", start=MONTH_START, team=team)), abs=CENT)

        # tokens this month by token type
        start = dt.datetime.combine(MONTH_START, dt.time(), dt.UTC)
        tokens = family_samples(text, "spend_ai_tokens_month_to_date")
        assert tokens
        for labels, value in tokens:
            expected_tokens = ds.token_sum(
                "openai", labels["token_type"], start=start, account_id=labels["account_id"], model=labels["model"]
            )
            assert value == expected_tokens, labels
            assert labels["team"] == teams[labels["account_id"]]

        # the burn detector before and after the runaway hour
        def last_hour(text: str) -> dict[tuple[str, str, str], float]:
            return {
                (lab["account_id"], lab["model"], lab["team"]): v
                for lab, v in family_samples(text, "spend_ai_cost_last_hour_usd")
            }

        normal = last_hour(text)
        key = (LABS, GPT4O, "ml-platform")
        assert normal[key] > 0
        assert not any(m == UNPRICED_MODEL for _, m, _ in normal)  # unpriced: no made-up cost

        h.emu.dataset = runaway(ds)
        assert [o.ok for o in app.refresh_all()] == [True]
        burning = last_hour(app.exposition())
        assert burning[key] == pytest.approx(RUNAWAY_FACTOR * normal[key], rel=1e-3)
        table = PriceTable.load(at=FIXED_NOW)
        hour_end = LAST_HOUR + dt.timedelta(hours=1)
        expected = table.estimate(
            "openai",
            GPT4O,
            {
                tt: h.emu.dataset.token_sum("openai", tt, start=LAST_HOUR, end=hour_end, account_id=LABS, model=GPT4O)
                for tt in TOKEN_TYPES
            },
        )
        assert expected.unpriced_tokens == 0
        assert burning[key] == pytest.approx(expected.usd, abs=CENT)
        assert {k: v for k, v in burning.items() if k != key} == pytest.approx(
            {k: v for k, v in normal.items() if k != key}
        )
    finally:
        app.close()


def test_embeddings_are_priced_and_unknown_models_counted(
    h: Harness, ds: AIDataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """text-embedding-3-small, read from the embeddings usage endpoint, has a last-hour cost at its list price;
    the fine-tuned model the table cannot price is counted and logged once, never priced at 0."""
    from exporter.app import build_app

    app = build_app(_app_config(tmp_path, h.emu, ds), now=lambda: NOW)
    try:
        with caplog.at_level(logging.WARNING, logger="exporter.snapshot"):
            assert [o.ok for o in app.refresh_all()] == [True]
            assert [o.ok for o in app.refresh_all()] == [True]
        text = app.exposition()
        assert any(r.path == "/v1/organization/usage/embeddings" for r in h.emu.requests)
        cost = {
            (lab["account_id"], lab["model"], lab["service_name"]): v
            for lab, v in family_samples(text, "spend_ai_cost_last_hour_usd")
        }
        tokens = ds.token_sum(
            "openai", "input", start=LAST_HOUR, end=LAST_HOUR + dt.timedelta(hours=1), account_id=SEARCH, model=EMBED
        )
        assert tokens > 0
        # $0.02 per 1M tokens, OpenAI's list price, worked out by hand
        assert cost[(SEARCH, EMBED, "embeddings")] == pytest.approx(tokens * 0.02 / 1e6, abs=1e-6)
        unpriced = {lab["model"]: v for lab, v in family_samples(text, "spend_exporter_unpriced_tokens")}
        start = dt.datetime.combine(MONTH_START, dt.time(), dt.UTC)
        assert unpriced == {
            UNPRICED_MODEL: sum(ds.token_sum("openai", tt, start=start, model=UNPRICED_MODEL) for tt in TOKEN_TYPES)
        }
        assert not any(lab["model"] == UNPRICED_MODEL for lab, _ in family_samples(text, "spend_ai_cost_last_hour_usd"))
        assert caplog.text.count(UNPRICED_MODEL) == 1, caplog.text
    finally:
        app.close()


def test_price_ratio_shows_a_negotiated_discount(h: Harness, ds: AIDataset, tmp_path: Path) -> None:
    """Billed cost ÷ list-price estimate over the 7 complete days: 0.8 for the project billed 20% off, 1 elsewhere."""
    from exporter.app import build_app

    h.emu.dataset = dataclasses.replace(ds, discounts={("openai", LABS): Decimal("0.8")})
    app = build_app(_app_config(tmp_path, h.emu, ds), now=lambda: NOW)
    try:
        assert [o.ok for o in app.refresh_all()] == [True]
        ratios = {
            (lab["account_id"], lab["model"]): v
            for lab, v in family_samples(app.exposition(), "spend_ai_price_ratio")
            if lab["provider"] == "openai"
        }
        first, last = dt.date(2026, 11, 15), dt.date(2026, 11, 21)  # the 7 complete days before NOW
        billed_ds = h.emu.dataset
        want = {
            (acct, model): float(
                billed_ds.cost_sum("openai", start=first, end=last, account_id=acct, model=model)
                / billed_ds.list_cost("openai", start=first, end=last, account_id=acct, model=model)
            )
            for acct, model in {(r.account_id, r.model) for r in ds.rows("openai")}
            if model != UNPRICED_MODEL  # its tokens are unpriced: no ratio
        }
        assert ratios == pytest.approx(want, rel=1e-6)
        assert ratios[(LABS, GPT4O)] == pytest.approx(0.8, abs=1e-4)
        assert ratios[(SEARCH, EMBED)] == pytest.approx(1.0, abs=1e-4)
        assert app.builder.price_ratio("openai", LABS, GPT4O) == pytest.approx(ratios[(LABS, GPT4O)], abs=1e-6)
        assert app.builder.price_ratio("openai", "proj_PAYMENTSd4e5", UNPRICED_MODEL) is None
        assert app.builder.price_ratio("openai", LABS, "gpt-5") is None
    finally:
        app.close()


# --------------------------------------------------------------------------- per-key AI spend


def test_usage_by_api_key_and_key_names(h: Harness, ds: AIDataset) -> None:
    res = h.fetch(usage_endpoints=["completions", "embeddings"])
    got: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for k in res.key_usage:
        assert k.provider == "openai" and k.service_name == ("embeddings" if k.model == EMBED else "chat")
        for tt, n in k.tokens.items():
            got[(k.account_id, k.api_key_id, k.model, tt)] += n
    want: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for r in ds.rows("openai"):
        if WINDOW.start <= r.day <= WINDOW.end:
            for tt, n in r.tokens.items():
                want[(r.account_id or "", r.api_key_id, r.model, tt)] += n
    assert {k: v for k, v in got.items() if v} == {k: v for k, v in want.items() if v}
    # the keys' requests add up to the project's
    assert sum(k.requests for k in res.key_usage) == sum(u.requests for u in res.usage)
    assert {(k.account_id, k.api_key_id, k.api_key_name) for k in res.api_keys} == {
        (r.account_id, r.api_key_id, f"{r.api_key_id} service key") for r in ds.rows("openai")
    }


def test_key_names_follow_pages(h: Harness) -> None:
    h.emu.extra_api_keys = {LABS: [(f"key_unused_{i}", f"unused {i}") for i in range(5)]}
    h.emu.page_size_cap = 3
    res = h.fetch()
    names = {(k.account_id, k.api_key_id): k.api_key_name for k in res.api_keys}
    assert names[(LABS, "key_unused_4")] == "unused 4"  # 7 keys, 3 a page
    assert len([r for r in h.emu.requests if r.path == f"/v1/organization/projects/{LABS}/api_keys"]) == 3


def test_a_key_list_that_fails_leaves_the_names_out_not_the_refresh(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    check_key_list_failure_spares_the_refresh(h, caplog, Fault("403", times=-1, path_contains="/api_keys"))


def test_key_costs_equal_the_dataset_and_add_up_to_the_billed_cost(h: Harness, ds: AIDataset, tmp_path: Path) -> None:
    """Two keys share gpt-4o in the Labs project, billed 20% off: each key's cost is its usage at the billed
    price, to the cent, and the keys add up to what the project was billed; a budget on one key counts it."""
    from exporter.app import build_app

    h.emu.dataset = billed = dataclasses.replace(ds, discounts={("openai", LABS): Decimal("0.8")})
    cfg = _app_config(tmp_path, h.emu, ds).model_dump(mode="json")
    cfg["budgets"] = [
        {"name": "labs-d4", "amount_usd": 100, "match": {"provider": "openai", "api_key_id": "key_labs_D4"}},
        {"name": "nobody", "amount_usd": 100, "match": {"api_key_id": ["key_gone"]}},
    ]
    app = build_app(parse_config(cfg, env={}), now=lambda: NOW)
    try:
        assert [o.ok for o in app.refresh_all()] == [True]
        text = app.exposition()
        keys = {
            (lab["account_id"], lab["api_key_id"], lab["model"]): _d(v)
            for lab, v in family_samples(text, "spend_ai_key_cost_month_to_date_usd")
        }
        assert (LABS, "key_labs_D4", GPT4O) in keys and (LABS, "key_labs_E5", GPT4O) in keys
        for (account, key, model), value in keys.items():
            truth = billed.key_cost("openai", start=MONTH_START, end=NOW.date(), account_id=account, api_key_id=key)
            assert abs(value - truth[model]) <= Decimal("0.01"), (account, key, model, value, truth[model])
        # the keys of a project add up to its billed cost of the model, to the cent
        for account, model in {(a, m) for a, _, m in keys}:
            bill = billed.cost_sum("openai", start=MONTH_START, end=NOW.date(), account_id=account, model=model)
            total = sum(v for (a, _, m), v in keys.items() if (a, m) == (account, model))
            assert total == bill.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP), (account, model)
        # the fine-tuned model the price table cannot price: no key figure (never 0), its tokens counted
        assert not any(m == UNPRICED_MODEL for _, _, m in keys)
        unpriced = {lab["model"] for lab, _ in family_samples(text, "spend_exporter_unpriced_tokens")}
        assert UNPRICED_MODEL in unpriced
        info = {
            (lab["account_id"], lab["api_key_id"]): lab["api_key_name"]
            for lab, v in family_samples(text, "spend_ai_key_info")
            if v == 1
        }
        assert info[(LABS, "key_labs_D4")] == "key_labs_D4 service key"
        assert {k for _, k, _ in keys} <= {k for _, k in info}
        spent = {lab["budget"]: v for lab, v in family_samples(text, "spend_budget_spent_usd")}
        assert _d(spent["labs-d4"]) == keys[(LABS, "key_labs_D4", GPT4O)]
        assert spent["nobody"] == 0
    finally:
        app.close()


# --------------------------------------------------------------------------- minute buckets (the burn rate)


def priced(table: PriceTable, provider: str, minutes: Any) -> list[float]:
    """Each minute's list-price cost; every token of the scenario's models is priced."""
    out = []
    for m in minutes:
        e = table.estimate(provider, m.model, m.tokens)
        assert e.unpriced_tokens == 0, (m.model, m.tokens)
        out.append(e.usd)
    return out


def test_burn_minutes_of_the_runaway_to_the_cent(ds: AIDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """$10/h jumping to $475/h at T0; at T0+10m30s the window [T0-10m, T0+5m) holds $41.25: $165.00/h."""
    t0 = dt.datetime(2026, 11, 22, 9, 0, tzinfo=dt.UTC)
    clock = Clock(t0 + dt.timedelta(minutes=10, seconds=30))
    scenario = Scenario([runaway_schedule(t0)], clock, start=t0 - dt.timedelta(hours=2))
    with OpenAIAdminEmulator(ds, scenario=scenario) as emu:
        h = Harness(emu, monkeypatch)
        p = h.provider()
        try:
            got = p.fetch_minutes(clock())
        finally:
            p.close()
    assert (got.start, got.end) == (t0 - dt.timedelta(minutes=10), t0 + dt.timedelta(minutes=5))
    assert h.calls == [("usage_completions_minutes", "success", 0.0)]
    assert {m.minute_start for m in got.minutes} == {got.start + dt.timedelta(minutes=i) for i in range(15)}
    assert {(m.account_id, m.model, m.api_key_id, m.service_name) for m in got.minutes} == {
        (LABS, GPT4O, "key_labs_D4", "chat")
    }
    table = PriceTable.load(at=FIXED_NOW)
    usd = sum(priced(table, "openai", got.minutes))
    assert abs(usd - float(scenario.cost(got.start, got.end))) < 1e-6
    assert round(usd * 3600 / 900, 2) == 165.00  # (10 × 10 + 475 × 5) / 60 dollars in 15 minutes, per hour
    assert sum(m.requests for m in got.minutes) == 6 * 15


def test_burn_minutes_never_include_a_minute_still_filling_in(ds: AIDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """A steady $10/h: whatever the second of the clock, the window reads exactly $10/h, never less."""
    t0 = dt.datetime(2026, 11, 22, 9, 0, tzinfo=dt.UTC)
    clock = Clock(t0)
    scenario = Scenario([runaway_schedule(t0, after="10")], clock, start=t0 - dt.timedelta(hours=2))
    table = PriceTable.load(at=FIXED_NOW)
    with OpenAIAdminEmulator(ds, scenario=scenario) as emu:
        h = Harness(emu, monkeypatch)
        p = h.provider(burn_window="5m")
        try:
            for seconds in (0, 59, 61, 299, 301):
                clock.set(t0 + dt.timedelta(seconds=seconds))
                # the emulator shows the newest minutes partly filled: a naive read of the last 5 minutes drops
                naive = scenario.rows_between("openai", "completions", clock() - dt.timedelta(minutes=5), clock())
                assert sum(r.output for r in naive) < 5 * 1_000_000 / 60
                got = p.fetch_minutes(clock())
                usd = sum(priced(table, "openai", got.minutes))
                assert round(usd * 3600 / 300, 2) == 10.00, seconds
        finally:
            p.close()


def test_burn_minutes_of_the_hourly_dataset_add_up_to_its_hour(h: Harness, ds: AIDataset) -> None:
    """Without a scenario the emulator spreads each complete hour over its minutes: 60 minutes, the hour's tokens."""
    p = h.provider(burn_window="60m", burn_delay="1m")
    try:
        got = p.fetch_minutes(LAST_HOUR + dt.timedelta(hours=1, minutes=1))
    finally:
        p.close()
    assert (got.start, got.end) == (LAST_HOUR, LAST_HOUR + dt.timedelta(hours=1))
    for tt in TOKEN_TYPES:
        want = ds.token_sum("openai", tt, start=LAST_HOUR, end=got.end, endpoints=["completions"])
        assert sum(m.tokens.get(tt, 0) for m in got.minutes) == want, tt
    assert len({m.minute_start for m in got.minutes}) == 60
