"""The shipped Prometheus rules and Alertmanager config: promtool, amtool, and the mixin conventions."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.e2e.stack import ROOT, tool

PROM = ROOT / "prometheus"
ALERTS = PROM / "rules" / "spend-alerts.yml"
RECORDING = PROM / "rules" / "spend-recording.yml"
EXPECTED = PROM / "rules" / "spend-exporter-expected.yml"  # the marker: "this Prometheus scrapes the exporter"
ALERTMANAGER = PROM / "alertmanager.yml"  # generated: root.yml with spend-routes.yml pasted in
SUBTREE = PROM / "alertmanager" / "spend-routes.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"

ALERT_NAMES = {
    "SpendBudgetWarning": "warning",
    "SpendBudgetExceeded": "warning",  # money already spent: no page at night (the rule's comment says why)
    "SpendBudgetForecastExceeded": "warning",
    "SpendDailyAnomaly": "warning",
    "SpendAIBurnRateHigh": "critical",
    "SpendAIHourlyCostHigh": "critical",
    "SpendExporterDown": "critical",
    "SpendSourceDown": "warning",
    "SpendSourceDataStale": "warning",
    "SpendExporterAPICostHigh": "warning",
    "SpendExporterCacheInMemory": "warning",
    "SpendUnallocatedHigh": "warning",
}
# Alerts whose $value is an amount of money.
MONEY_ALERTS = {
    "SpendBudgetWarning",
    "SpendBudgetExceeded",
    "SpendBudgetForecastExceeded",
    "SpendDailyAnomaly",
    "SpendAIBurnRateHigh",
    "SpendAIHourlyCostHigh",
    "SpendExporterAPICostHigh",
}


def run(*cmd: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, cwd=cwd)


def script(name: str) -> ModuleType:
    """prometheus/<name>.py, imported (the scripts are run by path, not installed)."""
    spec = importlib.util.spec_from_file_location(name, PROM / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rules(path: Path) -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


def alert_rules() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in rules(ALERTS)}


# --------------------------------------------------------------------------- promtool


def test_promtool_check_rules() -> None:
    promtool = tool("promtool")
    res = run(promtool, "check", "rules", ALERTS, RECORDING, EXPECTED)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in res.stdout
    assert sorted((PROM / "rules").glob("*.yml")) == sorted([ALERTS, RECORDING, EXPECTED])


def test_promtool_unit_tests() -> None:
    promtool = tool("promtool")
    files = sorted((PROM / "tests").glob("*.yml"))
    assert files
    res = run(promtool, "test", "rules", *files)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == len(files), res.stdout


def test_promtool_check_config() -> None:
    promtool = tool("promtool")
    res = run(promtool, "check", "config", PROM / "prometheus.yml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_scrape_job_is_the_one_the_alert_watches() -> None:
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = [s["job_name"] for s in cfg["scrape_configs"]]
    assert "spend-exporter" in jobs
    assert 'up{job="spend-exporter"}' in alert_rules()["SpendExporterDown"]["expr"]
    (marker,) = rules(EXPECTED)
    assert marker["labels"] == {"job": "spend-exporter"}
    assert f"and on (job) {marker['record']}" in alert_rules()["SpendExporterDown"]["expr"]


def test_exporter_down_is_unit_tested_with_and_without_the_marker() -> None:
    """One promtool file loads the alerts alone (rules distributed to every cluster's Prometheus: a Prometheus
    that never scraped the exporter must stay silent), one with the marker (the exporter's own Prometheus)."""
    loads = {}
    for path in (PROM / "tests").glob("*.yml"):
        doc = yaml.safe_load(path.read_text())
        names = {c["alertname"] for t in doc["tests"] for c in t.get("alert_rule_test", [])}
        if "SpendExporterDown" in names:
            loads[path.name] = {Path(f).name for f in doc["rule_files"]}
    assert sorted(loads.values(), key=len) == [{ALERTS.name}, {ALERTS.name}, {ALERTS.name, EXPECTED.name}]


# --------------------------------------------------------------------------- alert conventions


def test_the_shipped_alerts_exist_with_their_severity() -> None:
    got = {name: r["labels"]["severity"] for name, r in alert_rules().items()}
    assert got == ALERT_NAMES


@pytest.mark.parametrize("name", sorted(ALERT_NAMES))
def test_alert_annotations(name: str) -> None:
    r = alert_rules()[name]
    ann = r["annotations"]
    assert set(ann) == {"summary", "description", "runbook_url"}
    summary = ann["summary"]
    assert "{{" not in summary and "$" not in summary, "summary must be static"
    assert summary.endswith(".") and summary[0].isupper()
    assert summary.count(". ") == 0, "summary must be one sentence"
    assert "{{" in ann["description"], "description must carry the figures"
    if name in MONEY_ALERTS:
        assert '$value | printf "$%.2f"' in ann["description"]
    assert r.get("for"), "every alert needs a for: duration"


RUNBOOKS = script("runbook_base")


def test_runbook_base_is_the_one_setting_in_pyproject() -> None:
    import tomllib

    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Runbook"]
    assert RUNBOOKS.base() == base
    assert base.startswith("https://") and "#" not in base


@pytest.mark.parametrize("name", sorted(ALERT_NAMES))
def test_runbook_url_points_at_a_runbook_section(name: str) -> None:
    url = alert_rules()[name]["annotations"]["runbook_url"]
    assert url == f"{RUNBOOKS.base()}#{name.lower()}"
    assert name.lower() in RUNBOOKS.github_anchors(RUNBOOK.read_text()), f"docs/runbook.md has no #{name.lower()}"


def test_runbook_check_finds_nothing_wrong() -> None:
    """Every runbook_url of the rules and of the promtool tests' expectations, and every anchor."""
    assert RUNBOOKS.problems() == []


def test_github_anchors() -> None:
    md = "# Runbook\n## SpendBudgetWarning\n## The cache: `cache_path` & co.\n```\n# not a heading\n```\n## The cache\n"
    assert RUNBOOKS.github_anchors(md) == {"runbook", "spendbudgetwarning", "the-cache-cache_path--co", "the-cache"}
    assert RUNBOOKS.github_anchors("## A\n## A\n## A\n") == {"a", "a-1", "a-2"}


def test_runbook_base_can_be_pointed_elsewhere(tmp_path: Path) -> None:
    """--set on a copy of the checkout: pyproject, the rules and the promtool expectations move together, and
    promtool still passes."""
    for d in ("prometheus/rules", "prometheus/tests"):
        shutil.copytree(ROOT / d, tmp_path / d)
    (tmp_path / "docs").mkdir()
    shutil.copy(RUNBOOK, tmp_path / "docs")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    new = "https://wiki.example.com/ops/spend-runbook.html"
    res = run(sys.executable, PROM / "runbook_base.py", "--root", tmp_path, "--set", new)
    assert res.returncode == 0, res.stdout + res.stderr
    assert RUNBOOKS.base(tmp_path) == new
    assert RUNBOOKS.problems(tmp_path) == []
    text = (tmp_path / "prometheus" / "rules" / "spend-alerts.yml").read_text()
    assert text.count(f"runbook_url: {new}#") == len(ALERT_NAMES)
    assert RUNBOOKS.base() not in text
    res = run(
        tool("promtool"),
        "test",
        "rules",
        "tests/exporter-expected.yml",
        "tests/budgets.yml",
        cwd=tmp_path / "prometheus",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    res = run(sys.executable, PROM / "runbook_base.py", "--root", tmp_path, "--set", "https://x.example/a b#c")
    assert res.returncode == 2 and "want an http(s) address" in res.stderr
    assert RUNBOOKS.base(tmp_path) == new


def test_every_threshold_is_commented() -> None:
    """Between `- alert:` and `expr:` (and before `for:`) there is a comment saying why."""
    text = ALERTS.read_text()
    blocks = re.split(r"\n\s*- alert: ", text)[1:]
    assert len(blocks) == len(ALERT_NAMES)
    for block in blocks:
        name = block.split("\n", 1)[0].strip()
        head, _, rest = block.partition("expr:")
        assert "#" in head, f"{name}: no comment on its expression's thresholds"
        between = rest.split("\n        for:", 1)[0].split("\n")[-3:]
        assert any(line.strip().startswith("#") for line in between), f"{name}: for: is not explained"


def _keeps_team(m: re.Match[str]) -> str:
    assert {"team", "provider", "account_id", "service_name", "model"} <= set(m.group(1).split(", ")), m.group(0)
    return "group_left"


def test_team_label_is_kept_where_the_data_has_one() -> None:
    """No alert aggregates the team label away: the spend alerts compare whole series. The one aggregation allowed
    sums a baseline over the extra labels, by every cost label (team too), on the right of a group_left: the
    alert keeps the left-hand series' labels."""
    for name, r in alert_rules().items():
        expr = re.sub(r"group_left\s+\d+ \* sum by \(([a-z_, ]+)\)", _keeps_team, r["expr"])
        assert not re.search(r"\b(sum|max|min|avg|count)\b", expr), f"{name} aggregates: team would be lost"
        assert "team" not in r["labels"], f"{name} must take team from the data, not set it"


def test_every_alert_is_unit_tested_at_its_boundary() -> None:
    """Each alert has a promtool case where it fires and one where it must not (before for:)."""
    fires: set[str] = set()
    silent: set[str] = set()
    for path in (PROM / "tests").glob("*.yml"):
        for t in yaml.safe_load(path.read_text())["tests"]:
            for case in t.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else silent).add(case["alertname"])
                for a in case.get("exp_alerts") or []:
                    assert set(a["exp_annotations"]) == {"summary", "description", "runbook_url"}
                    assert a["exp_labels"]["severity"] == ALERT_NAMES[case["alertname"]]
    assert fires == set(ALERT_NAMES)
    assert silent == set(ALERT_NAMES)


def test_recording_rule_names_are_level_metric_operations() -> None:
    for r in rules(RECORDING):
        assert re.fullmatch(r"[a-z_]*:[a-z_]+:[a-z_]+", r["record"]), r["record"]
    names = {r["record"] for r in rules(RECORDING)}
    for required in (
        "provider:spend_cost_month_to_date_usd:sum",
        "team:spend_cost_month_to_date_usd:sum",
        "provider_service_name:spend_cost_month_to_date_usd:sum",
        "budget:spend_budget_used:ratio",
    ):
        assert required in names


# --------------------------------------------------------------------------- alertmanager


BUILD = script("build_alertmanager")


def am() -> dict[str, Any]:
    return yaml.safe_load(ALERTMANAGER.read_text())


def subtree() -> dict[str, Any]:
    return yaml.safe_load(SUBTREE.read_text())


def spend_route() -> dict[str, Any]:
    """The subtree's route, as pasted first under the root's routes."""
    first = am()["route"]["routes"][0]
    assert first == subtree()["route"]
    return first


def test_amtool_check_config() -> None:
    amtool = tool("amtool")
    res = run(amtool, "check-config", ALERTMANAGER)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_the_committed_config_is_the_generated_one() -> None:
    res = run(sys.executable, PROM / "build_alertmanager.py", "--check")
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_paste_is_the_documented_merge() -> None:
    """What the build pastes as text (anchors, re-indentation) loads as the merge docs/alert-routing.md
    describes: the subtree's route first among the root's routes, its receivers and inhibitions appended."""
    root = yaml.safe_load(BUILD.ROOT_CONFIG.read_text())
    sub = subtree()
    want = {
        **root,
        "route": {**root["route"], "routes": [sub["route"], *(root["route"]["routes"] or [])]},
        "receivers": [*root["receivers"], *sub["receivers"]],
        "inhibit_rules": [*(root.get("inhibit_rules") or []), *sub["inhibit_rules"]],
    }
    assert am() == want
    assert len(am()["route"]["routes"]) == 2  # the root keeps its own route, after spend-exporter's


def test_the_subtree_merges_without_clashes() -> None:
    """Every receiver the subtree defines is named spend-*, so none collides with a user's; every one is used."""
    sub = subtree()
    names = [r["name"] for r in sub["receivers"]]
    assert len(names) == len(set(names))
    assert all(n.startswith("spend-") for n in names), names
    used = {r["receiver"] for r in _routes(sub["route"]) if "receiver" in r}
    assert used == set(names)
    assert sub["route"]["matchers"] == ['alertname=~"Spend.+"']
    assert "continue" not in sub["route"]  # spend alerts stop in the subtree: none reaches the user's receiver
    assert all(name.startswith("Spend") for name in ALERT_NAMES)


def _routes(route: dict[str, Any]) -> list[dict[str, Any]]:
    return [route, *(r for child in route.get("routes", []) for r in _routes(child))]


def routed_teams() -> list[str]:
    out = []
    for r in spend_route()["routes"]:
        for m in r.get("matchers", []):
            hit = re.fullmatch(r'team=~"\(\?i\)([^"]+)"', m)
            if hit:
                out.append(hit.group(1))
    return out


GUARDED = ("SpendAIBurnRateHigh", "SpendBudgetExceeded")  # the guard's route takes these first, with continue


def routing_cases() -> list[tuple[dict[str, str], str]]:
    return [
        (labels, f"spend-guard,{receiver}" if labels.get("alertname") in GUARDED else receiver)
        for labels, receiver in _routing_cases()
    ]


def _routing_cases() -> list[tuple[dict[str, str], str]]:
    cases: list[tuple[dict[str, str], str]] = []
    for team in routed_teams():
        cases += [
            (
                {"alertname": "SpendAIBurnRateHigh", "severity": "critical", "team": team, "model": "m"},
                f"spend-{team}-pager",
            ),
            (
                {"alertname": "SpendBudgetExceeded", "severity": "warning", "team": team, "budget": "b"},
                f"spend-{team}-chat",
            ),
            (
                {"alertname": "SpendBudgetWarning", "severity": "warning", "team": team, "budget": "b"},
                f"spend-{team}-chat",
            ),
            ({"alertname": "SpendDailyAnomaly", "severity": "warning", "team": team}, f"spend-{team}-chat"),
            # the team's tag value in another case is the same team
            (
                {"alertname": "SpendAIHourlyCostHigh", "severity": "critical", "team": team.upper()},
                f"spend-{team}-pager",
            ),
        ]
    return [
        *cases,
        # no team: the exporter's own alerts and team-less budgets go to FinOps
        ({"alertname": "SpendExporterDown", "severity": "critical", "job": "spend-exporter"}, "spend-finops-pager"),
        ({"alertname": "SpendBudgetExceeded", "severity": "warning", "budget": "total"}, "spend-finops-chat"),
        ({"alertname": "SpendSourceDown", "severity": "warning", "source": "aws"}, "spend-finops-chat"),
        ({"alertname": "SpendDailyAnomaly", "severity": "warning", "team": "unallocated"}, "spend-finops-chat"),
        ({"alertname": "SpendUnallocatedHigh", "severity": "warning"}, "spend-finops-chat"),
        # a team nobody routed: the fallback, FinOps, by severity
        ({"alertname": "SpendAIBurnRateHigh", "severity": "critical", "team": "frontend"}, "spend-finops-pager"),
        ({"alertname": "SpendBudgetWarning", "severity": "warning", "team": "frontend"}, "spend-finops-chat"),
        # a routed team's name inside another's is not that team (the regex is anchored)
        ({"alertname": "SpendBudgetWarning", "severity": "warning", "team": "data-science"}, "spend-finops-chat"),
        # a known team's alert of another severity: the fallback's chat, never dropped
        ({"alertname": "SpendDailyAnomaly", "severity": "info", "team": "data"}, "spend-finops-chat"),
        # the root's own alerts never enter the subtree
        ({"alertname": "HighLatency", "severity": "critical", "team": "data"}, "default"),
        ({"alertname": "HighLatency", "severity": "critical", "team": "sre"}, "default"),
    ]


def test_every_demo_team_has_a_route() -> None:
    demo = yaml.safe_load((ROOT / "examples" / "demo-config.yml").read_text())
    teams = {b["team"] for b in demo.get("budgets", []) if b.get("team")}
    teams |= {r["team"] for r in demo.get("attribution", {}).get("rules", [])}
    assert teams, "the demo config names no team"
    assert teams <= set(routed_teams())


def amtool_route(config: Path, labels: dict[str, str], receiver: str) -> None:
    res = run(
        tool("amtool"),
        "config",
        "routes",
        "test",
        f"--config.file={config}",
        f"--verify.receivers={receiver}",
        *(f"{k}={v}" for k, v in labels.items()),
    )
    assert res.returncode == 0, f"{labels} -> {res.stdout.strip()} (want {receiver}) {res.stderr}"
    assert res.stdout.strip() == receiver


@pytest.mark.parametrize(("labels", "receiver"), routing_cases(), ids=lambda v: v if isinstance(v, str) else None)
def test_amtool_routes(labels: dict[str, str], receiver: str) -> None:
    amtool_route(ALERTMANAGER, labels, receiver)


# A user's config as it might be before the paste: a catch-all on team that would swallow spend alerts if the
# subtree came after it, and receiver names of its own.
USER_CONFIG = """\
global:
  slack_api_url: https://hooks.slack.invalid/services/T0/B0/X
route:
  receiver: ops-default
  group_by: [alertname, cluster]
  routes:
{route}
    - matchers: ['team=~".+"']
      receiver: ops-teams
receivers:
  - name: ops-default
  - name: ops-teams
{receivers}
inhibit_rules:
  - source_matchers: [severity="critical"]
    target_matchers: [severity="warning"]
    equal: [alertname, cluster]
{inhibit_rules}
"""


def test_the_subtree_pasted_into_another_config(tmp_path: Path) -> None:
    """The subtree pasted into a config that is not the compose stack's, by the docs' three steps: Alertmanager's
    own parser takes it (anchors and all), an unknown team reaches the fallback, the user's alerts keep their
    routes."""
    sub = BUILD.parts(SUBTREE.read_text())
    cfg = tmp_path / "alertmanager.yml"
    cfg.write_text(
        USER_CONFIG.format(
            route="\n".join(BUILD.paste("route", sub["route"], "    ")),
            receivers="\n".join(BUILD.paste("receivers", sub["receivers"], "  ")),
            inhibit_rules="\n".join(BUILD.paste("inhibit_rules", sub["inhibit_rules"], "  ")),
        )
    )
    res = run(tool("amtool"), "check-config", cfg)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(subtree()['receivers']) + 2} receivers" in res.stdout and "3 inhibit rules" in res.stdout
    cases = [
        ({"alertname": "SpendBudgetWarning", "severity": "warning", "team": "frontend"}, "spend-finops-chat"),
        (
            {"alertname": "SpendAIBurnRateHigh", "severity": "critical", "team": "frontend"},
            "spend-guard,spend-finops-pager",
        ),
        (
            {"alertname": "SpendAIBurnRateHigh", "severity": "critical", "team": "Search"},
            "spend-guard,spend-search-pager",
        ),
        ({"alertname": "SpendExporterDown", "severity": "critical"}, "spend-finops-pager"),
        ({"alertname": "KubePodCrashLooping", "severity": "warning", "team": "search"}, "ops-teams"),
        ({"alertname": "Watchdog", "severity": "none"}, "ops-default"),
    ]
    for labels, receiver in cases:
        amtool_route(cfg, labels, receiver)


