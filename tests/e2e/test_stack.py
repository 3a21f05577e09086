"""End to end: the exporter on demo data, a real Prometheus with our rules, a real Alertmanager with our config.

Alertmanager delivers to a local HTTP receiver that speaks for PagerDuty, Slack and the generic webhook. The
test's copies of the configs differ from the shipped ones only in URLs, secret-file locations and intervals
(asserted below), so what is tested is the shipped routing, grouping, inhibition, templates and rules.

The runaway (issue 14): beside the demo's FOCUS files the exporter has an ``openai`` source on the OpenAI Admin
API emulator, whose project Labs has burned $475 an hour for half an hour against its usual $10 (so the first
burn refresh already shows the loop), and a guard in ``mode: enforce``. SpendAIBurnRateHigh pages the team, and
Alertmanager's guard receiver reaches the exporter through the receiver (which records the payload, so the
test can deliver it again), whose guard sets the project's rate limit for the model at the emulator. A second
exporter, in ``dry_run``, is given the same payload.

Everything runs on the real clock: Prometheus and Alertmanager are Go programs, which libfaketime cannot move,
and the exporter must share their clock (the staleness alerts and panels subtract its timestamps from
Prometheus's ``time()``). The demo data is written relative to that clock; ``demo_clock`` and
``this_months_budget_spend`` make what is asserted hold on every date and at every time of day.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.e2e.stack import (
    AM_INTERVALS,
    AM_OVERRIDABLE,
    ROOT,
    Query,
    Receiver,
    alertmanager_argv,
    alertmanager_config,
    dashboard_queries,
    load_dashboards,
    post,
    prometheus_argv,
    runaway_emulator,
    stop_processes,
    strip_keys,
    substitute,
    tool,
)
from tests.emulators.ai_dataset import GPT4O, LABS
from tests.emulators.openai_admin import DEFAULT_ADMIN_KEY, DEFAULT_WRITE_KEY, OpenAIAdminEmulator

pytestmark = pytest.mark.e2e

T = TypeVar("T")
WAIT = 60.0  # upper bound of every wait; the whole module normally takes well under a minute
MIDNIGHT_MARGIN = dt.timedelta(minutes=5)  # the module starts at least this long before 00:00 UTC, or after it
FOR = "3s"  # every alert's for:, shortened
GUARD_TOKEN = "e2e-guard-token-0123456789abcdef"
ENV = {
    "SPEND_E2E_OPENAI_ADMIN_KEY": DEFAULT_ADMIN_KEY,
    "SPEND_E2E_OPENAI_WRITE_KEY": DEFAULT_WRITE_KEY,
    "SPEND_E2E_GUARD_TOKEN": GUARD_TOKEN,
}
RUNAWAY_TEAM = "search"  # Labs is attributed to a team with a pager and no budget of its own
# Every runbook_url is this + "#" + the alert's name in lower case (prometheus/runbook_base.py).
RUNBOOK_BASE = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Runbook"]
GUARD_RULE = {
    "name": "stop-openai-runaway",
    "match": {"alertname": "SpendAIBurnRateHigh", "provider": "openai"},
    "action": "openai_project_rate_limit",
    "params": {"max_requests_per_1_minute": 1},
}


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, fn: Callable[[], T | None], logs: list[Path] | None = None, timeout: float = WAIT) -> T:
    """Poll ``fn`` until it returns something truthy; fail with the processes' logs after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            got = fn()
            if got:
                return got
        except (OSError, ValueError, KeyError) as e:
            last = e
        time.sleep(0.2)
    tails = "\n".join(
        f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-25:]) for p in logs or []
    )
    pytest.fail(f"timed out waiting for {what} (last error: {last!r})\n{tails}")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def post_json(url: str, body: Any) -> None:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        r.read()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


# --------------------------------------------------------------------------- config overrides


