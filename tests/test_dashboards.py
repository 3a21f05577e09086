"""The Grafana dashboards' JSON and provisioning: uids, variables, units, datasources, valid PromQL.

Running every panel's query against a real Prometheus is in tests/e2e/test_stack.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.stack import DASHBOARDS, ROOT, dashboard_queries, load_dashboards, panels, tool

EXPECTED = {
    "spend-overview": "Spend / Overview",
    "spend-teams": "Spend / Teams",
    "spend-ai": "Spend / AI",
    "spend-exporter": "Spend / Exporter",
}
DS_REF = {"type": "prometheus", "uid": "${datasource}"}

DASHES = load_dashboards()


def by_uid() -> dict[str, dict[str, Any]]:
    return {d["uid"]: d for d in DASHES.values()}


def test_the_four_dashboards_with_stable_uids_and_titles() -> None:
    assert {d["uid"]: d["title"] for d in DASHES.values()} == EXPECTED
    for name, d in DASHES.items():
        assert name == f"{d['uid']}.json"
        assert "id" not in d or d["id"] is None, "a provisioned dashboard must not carry a database id"


def test_json_is_what_the_generator_writes() -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "grafana" / "build_dashboards.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_tags(uid: str) -> None:
    tags = by_uid()[uid]["tags"]
    assert "spend" in tags and "spend-exporter" in tags


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_datasource_variable_first_then_chained_label_values(uid: str) -> None:
    variables = by_uid()[uid]["templating"]["list"]
    first = variables[0]
    assert (first["name"], first["type"], first["query"]) == ("datasource", "datasource", "prometheus")
    names = [v["name"] for v in variables]
    assert names.index("provider") < names.index("team") < names.index("model")
    qs = {v["name"]: v for v in variables}

    def query(name: str) -> str:
        v = qs[name]
        assert v["type"] == "query"
        assert v["datasource"] == DS_REF
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        assert q == v["definition"]
        assert q.startswith("label_values(") and q.rstrip(")").endswith(f", {name}")
        assert v["includeAll"] and v["multi"] and v["allValue"] == ".*"
        return str(q)

    assert "$" not in query("provider")
    assert 'provider=~"$provider"' in query("team")
    model = query("model")
    assert 'provider=~"$provider"' in model and 'team=~"$team"' in model


def _walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "datasource":
                out.append((f"{path}.{k}", v))
            out += _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _walk(v, f"{path}[{i}]")
    return out


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_no_hard_coded_datasource(uid: str) -> None:
    dash = by_uid()[uid]
    refs = _walk({k: v for k, v in dash.items() if k != "annotations"})
    assert refs
    for path, ref in refs:
        assert ref == DS_REF, f"{path}: {ref!r} (use the $datasource variable)"
    for a in dash["annotations"]["list"]:
        assert a["datasource"] in (DS_REF, {"type": "grafana", "uid": "-- Grafana --"})
    assert "spend-prometheus" not in (DASHBOARDS / f"{uid}.json").read_text()


def _unit_of(panel: dict[str, Any], ref: str, n_targets: int) -> str | None:
    """The unit shown for one target: a table column's override, else the panel default."""
    column = f"Value #{ref}" if n_targets > 1 else "Value"
    for o in panel["fieldConfig"].get("overrides", []):
        if o["matcher"].get("options") == column:
            for prop in o["properties"]:
                if prop["id"] == "unit":
                    return str(prop["value"])
    return panel["fieldConfig"]["defaults"].get("unit")


MONEY = re.compile(r"\b(spend_[a-z_]*_usd(_total)?|[a-z_]*:spend_[a-z_]*_usd:sum)\b")


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_money_is_in_currency_usd(uid: str) -> None:
    money = 0
    for p in panels(by_uid()[uid]):
        targets = p.get("targets", [])
        for t in targets:
            expr = t["expr"]
            # a sum of dollars is dollars; a quotient (ratio, per-token price) or a count is not
            if MONEY.search(expr) and "/" not in expr and "count" not in expr and ":ratio" not in expr:
                money += 1
                assert _unit_of(p, t["refId"], len(targets)) == "currencyUSD", f"{p['title']} {t['refId']}"
    assert money, "no money panel"


def test_cost_per_token_and_budget_ratios_have_their_units() -> None:
    units = {
        (d["uid"], p["title"]): p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        for d in DASHES.values()
        for p in panels(d)
    }
    assert units[("spend-ai", "Cost per 1M tokens")] == "currencyUSD"
    assert units[("spend-overview", "Budget use")] == "percentunit"
    assert units[("spend-teams", "Budget use by team")] == "percentunit"


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_panels_have_queries_and_fit_the_grid(uid: str) -> None:
    ids = set()
    for p in panels(by_uid()[uid]):
        assert p["id"] not in ids
        ids.add(p["id"])
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24
        if p["type"] == "row":
            continue
        assert p["datasource"] == DS_REF
        assert p.get("description"), f"{p['title']}: no description"
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])