def test_the_commands_in_the_routing_docs_print_what_they_say() -> None:
    """Each `$ amtool ...` line of docs/alert-routing.md, run from the repository's root, succeeds and prints the
    line the page shows under it (if any)."""
    lines = (ROOT / "docs" / "alert-routing.md").read_text().splitlines()
    ran = 0
    for i, line in enumerate(lines):
        if not line.startswith("$ amtool "):
            continue
        res = run(tool("amtool"), *line.removeprefix("$ amtool ").split())
        assert res.returncode == 0, f"{line}: {res.stdout}{res.stderr}"
        shown = lines[i + 1]
        if not shown.startswith(("$ ", "```")):
            assert res.stdout.strip() == shown, line
        ran += 1
    assert ran >= 5


def test_the_guard_route_comes_first_and_continues() -> None:
    first = spend_route()["routes"][0]
    assert first["receiver"] == "spend-guard" and first["continue"] is True
    (receiver,) = [r for r in am()["receivers"] if r["name"] == "spend-guard"]
    (hook,) = receiver["webhook_configs"]
    assert hook["url"].endswith("/-/guard/alertmanager")
    assert hook["http_config"]["authorization"]["credentials_file"] == SECRETS + "spend-guard-token"


def test_the_fallback_comes_last_and_takes_everything() -> None:
    last = spend_route()["routes"][-1]
    assert "matchers" not in last and "continue" not in last
    assert last["receiver"] == spend_route()["receiver"] == "spend-finops-chat"
    assert last["routes"] == [{"matchers": ['severity="critical"'], "receiver": "spend-finops-pager"}]


