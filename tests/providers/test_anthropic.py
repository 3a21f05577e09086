"""The Anthropic source: the real ``anthropic`` SDK against the Admin API emulator.

Costs (reported in cents) are checked against the shared AI dataset to the
cent, tokens to the token, per workspace, model, team and token type; then
end to end through ``build_app`` into ``/metrics``, with the runaway hour.
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
from exporter.providers.anthropic import AnthropicProvider, cents_to_usd, usage_tokens
from exporter.providers.base import SourceError, Throttled
from exporter.sources.anthropic import AnthropicSource
from tests.clock import FIXED_NOW
from tests.conftest import Clock
from tests.emulators.ai_dataset import (
    HAIKU,
    RESEARCH,
    RUNAWAY_FACTOR,
    SONNET,
    SUPPORT,
    AIDataset,
    build_ai_dataset,
    runaway,
)
from tests.emulators.anthropic_admin import DEFAULT_ADMIN_KEY, DEFAULT_WORKSPACE_REAL_ID, AnthropicAdminEmulator
from tests.emulators.scenario import Scenario, Stream, per_minute
from tests.emulators.server import Fault
from tests.helpers import FetchHarness, check_key_list_failure_spares_the_refresh, family_samples

NOW = dt.datetime(2026, 11, 22, 9, 41, 7, tzinfo=dt.UTC)
MONTH_START = dt.date(2026, 11, 1)
WINDOW = FetchWindow(start=dt.date(2026, 10, 1), end=NOW.date(), now=NOW)
LAST_HOUR = WINDOW.last_complete_hour
CENT = 0.005
ENV = "ANTHROPIC_ADMIN_KEY_TEST"


@pytest.fixture(scope="module")
def ds() -> AIDataset:
    return build_ai_dataset(NOW)


@pytest.fixture
def emu(ds: AIDataset) -> Iterator[AnthropicAdminEmulator]:
    emulator = AnthropicAdminEmulator(ds)
    with emulator:
        yield emulator


class Harness(FetchHarness):
    name = "anthropic"
    window = WINDOW

    def __init__(self, emu: AnthropicAdminEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.emu = emu
        monkeypatch.setenv(ENV, DEFAULT_ADMIN_KEY)
        # the SDK must not pick up credentials or endpoints of its own
        for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "ANTHROPIC_PROFILE"):
            monkeypatch.delenv(var, raising=False)

    def provider(self, **cfg: Any) -> AnthropicProvider:
        settings: dict[str, Any] = {
            "name": "anthropic",
            "type": "anthropic",
            "admin_key_env": ENV,
            "base_url": self.emu.url,
            "request_timeout": "5s",
        }
        settings.update(cfg)
        return AnthropicProvider(AnthropicSource.model_validate(settings), self.ctx())


@pytest.fixture
def h(emu: AnthropicAdminEmulator, monkeypatch: pytest.MonkeyPatch) -> Harness:
    return Harness(emu, monkeypatch)


# --------------------------------------------------------------------------- figures


def test_costs_in_cents_become_usd_equal_to_the_dataset(h: Harness, ds: AIDataset) -> None:
    res = h.fetch()
    assert res.days == WINDOW.days()
    assert {c.currency for c in res.costs} == {"USD"}
    expected: dict[tuple[dt.date, str, str, str], Decimal] = defaultdict(Decimal)
    for row in ds.costs("anthropic"):
        if WINDOW.start <= row.day <= WINDOW.end:
            expected[(row.day, row.account_id or "default", row.service_name, row.model)] += row.amount
    got = {(c.day, c.account_id, c.service_name, c.model): c.amount for c in res.costs}
    assert len(got) == len(res.costs)
    assert got.keys() == expected.keys()
    for key, amount in got.items():
        assert abs(Decimal(repr(amount)) - expected[key]) < Decimal(CENT), key

    mtd = [c for c in res.costs if c.day >= MONTH_START]
    assert sum(c.amount for c in mtd) == pytest.approx(float(ds.cost_sum("anthropic", start=MONTH_START)), abs=CENT)
    for model in {c.model for c in mtd}:
        got_model = sum(c.amount for c in mtd if c.model == model)
        assert got_model == pytest.approx(float(ds.cost_sum("anthropic", start=MONTH_START, model=model)), abs=CENT)


def test_default_workspace_tags_and_non_token_costs(h: Harness) -> None:
    res = h.fetch()
    kinds = {(c.account_id, c.service_name, c.model, c.team_tag) for c in res.costs}
    assert ("default", "messages", SONNET, None) in kinds  # null workspace_id
    assert (RESEARCH, "messages", SONNET, "research") in kinds  # the workspace's team tag
    assert (SUPPORT, "messages", HAIKU, None) in kinds  # no tag: the rules decide
    assert (RESEARCH, "web_search", "", "research") in kinds  # cost_type web_search, no model
    assert ("default", "Default Workspace") in {(a.account_id, a.account_name) for a in res.accounts}
    assert {a.account_id for a in res.accounts} == {"default", RESEARCH, SUPPORT, "wrkspc_01SCRATCHqq"}


def test_daily_tokens_equal_the_dataset(h: Harness, ds: AIDataset) -> None:
    res = h.fetch()
    start = dt.datetime.combine(MONTH_START, dt.time(), dt.UTC)
    got: dict[tuple[str, str, str], int] = defaultdict(int)
    for u in res.usage:
        assert u.service_name == "messages"
        assert u.requests == 0  # the usage report has no request count
        if u.day >= MONTH_START:
            for tt, n in u.tokens.items():
                got[(u.account_id, u.model, tt)] += n
    for account, model in {(r.account_id or "default", r.model) for r in ds.rows("anthropic")}:
        for tt in TOKEN_TYPES:
            expected = ds.token_sum("anthropic", tt, start=start, account_id=account, model=model)
            assert got[(account, model, tt)] == expected, (account, model, tt)
    # cache_write is the 5-minute writes, cache_write_1h the 1-hour ones: each has its own price
    cw5 = sum(r.cache_write_5m for r in ds.rows("anthropic") if r.hour >= start)
    cw1 = sum(r.cache_write_1h for r in ds.rows("anthropic") if r.hour >= start)
    assert cw1 > 0
    assert sum(v for (_, _, tt), v in got.items() if tt == "cache_write") == cw5
    assert sum(v for (_, _, tt), v in got.items() if tt == "cache_write_1h") == cw1
    assert len({(u.day, u.account_id, u.model) for u in res.usage}) == len(res.usage)


def test_hourly_usage_of_the_last_day(h: Harness, ds: AIDataset) -> None:
    res = h.fetch()
    assert res.hourly is not None
    hours = sorted({x.hour_start for x in res.hourly})
    assert hours == [LAST_HOUR - dt.timedelta(hours=23 - i) for i in range(24)]
    for x in res.hourly:
        if x.hour_start != LAST_HOUR:
            continue
        for tt in TOKEN_TYPES:
            expected = ds.token_sum(
                "anthropic",
                tt,
                start=LAST_HOUR,
                end=LAST_HOUR + dt.timedelta(hours=1),
                account_id=x.account_id,
                model=x.model,
            )
            assert x.tokens[tt] == expected
    assert res.data_through == LAST_HOUR + dt.timedelta(hours=1)


def test_runaway_hour_shows_in_hourly_usage(h: Harness, ds: AIDataset) -> None:
    before = h.fetch()
    h.emu.dataset = runaway(ds, "anthropic", SUPPORT, HAIKU)
    after = h.fetch()

    def hour_of(res: FetchResult) -> dict[tuple[str, str], dict[str, int]]:
        assert res.hourly is not None
        return {(x.account_id, x.model): x.tokens for x in res.hourly if x.hour_start == LAST_HOUR}

    b, a = hour_of(before), hour_of(after)
    for tt in TOKEN_TYPES:
        assert a[(SUPPORT, HAIKU)][tt] == RUNAWAY_FACTOR * b[(SUPPORT, HAIKU)][tt]
    assert {k: v for k, v in a.items() if k != (SUPPORT, HAIKU)} == {
        k: v for k, v in b.items() if k != (SUPPORT, HAIKU)
    }


# --------------------------------------------------------------------------- wire


def test_requests_follow_the_documented_wire_format(h: Harness) -> None:
    h.fetch()
    reqs = h.emu.requests
    for r in reqs:
        assert r.headers["x-api-key"] == DEFAULT_ADMIN_KEY
        assert r.headers["anthropic-version"] == "2023-06-01"
        assert "authorization" not in r.headers  # the key goes in x-api-key only
    costs = [r for r in reqs if r.path == "/v1/organizations/cost_report"]
    assert costs[0].q("starting_at") == "2026-10-01T00:00:00Z"
    assert costs[0].q("ending_at") == "2026-11-23T00:00:00Z"
    assert costs[0].q("bucket_width") == "1d"
    assert costs[0].query["group_by[]"] == ["workspace_id", "description"]
    assert len(costs) == 2 and costs[1].q("page")  # 53 days in pages of 31
    usage = [r for r in reqs if r.path == "/v1/organizations/usage_report/messages"]
    daily = [r for r in usage if r.q("bucket_width") == "1d"]
    hourly = [r for r in usage if r.q("bucket_width") == "1h"]
    assert daily[0].query["group_by[]"] == ["model", "workspace_id", "api_key_id"]
    assert [r.q("starting_at") for r in hourly] == ["2026-11-21T09:00:00Z"]
    assert [r.q("ending_at") for r in hourly] == ["2026-11-22T09:00:00Z"]
    workspaces = [r for r in reqs if r.path == "/v1/organizations/workspaces"]
    assert workspaces[0].q("include_archived") == "true"
    keys = [r for r in reqs if r.path == "/v1/organizations/api_keys"]
    assert [r.q("limit") for r in keys] == ["1000"]  # the key names: one request per 1000 keys
    assert {op for op, _, _ in h.calls} == {
        "api_keys",
        "workspaces",
        "cost_report",
        "usage_report_messages",
        "usage_report_messages_hourly",
    }
    assert all(status == "success" and cost == 0.0 for _, status, cost in h.calls)


def test_pagination_gives_the_same_figures(h: Harness) -> None:
    whole = h.fetch()
    h.emu.page_size_cap = 4
    h.emu.requests.clear()
    paged = h.fetch()
    assert paged.costs == whole.costs
    assert paged.usage == whole.usage
    assert paged.hourly == whole.hourly
    assert paged.accounts == whole.accounts
    costs = [r for r in h.emu.requests if r.path.endswith("/cost_report")]
    assert len(costs) == 14
    assert all(r.q("page") for r in costs[1:])
    assert len([r for r in h.emu.requests if r.path.endswith("/workspaces")]) == 1  # 3 listed, 4 a page


# --------------------------------------------------------------------------- failures


def test_throttled_then_success(h: Harness) -> None:
    h.emu.inject(Fault("throttle", retry_after=0.02, path_contains="/cost_report", after=1))
    h.emu.inject(Fault("throttle", retry_after=0.02, path_contains="/workspaces"))
    res = h.fetch()
    assert res.costs and res.usage
    statuses = [(op, s) for op, s, _ in h.calls]
    assert statuses[:2] == [("workspaces", "throttled"), ("workspaces", "success")]
    assert ("cost_report", "throttled") in statuses


def test_throttled_with_a_long_retry_after_raises(h: Harness) -> None:
    h.emu.inject(Fault("throttle", retry_after=900, path_contains="/usage_report"))
    with pytest.raises(Throttled) as e:
        h.fetch()
    assert e.value.retry_after == 900


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (lambda: Fault("500", path_contains="/cost_report"), "cost_report: HTTP 500"),
        (lambda: Fault("503", after=1, path_contains="/cost_report"), "cost_report: HTTP 503"),
        (lambda: Fault("403", path_contains="/workspaces"), "HTTP 403"),
        (lambda: Fault("reset", path_contains="/usage_report"), "closed or reset the connection"),
        (lambda: Fault("malformed", path_contains="/usage_report"), "not valid JSON"),
        (lambda: Fault("wrong_shape", path_contains="/cost_report"), "unexpected response shape"),
        (lambda: Fault("wrong_shape", path_contains="/workspaces"), "unexpected response shape"),
        (lambda: Fault("timeout", delay=1.5, path_contains="/cost_report"), "timed out"),
    ],
    ids=["500", "503-second-page", "403", "reset", "malformed", "wrong-shape", "wrong-shape-workspaces", "timeout"],
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
    wrong = "sk-ant-admin01-WRONGwrongWRONGwrong-0000"
    monkeypatch.setenv(ENV, wrong)
    with pytest.raises(SourceError) as e:
        h.fetch()
    assert "HTTP 401 authentication_error" in str(e.value) and ENV in str(e.value)
    assert wrong not in str(e.value)
    assert wrong not in caplog.text


def test_missing_admin_key_names_the_variable(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV)
    with pytest.raises(SourceError, match=ENV):
        h.fetch()
    assert h.emu.requests == []


# --------------------------------------------------------------------------- parsing


def test_cents_to_usd() -> None:
    assert cents_to_usd("123.45") == pytest.approx(1.2345)
    assert cents_to_usd("0") == 0.0
    for bad in ("NaN", "abc", None, True):
        with pytest.raises((ValueError, TypeError)):
            cents_to_usd(bad)


def test_usage_tokens_keep_the_two_cache_ttls_apart() -> None:
    r = {
        "uncached_input_tokens": 10,
        "cache_creation": {"ephemeral_1h_input_tokens": 3, "ephemeral_5m_input_tokens": 4},
        "cache_read_input_tokens": 5,
        "output_tokens": 6,
    }
    assert usage_tokens(r) == {"input": 10, "output": 6, "cache_read": 5, "cache_write": 4, "cache_write_1h": 3}
    # a response from before the TTL split: every write was a 5-minute one
    old = {"uncached_input_tokens": 1, "cache_creation_input_tokens": 7, "output_tokens": 2}
    assert usage_tokens(old) == {"input": 1, "output": 2, "cache_read": 0, "cache_write": 7, "cache_write_1h": 0}


# --------------------------------------------------------------------------- end to end


def test_metrics_equal_the_dataset_and_show_the_runaway_hour(h: Harness, ds: AIDataset, tmp_path: Path) -> None:
    from exporter.app import build_app

    cfg = parse_config(
        {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "attribution": {"rules": ds.attribution_rules()},
            "sources": [
                {
                    "name": "anthropic",
                    "type": "anthropic",
                    "admin_key_env": ENV,
                    "base_url": h.emu.url,
                    "request_timeout": "5s",
                }
            ],
        },
        env={},
    )
    app = build_app(cfg, now=lambda: NOW)
    try:
        assert [o.ok for o in app.refresh_all()] == [True]
        text = app.exposition()
        teams = ds.teams("anthropic")
        assert teams[RESEARCH] == "research" and teams["default"] == "platform"
        assert teams["wrkspc_01SCRATCHqq"] == "unallocated"

        mtd = family_samples(text, "spend_cost_month_to_date_usd")
        assert {lab["account_id"] for lab, _ in mtd} == set(teams)
        for labels, value in mtd:
            assert labels["provider"] == "anthropic"
            assert labels["team"] == teams[labels["account_id"]], labels
            expected = ds.cost_sum(
                "anthropic",
                start=MONTH_START,
                account_id=labels["account_id"],
                model=labels["model"],
                service_name=labels["service_name"],
            )
            assert value == pytest.approx(float(expected), abs=CENT), labels
        for team in set(teams.values()):
            got = sum(v for lab, v in mtd if lab["team"] == team)
            assert got == pytest.approx(float(ds.cost_sum("anthropic", start=MONTH_START, team=team)), abs=CENT)

        start = dt.datetime.combine(MONTH_START, dt.time(), dt.UTC)
        tokens = family_samples(text, "spend_ai_tokens_month_to_date")
        assert {lab["token_type"] for lab, _ in tokens} == {"input", "output", "cache_read", "cache_write"}
        for labels, value in tokens:
            # the exposed cache_write is 5-minute plus 1-hour writes
            types = (
                ("cache_write", "cache_write_1h") if labels["token_type"] == "cache_write" else (labels["token_type"],)
            )
            expected_tokens = sum(
                ds.token_sum("anthropic", tt, start=start, account_id=labels["account_id"], model=labels["model"])
                for tt in types
            )
            assert value == expected_tokens, labels

        key = (SUPPORT, HAIKU, "support")

        def last_hour(text: str) -> dict[tuple[str, str, str], float]:
            return {
                (lab["account_id"], lab["model"], lab["team"]): v
                for lab, v in family_samples(text, "spend_ai_cost_last_hour_usd")
            }

        normal = last_hour(text)
        assert normal[key] > 0
        h.emu.dataset = runaway(ds, "anthropic", SUPPORT, HAIKU)
        assert [o.ok for o in app.refresh_all()] == [True]
        burning = last_hour(app.exposition())
        assert burning[key] == pytest.approx(RUNAWAY_FACTOR * normal[key], rel=1e-3)
        table = PriceTable.load(at=FIXED_NOW)
        hour_end = LAST_HOUR + dt.timedelta(hours=1)
        expected = table.estimate(
            "anthropic",
            HAIKU,
            {
                tt: h.emu.dataset.token_sum(
                    "anthropic", tt, start=LAST_HOUR, end=hour_end, account_id=SUPPORT, model=HAIKU
                )
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


def _app(h: Harness, ds: AIDataset, tmp_path: Path) -> Any:
    from exporter.app import build_app

    cfg = parse_config(
        {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "attribution": {"rules": ds.attribution_rules()},
            "sources": [
                {"name": "anthropic", "type": "anthropic", "admin_key_env": ENV, "base_url": h.emu.url},
            ],
        },
        env={},
    )
    return build_app(cfg, now=lambda: NOW)


def test_one_hour_cache_writes_are_priced_at_the_one_hour_rate(h: Harness, ds: AIDataset, tmp_path: Path) -> None:
    """The last hour of a workspace writing 1-hour caches: $6/1M for those tokens, not the 5-minute $3.75."""
    h.emu.dataset = runaway(ds, "anthropic", RESEARCH, SONNET)  # 40x: the rates' difference is dollars, not cents
    app = _app(h, ds, tmp_path)
    try:
        assert [o.ok for o in app.refresh_all()] == [True]
        got = {
            (lab["account_id"], lab["model"]): v
            for lab, v in family_samples(app.exposition(), "spend_ai_cost_last_hour_usd")
        }[(RESEARCH, SONNET)]
        end = LAST_HOUR + dt.timedelta(hours=1)

        def n(tt: str) -> int:
            return h.emu.dataset.token_sum("anthropic", tt, start=LAST_HOUR, end=end, account_id=RESEARCH, model=SONNET)

        assert n("cache_write_1h") > 10_000
        # Claude Sonnet 4's list prices per 1M tokens, by hand
        by_hand = (
            n("input") * 3.00
            + n("output") * 15.00
            + n("cache_read") * 0.30
            + n("cache_write") * 3.75
            + n("cache_write_1h") * 6.00
        ) / 1e6
        at_5m_rate = by_hand - n("cache_write_1h") * (6.00 - 3.75) / 1e6
        assert got == pytest.approx(by_hand, abs=CENT)
        assert abs(got - at_5m_rate) > 0.05
        # and the day's bill agrees: the emulator bills 1-hour writes at their own rate too
        assert app.builder.price_ratio("anthropic", RESEARCH, SONNET) == pytest.approx(1.0, abs=1e-4)
    finally:
        app.close()


def test_price_ratio_shows_a_negotiated_discount(h: Harness, ds: AIDataset, tmp_path: Path) -> None:
    """Billed cost ÷ list-price estimate over the 7 complete days: below 1 for the workspace billed 15% off."""
    h.emu.dataset = dataclasses.replace(ds, discounts={("anthropic", SUPPORT): Decimal("0.85")})
    app = _app(h, ds, tmp_path)
    try:
        assert [o.ok for o in app.refresh_all()] == [True]
        ratios = {
            (lab["account_id"], lab["model"]): v for lab, v in family_samples(app.exposition(), "spend_ai_price_ratio")
        }
        first, last = dt.date(2026, 11, 15), dt.date(2026, 11, 21)
        billed = h.emu.dataset
        want = {
            (acct, model): float(
                billed.cost_sum("anthropic", start=first, end=last, account_id=acct, model=model)
                / billed.list_cost("anthropic", start=first, end=last, account_id=acct, model=model)
            )
            for acct, model in {(r.account_id or "default", r.model) for r in ds.rows("anthropic")}
        }
        assert ratios == pytest.approx(want, rel=1e-6)
        assert ratios[(SUPPORT, HAIKU)] == pytest.approx(0.85, abs=1e-4)
        assert ratios[(RESEARCH, SONNET)] == pytest.approx(1.0, abs=1e-4)
        assert app.builder.price_ratio("anthropic", SUPPORT, SONNET) == pytest.approx(ratios[(SUPPORT, SONNET)])
    finally:
        app.close()


# --------------------------------------------------------------------------- per-key AI spend


def _shared_key(ds: AIDataset, emu: AnthropicAdminEmulator) -> AIDataset:
    """The Support workspace's Sonnet usage split between two keys (every third hour on a second one), billed
    15% off; the key list also names two keys without usage, one in the default workspace (its real id)."""
    usage = [
        dataclasses.replace(r, api_key_id="apikey_01S2")
        if r.provider == "anthropic" and r.account_id == SUPPORT and r.model == SONNET and r.hour.hour % 3 == 0
        else r
        for r in ds.usage
    ]
    template = emu.api_keys["apikey_01S1"]
    for key_id, workspace in (("apikey_01S2", SUPPORT), ("apikey_01X9", DEFAULT_WORKSPACE_REAL_ID)):
        scope = {"type": "workspace", "workspace_id": workspace}
        emu.api_keys[key_id] = dict(template, id=key_id, name=f"{key_id} service key", scope=scope)
    emu.api_keys["apikey_01O1"] = dict(template, id="apikey_01O1", name="org key", scope={"type": "organization"})
    return dataclasses.replace(ds, usage=usage, discounts={("anthropic", SUPPORT): Decimal("0.85")})


def test_usage_by_api_key_and_key_names(h: Harness, ds: AIDataset) -> None:
    h.emu.dataset = shared = _shared_key(ds, h.emu)
    res = h.fetch()
    got: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for k in res.key_usage:
        assert (k.provider, k.service_name, k.requests) == ("anthropic", "messages", 0)
        for tt, n in k.tokens.items():
            got[(k.account_id, k.api_key_id, k.model, tt)] += n
    want: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for r in shared.rows("anthropic"):
        if WINDOW.start <= r.day <= WINDOW.end:
            for tt, n in r.tokens.items():
                want[(r.account_id or "default", r.api_key_id, r.model, tt)] += n
    assert {k: v for k, v in got.items() if v} == {k: v for k, v in want.items() if v}
    names = {(k.account_id, k.api_key_id): k.api_key_name for k in res.api_keys}
    assert names[(SUPPORT, "apikey_01S2")] == "apikey_01S2 service key"
    assert names[("default", "apikey_01D1")] == "01D1 service key"  # used in the default workspace
    assert names[("default", "apikey_01X9")] == "apikey_01X9 service key"  # scoped to it by its real id
    assert names[("default", "apikey_01O1")] == "org key"  # organization-scoped


def test_a_key_list_that_fails_leaves_the_names_out_not_the_refresh(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    check_key_list_failure_spares_the_refresh(
        h, caplog, Fault("403", times=-1, path_contains="/v1/organizations/api_keys")
    )


def test_key_costs_equal_the_dataset_and_add_up_to_the_billed_cost(h: Harness, ds: AIDataset, tmp_path: Path) -> None:
    """The cost report has no cost per key: the workspace's billed cost of a model is split across its keys by
    their list-price estimates, each key within a cent of its usage at the billed price, the keys adding up to the
    bill to the cent; budgets on a key count its share, within its team."""
    from exporter.app import build_app

    h.emu.dataset = billed = _shared_key(ds, h.emu)
    cfg = parse_config(
        {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "attribution": {"rules": ds.attribution_rules()},
            "sources": [{"name": "anthropic", "type": "anthropic", "admin_key_env": ENV, "base_url": h.emu.url}],
            "budgets": [
                {"name": "s2", "amount_usd": 50, "team": "support", "match": {"api_key_id": "apikey_01S2"}},
                {"name": "s2-research", "amount_usd": 50, "team": "research", "match": {"api_key_id": "apikey_01S2"}},
                {"name": "s-both", "amount_usd": 50, "match": {"api_key_id": ["apikey_01S1", "apikey_01S2"]}},
            ],
        },
        env={},
    )
    app = build_app(cfg, now=lambda: NOW)
    try:
        assert [o.ok for o in app.refresh_all()] == [True]
        text = app.exposition()
        keys = {
            (lab["account_id"], lab["api_key_id"], lab["model"]): Decimal(repr(v))
            for lab, v in family_samples(text, "spend_ai_key_cost_month_to_date_usd")
        }
        assert {(a, k) for a, k, _ in keys} == {
            (r.account_id or "default", r.api_key_id) for r in billed.rows("anthropic") if r.day >= MONTH_START
        }
        for (account, key, model), value in keys.items():
            truth = billed.key_cost("anthropic", start=MONTH_START, end=NOW.date(), account_id=account, api_key_id=key)
            assert abs(value - truth[model]) <= Decimal("0.01"), (account, key, model, value, truth[model])
        for account, model in {(a, m) for a, _, m in keys}:
            bill = billed.cost_sum("anthropic", start=MONTH_START, end=NOW.date(), account_id=account, model=model)
            total = sum(v for (a, _, m), v in keys.items() if (a, m) == (account, model))
            assert total == bill.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP), (account, model)
        s1, s2 = keys[(SUPPORT, "apikey_01S1", SONNET)], keys[(SUPPORT, "apikey_01S2", SONNET)]
        assert s1 > s2 > 0
        info = {lab["api_key_id"]: lab for lab, _ in family_samples(text, "spend_ai_key_info")}
        assert info["apikey_01S2"]["account_id"] == SUPPORT
        assert info["apikey_01X9"]["account_id"] == "default"
        spent = {lab["budget"]: Decimal(repr(v)) for lab, v in family_samples(text, "spend_budget_spent_usd")}
        assert spent["s2"] == s2
        assert spent["s2-research"] == 0  # the key's usage is the support team's
        assert spent["s-both"] == s1 + s2 + keys[(SUPPORT, "apikey_01S1", HAIKU)]
        forecast = {lab["budget"]: v for lab, v in family_samples(text, "spend_budget_forecast_usd")}
        assert forecast["s2"] > float(s2)  # its share of the workspace's month-end forecast for the model
    finally:
        app.close()


# --------------------------------------------------------------------------- minute buckets (the burn rate)


def test_burn_minutes_by_key_with_the_workspace_tag_to_the_cent(ds: AIDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sonnet at $6/h in the tagged workspace, then $300/h from T0 on one of two keys; delay 3m, window 10m."""
    t0 = dt.datetime(2026, 11, 22, 9, 0, tzinfo=dt.UTC)
    clock = Clock(t0 + dt.timedelta(minutes=7, seconds=10))
    since = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    streams = [
        Stream("anthropic", RESEARCH, "apikey_01R1", SONNET, "messages", ((since, per_minute(SONNET, "6", "input")),)),
        Stream(
            "anthropic",
            RESEARCH,
            "apikey_01R2",
            SONNET,
            "messages",
            ((since, {}), (t0, per_minute(SONNET, "300"))),
        ),
    ]
    scenario = Scenario(streams, clock, start=t0 - dt.timedelta(hours=1), delay=dt.timedelta(minutes=3))
    with AnthropicAdminEmulator(ds, scenario=scenario) as emu:
        h = Harness(emu, monkeypatch)
        p = h.provider(burn_window="10m", burn_delay="3m")
        try:
            got = p.fetch_minutes(clock())
            again = p.fetch_minutes(clock())  # the workspace listing (team tags) is kept for an hour
        finally:
            p.close()
    assert (got.start, got.end) == (t0 - dt.timedelta(minutes=6), t0 + dt.timedelta(minutes=4))
    assert [c[0] for c in h.calls] == ["workspaces", "usage_report_messages_minutes", "usage_report_messages_minutes"]
    assert again.minutes == got.minutes
    assert {m.team_tag for m in got.minutes} == {"research"}
    assert {m.api_key_id for m in got.minutes if m.minute_start >= t0} == {"apikey_01R1", "apikey_01R2"}
    assert {m.api_key_id for m in got.minutes if m.minute_start < t0} == {"apikey_01R1"}
    table = PriceTable.load(at=FIXED_NOW)
    estimates = [table.estimate("anthropic", m.model, m.tokens) for m in got.minutes]
    assert not any(e.unpriced_tokens for e in estimates)
    usd = sum(e.usd for e in estimates)
    assert abs(usd - float(scenario.cost(got.start, got.end))) < 1e-6
    assert round(usd * 3600 / 600, 2) == 126.00  # (6 × 10 + 300 × 4) / 60 dollars in 10 minutes, per hour
