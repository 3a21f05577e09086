"""The guard: Alertmanager's webhook in, rate limits and key statuses out, through the real SDKs.

The exporter runs in process (``build_app`` + the real HTTP server); the OpenAI and Anthropic Admin
API emulators take the write calls and record each one, so every test asserts exactly what arrived.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import App, build_app
from exporter.config import parse_config
from exporter.guard import PayloadError, parse_payload
from exporter.web import Server
from tests.conftest import Clock
from tests.emulators.ai_dataset import GPT4O, LABS, RESEARCH, SEARCH, SONNET, AIDataset, build_ai_dataset
from tests.emulators.anthropic_admin import DEFAULT_ADMIN_KEY as ANTHROPIC_ADMIN_KEY
from tests.emulators.anthropic_admin import DEFAULT_WRITE_KEY as ANTHROPIC_WRITE_KEY
from tests.emulators.anthropic_admin import AnthropicAdminEmulator
from tests.emulators.openai_admin import DEFAULT_ADMIN_KEY, DEFAULT_WRITE_KEY, OpenAIAdminEmulator
from tests.emulators.server import Emulator, Fault, Request, Response
from tests.helpers import running
from tests.test_config import cli_in_process

NOW = dt.datetime(2026, 11, 22, 9, 41, 7, tzinfo=dt.UTC)
TOKEN = "guard-token-Xq7pL2vN9wR4"
RL = f"rl-{GPT4O}"
RL_PATH = f"/v1/organization/projects/{LABS}/rate_limits/{RL}"
ENV = {
    "GUARD_TEST_TOKEN": TOKEN,
    "GUARD_TEST_OPENAI_KEY": DEFAULT_ADMIN_KEY,
    "GUARD_TEST_OPENAI_WRITE_KEY": DEFAULT_WRITE_KEY,
    "GUARD_TEST_ANTHROPIC_KEY": ANTHROPIC_ADMIN_KEY,
    "GUARD_TEST_ANTHROPIC_WRITE_KEY": ANTHROPIC_WRITE_KEY,
}
SECRETS = (TOKEN, DEFAULT_ADMIN_KEY, DEFAULT_WRITE_KEY, ANTHROPIC_ADMIN_KEY, ANTHROPIC_WRITE_KEY)


@pytest.fixture(scope="module")
def ds() -> AIDataset:
    return build_ai_dataset(NOW, days=3)


@pytest.fixture(scope="module")
def openai_server(ds: AIDataset) -> Iterator[OpenAIAdminEmulator]:
    with OpenAIAdminEmulator(ds, write_key=DEFAULT_WRITE_KEY) as emu:
        yield emu  # type: ignore[misc]


@pytest.fixture(scope="module")
def anthropic_server(ds: AIDataset) -> Iterator[AnthropicAdminEmulator]:
    with AnthropicAdminEmulator(ds, write_key=ANTHROPIC_WRITE_KEY) as emu:
        yield emu  # type: ignore[misc]


@pytest.fixture
def openai_emu(openai_server: OpenAIAdminEmulator, ds: AIDataset) -> OpenAIAdminEmulator:
    """The module's emulator (one server: stopping one takes half a second), as new: limits, calls, faults."""
    openai_server.rate_limits = OpenAIAdminEmulator(ds).rate_limits
    openai_server.writes.clear()
    openai_server.requests.clear()
    openai_server.clear_faults()
    return openai_server


@pytest.fixture
def anthropic_emu(anthropic_server: AnthropicAdminEmulator, ds: AIDataset) -> AnthropicAdminEmulator:
    anthropic_server.api_keys = AnthropicAdminEmulator(ds).api_keys
    anthropic_server.writes.clear()
    anthropic_server.requests.clear()
    anthropic_server.clear_faults()
    return anthropic_server


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)


OPENAI_RULE = {
    "name": "stop-openai-runaway",
    "match": {"alertname": "SpendAIBurnRateHigh", "provider": "openai"},
    "action": "openai_project_rate_limit",
    "params": {"max_requests_per_1_minute": 1},
}
ANTHROPIC_RULE = {
    "name": "stop-anthropic-runaway",
    "match": {"alertname": "SpendAIBurnRateHigh", "provider": "anthropic"},
    "action": "anthropic_api_key_status",
}