def test_grouping_and_repeat_interval() -> None:
    route = spend_route()
    assert set(route["group_by"]) == {"alertname", "team", "budget"}
    assert route["repeat_interval"] == "6h"
    for r in _routes(route)[1:]:  # no child route re-sends budget alerts sooner
        assert "repeat_interval" not in r


def test_exceeded_inhibits_warning_for_the_same_budget() -> None:
    rules = am()["inhibit_rules"]
    hits = [
        r
        for r in rules
        if 'alertname="SpendBudgetExceeded"' in r["source_matchers"]
        and any("SpendBudgetWarning" in m for m in r["target_matchers"])
    ]
    assert len(hits) == 1
    assert "budget" in hits[0]["equal"]


# Where the Prometheus Operator mounts a Secret named spend-alerts listed in the Alertmanager's spec.secrets.
SECRETS = "/etc/alertmanager/secrets/spend-alerts/"


def test_receivers_read_secrets_from_files() -> None:
    cfg = am()
    for text in (ALERTMANAGER.read_text(), SUBTREE.read_text(), BUILD.ROOT_CONFIG.read_text()):
        for key in ("slack_api_url:", "api_url:", "routing_key:", "service_key:", "credentials:"):
            assert not re.search(rf"^\s*{key}", text, re.M), f"{key} inline: secrets must come from *_file"
    assert cfg["global"]["slack_api_url_file"].startswith(SECRETS)
    kinds = set()
    for r in cfg["receivers"]:
        for pd in r.get("pagerduty_configs", []):
            kinds.add("pagerduty")
            assert pd["routing_key_file"].startswith(SECRETS)
        if r.get("slack_configs"):
            kinds.add("slack")
        if r.get("webhook_configs"):
            kinds.add("webhook")
    assert kinds == {"pagerduty", "slack", "webhook"}
    secrets_readme = (PROM / "alertmanager-secrets" / "README.md").read_text()
    for r in cfg["receivers"]:
        for pd in r.get("pagerduty_configs", []):
            assert Path(pd["routing_key_file"]).name in secrets_readme
        for wh in r.get("webhook_configs", []):
            auth = wh.get("http_config", {}).get("authorization")
            if auth is not None:  # the guard's bearer token: from a file, never inline
                assert "credentials" not in auth
                assert auth["credentials_file"].startswith(SECRETS)
                assert Path(auth["credentials_file"]).name in secrets_readme


