"""``GET /api/v1/spend`` over real HTTP: the dataset's sums per day and per month to the cent (FOCUS files and
the AWS Cost Explorer emulator through boto3), a restated day, every 400, the caps, basic auth, HEAD, secrets."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import random
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from exporter import spendapi
from exporter.app import App, build_app
from exporter.config import parse_config
from exporter.store import QueryInterrupted, Replacement, SourceState, Store
from exporter.web import Server
from tests.clock import FIXED_NOW
from tests.emulators.aws_ce import AwsCostExplorerEmulator
from tests.emulators.dataset import build_dataset
from tests.helpers import running, use_static_aws_credentials

TODAY = FIXED_NOW.date()  # 2026-11-20
FIRST = dt.date(2026, 9, 1)
MICRO = Decimal("0.000001")
CENT = Decimal("0.01")
PASSWORD = "api password 7Yq"
AWS_KEY_ID = "AKIATESTSPENDAPI0001"
AWS_SECRET = "test-only-api-secret-Xk29fLq0"

# FOCUS ProviderName → the provider label; the team tag (None: untagged → "unallocated"); services and models
PROVIDERS = {"AWS": "aws", "Microsoft": "azure"}
TEAMS = ["search", "payments", None]
SERVICES = [("Amazon EC2", ""), ("Amazon Bedrock", "anthropic.claude-3-5-sonnet"), ("Storage", "")]
EUR_RATE = Decimal("1.08")

Rows = list[tuple[dt.date, str, str, str, str, Decimal]]  # day, provider, team, service, model, USD


def focus_rows(seed: int = 11) -> tuple[list[dict[str, Any]], Rows]:
    """FOCUS rows (two per series and day, one of them in EUR on Azure), and the same in USD for the sums."""
    rnd = random.Random(seed)
    out: list[dict[str, Any]] = []
    usd: Rows = []
    day = FIRST
    while day <= TODAY:
        for pname, provider in PROVIDERS.items():
            for team in TEAMS:
                for service, model in SERVICES:
                    for part in range(2):
                        amount = Decimal(rnd.randint(1, 250_000)) / 100  # cents
                        eur = provider == "azure" and part == 1
                        start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
                        out.append(
                            {
                                "ChargePeriodStart": start,
                                "ChargePeriodEnd": start + dt.timedelta(days=1),
                                "ProviderName": pname,
                                "ServiceName": service,
                                "BilledCost": amount,
                                "BillingCurrency": "EUR" if eur else "USD",
                                "Tags": json.dumps({"team": team}) if team else "",
                                "x_Model": model,
                            }
                        )
                        usd.append(
                            (day, provider, team or "unallocated", service, model, amount * EUR_RATE if eur else amount)
                        )
        day += dt.timedelta(days=1)
    return out, usd


def sums(
    rows: Rows, keys: tuple[str, ...], monthly: bool = False, first: dt.date = FIRST
) -> dict[tuple[str, ...], Decimal]:
    """The dataset's own sums: (date, *labels) → USD."""
    idx = {"provider": 1, "team": 2, "service_name": 3, "model": 4}
    out: dict[tuple[str, ...], Decimal] = defaultdict(Decimal)
    for r in rows:
        if r[0] < first:
            continue
        date = r[0].isoformat()[:7] if monthly else r[0].isoformat()
        out[(date, *(str(r[idx[k]]) for k in keys))] += r[5]
    return dict(out)


def got(body: dict[str, Any], keys: tuple[str, ...]) -> dict[tuple[str, ...], Decimal]:
    return {(r["date"], *(r[k] for k in keys)): Decimal(repr(r["cost_usd"])) for r in body["rows"]}


def assert_equal_sums(answer: dict[tuple[str, ...], Decimal], want: dict[tuple[str, ...], Decimal]) -> None:
    """Same keys; every figure is the exact sum rounded to the micro-dollar, hence equal to the cent."""
    assert set(answer) == set(want)
    wrong = {
        k: (answer[k], want[k])
        for k in want
        if answer[k] != want[k].quantize(MICRO, ROUND_HALF_EVEN) or answer[k].quantize(CENT) != want[k].quantize(CENT)
    }
    assert not wrong, f"{len(wrong)} figures differ, e.g. {next(iter(wrong.items()))}"