def config(tmp: Path, openai: OpenAIAdminEmulator | None = None, **guard: Any) -> dict[str, Any]:
    sources = []
    if openai is not None:
        sources.append(
            {
                "name": "openai",
                "type": "openai",
                "admin_key_env": "GUARD_TEST_OPENAI_KEY",
                "write_key_env": "GUARD_TEST_OPENAI_WRITE_KEY",
                "base_url": openai.url + "/v1",
                "request_timeout": "5s",
            }
        )
    g: dict[str, Any] = {"token_env": "GUARD_TEST_TOKEN", "rules": [OPENAI_RULE]}
    g.update(guard)
    return {"cache_path": str(tmp / "cache.sqlite"), "sources": sources, "guard": g}


def make_app(raw: dict[str, Any], now: Clock | None = None) -> App:
    return build_app(parse_config(raw, env=ENV), now=now or Clock(NOW))


def alert(fingerprint: str = "3f1c9a7e2b4d6f80", **labels: str) -> dict[str, Any]:
    base = {
        "alertname": "SpendAIBurnRateHigh",
        "provider": "openai",
        "account_id": LABS,
        "model": GPT4O,
        "severity": "critical",
        "team": "ml-platform",
    }
    return {
        "status": "firing",
        "labels": base | labels,
        "annotations": {"summary": "AI spend is burning fast."},
        "startsAt": "2026-11-22T09:30:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "version": "4",
            "groupKey": '{}/{}:{alertname="SpendAIBurnRateHigh"}',
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "spend-guard",
            "groupLabels": {"alertname": "SpendAIBurnRateHigh"},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": list(alerts) or [alert()],
        }
    ).encode()