def test_each_team_differs_from_the_fallback_in_one_field() -> None:
    """A team's receivers are FinOps' with one field changed (the YAML merge of spend-routes.yml): the PagerDuty
    key file, the Slack channel."""
    by_name = {r["name"]: r for r in subtree()["receivers"]}
    (pager,) = by_name["spend-finops-pager"]["pagerduty_configs"]
    (chat,) = by_name["spend-finops-chat"]["slack_configs"]
    for team in routed_teams():
        (p,) = by_name[f"spend-{team}-pager"]["pagerduty_configs"]
        (c,) = by_name[f"spend-{team}-chat"]["slack_configs"]
        assert {k: v for k, v in p.items() if v != pager.get(k)} == {
            "routing_key_file": f"{SECRETS}pagerduty-{team}.key"
        }
        assert {k: v for k, v in c.items() if v != chat.get(k)} == {"channel": f"#{team}-spend"}


def test_cost_per_request_template_in_the_docs_is_the_tested_one() -> None:
    """docs/allocation.md shows examples/cost-per-request.rules.yml (prometheus/tests/cost-per-request.yml tests it)."""
    (block,) = re.findall(r"```yaml\n(groups:\n.*?)```", (ROOT / "docs" / "allocation.md").read_text(), re.S)
    assert yaml.safe_load(block) == yaml.safe_load((ROOT / "examples" / "cost-per-request.rules.yml").read_text())