def test_issue_panels_are_present() -> None:
    titles = {d["uid"]: {p["title"] for p in panels(d)} for d in DASHES.values()}
    assert {"Month to date", "Forecast against budget", "Budget use", "Month to date by provider"} <= titles[
        "spend-overview"
    ]
    assert {"Top services, month to date", "Today's anomalies"} <= titles["spend-overview"]
    assert {"Month to date by team", "Services by team, month to date", "Budget use by team"} <= titles["spend-teams"]
    assert "Previous month by team" in titles["spend-teams"]
    assert {"Cost by model, month to date", "Cost by project, month to date", "Tokens by type"} <= titles["spend-ai"]
    assert {"Cost per 1M tokens", "Last-hour cost by model"} <= titles["spend-ai"]
    assert {"Burn rate by model", "Age of burn data", "Last hour against hourly baseline"} <= titles["spend-ai"]
    assert {"Guard actions by result", "Guard actions in force"} <= titles["spend-exporter"]
    assert {"Sources up", "Age of data", "Refresh duration", "API requests", "API cost, trailing 24h"} <= titles[
        "spend-exporter"
    ]
    assert {"Cache", "Records skipped by the last refresh", "Label values truncated, per hour"} <= titles[
        "spend-exporter"
    ]


def test_cache_stat_says_file_or_memory() -> None:
    (cache,) = [p for p in panels(by_uid()["spend-exporter"]) if p["title"] == "Cache"]
    assert [t["expr"] for t in cache["targets"]] == ["spend_exporter_cache_persistent"]
    (mapping,) = cache["fieldConfig"]["defaults"]["mappings"]
    assert {v: m["text"] for v, m in mapping["options"].items()} == {"0": "in memory", "1": "in its file"}


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (variables set to .*) as a recording rule: a syntax error fails here."""
    promtool = tool("promtool")
    queries = dashboard_queries()
    assert len(queries) > 30
    doc = {
        "groups": [
            {"name": "dashboards", "rules": [{"record": f"q:{i}:x", "expr": q.expr} for i, q in enumerate(queries)]}
        ]
    }
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(doc))
    res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_queries_use_only_the_contract_families() -> None:
    """Every spend_* name in a query is a family in DESIGN.md or one of our recording rules."""
    from exporter.metrics import describe_families

    families = {f["name"] for f in describe_families()}
    recorded = {
        r["record"]
        for g in yaml.safe_load((ROOT / "prometheus" / "rules" / "spend-recording.yml").read_text())["groups"]
        for r in g["rules"]
    }
    for q in dashboard_queries():
        for name in re.findall(r"[a-z_:]*spend_[a-z_]+(?::[a-z_]+)?", q.expr):
            assert name in families or name in recorded, f"{q.id}: unknown metric {name}"


# --------------------------------------------------------------------------- provisioning


def test_provisioning() -> None:
    prov = ROOT / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy"
    dp = yaml.safe_load((prov / "dashboards" / "spend.yml").read_text())
    (provider,) = dp["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")


def _alert_expr(name: str) -> str:
    groups = yaml.safe_load((ROOT / "prometheus" / "rules" / "spend-alerts.yml").read_text())["groups"]
    (rule,) = [r for g in groups for r in g["rules"] if r.get("alert") == name]
    return str(rule["expr"])


def test_burn_rate_panel_draws_the_alerts_threshold() -> None:
    """The dashed line is the threshold SpendAIBurnRateHigh uses: the same multiple of the hourly baseline and the
    same floor, so the panel cannot drift from the rule."""
    expr = " ".join(_alert_expr("SpendAIBurnRateHigh").split())
    (multiple,) = re.findall(r"spend_ai_burn_rate_usd_per_hour > (\d+) \* spend_cost_daily_baseline_usd / 24", expr)
    (floor,) = re.findall(r"and spend_ai_burn_rate_usd_per_hour > (\d+)", expr)
    (panel,) = [p for p in panels(by_uid()["spend-ai"]) if p["title"] == "Burn rate by model"]
    rate, threshold = (t["expr"] for t in panel["targets"])
    assert rate.startswith("spend_ai_burn_rate_usd_per_hour{")
    assert threshold.startswith(f"clamp_min({multiple} * spend_cost_daily_baseline_usd{{")
    assert f"/ 24, {floor}) and " in threshold and threshold.endswith(f" * 0 + {floor}")
    assert f"{multiple}x its hourly baseline" in panel["description"] and f"${floor} an hour" in panel["description"]