def post(server: Server, body: bytes, token: str | None = TOKEN, **headers: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    h = {"Content-Type": "application/json"} | headers
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    conn.request("POST", "/-/guard/alertmanager", body=body, headers=h)
    r = conn.getresponse()
    out = r.status, r.read()
    conn.close()
    return out


def get(server: Server, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    out = r.status, r.read().decode()
    conn.close()
    return out


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def rows(app: App) -> list[dict[str, Any]]:
    return app.store.guard_actions()


# --------------------------------------------------------------------------- the endpoint


def test_no_token_or_a_wrong_one_gets_401(tmp_path: Path, openai_emu: OpenAIAdminEmulator) -> None:
    app = make_app(config(tmp_path, openai_emu, mode="enforce"))
    with running(app) as server:
        assert post(server, payload(), token=None)[0] == 401
        assert post(server, payload(), token="guard-token-Xq7pL2vN9wR5")[0] == 401
        assert post(server, payload(), token="")[0] == 401
        assert post(server, payload(), token=None, Authorization=f"Basic {TOKEN}")[0] == 401
        assert post(server, payload(), token=None, Authorization=TOKEN)[0] == 401
    app.guard.wait()
    assert rows(app) == [] and openai_emu.writes == []
    app.close()


def test_without_the_token_in_the_environment_everything_gets_401(
    tmp_path: Path, openai_emu: OpenAIAdminEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(config(tmp_path, openai_emu))  # dry_run: a missing token is not a config error
    monkeypatch.delenv("GUARD_TEST_TOKEN")
    with running(app) as server:
        assert post(server, payload())[0] == 401
        assert post(server, payload(), token="")[0] == 401
    assert rows(app) == []
    app.close()


def test_the_token_from_a_file_is_read_at_each_request(
    tmp_path: Path, openai_emu: OpenAIAdminEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """``token_file`` (a mounted secret, as docker-compose.yml mounts it): missing means 401 with a warning that
    names the file, never the token; written (with a newline, as ``echo`` leaves it) it opens the path; rotated,
    the old token is refused at once."""
    token_file = tmp_path / "secrets" / "spend-guard-token"
    app = make_app(config(tmp_path, openai_emu, token_env=None, token_file=str(token_file)))
    with running(app) as server, caplog.at_level(logging.WARNING, logger="exporter.guard"):
        assert post(server, payload())[0] == 401
        assert f"no token (guard.token_file '{token_file}' cannot be read: No such file or directory)" in caplog.text
        token_file.parent.mkdir()
        token_file.write_text("")
        assert post(server, payload(), token="")[0] == 401
        token_file.write_text(TOKEN + "\n")
        assert post(server, payload(), token="wrong-" + TOKEN)[0] == 401
        assert post(server, payload())[0] == 200
        token_file.write_text("rotated-" + TOKEN)
        assert post(server, payload(alert("aa11bb22cc33dd44")))[0] == 401
        assert post(server, payload(alert("aa11bb22cc33dd44")), token="rotated-" + TOKEN)[0] == 200
    app.guard.wait()
    assert [r["result"] for r in rows(app)] == ["dry_run", "dry_run"]
    assert TOKEN not in caplog.text
    app.close()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        json.dumps({"version": "3", "alerts": []}).encode(),
        json.dumps({"version": "4"}).encode(),
        json.dumps({"version": "4", "alerts": [{"status": "firing", "labels": {"a": "b"}}]}).encode(),
        json.dumps({"version": "4", "alerts": [{"status": "firing", "labels": {"a": 1}, "fingerprint": "x"}]}).encode(),
    ],
    ids=["not-json", "a-list", "version-3", "no-alerts", "no-fingerprint", "label-not-a-string"],
)
def test_a_body_that_is_not_a_payload_gets_400(tmp_path: Path, openai_emu: OpenAIAdminEmulator, body: bytes) -> None:
    with pytest.raises(PayloadError):
        parse_payload(body)
    app = make_app(config(tmp_path, openai_emu))
    with running(app) as server:
        status, _ = post(server, body)
        assert status == 400
    assert rows(app) == []
    app.close()


def test_other_methods_and_paths(tmp_path: Path, openai_emu: OpenAIAdminEmulator) -> None:
    app = make_app(config(tmp_path, openai_emu))
    with running(app) as server:
        status, _ = get(server, "/-/guard/alertmanager")
        assert status == 405
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("POST", "/metrics", body=b"{}", headers={"Authorization": f"Bearer {TOKEN}"})
        assert conn.getresponse().status == 405
        conn.close()
    app.close()


def test_the_bearer_token_works_with_basic_auth_on(tmp_path: Path, openai_emu: OpenAIAdminEmulator) -> None:
    """Alertmanager sends one Authorization header: the guard's path takes the bearer token, the rest basic auth."""
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    app = make_app(config(tmp_path, openai_emu))
    with running(app, web_config=web) as server:
        assert post(server, payload())[0] == 200
        assert post(server, payload(), token=None)[0] == 401
        assert get(server, "/metrics", {"Authorization": f"Bearer {TOKEN}"})[0] == 401  # the token opens nothing else
    app.guard.wait()
    app.close()


# --------------------------------------------------------------------------- OpenAI rate limits


def test_dry_run_records_and_counts_but_writes_nothing(tmp_path: Path, openai_emu: OpenAIAdminEmulator) -> None:
    app = make_app(config(tmp_path, openai_emu))
    with running(app) as server:
        status, body = post(server, payload())
        assert status == 200
        assert json.loads(body)["actions"][0]["result"] == "pending"
        app.guard.wait()
        (row,) = rows(app)
        assert row["result"] == "dry_run" and row["mode"] == "dry_run"
        assert row["target"] == f"project {LABS} model {GPT4O} ({RL})"
        change = json.loads(row["changes"])[0]
        assert change["previous"] == {"max_requests_per_1_minute": 10_000}
        assert change["new"] == {"max_requests_per_1_minute": 1}
        metrics = get(server, "/metrics")[1]
    assert openai_emu.writes == []
    assert [r.method for r in openai_emu.requests] == ["GET"]  # the plan's one read, no write call at all
    assert openai_emu.rate_limits[LABS][RL]["max_requests_per_1_minute"] == 10_000
    kw = {"rule": "stop-openai-runaway", "action": "openai_project_rate_limit"}
    assert sample(metrics, "spend_guard_actions_total", result="dry_run", **kw) == 1
    assert sample(metrics, "spend_guard_actions_total", result="applied", **kw) == 0
    assert "spend_guard_action_active{" not in metrics
    app.close()


def test_enforce_writes_once_for_the_alerts_project_and_model(tmp_path: Path, openai_emu: OpenAIAdminEmulator) -> None:
    app = make_app(config(tmp_path, openai_emu, mode="enforce"))
    with running(app) as server:
        assert post(server, payload())[0] == 200
        app.guard.wait()
        metrics = get(server, "/metrics")[1]
    (write,) = openai_emu.writes
    want = ("POST", RL_PATH, {"max_requests_per_1_minute": 1}, "write")
    assert (write.method, write.path, write.body, write.key) == want
    assert openai_emu.rate_limits[LABS][RL]["max_requests_per_1_minute"] == 1
    assert openai_emu.rate_limits[SEARCH][RL]["max_requests_per_1_minute"] == 10_000  # other projects untouched
    (row,) = rows(app)
    assert row["result"] == "applied" and row["error"] is None
    kw = {"rule": "stop-openai-runaway", "action": "openai_project_rate_limit"}
    assert sample(metrics, "spend_guard_actions_total", result="applied", **kw) == 1
    assert sample(metrics, "spend_guard_action_active", provider="openai", account_id=LABS, **kw) == 1
    app.close()


def test_a_resolved_alert_or_one_no_rule_matches_does_nothing(tmp_path: Path, openai_emu: OpenAIAdminEmulator) -> None:
    loose = dict(OPENAI_RULE, match={"alertname": "SpendAIBurnRateHigh"})  # no provider in its match
    app = make_app(config(tmp_path, openai_emu, mode="enforce", rules=[loose]))
    resolved = alert() | {"status": "resolved"}
    with running(app) as server:
        status, body = post(server, payload(resolved, alert("0000aaaa", provider="anthropic")))
        assert status == 200 and json.loads(body) == {"actions": []}
    assert rows(app) == [] and openai_emu.writes == []
    app.close()


def test_a_duplicate_and_two_concurrent_deliveries_change_nothing_more(
    tmp_path: Path, openai_emu: OpenAIAdminEmulator
) -> None:
    """Both members of an HA pair deliver at the same moment, then Alertmanager re-sends: one write."""
    app = make_app(config(tmp_path, openai_emu, mode="enforce"))
    with running(app) as server:
        barrier = threading.Barrier(2)
        statuses: list[int] = []

        def deliver() -> None:
            barrier.wait()
            statuses.append(post(server, payload())[0])

        threads = [threading.Thread(target=deliver) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        app.guard.wait()
        assert post(server, payload())[0] == 200  # the re-send, after the action ran
        app.guard.wait()
        metrics = get(server, "/metrics")[1]
    assert statuses == [200, 200]
    assert len(openai_emu.writes) == 1
    assert sorted(r["result"] for r in rows(app)) == ["applied", "duplicate", "duplicate"]
    kw = {"rule": "stop-openai-runaway", "action": "openai_project_rate_limit"}
    assert sample(metrics, "spend_guard_actions_total", result="duplicate", **kw) == 2
    app.close()


def test_max_actions_per_day_holds_across_rules_per_utc_day(tmp_path: Path, openai_emu: OpenAIAdminEmulator) -> None:
    clock = Clock(dt.datetime(2026, 11, 22, 23, 50, tzinfo=dt.UTC))
    app = make_app(config(tmp_path, openai_emu, mode="enforce", max_actions_per_day=2), clock)
    with running(app) as server:
        post(server, payload(alert("fp-labs"), alert("fp-search", account_id=SEARCH)))
        post(server, payload(alert("fp-sandbox", account_id="proj_SANDBOXk2m4")))
        app.guard.wait()
        assert [r["result"] for r in rows(app)] == ["applied", "applied", "limited"]
        assert len(openai_emu.writes) == 2
        post(server, payload(alert("fp-sandbox", account_id="proj_SANDBOXk2m4")))  # still limited today
        clock.advance(minutes=15)  # the next UTC day
        post(server, payload(alert("fp-sandbox", account_id="proj_SANDBOXk2m4")))
        app.guard.wait()
        metrics = get(server, "/metrics")[1]
    assert [r["result"] for r in rows(app)] == ["applied", "applied", "limited", "limited", "applied"]
    assert [w.path.split("/")[4] for w in openai_emu.writes] == [LABS, SEARCH, "proj_SANDBOXk2m4"]
    kw = {"rule": "stop-openai-runaway", "action": "openai_project_rate_limit"}
    assert sample(metrics, "spend_guard_actions_total", result="limited", **kw) == 2
    app.close()


def test_undo_restores_the_previous_values_once(
    tmp_path: Path, openai_emu: OpenAIAdminEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = config(tmp_path, openai_emu, mode="enforce")
    app = make_app(raw)
    with running(app) as server:
        post(server, payload())
        app.guard.wait()
    app.close()
    assert openai_emu.rate_limits[LABS][RL]["max_requests_per_1_minute"] == 1
    cfg_file = tmp_path / "config.yml"
    cfg_file.write_text(json.dumps(raw))  # JSON is YAML

    r = cli_in_process(capsys, "guard", "undo", "1", "--config.file", str(cfg_file))
    assert r.returncode == 0 and "max_requests_per_1_minute=10000" in r.stdout
    assert openai_emu.rate_limits[LABS][RL]["max_requests_per_1_minute"] == 10_000
    assert [(w.path, w.body, w.key) for w in openai_emu.writes] == [
        (RL_PATH, {"max_requests_per_1_minute": 1}, "write"),
        (RL_PATH, {"max_requests_per_1_minute": 10_000}, "write"),
    ]
    r = cli_in_process(capsys, "guard", "undo", "1", "--config.file", str(cfg_file))  # twice: harmless
    assert r.returncode == 0 and "already undone" in r.stdout
    assert len(openai_emu.writes) == 2
    r = cli_in_process(capsys, "guard", "undo", "7", "--config.file", str(cfg_file))
    assert r.returncode == 1 and "no guard action 7" in r.stderr

    r = cli_in_process(capsys, "guard", "list", "--config.file", str(cfg_file))
    assert r.returncode == 0
    header, line = r.stdout.splitlines()[:2]
    assert header.split() == ["ID", "TIME", "RULE", "ACTION", "FINGERPRINT", "TARGET", "RESULT", "UNDONE"]
    assert line.startswith("1  ") and "stop-openai-runaway" in line and "applied" in line and "3f1c9a7e2b4d6f80" in line
    assert not line.rstrip().endswith("-")  # the undo time

    app = make_app(raw)  # a restarted exporter: the counter and the active flag come from the record
    text = app.exposition()
    kw = {"rule": "stop-openai-runaway", "action": "openai_project_rate_limit"}
    assert sample(text, "spend_guard_actions_total", result="applied", **kw) == 1
    assert "spend_guard_action_active{" not in text
    app.close()


def test_undo_of_a_dry_run_says_it_changed_nothing(tmp_path: Path, openai_emu: OpenAIAdminEmulator) -> None:
    app = make_app(config(tmp_path, openai_emu))
    with running(app) as server:
        post(server, payload())
        app.guard.wait()
    ok, message = app.guard.undo(1)
    assert not ok and "dry run" in message
    assert openai_emu.writes == []
    app.close()


def test_a_failing_action_is_recorded_and_metrics_still_serve(
    tmp_path: Path, openai_emu: OpenAIAdminEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    openai_emu.inject(Fault("500", times=-1, path_contains="/rate_limits/"))
    app = make_app(config(tmp_path, openai_emu, mode="enforce"))
    with running(app) as server, caplog.at_level(logging.INFO):
        assert post(server, payload())[0] == 200
        app.guard.wait()
        status, metrics = get(server, "/metrics")
        assert get(server, "/-/ready")[0] in (200, 503)
    assert status == 200
    (row,) = rows(app)
    assert row["result"] == "failed" and "HTTP 500" in row["error"]
    assert json.loads(row["changes"]) == []
    assert [r.method for r in openai_emu.requests].count("POST") == 2  # the SDK's one retry, then failed
    kw = {"rule": "stop-openai-runaway", "action": "openai_project_rate_limit"}
    assert sample(metrics, "spend_guard_actions_total", result="failed", **kw) == 1
    assert "spend_guard_action_active{" not in metrics
    ok, message = app.guard.undo(row["id"])
    assert not ok and "changed nothing" in message
    assert "failed" in caplog.text
    app.close()


def test_the_usage_key_never_writes(tmp_path: Path, openai_emu: OpenAIAdminEmulator) -> None:
    """A write key that is in fact the usage key: the emulator refuses the write (403) and says so."""
    raw = config(tmp_path, openai_emu, mode="enforce")
    raw["sources"][0]["write_key_env"] = "GUARD_TEST_OPENAI_KEY"
    app = make_app(raw)
    with running(app) as server:
        post(server, payload())
        app.guard.wait()
    (row,) = rows(app)
    assert row["result"] == "failed" and "HTTP 403" in row["error"]
    assert [w.key for w in openai_emu.writes] == ["admin"]
    app.close()


def test_secrets_never_show(
    tmp_path: Path,
    openai_emu: OpenAIAdminEmulator,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The emulator echoes a wrong key in its 401 (the real API masks it): the record, logs and outputs do not."""
    wrong = "sk-admin-WRONGwriteKEY-0123456789abcdef"
    monkeypatch.setenv("GUARD_TEST_OPENAI_WRITE_KEY", wrong)
    raw = config(tmp_path, openai_emu, mode="enforce")
    app = make_app(raw)
    with caplog.at_level(logging.DEBUG), running(app, raw=raw) as server:
        post(server, payload())
        post(server, payload(), token="wrong-" + TOKEN)
        app.guard.wait()
        seen = [get(server, p)[1] for p in ("/metrics", "/status", "/config", "/")]
    app.close()
    (row,) = rows(make_app(raw))
    assert row["result"] == "failed" and "HTTP 401" in row["error"]
    cfg_file = tmp_path / "config.yml"
    cfg_file.write_text(json.dumps(raw))
    r = cli_in_process(capsys, "guard", "list", "--config.file", str(cfg_file))
    assert r.returncode == 0 and "HTTP 401" in r.stdout
    everything = "\n".join([*seen, caplog.text, r.stdout, r.stderr, json.dumps(row)])
    for secret in (*SECRETS, wrong):
        assert secret not in everything


# --------------------------------------------------------------------------- Anthropic keys


def anthropic_config(tmp: Path, emu: AnthropicAdminEmulator, **guard: Any) -> dict[str, Any]:
    raw = config(tmp, None, rules=[ANTHROPIC_RULE], **guard)
    raw["sources"] = [
        {
            "name": "anthropic",
            "type": "anthropic",
            "admin_key_env": "GUARD_TEST_ANTHROPIC_KEY",
            "write_key_env": "GUARD_TEST_ANTHROPIC_WRITE_KEY",
            "base_url": emu.url,
            "request_timeout": "5s",
        }
    ]
    return raw


# The emulator's dataset has whole hours: the minute bucket at an hour's start holds that hour's usage. A
# guard clock just after 08:00 sees the 08:00 bucket in its last 15 minutes.
GUARD_NOW = dt.datetime(2026, 11, 22, 8, 5, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("workspace", "key"), [(RESEARCH, "apikey_01R1"), ("default", "apikey_01D1")], ids=["workspace", "default"]
)
def test_anthropic_keys_burning_the_model_go_inactive_and_back(
    tmp_path: Path, anthropic_emu: AnthropicAdminEmulator, workspace: str, key: str
) -> None:
    app = make_app(anthropic_config(tmp_path, anthropic_emu, mode="enforce"), Clock(GUARD_NOW))
    labels = {"provider": "anthropic", "account_id": workspace, "model": SONNET}
    with running(app) as server:
        assert post(server, payload(alert("fp-claude", **labels)))[0] == 200
        app.guard.wait()
        metrics = get(server, "/metrics")[1]
    (row,) = rows(app)
    assert row["result"] == "applied", row["error"]
    (write,) = anthropic_emu.writes
    assert (write.method, write.path, write.body, write.key) == (
        "POST",
        f"/v1/organizations/api_keys/{key}",
        {"status": "inactive"},
        "write",
    )
    assert anthropic_emu.api_keys[key]["status"] == "inactive"
    assert [k for k, v in anthropic_emu.api_keys.items() if v["status"] != "active"] == [key]
    (usage,) = [r for r in anthropic_emu.requests if r.path.endswith("/usage_report/messages")]
    assert usage.q("bucket_width") == "1m"
    assert usage.qlist("models") == [SONNET]
    assert usage.qlist("workspace_ids") == ([] if workspace == "default" else [workspace])
    kw = {"rule": "stop-anthropic-runaway", "action": "anthropic_api_key_status"}
    assert sample(metrics, "spend_guard_action_active", provider="anthropic", account_id=workspace, **kw) == 1

    ok, message = app.guard.undo(row["id"])
    assert ok, message
    assert anthropic_emu.api_keys[key]["status"] == "active"
    assert [w.body for w in anthropic_emu.writes] == [{"status": "inactive"}, {"status": "active"}]
    app.close()


def test_anthropic_with_no_key_burning_fails_and_changes_nothing(
    tmp_path: Path, anthropic_emu: AnthropicAdminEmulator
) -> None:
    app = make_app(anthropic_config(tmp_path, anthropic_emu, mode="enforce"), Clock(GUARD_NOW))
    labels = {"provider": "anthropic", "account_id": RESEARCH, "model": "claude-3-5-haiku-20241022"}
    with running(app) as server:
        post(server, payload(alert("fp-haiku", **labels)))
        app.guard.wait()
    (row,) = rows(app)
    assert row["result"] == "failed" and "no API key used" in row["error"]
    assert anthropic_emu.writes == []
    app.close()


# --------------------------------------------------------------------------- webhook


class Receiver(Emulator):
    name = "hook"

    def handle(self, request: Request) -> Response:
        return Response(204)


def test_webhook_posts_the_alert_and_cannot_be_undone(
    tmp_path: Path, openai_emu: OpenAIAdminEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    rule = {
        "name": "hard-cap-hook",
        "match": {"alertname": "SpendBudgetExceeded", "budget": "ai-platform"},
        "action": "webhook",
        "params": {"url_env": "GUARD_TEST_HOOK_URL", "timeout": "5s"},
    }
    with Receiver() as hook:
        monkeypatch.setenv("GUARD_TEST_HOOK_URL", hook.url + "/hard-cap?token=hook-secret-77")
        app = make_app(config(tmp_path, None, mode="enforce", rules=[rule]))
        budget_alert = alert("fp-budget", alertname="SpendBudgetExceeded", budget="ai-platform")
        with running(app) as server:
            post(server, payload(budget_alert))
            post(server, payload(budget_alert))
            app.guard.wait()
        (req,) = hook.requests
    assert req.method == "POST" and req.path == "/hard-cap"
    sent = req.json()
    assert sent["rule"] == "hard-cap-hook" and sent["alert"]["labels"]["budget"] == "ai-platform"
    assert sent["alert"]["fingerprint"] == "fp-budget"
    first = rows(app)[0]
    assert first["result"] == "applied" and "hook-secret-77" not in json.dumps(first)
    ok, message = app.guard.undo(first["id"])
    assert not ok and "webhook" in message
    app.close()


# --------------------------------------------------------------------------- the claim


def test_the_claim_holds_across_two_connections_to_the_cache(tmp_path: Path) -> None:
    """Two processes' stores on one file (an exporter and a second one sharing the cache): one claim wins."""
    from exporter.store import Store

    stores = [Store(tmp_path / "cache.sqlite") for _ in range(2)]
    row = {
        "created_at": NOW.timestamp(),
        "day": NOW.date().isoformat(),
        "rule": "r",
        "action": "webhook",
        "mode": "enforce",
        "fingerprint": "fp",
        "labels": "{}",
        "provider": "",
        "account_id": "",
        "model": "",
    }
    barrier = threading.Barrier(8)
    results: list[str] = []

    def claim(store: Store) -> None:
        barrier.wait()
        results.append(store.guard_claim(row, max_per_day=5)[1])

    threads = [threading.Thread(target=claim, args=(stores[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["duplicate"] * 7 + ["pending"]
    assert [r["result"] for r in stores[0].guard_actions()].count("pending") == 1
    for s in stores:
        s.close()


def test_anthropic_dry_run_names_the_keys_and_writes_nothing(
    tmp_path: Path, anthropic_emu: AnthropicAdminEmulator
) -> None:
    app = make_app(anthropic_config(tmp_path, anthropic_emu), Clock(GUARD_NOW))
    labels = {"provider": "anthropic", "account_id": RESEARCH, "model": SONNET}
    with running(app) as server:
        post(server, payload(alert("fp-claude", **labels)))
        app.guard.wait()
    (row,) = rows(app)
    assert row["result"] == "dry_run"
    assert [c["api_key_id"] for c in json.loads(row["changes"])] == ["apikey_01R1"]
    assert anthropic_emu.writes == [] and all(r.method == "GET" for r in anthropic_emu.requests)
    assert anthropic_emu.api_keys["apikey_01R1"]["status"] == "active"
    app.close()


def test_an_action_interrupted_by_a_stop_is_failed_and_undoable(
    tmp_path: Path, openai_emu: OpenAIAdminEmulator
) -> None:
    """The exporter stopped between the write and its result: the next start records it failed, undo still works."""
    raw = config(tmp_path, openai_emu, mode="enforce")
    app = make_app(raw)
    row = {
        "created_at": NOW.timestamp(),
        "day": NOW.date().isoformat(),
        "rule": "stop-openai-runaway",
        "action": "openai_project_rate_limit",
        "mode": "enforce",
        "fingerprint": "fp-crash",
        "labels": json.dumps(alert()["labels"]),
        "provider": "openai",
        "account_id": LABS,
        "model": GPT4O,
    }
    action_id, result = app.store.guard_claim(row, 5)
    assert result == "pending"
    change = {
        "kind": "openai_rate_limit",
        "project_id": LABS,
        "rate_limit_id": RL,
        "model": GPT4O,
        "previous": {"max_requests_per_1_minute": 10_000},
        "new": {"max_requests_per_1_minute": 1},
    }
    app.store.guard_update(action_id, changes=json.dumps([change]))  # the intent, recorded before the write
    openai_emu.rate_limits[LABS][RL]["max_requests_per_1_minute"] = 1  # the write that happened
    app.close()

    app = make_app(raw)
    app.guard.recover()
    (after,) = rows(app)
    assert after["result"] == "failed" and "interrupted" in after["error"]
    ok, message = app.guard.undo(action_id)
    assert ok, message
    assert openai_emu.rate_limits[LABS][RL]["max_requests_per_1_minute"] == 10_000
    app.close()


def test_a_failing_webhook_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rule = {
        "name": "hard-cap-hook",
        "match": {"alertname": "SpendBudgetExceeded"},
        "action": "webhook",
        "params": {"url_env": "GUARD_TEST_HOOK_URL"},
    }
    with Receiver() as hook:
        hook.inject(Fault("503"))
        monkeypatch.setenv("GUARD_TEST_HOOK_URL", hook.url + "/hard-cap")
        app = make_app(config(tmp_path, None, mode="enforce", rules=[rule]))
        with running(app) as server:
            post(server, payload(alert("fp-budget", alertname="SpendBudgetExceeded")))
            app.guard.wait()
            assert get(server, "/metrics")[0] == 200
    (row,) = rows(app)
    assert row["result"] == "failed" and row["error"] == "the webhook answered HTTP 503"
    app.close()


def test_a_write_whose_answer_never_came_is_recorded_as_perhaps_made(
    tmp_path: Path, openai_emu: OpenAIAdminEmulator
) -> None:
    """A dropped connection after the request was sent: the change may have been made, so undo must restore it."""
    openai_emu.inject(Fault("reset", times=-1, path_contains=RL_PATH))
    app = make_app(config(tmp_path, openai_emu, mode="enforce"))
    with running(app) as server:
        post(server, payload())
        app.guard.wait()
        metrics = get(server, "/metrics")[1]
    (row,) = rows(app)
    assert row["result"] == "failed" and "connection" in row["error"]
    assert [c["rate_limit_id"] for c in json.loads(row["changes"])] == [RL]
    kw = {"rule": "stop-openai-runaway", "action": "openai_project_rate_limit"}
    assert sample(metrics, "spend_guard_action_active", provider="openai", account_id=LABS, **kw) == 1
    openai_emu.clear_faults()
    ok, message = app.guard.undo(row["id"])
    assert ok, message
    assert openai_emu.writes[-1].body == {"max_requests_per_1_minute": 10_000}
    app.close()


def test_random_bodies_get_400_or_200_and_metrics_serve_on(tmp_path: Path, openai_emu: OpenAIAdminEmulator) -> None:
    """Garbage and near-payloads with the right token: never a 5xx, never an action from a non-payload."""
    import random

    rng = random.Random(20261207)
    good = json.loads(payload())

    def mutate() -> bytes:
        kind = rng.randrange(5)
        if kind == 0:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        doc = json.loads(json.dumps(good))
        if kind == 1:
            doc["alerts"][0][rng.choice(["labels", "status", "fingerprint"])] = rng.choice([None, 1, [], {}, ""])
        elif kind == 2:
            doc["version"] = rng.choice(["3", 4, None, "4 "])
        elif kind == 3:
            doc["alerts"] = rng.choice([None, {}, "x", [None], [[]]])
        else:
            doc["alerts"][0]["labels"] = {"alertname": rng.choice(["x", "SpendAIBurnRateHigh"]), "provider": "openai"}
        return json.dumps(doc).encode()

    app = make_app(config(tmp_path, openai_emu))  # dry run: a matching near-payload only plans
    with running(app) as server:
        statuses = {post(server, mutate())[0] for _ in range(150)}
        assert statuses <= {200, 400}
        app.guard.wait()
        assert get(server, "/metrics")[0] == 200
    assert openai_emu.writes == []
    app.close()


def test_a_new_firing_acts_again_only_once_the_first_action_was_undone(
    tmp_path: Path, openai_emu: OpenAIAdminEmulator
) -> None:
    """Same labels (fingerprint), a later startsAt: the alert resolved and fired again. While the first action
    is in force that is still a duplicate; once a person undid it, the new firing acts (once)."""
    clock = Clock(NOW)
    app = make_app(config(tmp_path, openai_emu, mode="enforce"), clock)
    later = alert() | {"startsAt": "2026-11-22T11:02:00.123456789Z"}
    with running(app) as server:
        post(server, payload())
        app.guard.wait()
        clock.set(dt.datetime(2026, 11, 22, 11, 5, tzinfo=dt.UTC))
        post(server, payload(later))  # the first action is in force
        app.guard.wait()
        assert app.guard.undo(1)[0]
        post(server, payload())  # a re-send of the first firing, after the undo
        post(server, payload(later))
        post(server, payload(later))  # and the new firing's re-send
        app.guard.wait()
    assert [r["result"] for r in rows(app)] == ["applied", "duplicate", "duplicate", "applied", "duplicate"]
    assert [w.body["max_requests_per_1_minute"] for w in openai_emu.writes] == [1, 10_000, 1]
    app.close()


def test_the_commands_open_a_running_exporters_cache_without_touching_its_state(tmp_path: Path) -> None:
    """guard list/undo open the file shared: the owner's clean-close flag stays as the owner left it."""
    from exporter.store import Store

    owner = Store(tmp_path / "cache.sqlite")
    beside = Store(tmp_path / "cache.sqlite", shared=True)
    assert beside.guard_actions() == []
    beside.close()
    assert owner.query("SELECT value FROM meta WHERE key='closed_cleanly'") == [("0",)]
    owner.close()