# --------------------------------------------------------------------------- HTTP


def request(
    server: Server, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


def spend(server: Server, query: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    status, h, body = request(server, f"/api/v1/spend?{query}", headers=headers)
    assert status == 200, body
    assert h["Content-Type"] == "application/json"
    out: dict[str, Any] = json.loads(body)
    return out


class Focus:
    def __init__(self, tmp: Path, focus: Any) -> None:
        self.tmp, self.focus = tmp, focus
        self.rows, self.usd = focus_rows()
        self.clock = FIXED_NOW
        focus.write(tmp / "exports" / "a.csv", self.rows)
        cfg = parse_config(
            {
                "cache_path": str(tmp / "cache.sqlite"),
                "currency_rates": {"EUR": float(EUR_RATE)},
                "sources": [
                    {
                        "name": "focus",
                        "type": "focus",
                        "paths": [str(tmp / "exports" / "*.csv")],
                        "history_days": 80,
                    }
                ],
            }
        )
        self.app: App = build_app(cfg, now=lambda: self.clock)
        assert all(o.ok for o in self.app.refresh_all(history=True))


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory, focus: Any) -> Iterator[Focus]:
    f = Focus(tmp_path_factory.mktemp("api"), focus)
    yield f
    f.app.close()


@pytest.fixture(scope="module")
def server(fx: Focus) -> Iterator[Server]:
    with running(fx.app) as s:
        yield s


# --------------------------------------------------------------------------- the dataset's sums


@pytest.mark.parametrize(
    "keys", [(), ("provider",), ("provider", "team"), ("team", "model"), ("provider", "team", "service_name", "model")]
)
def test_daily_sums_equal_the_dataset(server: Server, fx: Focus, keys: tuple[str, ...]) -> None:
    body = spend(server, f"from={FIRST}&to={TODAY}&group_by={','.join(keys)}")
    assert body["currency"] == "USD" and body["group_by"] == list(keys) and body["granularity"] == "day"
    assert (body["from"], body["to"]) == (FIRST.isoformat(), TODAY.isoformat())
    assert_equal_sums(got(body, keys), sums(fx.usd, keys))
    # sorted by date, then by the labels in the order asked
    order = [(r["date"], *(r[k] for k in keys)) for r in body["rows"]]
    assert order == sorted(order)
    assert all(list(r) == ["date", *keys, "cost_usd"] for r in body["rows"])


@pytest.mark.parametrize("keys", [(), ("provider", "team"), ("model",)])
def test_monthly_sums_equal_the_dataset(server: Server, fx: Focus, keys: tuple[str, ...]) -> None:
    body = spend(server, f"from={FIRST}&to={TODAY}&granularity=month&group_by={','.join(keys)}")
    assert body["granularity"] == "month"
    assert {r["date"] for r in body["rows"]} == {"2026-09", "2026-10", "2026-11"}
    assert_equal_sums(got(body, keys), sums(fx.usd, keys, monthly=True))


def test_a_month_cut_by_the_range_sums_only_the_days_in_it(server: Server, fx: Focus) -> None:
    first = dt.date(2026, 9, 17)
    body = spend(server, f"from={first}&to=2026-10-31&granularity=month&group_by=provider")
    want = {k: v for k, v in sums(fx.usd, ("provider",), monthly=True, first=first).items() if k[0] <= "2026-10"}
    assert_equal_sums(got(body, ("provider",)), want)


def test_defaults_are_the_current_month_by_day_totals(server: Server, fx: Focus) -> None:
    body = spend(server, "")
    assert (body["from"], body["to"], body["group_by"]) == ("2026-11-01", TODAY.isoformat(), [])
    assert_equal_sums(got(body, ()), sums(fx.usd, (), first=dt.date(2026, 11, 1)))
    month = spend(server, "granularity=month&group_by=provider")
    assert {r["date"] for r in month["rows"]} == {"2026-11"}
    assert spend(server, "to=2026-10-15")["from"] == "2026-10-01"


def test_absolute_form_keeps_the_query(server: Server) -> None:
    path = f"http://127.0.0.1:{server.port}/api/v1/spend?from=2026-10-01&to=2026-10-02&group_by=team"
    assert spend(server, "from=2026-10-01&to=2026-10-02&group_by=team") == json.loads(request(server, path)[2])


def test_source_filter(server: Server, fx: Focus) -> None:
    assert spend(server, "source=focus&group_by=provider") == spend(server, "group_by=provider")


def test_days_outside_the_cache_have_no_rows(server: Server) -> None:
    for granularity in ("day", "month"):
        for group_by in ("", "team"):
            q = f"from=2025-01-01&to=2026-08-31&granularity={granularity}&group_by={group_by}"
            assert spend(server, q)["rows"] == [], q


def test_aws_cost_explorer_sums_per_day_and_month(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real boto3 client against the Cost Explorer emulator: the API's days are the dataset's, to the cent."""
    use_static_aws_credentials(monkeypatch, tmp_path, AWS_KEY_ID, AWS_SECRET, region="us-east-1")
    dataset = build_dataset(TODAY)
    first = TODAY - dt.timedelta(days=59)
    rows: Rows = [
        (r.day, "aws", r.team or "unallocated", r.service_name, r.model, r.amount)
        for r in dataset.rows("aws")
        if r.extra.get("record_type") not in ("Credit", "Refund")  # include_credits: false (the default)
    ]
    with AwsCostExplorerEmulator(dataset, page_size=100, access_key_id=AWS_KEY_ID) as emu:
        cfg = parse_config(
            {
                "cache_path": str(tmp_path / "cache.sqlite"),
                "sources": [
                    {"name": "aws", "type": "aws", "endpoint_url": emu.url, "history_days": 60, "timeout": "20s"}
                ],
            }
        )
        app = build_app(cfg, now=lambda: FIXED_NOW)
        try:
            assert all(o.ok for o in app.refresh_all(history=True))
            with running(app) as s:
                keys = ("provider", "team", "service_name")
                body = spend(s, f"from={first}&to={TODAY}&group_by={','.join(keys)}")
                assert_equal_sums(got(body, keys), sums(rows, keys, first=first))
                body = spend(s, f"from={first}&to={TODAY}&group_by=team&granularity=month")
                assert_equal_sums(got(body, ("team",)), sums(rows, ("team",), monthly=True, first=first))
                status, _, raw = request(s, f"/api/v1/spend?from={first}&group_by=provider,account_id,team,model")
                assert status == 200
                assert AWS_SECRET.encode() not in raw and AWS_KEY_ID.encode() not in raw
        finally:
            app.close()


# --------------------------------------------------------------------------- restatement


def test_a_restated_day_shows_its_new_figure_after_a_refresh(tmp_path: Path, focus: Any) -> None:
    f = Focus(tmp_path, focus)
    try:
        yesterday = TODAY - dt.timedelta(days=1)
        with running(f.app) as s:
            q = f"from={yesterday}&to={yesterday}&group_by=provider"
            before = got(spend(s, q), ("provider",))
            assert before == {
                k: v.quantize(MICRO)
                for k, v in sums(f.usd, ("provider",), first=yesterday).items()
                if k[0] <= str(yesterday)
            }
            # the provider restates yesterday's AWS rows: each doubles
            for r in f.rows:
                if r["ChargePeriodStart"].date() == yesterday and r["ProviderName"] == "AWS":
                    r["BilledCost"] *= 2
            focus.write(tmp_path / "exports" / "a.csv", f.rows)
            f.clock = FIXED_NOW + dt.timedelta(hours=2)
            assert f.app.refresh("focus").ok
            after = got(spend(s, q), ("provider",))
            key = (yesterday.isoformat(), "aws")
            assert after[key] == before[key] * 2, "the new figure replaces the old one, never adds to it"
            assert after[(yesterday.isoformat(), "azure")] == before[(yesterday.isoformat(), "azure")]
    finally:
        f.app.close()


# --------------------------------------------------------------------------- 400s


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("from=2026-11-31", "from"),
        ("from=2026-13-01", "from"),
        ("from=20261101", "from"),
        ("from=2026-11-1", "from"),
        ("from=", "from"),
        ("to=yesterday", "to"),
        ("to=2026-11-01T00:00:00", "to"),
        ("from=2026-11-10&to=2026-11-09", "from"),
        ("from=2024-01-01&to=2026-11-20", "from"),  # over MAX_DAYS
        ("group_by=provider,region", "group_by"),
        ("group_by=provider,provider", "group_by"),
        ("group_by=provider,", "group_by"),
        ("group_by=source", "group_by"),
        ("group_by=Team", "group_by"),
        ("granularity=week", "granularity"),
        ("granularity=", "granularity"),
        ("source=nope", "source"),
        ("source=", "source"),
        ("step=1d", "step"),
        ("from=2026-11-01&from=2026-11-02", "from"),
        ("group_by=team&group_by=provider", "group_by"),
        ("&".join(f"x{i}=1" for i in range(30)), ""),
    ],
)
def test_bad_parameters_get_a_400_naming_the_parameter(server: Server, query: str, parameter: str) -> None:
    status, h, body = request(server, f"/api/v1/spend?{query}")
    assert status == 400, body
    assert h["Content-Type"] == "application/json"
    answer = json.loads(body)
    assert answer["parameter"] == parameter
    assert answer["error"] and (parameter in answer["error"] or not parameter or "unknown" in answer["error"])


def test_span_of_exactly_max_days_is_accepted(server: Server) -> None:
    first = TODAY - dt.timedelta(days=spendapi.MAX_DAYS - 1)
    assert spend(server, f"from={first}&to={TODAY}")["from"] == first.isoformat()
    status, _, _ = request(server, f"/api/v1/spend?from={first - dt.timedelta(days=1)}&to={TODAY}")
    assert status == 400


def test_too_many_rows_is_a_400_that_says_to_narrow(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    days = (TODAY - FIRST).days + 1
    monkeypatch.setattr(spendapi, "MAX_ROWS", days * 2)  # provider by day: exactly days * 2 rows
    assert len(spend(server, f"from={FIRST}&group_by=provider")["rows"]) == days * 2
    status, _, body = request(server, f"/api/v1/spend?from={FIRST}&group_by=provider,team")
    assert status == 400
    answer = json.loads(body)
    assert answer["parameter"] == "group_by"
    assert "narrow group_by or the range" in answer["error"] and str(days * 2) in answer["error"]


# --------------------------------------------------------------------------- methods, auth, secrets


def test_head_and_other_methods(server: Server) -> None:
    status, h, body = request(server, "/api/v1/spend?group_by=provider", method="HEAD")
    assert status == 200 and body == b""
    _, _, full = request(server, "/api/v1/spend?group_by=provider")
    assert int(h["Content-Length"]) == len(full)
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        status, h, _ = request(server, "/api/v1/spend", method=method)
        assert status == 405 and h["Allow"] == "GET, HEAD", method
    assert request(server, "/api/v1/spend/")[0] == 404
    assert request(server, "/api/v1/")[0] == 404


def test_basic_auth(fx: Focus, tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  alice: '{hashed}'\n")
    good = {"Authorization": "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"alice:wrong").decode()}
    with running(fx.app, web) as s:
        for headers in ({}, bad):
            for query in ("", "group_by=team", "from=bad"):
                status, h, body = request(s, f"/api/v1/spend?{query}", headers=headers)
                assert status == 401 and h["WWW-Authenticate"] == 'Basic realm="spend-exporter"'
                assert b"cost_usd" not in body and b"parameter" not in body
            assert request(s, "/api/v1/spend", method="HEAD", headers=headers)[0] == 401
        assert spend(s, "group_by=team", headers=good)["rows"]


def test_no_secret_in_the_answer(tmp_path: Path, focus: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-admin-apiTEST-9c1f"
    monkeypatch.setenv("SPEND_EXPORTER_TEST_OPENAI_KEY", secret)
    focus.write(tmp_path / "a.csv", [focus.daily(TODAY, 1.5, Tags='{"team": "search"}')])
    cfg = parse_config(
        {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "sources": [
                {"name": "focus", "type": "focus", "paths": [str(tmp_path / "*.csv")]},
                {
                    "name": "openai",
                    "type": "openai",
                    "admin_key_env": "SPEND_EXPORTER_TEST_OPENAI_KEY",
                    "base_url": "http://127.0.0.1:9/v1",
                },
            ],
        }
    )
    app = build_app(cfg, now=lambda: FIXED_NOW)
    try:
        app.refresh("focus")
        with running(app) as s:
            for q in ("group_by=provider,account_id,service_name,team,model", "source=openai", "source=nope", "x=1"):
                _, _, body = request(s, f"/api/v1/spend?{q}")
                assert secret.encode() not in body, q
            assert spend(s, "group_by=team")["rows"] == [{"date": TODAY.isoformat(), "team": "search", "cost_usd": 1.5}]
            assert spend(s, "source=openai")["rows"] == []
    finally:
        app.close()


# --------------------------------------------------------------------------- the store's side


def _store_with(tmp_path: Path, n: int) -> Store:
    store = Store(tmp_path / "c.sqlite")
    costs = [(TODAY.isoformat(), "aws", "1", f"svc{i}", "t", "", 0.01) for i in range(n)]
    store.replace("s", Replacement(TODAY, TODAY, costs, [], None, [], None), SourceState("s"))
    return store


def test_a_query_past_its_deadline_is_stopped(tmp_path: Path) -> None:
    store = _store_with(tmp_path, 5000)
    try:
        with pytest.raises(QueryInterrupted):
            store.spend(["s"], TODAY, TODAY, ["service_name"], deadline=time.monotonic() - 1)
        assert len(store.spend(["s"], TODAY, TODAY, ["service_name"], deadline=time.monotonic() + 600)) == 5000
        code, body = spendapi.answer(
            store, "group_by=service_name", TODAY, ["s"], clock=lambda: time.monotonic() - spendapi.QUERY_SECONDS - 1
        )
        assert code == 503 and "narrow group_by" in body["error"]
    finally:
        store.close()


def test_the_read_holds_no_lock_on_a_file_cache(tmp_path: Path) -> None:
    """A file cache answers the API on a connection of its own: a refresh or snapshot build holding the store's
    lock on another thread does not hold it up (WAL: it reads the last committed state)."""
    store = _store_with(tmp_path, 10)
    held, done = threading.Event(), threading.Event()
    rows: list[Any] = []

    def query() -> None:
        held.wait()
        rows.extend(store.spend(["s"], TODAY, TODAY))
        done.set()

    t = threading.Thread(target=query, daemon=True)
    try:
        with store._file._lock:
            t.start()
            held.set()
            answered = done.wait(30)  # a hang guard: with the lock taken, the old read would wait for ever
        t.join()
        assert answered, "the spend read waited for the store's lock"
        assert rows == [(TODAY.isoformat(), 100_000_000)]  # ten times $0.01, in nano-dollars
    finally:
        store.close()


def test_queries_run_one_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store_with(tmp_path, 1)
    monkeypatch.setattr(spendapi, "QUERY_SECONDS", 0.0)
    try:
        assert spendapi._queries.acquire(timeout=5)
        try:
            code, body = spendapi.answer(store, "", TODAY, ["s"])
        finally:
            spendapi._queries.release()
        assert code == 503 and "another spend query" in body["error"]
        assert spendapi.answer(store, "", TODAY, ["s"])[0] == 200
    finally:
        store.close()


def test_a_cache_that_cannot_be_read_is_a_500_without_detail(tmp_path: Path) -> None:
    store = _store_with(tmp_path, 1)
    store.close()
    code, body = spendapi.answer(store, "", TODAY, ["s"])
    assert code == 500 and body == {"error": "the cache could not be read (the exporter's log says why)"}


@pytest.mark.parametrize(
    ("nano", "usd"),
    [(12_500_000_000, 12.5), (1_500, 0.000002), (2_500, 0.000002), (2_501, 0.000003), (-1_500, -0.000002), (0, 0.0)],
)
def test_rounding_to_the_micro_dollar_is_half_even(nano: int, usd: float) -> None:
    assert spendapi.usd(nano) == usd


# --------------------------------------------------------------------------- extra labels (attribution.labels)


def test_group_by_extra_labels_sums_the_dataset(tmp_path: Path, focus: Any) -> None:
    """``group_by`` may name the extra labels, alone or with cost labels: each sum is the dataset's to the cent
    (the cache groups by all extra labels at once; the answer sums them up by those asked)."""
    rnd = random.Random(5)
    rows: list[dict[str, Any]] = []
    want: dict[tuple[str, ...], Decimal] = defaultdict(Decimal)
    day = dt.date(2026, 10, 1)
    while day <= TODAY:
        for env in ("prod", "staging", None):
            for customer in ("acme", "globex", None):
                for team in ("search", None):
                    amount = Decimal(rnd.randint(1, 90_000)) / 100
                    tags = {k: v for k, v in (("team", team), ("env", env), ("customer", customer)) if v}
                    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
                    rows.append(
                        {
                            "ChargePeriodStart": start,
                            "ChargePeriodEnd": start + dt.timedelta(days=1),
                            "ProviderName": "AWS",
                            "ServiceName": "Amazon EC2",
                            "BilledCost": amount,
                            "BillingCurrency": "USD",
                            "Tags": json.dumps(tags),
                            "x_Model": "",
                        }
                    )
                    want[(day.isoformat()[:7], env or "")] += amount
                    want[("team+customer", day.isoformat(), team or "unallocated", customer or "")] += amount
        day += dt.timedelta(days=1)
    focus.write(tmp_path / "exports" / "a.csv", rows)
    cfg = parse_config(
        {
            "cache_path": str(tmp_path / "cache.sqlite"),
            "attribution": {
                "labels": [
                    {"name": "environment", "tag_keys": ["env"]},
                    {"name": "customer_id", "tag_keys": ["customer"]},
                ]
            },
            "sources": [
                {"name": "focus", "type": "focus", "paths": [str(tmp_path / "exports" / "*.csv")], "history_days": 60}
            ],
        }
    )
    app = build_app(cfg, now=lambda: FIXED_NOW)
    try:
        assert all(o.ok for o in app.refresh_all(history=True))
        with running(app) as s:
            monthly = spend(s, "from=2026-10-01&to=2026-11-20&granularity=month&group_by=environment")
            assert monthly["group_by"] == ["environment"]
            assert_equal_sums(
                {(r["date"], r["environment"]): Decimal(repr(r["cost_usd"])) for r in monthly["rows"]},
                {k: v for k, v in want.items() if len(k) == 2},
            )
            daily = spend(s, "from=2026-10-01&to=2026-11-20&group_by=team,customer_id")
            assert all(list(r) == ["date", "team", "customer_id", "cost_usd"] for r in daily["rows"])
            order = [(r["date"], r["team"], r["customer_id"]) for r in daily["rows"]]
            assert order == sorted(order)
            assert_equal_sums(
                {("team+customer", *k): Decimal(repr(r["cost_usd"])) for r in daily["rows"] for k in [order.pop(0)]},
                {k: v for k, v in want.items() if len(k) == 4},
            )
            status, _, body = request(s, "/api/v1/spend?group_by=region")
            assert status == 400 and json.loads(body)["parameter"] == "group_by"
    finally:
        app.close()