def rules_copy(src: Path, dst: Path) -> None:
    """The shipped rules with every for: shortened (a for: of 0m kept), so the test need not wait 15 minutes."""
    text = re.sub(r"(?m)^(\s+for: )(?!0m$)\S+$", rf"\g<1>{FOR}", src.read_text())
    dst.write_text(text)
    a, b = yaml.safe_load(src.read_text()), yaml.safe_load(text)
    assert strip_keys(a, {"for"}) == strip_keys(b, {"for"})


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    exporter: str
    prometheus: str
    alertmanager: str
    receiver: Receiver
    routing_keys: dict[str, str]
    logs: list[Path]
    emulator: OpenAIAdminEmulator
    dry_run_exporter: str  # the same openai source, its guard in dry_run, not scraped

    def query(self, expr: str, at: dt.datetime | None = None) -> list[dict[str, Any]]:
        params = {"query": expr} | ({"time": f"{at.timestamp():.3f}"} if at else {})
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode(params)
        res = get_json(url)
        assert res["status"] == "success", res
        return list(res["data"]["result"])

    def wait(self, what: str, fn: Callable[[], T | None]) -> T:
        return wait_for(what, fn, self.logs)


def _load_demo_generator() -> Any:
    spec = importlib.util.spec_from_file_location("generate_demo", ROOT / "examples" / "generate_demo.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def demo_clock() -> dt.datetime:
    """The real time to write the demo data for, at least ``MIDNIGHT_MARGIN`` before the next 00:00 UTC.

    What the exporter makes of the data moves at midnight: the newest complete day becomes today (the AI rows
    have hours of it), so the demo's anomaly, yesterday, is no longer the day SpendDailyAnomaly looks at; on
    the 1st of a month, month to date starts again and the budgets go back to 0. A module run across midnight
    would see either happen part way through, so close to midnight it waits for the new day to begin.
    """
    now = dt.datetime.now(dt.UTC)
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    if midnight - now < MIDNIGHT_MARGIN:
        time.sleep((midnight - now).total_seconds() + 1)
        now = dt.datetime.now(dt.UTC)
    return now


def this_months_budget_spend(demo: Any, data: Path, now: dt.datetime) -> None:
    """This month's spend for the demo budgets, where examples/generate_demo.py writes none (on the 1st).

    The generator writes the clouds' days up to yesterday and the AI hours up to the last complete one, and
    sizes this month's part of them to the budgets: data-platform over its limit, ai-platform past its
    warning. On the 1st of a month no cloud day is in this month (data-platform would read $0), and before
    01:00 no AI hour either (nor would ai-platform). That spend is then written here, sized as the generator
    sizes it, as a row for today in a series of each budget: month to date counts today's rows, while the
    newest complete day stays yesterday, the anomaly's.
    """
    start = dt.datetime.combine(now.date(), dt.time(), tzinfo=dt.UTC)

    def row(usd: float, **cols: str) -> dict[str, str]:
        return {
            **dict.fromkeys(demo.HEADER, ""),
            "BillingCurrency": "USD",
            "ChargeCategory": "Usage",
            "ChargePeriodStart": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "ChargePeriodEnd": (start + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "BilledCost": f"{usd:.6f}",
            "EffectiveCost": f"{usd:.6f}",
            **cols,
        }

    # series and accounts as the generator writes them (an account with a second name would break the panels
    # that join spend_account_info)
    aws = {"ProviderName": "AWS", "BillingAccountId": "111111111111", "BillingAccountName": "prod"}
    aws |= {"SubAccountId": "111111111111", "SubAccountName": "prod", "ServiceName": "Amazon RDS"}
    openai = {"ProviderName": "OpenAI", "BillingAccountId": "org-openai", "BillingAccountName": "OpenAI organisation"}
    openai |= {"SubAccountId": "proj_ml", "SubAccountName": "ML Platform", "ServiceName": "chat", "x_Model": "gpt-4o"}
    rows = []
    if now.day == 1:  # yesterday, the generator's newest cloud day, is last month's
        usd = demo.DATA_BUDGET_RATIO * demo.DATA_BUDGET_USD
        rows.append(row(usd, Tags=json.dumps({"team": "data"}), **aws))
    if now.day == 1 and now.hour == 0:  # and so is its newest AI hour, the last complete one
        usd = demo.AI_BUDGET_RATIO * demo.AI_BUDGET_USD
        rows.append(row(usd, **openai))  # proj_ml: team ml-platform by the demo config's attribution rules
    if rows:
        with open(data / "this-month.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=demo.HEADER)
            w.writeheader()
            w.writerows(rows)


def with_runaway(cfg: dict[str, Any], emulator_url: str, mode: str) -> dict[str, Any]:
    """``cfg`` with the runaway's ``openai`` source (on the emulator, with the shipped burn defaults), project
    Labs attributed to ``RUNAWAY_TEAM``, and a guard in ``mode`` with the rule of docs/guard.md."""
    cfg = copy.deepcopy(cfg)
    cfg["sources"].append(
        {
            "name": "openai-runaway",
            "type": "openai",
            "admin_key_env": "SPEND_E2E_OPENAI_ADMIN_KEY",
            "write_key_env": "SPEND_E2E_OPENAI_WRITE_KEY",
            "base_url": emulator_url + "/v1",
        }
    )
    rule = {"match": {"provider": "openai", "account_id": LABS}, "team": RUNAWAY_TEAM}
    cfg.setdefault("attribution", {}).setdefault("rules", []).append(rule)
    cfg["guard"] = {"mode": mode, "token_env": "SPEND_E2E_GUARD_TOKEN", "rules": [GUARD_RULE]}
    return cfg


def _exporter_argv() -> list[str]:
    script = Path(sys.executable).with_name("spend-exporter")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from exporter.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin = tool("prometheus")
    alertmanager_bin = tool("prometheus-alertmanager", "alertmanager")
    tmp = tmp_path_factory.mktemp("stack")
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    stoppers: list[Callable[[], None]] = []

    def start(name: str, argv: list[str], cwd: Path) -> None:
        log = tmp / f"{name}.log"
        logs.append(log)
        with open(log, "wb") as out:
            procs.append(
                subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **ENV})
            )

    try:
        # the exporter on the demo, as `make run` does (relative paths from its working directory), with the
        # runaway's openai source and the guard added
        work = tmp / "exporter"
        demo, now = _load_demo_generator(), demo_clock()
        demo.generate(work / "examples" / "data", now=now)
        this_months_budget_spend(demo, work / "examples" / "data", now)
        emulator = runaway_emulator(
            now, now - dt.timedelta(minutes=30), lambda: dt.datetime.now(dt.UTC), write_key=DEFAULT_WRITE_KEY
        )
        emulator.start()
        stoppers.append(emulator.stop)
        demo_cfg = yaml.safe_load((ROOT / "examples" / "demo-config.yml").read_text())
        (work / "demo-config.yml").write_text(yaml.safe_dump(with_runaway(demo_cfg, emulator.url, "enforce")))
        exp_port = free_port()
        start(
            "exporter",
            [
                *_exporter_argv(),
                "run",
                "--config.file",
                "demo-config.yml",
                "--web.listen-address",
                f"127.0.0.1:{exp_port}",
            ],
            work,
        )
        exporter = f"http://127.0.0.1:{exp_port}"

        exporter_dry = tmp / "exporter-dry-run"
        exporter_dry.mkdir()
        dry_cfg = with_runaway({"cache_path": "cache.sqlite", "sources": []}, emulator.url, "dry_run")
        (exporter_dry / "config.yml").write_text(yaml.safe_dump(dry_cfg))
        dry_port = free_port()
        start(
            "exporter-dry-run",
            [*_exporter_argv(), "run", "--config.file", "config.yml", "--web.listen-address", f"127.0.0.1:{dry_port}"],
            exporter_dry,
        )

        # the receiver passes the guard's webhook on to the exporter
        receiver = Receiver(free_port(), forward_to=exporter)
        stoppers.append(receiver.start().shutdown)

        # alertmanager with our config
        am_dir = tmp / "alertmanager"
        am_dir.mkdir()
        am_cfg, keys = alertmanager_config(
            am_dir, receiver.port, guard=(f"http://127.0.0.1:{receiver.port}/forward", GUARD_TOKEN)
        )
        (am_dir / "alertmanager.yml").write_text(yaml.safe_dump(am_cfg, sort_keys=False))
        am_port = free_port()
        start("alertmanager", alertmanager_argv(alertmanager_bin, am_dir, am_port), am_dir)
        alertmanager = f"http://127.0.0.1:{am_port}"

        # prometheus with our rules, evaluating and scraping every second
        prom_dir = tmp / "prometheus"
        (prom_dir / "rules").mkdir(parents=True)
        for f in (ROOT / "prometheus" / "rules").glob("*.yml"):
            rules_copy(f, prom_dir / "rules" / f.name)
        prom_port = free_port()
        prom_cfg = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules/*.yml"],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
            "scrape_configs": [
                {"job_name": "spend-exporter", "static_configs": [{"targets": [f"127.0.0.1:{exp_port}"]}]}
            ],
        }
        (prom_dir / "prometheus.yml").write_text(yaml.safe_dump(prom_cfg))
        wait_for("the exporter to be ready", lambda: http_ok(f"{exporter}/-/ready"), logs)
        start(
            "prometheus",
            prometheus_argv(prometheus_bin, prom_dir, prom_port, "--rules.alert.resend-delay=1s"),
            prom_dir,
        )
        prometheus = f"http://127.0.0.1:{prom_port}"
        wait_for("alertmanager to be ready", lambda: http_ok(f"{alertmanager}/-/ready"), logs)
        wait_for("prometheus to be ready", lambda: http_ok(f"{prometheus}/-/ready"), logs)
        dry_run = f"http://127.0.0.1:{dry_port}"
        wait_for("the dry-run exporter to be ready", lambda: http_ok(f"{dry_run}/-/ready"), logs)
        yield Stack(exporter, prometheus, alertmanager, receiver, keys, logs, emulator, dry_run)
    finally:
        stop_processes(procs)
        for stop in stoppers:
            stop()


# --------------------------------------------------------------------------- the test's own overrides


def test_only_urls_secret_files_and_intervals_are_overridden(tmp_path: Path) -> None:
    shipped = yaml.safe_load((ROOT / "prometheus" / "alertmanager.yml").read_text())
    cfg, _ = alertmanager_config(tmp_path, 1, guard=("http://127.0.0.1:2/forward", GUARD_TOKEN))
    allowed = AM_OVERRIDABLE | AM_INTERVALS
    assert strip_keys(cfg, allowed) == strip_keys(shipped, allowed)
    assert cfg["inhibit_rules"] == shipped["inhibit_rules"]
    assert cfg["route"]["group_by"] == shipped["route"]["group_by"]


# --------------------------------------------------------------------------- alerts


def _labels_of(detail: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in detail.split())


def test_budget_exceeded_reaches_the_teams_chat_and_pages_nobody(stack: Stack) -> None:
    # the demo sizes data-platform (team data) at 110% of its limit; money already spent is a ticket, not a page
    msgs = stack.wait(
        "SpendBudgetExceeded for data-platform in #data-spend",
        lambda: _slack(stack, "#data-spend", "SpendBudgetExceeded data-platform"),
    )
    att = msgs[0]["attachments"][0]
    assert att["title"] == "[FIRING:1] SpendBudgetExceeded data-platform (team data)"
    assert re.fullmatch(
        r"Budget data-platform \(team data\) has spent \$3\d{3}\.\d\d this month, "
        r"against its \$3000\.00 limit \(1\d\d%\)\.\n",
        att["text"],
    ), att["text"]
    assert att["title_link"] == f"{RUNBOOK_BASE}#spendbudgetexceeded"
    # nobody was paged for it, and no other chat had it
    for n in stack.receiver.all():
        if "data-platform" in n.text and "SpendBudgetExceeded" in n.text:
            assert n.kind == "slack" and n.body["channel"] == "#data-spend", f"{n.kind} {n.text}"
    # Alertmanager agrees on the route
    groups = get_json(
        f"{stack.alertmanager}/api/v2/alerts/groups?" + urllib.parse.urlencode({"receiver": "spend-data-chat"})
    )
    labels = {
        "alertname": "SpendBudgetExceeded",
        "budget": "data-platform",
        "team": "data",
        "severity": "warning",
        "job": "spend-exporter",
        "instance": stack.exporter.removeprefix("http://"),
    }
    assert any(a["labels"] == labels for g in groups for a in g["alerts"])


def _slack(stack: Stack, channel: str, needle: str) -> list[dict[str, Any]]:
    return stack.receiver.find("slack", lambda b: b.get("channel") == channel and needle in json.dumps(b))


def test_budget_warning_reaches_the_teams_chat(stack: Stack) -> None:
    # ai-platform (team ml-platform) sits just past its 80% warning
    msgs = stack.wait(
        "SpendBudgetWarning for ai-platform in #ml-platform-spend",
        lambda: _slack(stack, "#ml-platform-spend", "SpendBudgetWarning ai-platform"),
    )
    att = msgs[0]["attachments"][0]
    assert att["title"] == "[FIRING:1] SpendBudgetWarning ai-platform (team ml-platform)"
    assert att["title_link"] == f"{RUNBOOK_BASE}#spendbudgetwarning"
    assert re.fullmatch(
        r"Budget ai-platform \(team ml-platform\) has spent \$4\d{3}\.\d\d this month"
        r" of its \$5000\.00 limit \(8\d%\)\.\n",
        att["text"],
    ), att["text"]


def test_daily_anomaly_reaches_the_teams_chat(stack: Stack) -> None:
    # the demo's anomalous day: AWS Lambda of team search, yesterday
    msgs = stack.wait(
        "SpendDailyAnomaly in #search-spend",
        lambda: _slack(stack, "#search-spend", "AWS Lambda on aws account"),
    )
    assert msgs[0]["attachments"][0]["title"].startswith("[FIRING:")
    assert "SpendDailyAnomaly (team search)" in msgs[0]["attachments"][0]["title"]


def test_exceeded_budget_raises_no_warning_of_its_own(stack: Stack) -> None:
    stack.wait(
        "SpendBudgetExceeded to fire",
        lambda: stack.query('ALERTS{alertname="SpendBudgetExceeded", alertstate="firing", budget="data-platform"}'),
    )
    assert (
        stack.query('ALERTS{alertname=~"SpendBudgetWarning|SpendBudgetForecastExceeded", budget="data-platform"}') == []
    )


def _alert(name: str, budget: str, team: str, severity: str) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    return {
        "labels": {"alertname": name, "budget": budget, "team": team, "severity": severity, "job": "spend-exporter"},
        "annotations": {
            "summary": "A budget has passed its warning threshold.",
            "description": f"Budget {budget} (team {team}) injected by the test.",
            "runbook_url": "https://example.invalid/docs/runbook.md#spendbudgetwarning",
        },
        "startsAt": now.isoformat(),
        "endsAt": (now + dt.timedelta(minutes=5)).isoformat(),
    }


def test_exceeded_inhibits_the_warning_for_the_same_budget(stack: Stack) -> None:
    """A SpendBudgetWarning for data-platform, as a second Prometheus or exporter replica one refresh behind
    would send it, is suppressed while SpendBudgetExceeded fires; the same warning for another budget of the
    same team, sent with it, is delivered."""
    stack.wait(
        "SpendBudgetExceeded for data-platform in #data-spend",
        lambda: _slack(stack, "#data-spend", "SpendBudgetExceeded data-platform"),
    )
    post_json(
        f"{stack.alertmanager}/api/v2/alerts",
        [
            _alert("SpendBudgetWarning", "data-platform", "data", "warning"),
            _alert("SpendBudgetWarning", "data-control", "data", "warning"),
        ],
    )
    stack.wait("the control warning in #data-spend", lambda: _slack(stack, "#data-spend", "data-control"))

    def state() -> list[dict[str, Any]]:
        q = urllib.parse.urlencode(
            [("filter", 'alertname="SpendBudgetWarning"'), ("filter", 'budget="data-platform"'), ("silenced", "true")]
            + [("inhibited", "true"), ("active", "true")]
        )
        return list(get_json(f"{stack.alertmanager}/api/v2/alerts?{q}"))

    (inhibited,) = stack.wait("the warning to be in Alertmanager", state)
    assert inhibited["status"]["state"] == "suppressed"
    assert inhibited["status"]["inhibitedBy"]
    for n in stack.receiver.all():
        assert not ("SpendBudgetWarning" in n.text and "data-platform" in n.text), f"delivered: {n.kind} {n.text}"


def test_unrouted_team_reaches_the_fallback(stack: Stack) -> None:
    """A team spend-routes.yml does not list reaches FinOps (the fallback) by severity; a listed team's tag in
    another case reaches that team."""
    post_json(
        f"{stack.alertmanager}/api/v2/alerts",
        [
            _alert("SpendBudgetWarning", "lab", "not-a-team", "warning"),
            _alert("SpendBudgetWarning", "search-lab", "Search", "warning"),
        ],
    )
    got = stack.wait("the fallback's chat", lambda: _slack(stack, "#finops-alerts", "SpendBudgetWarning lab"))
    assert got[0]["attachments"][0]["title"] == "[FIRING:1] SpendBudgetWarning lab (team not-a-team)"
    stack.wait("the team's chat", lambda: _slack(stack, "#search-spend", "SpendBudgetWarning search-lab"))


# --------------------------------------------------------------------------- the runaway and the guard

RATE_LIMIT_PATH = f"/v1/organization/projects/{LABS}/rate_limits/rl-{GPT4O}"


def _guard_counts(base: str) -> dict[str, float]:
    """spend_guard_actions_total by result, for the runaway's rule, as ``base`` serves it."""
    text = _get_text(f"{base}/metrics")
    out: dict[str, float] = {}
    for m in re.finditer(r"^spend_guard_actions_total\{([^}]*)\} (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels["rule"] == GUARD_RULE["name"]:
            out[labels["result"]] = float(m.group(2))
    return out


def _get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def _runaway_stopped(stack: Stack) -> Any:
    """The guard's first delivery of SpendAIBurnRateHigh for Labs (as Alertmanager sent it), once its action is
    recorded as applied."""

    def delivered() -> Any:
        for f in stack.receiver.passed_on():
            alerts = json.loads(f.body)["alerts"]
            if any(a["labels"].get("alertname") == "SpendAIBurnRateHigh" for a in alerts) and f.status == 200:
                return f
        return None

    delivery = stack.wait("Alertmanager's guard receiver to deliver SpendAIBurnRateHigh", delivered)
    stack.wait("the guard's action to be applied", lambda: _guard_counts(stack.exporter).get("applied") == 1)
    return delivery


def test_runaway_pages_the_team_and_the_guard_sets_one_rate_limit(stack: Stack) -> None:
    _runaway_stopped(stack)

    def page(b: dict[str, Any]) -> bool:
        d = b["payload"]["custom_details"]
        return bool(d["alertname"] == "SpendAIBurnRateHigh" and b["event_action"] == "trigger")

    (event, *_) = stack.wait("the team's page", lambda: stack.receiver.find("pagerduty", page))
    assert stack.routing_keys[event["routing_key"]] == f"spend-{RUNAWAY_TEAM}-pager"
    labels = _labels_of(event["payload"]["custom_details"]["labels"])
    assert (labels["provider"], labels["account_id"], labels["model"]) == ("openai", LABS, GPT4O)
    assert event["payload"]["severity"] == "critical"
    assert event["payload"]["summary"] == (
        f"SpendAIBurnRateHigh (team {RUNAWAY_TEAM}): AI API spend is running far above its usual hourly rate."
    )
    assert event["links"][0]["href"] == f"{RUNBOOK_BASE}#spendaiburnratehigh"
    # exactly one write, with the write key, for the alert's project and model
    (write,) = [w for w in stack.emulator.writes if w.method == "POST"]
    assert (write.path, write.body, write.key) == (RATE_LIMIT_PATH, GUARD_RULE["params"], "write")
    assert stack.emulator.rate_limits[LABS][f"rl-{GPT4O}"]["max_requests_per_1_minute"] == 1
    active = stack.wait("the action in force in Prometheus", lambda: stack.query("spend_guard_action_active == 1"))
    assert [(a["metric"]["rule"], a["metric"]["account_id"]) for a in active] == [(GUARD_RULE["name"], LABS)]


def test_duplicate_delivery_changes_nothing(stack: Stack) -> None:
    delivery = _runaway_stopped(stack)
    before = _guard_counts(stack.exporter)
    status, reply = post(f"{stack.exporter}{delivery.path}", delivery.body, delivery.headers)
    assert status == 200, reply
    assert {a["result"] for a in json.loads(reply)["actions"]} == {"duplicate"}
    after = stack.wait(
        "the duplicate to be counted",
        lambda: (c := _guard_counts(stack.exporter)).get("duplicate", 0) > before.get("duplicate", 0) and c,
    )
    assert after["applied"] == 1
    assert len([w for w in stack.emulator.writes if w.method == "POST"]) == 1


def test_wrong_or_missing_token_gets_401(stack: Stack) -> None:
    delivery = _runaway_stopped(stack)
    for headers in ({"Authorization": "Bearer not-the-token"}, {}):
        status, _ = post(
            f"{stack.exporter}{delivery.path}", delivery.body, {"Content-Type": "application/json", **headers}
        )
        assert status == 401
    assert delivery.headers["Authorization"] == f"Bearer {GUARD_TOKEN}"  # what Alertmanager sent, from its file
    assert len([w for w in stack.emulator.writes if w.method == "POST"]) == 1


def test_dry_run_writes_nothing(stack: Stack) -> None:
    delivery = _runaway_stopped(stack)
    status, reply = post(f"{stack.dry_run_exporter}{delivery.path}", delivery.body, delivery.headers)
    assert status == 200, reply
    assert {a["result"] for a in json.loads(reply)["actions"]} == {"pending"}
    counts = stack.wait(
        "the dry run to be recorded", lambda: (c := _guard_counts(stack.dry_run_exporter)).get("dry_run") and c
    )
    assert counts == {"applied": 0, "dry_run": 1, "failed": 0, "limited": 0, "duplicate": 0}
    assert len([w for w in stack.emulator.writes if w.method == "POST"]) == 1  # the enforcing exporter's only


# --------------------------------------------------------------------------- dashboards

QUERIES = dashboard_queries({"__rate_interval": "1m", "__range": "1m", "__interval": "1s"})


@pytest.fixture(scope="module")
def prometheus_has_history(stack: Stack) -> Stack:
    """Enough scrapes and rule evaluations for rate()/increase() over a minute and for the recording rules, and
    the guard's action in force (its panel shows actions in force only)."""
    stack.wait(
        "five scrapes, the recording rules and the guard's action",
        lambda: (
            stack.query('count_over_time(up{job="spend-exporter"}[1m]) >= 5')
            and stack.query("count_over_time(budget:spend_budget_used:ratio[1m]) >= 3")
            and stack.query("count_over_time(spend_guard_action_active[1m]) >= 2")
            # the queries that look back (LIVE_OFFSET, 5s) need the cost families scraped for longer than that:
            # they appear with the exporter's first refresh, after the first scrapes of `up`
            and stack.query("count_over_time(spend_cost_daily_usd[1m]) >= 8")
            and stack.query("count_over_time(spend_cost_month_to_date_usd[1m]) >= 8")
        ),
    )
    return stack


@pytest.mark.parametrize("q", QUERIES, ids=lambda q: q.id)
def test_every_dashboard_query_returns_data(prometheus_has_history: Stack, q: Query) -> None:
    """Each query at its newest point, as Grafana evaluates it: now, or 00:00 UTC of yesterday for a bar by billing
    date (which reads today's samples). A query that compares with days or months back (``q.history``) runs with
    that history scaled down to the minutes this Prometheus holds (``Query.on_live_data``); it runs as shipped
    on a backfilled TSDB (tests/e2e of the backfill)."""
    live = q.on_live_data()
    assert bool(q.history) == (live.expr != q.expr)
    at = live.at(dt.datetime.now(dt.UTC))
    result = prometheus_has_history.query(live.expr, at)
    assert result, f"no data for {q.id} at {at:%Y-%m-%d %H:%M:%S} UTC:\n{live.expr}"


@pytest.mark.parametrize("q", [q for q in QUERIES if q.by_billing_date and not q.history], ids=lambda q: q.id)
def test_billing_date_queries_have_no_bar_for_today(prometheus_has_history: Stack, q: Query) -> None:
    """Today is not complete: at 00:00 UTC of today a daily bar reads tomorrow, which has no samples."""
    today = q.at(dt.datetime.now(dt.UTC)) + dt.timedelta(days=1)
    assert prometheus_has_history.query(q.expr, today) == [], q.id


def _variable_queries() -> list[tuple[str, str, str]]:
    out = []
    for dash in load_dashboards().values():
        for v in dash["templating"]["list"]:
            if v["type"] == "query":
                m = re.fullmatch(r"label_values\((.+), (\w+)\)", v["query"])
                assert m, v["query"]
                out.append((f"{dash['uid']}/{v['name']}", substitute(m.group(1)), m.group(2)))
    return out


@pytest.mark.parametrize(("var", "selector", "label"), _variable_queries(), ids=lambda x: x if "/" in x else None)
def test_every_dashboard_variable_has_values(stack: Stack, var: str, selector: str, label: str) -> None:
    url = f"{stack.prometheus}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": selector})
    values = stack.wait(f"values of {var}", lambda: get_json(url)["data"])
    assert values
