"""The shipped Prometheus rules and Alertmanager config: promtool, amtool, and the mixin conventions."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.stack import ROOT, tool

PROM = ROOT / "prometheus"
ALERTS = PROM / "rules" / "spend-alerts.yml"
RECORDING = PROM / "rules" / "spend-recording.yml"
ALERTMANAGER = PROM / "alertmanager.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"

ALERT_NAMES = {
    "SpendBudgetWarning": "warning",
    "SpendBudgetExceeded": "critical",
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


def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, cwd=ROOT)


def rules(path: Path) -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


def alert_rules() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in rules(ALERTS)}


# --------------------------------------------------------------------------- promtool


def test_promtool_check_rules() -> None:
    promtool = tool("promtool")
    res = run(promtool, "check", "rules", ALERTS, RECORDING)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in res.stdout


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


def _anchors(markdown: str) -> set[str]:
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            title = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            out.add(title.replace(" ", "-"))
    return out


@pytest.mark.parametrize("name", sorted(ALERT_NAMES))
def test_runbook_url_points_at_a_runbook_section(name: str) -> None:
    url = alert_rules()[name]["annotations"]["runbook_url"]
    page, _, anchor = url.partition("#")
    assert page.endswith("docs/runbook.md")
    assert anchor == name.lower()
    assert anchor in _anchors(RUNBOOK.read_text()), f"docs/runbook.md has no section #{anchor}"


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


def test_team_label_is_kept_where_the_data_has_one() -> None:
    """No alert aggregates the team label away: the spend alerts compare whole series."""
    for name, r in alert_rules().items():
        expr = r["expr"]
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


def am() -> dict[str, Any]:
    return yaml.safe_load(ALERTMANAGER.read_text())


def test_amtool_check_config() -> None:
    amtool = tool("amtool")
    res = run(amtool, "check-config", ALERTMANAGER)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def routed_teams() -> list[str]:
    out = []
    for r in am()["route"]["routes"]:
        for m in r.get("matchers", []):
            hit = re.fullmatch(r'team="([^"]+)"', m)
            if hit:
                out.append(hit.group(1))
    return out


GUARDED = ("SpendAIBurnRateHigh", "SpendBudgetExceeded")  # the guard's route takes these first, with continue


def routing_cases() -> list[tuple[dict[str, str], str]]:
    return [
        (labels, f"spend-guard,{receiver}" if labels["alertname"] in GUARDED else receiver)
        for labels, receiver in _routing_cases()
    ]


def _routing_cases() -> list[tuple[dict[str, str], str]]:
    cases: list[tuple[dict[str, str], str]] = []
    for team in routed_teams():
        cases += [
            (
                {"alertname": "SpendBudgetExceeded", "severity": "critical", "team": team, "budget": "b"},
                f"{team}-pager",
            ),
            ({"alertname": "SpendAIBurnRateHigh", "severity": "critical", "team": team, "model": "m"}, f"{team}-pager"),
            ({"alertname": "SpendBudgetWarning", "severity": "warning", "team": team, "budget": "b"}, f"{team}-chat"),
            ({"alertname": "SpendDailyAnomaly", "severity": "warning", "team": team}, f"{team}-chat"),
        ]
    return [
        *cases,
        # no team: the exporter's own alerts and team-less budgets go to FinOps
        ({"alertname": "SpendExporterDown", "severity": "critical", "job": "spend-exporter"}, "finops-pager"),
        ({"alertname": "SpendBudgetExceeded", "severity": "critical", "budget": "total"}, "finops-pager"),
        ({"alertname": "SpendSourceDown", "severity": "warning", "source": "aws"}, "finops-chat"),
        ({"alertname": "SpendDailyAnomaly", "severity": "warning", "team": "unallocated"}, "finops-chat"),
        ({"alertname": "SpendUnallocatedHigh", "severity": "warning"}, "finops-chat"),
        # a team nobody routed: the generic webhook
        ({"alertname": "SpendBudgetExceeded", "severity": "critical", "team": "not-a-team"}, "spend-webhook"),
    ]


def test_every_demo_team_has_a_route() -> None:
    demo = yaml.safe_load((ROOT / "examples" / "demo-config.yml").read_text())
    teams = {b["team"] for b in demo.get("budgets", []) if b.get("team")}
    teams |= {r["team"] for r in demo.get("attribution", {}).get("rules", [])}
    assert teams, "the demo config names no team"
    assert teams <= set(routed_teams())


@pytest.mark.parametrize(("labels", "receiver"), routing_cases(), ids=lambda v: v if isinstance(v, str) else None)
def test_amtool_routes(labels: dict[str, str], receiver: str) -> None:
    amtool = tool("amtool")
    res = run(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER}",
        f"--verify.receivers={receiver}",
        *(f"{k}={v}" for k, v in labels.items()),
    )
    assert res.returncode == 0, f"{labels} -> {res.stdout.strip()} (want {receiver}) {res.stderr}"
    assert res.stdout.strip() == receiver


def test_the_guard_route_comes_first_and_continues() -> None:
    first = am()["route"]["routes"][0]
    assert first["receiver"] == "spend-guard" and first["continue"] is True
    (receiver,) = [r for r in am()["receivers"] if r["name"] == "spend-guard"]
    (hook,) = receiver["webhook_configs"]
    assert hook["url"].endswith("/-/guard/alertmanager")
    assert hook["http_config"]["authorization"]["credentials_file"] == "/etc/alertmanager/secrets/spend-guard-token"


def test_grouping_and_repeat_interval() -> None:
    route = am()["route"]
    assert set(route["group_by"]) == {"alertname", "team", "budget"}
    assert route["repeat_interval"] == "6h"
    for r in route["routes"]:  # no child route re-sends budget alerts sooner
        assert "repeat_interval" not in r
        for child in r.get("routes", []):
            assert "repeat_interval" not in child


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


def test_receivers_read_secrets_from_files() -> None:
    cfg = am()
    text = ALERTMANAGER.read_text()
    for key in ("slack_api_url:", "api_url:", "routing_key:", "service_key:"):
        assert not re.search(rf"^\s*{key}", text, re.M), f"{key} inline: secrets must come from *_file"
    assert cfg["global"]["slack_api_url_file"].startswith("/etc/alertmanager/secrets/")
    kinds = set()
    for r in cfg["receivers"]:
        for pd in r.get("pagerduty_configs", []):
            kinds.add("pagerduty")
            assert pd["routing_key_file"].startswith("/etc/alertmanager/secrets/")
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
                assert auth["credentials_file"].startswith("/etc/alertmanager/secrets/")
                assert Path(auth["credentials_file"]).name in secrets_readme


def test_cost_per_request_template_in_the_docs_is_the_tested_one() -> None:
    """docs/allocation.md shows examples/cost-per-request.rules.yml (prometheus/tests/cost-per-request.yml tests it)."""
    (block,) = re.findall(r"```yaml\n(groups:\n.*?)```", (ROOT / "docs" / "allocation.md").read_text(), re.S)
    assert yaml.safe_load(block) == yaml.safe_load((ROOT / "examples" / "cost-per-request.rules.yml").read_text())
