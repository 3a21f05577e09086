"""The Grafana dashboards' JSON and provisioning: uids, variables, units, datasources, valid PromQL.

Running every panel's query against a real Prometheus is in tests/e2e/test_stack.py.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from tests.e2e.stack import DASHBOARDS, ROOT, dashboard_queries, load_builder, load_dashboards, panels, tool

EXPECTED = {
    "spend-overview": "Spend / Overview",
    "spend-teams": "Spend / Teams",
    "spend-ai": "Spend / AI",
    "spend-exporter": "Spend / Exporter",
    "spend-allocation": "Spend / Allocation",
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
        assert q.startswith("label_values(") and q.rstrip(")").endswith(f", {name}")
        assert v["includeAll"] and v["multi"] and v["allValue"] == ".*"
        return str(q)

    assert "$" not in query("provider")
    assert 'provider=~"$provider"' in query("team")
    model = query("model")
    assert 'provider=~"$provider"' in model and 'team=~"$team"' in model


# --------------------------------------------------------------------------- Grafana's schema

# Grafana's own types for the Grafana the dashboards target (@grafana/schema, generated from its CUE kinds) as JSON
# Schema: the dashboard, and the options and custom field config of each panel type. grafana/dashboard_schema.sh
# writes them; tests/data/grafana-schema/VERSION says from which versions.
SCHEMAS = ROOT / "tests" / "data" / "grafana-schema"


def _validator(name: str, definition: str | None = None) -> Draft7Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    if definition:
        schema = {**schema, "$ref": f"#/definitions/{definition}"}
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


DASHBOARD_SCHEMA = _validator("dashboard")
PANEL_SCHEMAS = {p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json")} - {"dashboard"}


def _leaves(errors: Any) -> list[Any]:
    """The errors themselves, or for an ``anyOf`` (a panel or a row) the ones of each alternative."""
    return [leaf for e in errors for leaf in (_leaves(e.context) if e.context else [e])]


def schema_errors(dash: dict[str, Any]) -> list[str]:
    """Where ``dash`` breaks Grafana's schema: the dashboard's, then each panel's options and custom field config
    against its panel type's (a panel type without a stored schema is an error: add it to the script)."""

    def fmt(where: str, errors: Any) -> list[str]:
        return [f"{where}{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _leaves(errors)]

    out = fmt("", DASHBOARD_SCHEMA.iter_errors(dash))
    for p in panels(dash):
        kind = p.get("type")
        if kind == "row":
            continue
        where = f"panel {p.get('title')!r} ({kind}) "
        if kind not in PANEL_SCHEMAS:
            out.append(f"{where}: no schema for panel type {kind!r} (grafana/dashboard_schema.sh)")
            continue
        out += fmt(where + "options/", _validator(kind, "Options").iter_errors(p.get("options", {})))
        custom = p.get("fieldConfig", {}).get("defaults", {}).get("custom")
        if custom is not None:
            fc = _validator(kind, "FieldConfig") if "FieldConfig" in _definitions(kind) else None
            assert fc, f"{where}: custom field config, but {kind} has none"
            out += fmt(where + "fieldConfig/defaults/custom/", fc.iter_errors(custom))
    return out


def _definitions(kind: str) -> dict[str, Any]:
    return dict(json.loads((SCHEMAS / f"{kind}.schema.json").read_text())["definitions"])


def test_the_schema_and_the_builders_are_for_the_grafana_we_run() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    image = compose["services"]["grafana"]["image"]
    version = (SCHEMAS / "VERSION").read_text()
    grafana = version.split()[1].rstrip(",")
    assert image == f"grafana/grafana:{grafana}", (image, version)
    # and the builders grafana/build_dashboards.py uses are the SDK's build for that Grafana (pyproject.toml)
    assert importlib.metadata.version("grafana-foundation-sdk").endswith(f"!{grafana}")
    assert set(PANEL_SCHEMAS) == {p["type"] for d in DASHES.values() for p in panels(d)} - {"row"}


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_dashboard_validates_against_grafanas_schema(uid: str) -> None:
    assert schema_errors(by_uid()[uid]) == []


def _break_grid(d: dict[str, Any]) -> None:
    d["panels"][0]["gridPos"]["w"] = "12"


def _unknown_panel_field(d: dict[str, Any]) -> None:
    d["panels"][0]["gridpos"] = d["panels"][0].pop("gridPos")


def _bad_stat_option(d: dict[str, Any]) -> None:
    next(p for p in panels(d) if p["type"] == "stat")["options"]["colorMode"] = "blue"


def _bad_draw_style(d: dict[str, Any]) -> None:
    next(p for p in panels(d) if p["type"] == "timeseries")["fieldConfig"]["defaults"]["custom"]["drawStyle"] = "dots"


def _missing_table_option(d: dict[str, Any]) -> None:
    del next(p for p in panels(d) if p["type"] == "table")["options"]["frameIndex"]


def _bad_variable(d: dict[str, Any]) -> None:
    d["templating"]["list"][1]["type"] = "label_values"


def _unknown_panel_type(d: dict[str, Any]) -> None:
    next(p for p in panels(d) if p["type"] == "stat")["type"] = "singlestat"


@pytest.mark.parametrize(
    ("breakage", "error"),
    [
        (_break_grid, "panels/0/gridPos/w: '12' is not of type 'number'"),
        (_unknown_panel_field, "panels/0: Additional properties are not allowed ('gridpos' was unexpected)"),
        (_bad_stat_option, "options/colorMode: 'blue' is not one of"),
        (_bad_draw_style, "custom/drawStyle: 'dots' is not one of"),
        (_missing_table_option, "options/: 'frameIndex' is a required property"),
        (_bad_variable, "templating/list/1/type: 'label_values' is not one of"),
        (_unknown_panel_type, "no schema for panel type 'singlestat'"),
    ],
)
def test_the_schema_rejects_a_broken_dashboard(breakage: Any, error: str) -> None:
    dash = copy.deepcopy(by_uid()["spend-overview"])
    assert schema_errors(dash) == []
    breakage(dash)
    errors = schema_errors(dash)
    assert any(error in e for e in errors), errors


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
    assert "Cost per 1M tokens" not in {title for _, title in units}  # blended input, output and cache tokens
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
    assert {"Top services, month to date", "Anomalies on the newest complete day"} <= titles["spend-overview"]
    assert {"Month to date by team", "Services by team, month to date", "Budget use by team"} <= titles["spend-teams"]
    assert "Previous month by team" in titles["spend-teams"]
    assert {"Cost by model, month to date", "Cost by project, month to date", "Tokens by type"} <= titles["spend-ai"]
    assert {"Cost and tokens by model, month to date", "Last-hour cost by model"} <= titles["spend-ai"]
    assert {"Burn rate by model", "Age of burn data", "Last hour against hourly baseline"} <= titles["spend-ai"]
    assert {"Guard actions by result", "Guard actions in force"} <= titles["spend-exporter"]
    assert {"Sources up", "Age of data", "Refresh duration", "API requests", "API cost, trailing 24h"} <= titles[
        "spend-exporter"
    ]
    assert {"Cache", "Records skipped by the last refresh", "Label values truncated, per hour"} <= titles[
        "spend-exporter"
    ]
    # issue 16: each team's direct and shared cost, the pools, the unallocated share over time, the staging waste,
    # customers by cost and margin (negative first), per-key AI spend
    assert {
        "Teams: direct and shared cost, month to date",
        "Shared-cost pools, month to date",
        "Unallocated share over time",
        "Month to date by environment",
        "Cost by environment and service, month to date",
        "Customers by margin, negative first",
        "Customers by cost, month to date",
        "Negative margins",
        "AI spend by API key, month to date",
    } <= titles["spend-allocation"]


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
    (multiple,) = re.findall(r"group_left (\d+) \* sum by \([a-z_, ]+\) \(spend_cost_daily_baseline_usd\) / 24", expr)
    (floor,) = re.findall(r"and spend_ai_burn_rate_usd_per_hour > (\d+)", expr)
    (panel,) = [p for p in panels(by_uid()["spend-ai"]) if p["title"] == "Burn rate by model"]
    rate, threshold = (t["expr"] for t in panel["targets"])
    assert rate.startswith("spend_ai_burn_rate_usd_per_hour{")
    assert f"clamp_min({multiple} * sum by (" in threshold and "(spend_cost_daily_baseline_usd{" in threshold
    assert f"/ 24, {floor})\nor " in threshold and threshold.endswith(f" * 0 + {floor}")
    # matched as the alert matches: on the cost labels (and the target), the baseline summed over the extra labels
    (on,) = re.findall(r"on \(([a-z_, ]+)\) group_left", expr)
    assert f"on ({on}) group_left ()" in threshold and f"sum by ({on})" in threshold
    assert f"{multiple}x its hourly baseline" in panel["description"] and f"${floor} an hour" in panel["description"]


# --------------------------------------------------------------------------- issue 15: by billing date

BUILDER = load_builder()


def _panel(uid: str, title: str) -> dict[str, Any]:
    (p,) = [p for p in panels(by_uid()[uid]) if p["title"] == title]
    return p


def test_finops_panels_are_present() -> None:
    titles = {d["uid"]: {p["title"] for p in panels(d)} for d in DASHES.values()}
    assert {
        "Last month, same day",
        "Data through",
        "Month to date against last month",
        "Monthly spend by provider, 13 months",
        "Top movers by service, day over day",
        "Top movers by service, week over week",
    } <= titles["spend-overview"]
    assert {
        "Monthly spend by team, 13 months",
        "Top movers by team, day over day",
        "Top movers by team, week over week",
    } <= titles["spend-teams"]
    assert not any("today" in t.lower() for ts in titles.values() for t in ts)  # nothing shows a complete today


def test_no_chart_plots_the_daily_gauge_against_scrape_time() -> None:
    """A range query of spend_cost_daily_usd puts day D at day D+1 (the gauge is D all of D+1): every chart of it
    reads by billing date, every 1d, and draws bars; what reads it at now is an instant query (a stat, a table)."""
    charts = 0
    for d in DASHES.values():
        for p in panels(d):
            for t in p.get("targets", []):
                if "spend_cost_daily_usd" not in t["expr"] or t["instant"]:
                    continue
                charts += 1
                assert BUILDER.NEXT_DAY in t["expr"], f"{d['uid']}/{p['title']}"
                assert "last_over_time(spend_cost_daily_usd{" in t["expr"]
                assert p["interval"] == "1d" and p["maxDataPoints"] >= 400, p["title"]
                assert p["fieldConfig"]["defaults"]["custom"]["drawStyle"] == "bars"
    assert charts == 2  # by provider, by team
    assert {d["timezone"] for d in DASHES.values()} == {"utc"}  # the steps fall on 00:00 UTC only in UTC


def test_the_billing_date_windows_are_one_utc_day_and_days_1_to_28() -> None:
    """From 00:00 of day D the window is [D+1 00:00:00.000, D+1 23:59:59.999]; from 00:00 of a month's last day,
    days 1 to 28 of the next month, 00:00:00.000 to 23:59:59.999."""

    def span(window: str) -> tuple[int, int]:
        rng, off = re.fullmatch(r"\[(\S+)\] offset -(\S+)", window).groups()  # type: ignore[union-attr]
        return _ms(off) - _ms(rng), _ms(off)

    day = 86_400_000
    assert span(BUILDER.NEXT_DAY) == (day, 2 * day - 1)  # in ms from 00:00 of day D: all of D+1, no more
    assert span(BUILDER.NEXT_MONTH) == (day, 29 * day - 1)


def _ms(d: str) -> int:
    units = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
    parts = re.findall(r"(\d+)(ms|[smhdw])", d)
    assert "".join(n + u for n, u in parts) == d, d
    return sum(int(n) * units[u] for n, u in parts)


def test_monthly_bars_keep_one_point_per_month_as_a_bar_chart_of_13_months() -> None:
    for uid, title in [
        ("spend-overview", "Monthly spend by provider, 13 months"),
        ("spend-teams", "Monthly spend by team, 13 months"),
    ]:
        p = _panel(uid, title)
        (t,) = p["targets"]
        assert p["type"] == "barchart" and p["timeFrom"] == "13M"
        assert p["interval"] == "1d" and p["maxDataPoints"] >= 400  # the step must stay 1d to meet every month end
        assert t["expr"].endswith(BUILDER.MONTH_END)
        assert f"last_over_time(spend_cost_previous_month_usd{{{BUILDER.F}}}{BUILDER.NEXT_MONTH})" in t["expr"]
        assert p["transformations"] == [{"id": "joinByField", "options": {"byField": "Time", "mode": "outer"}}]
        assert p["options"]["xField"] == "Time"
        assert p["fieldConfig"]["defaults"]["unit"] == "currencyUSD"


def test_last_month_same_day_tries_every_month_length() -> None:
    expr = _panel("spend-overview", "Last month, same day")["targets"][0]["expr"]
    for n in (28, 29, 30, 31):
        assert f"offset {n}d) and on () {BUILDER.PREV_MONTH_DAYS} == {n})" in expr
    assert f"day_of_month() > {BUILDER.PREV_MONTH_DAYS}" in expr  # past the end of a shorter month
    (_, b) = _panel("spend-overview", "Month to date against last month")["targets"]
    assert b["expr"] == expr


@pytest.mark.parametrize(
    ("uid", "title", "offset"),
    [
        ("spend-overview", "Top movers by service, day over day", "1d"),
        ("spend-overview", "Top movers by service, week over week", "7d"),
        ("spend-teams", "Top movers by team, day over day", "1d"),
        ("spend-teams", "Top movers by team, week over week", "7d"),
    ],
)
def test_top_movers(uid: str, title: str, offset: str) -> None:
    p = _panel(uid, title)
    change, newest, then = (t["expr"] for t in p["targets"])
    assert all(t["instant"] and t["format"] == "table" for t in p["targets"])
    top = f"topk(10, abs({change.split(chr(10))[0]}))"
    assert all(top in e for e in (change, newest, then))  # the same ten rows in every column
    assert all(e.endswith(f"and on () group(spend_cost_daily_usd offset {offset})") for e in (change, newest, then))
    assert f"spend_cost_daily_usd{{{BUILDER.F}}} offset {offset})" in then
    assert [_unit_of(p, t["refId"], 3) for t in p["targets"]] == ["currencyUSD"] * 3


def test_data_through_is_a_date_per_source() -> None:
    p = _panel("spend-overview", "Data through")
    (t,) = p["targets"]
    assert t["expr"] == "spend_exporter_source_data_through_timestamp_seconds * 1000"  # Grafana's times are in ms
    assert t["legendFormat"] == "{{source}}"
    assert p["fieldConfig"]["defaults"]["unit"] == "time:YYYY-MM-DD HH:mm"


def test_exporter_dashboard_provider_comes_from_the_cost_families() -> None:
    """The exporter's own families carry the source's type as ``provider`` (``focus``): a provider variable taken
    from them empties every cost panel. Source panels are filtered by source alone."""
    variables = {v["name"]: v for v in by_uid()["spend-exporter"]["templating"]["list"]}
    assert variables["provider"]["query"] == "label_values(spend_cost_month_to_date_usd, provider)"
    assert variables["source"]["query"] == "label_values(spend_exporter_source_up, source)"
    for d in DASHES.values():
        for p in panels(d):
            for t in p.get("targets", []):
                for sel in re.findall(r"spend_exporter_\w+\{([^}]*)\}", t["expr"]):
                    assert "$provider" not in sel, f"{d['uid']}/{p['title']}"


def test_cost_and_tokens_by_model_keeps_token_types_apart() -> None:
    p = _panel("spend-ai", "Cost and tokens by model, month to date")
    exprs = [t["expr"] for t in p["targets"]]
    units = [_unit_of(p, t["refId"], len(exprs)) for t in p["targets"]]
    types = [re.search(r'token_type="(\w+)"', e) for e in exprs[1:5]]
    assert [m.group(1) for m in types if m] == ["input", "output", "cache_read", "cache_write"]
    assert units == ["currencyUSD", "short", "short", "short", "short", "x"]
    assert "spend_ai_price_ratio" in exprs[5]
    assert not any("/" in e for e in exprs)  # no rate that divides a cost by tokens of every type


HISTORY = {
    # the queries that compare with days or months back: on a Prometheus that holds minutes they are run with
    # that history scaled down (tests/e2e/test_stack.py); a backfilled TSDB runs them as shipped
    "spend-overview/Last month, same day/A": ["28d", "29d", "30d", "31d"],
    "spend-overview/Month to date against last month/B": ["28d", "29d", "30d", "31d"],
    "spend-overview/Monthly spend by provider, 13 months/A": ["month"],
    "spend-teams/Monthly spend by team, 13 months/A": ["month"],
    **{
        f"{uid}/Top movers by {by}, {name}/{ref}": [off]
        for uid, by in [("spend-overview", "service"), ("spend-teams", "team")]
        for name, off in [("day over day", "1d"), ("week over week", "7d")]
        for ref in "ABC"
    },
}


def test_the_queries_that_need_history_are_known() -> None:
    got = {q.id: q.history for q in dashboard_queries() if q.history}
    assert got == HISTORY
    forward = {q.id for q in dashboard_queries() if q.by_billing_date}
    assert forward == {
        "spend-overview/Daily spend by provider/A",
        "spend-teams/Daily spend by team/A",
        "spend-overview/Monthly spend by provider, 13 months/A",
        "spend-teams/Monthly spend by team, 13 months/A",
    }


@pytest.mark.parametrize(
    ("now", "daily", "monthly"),
    [
        ("2026-12-07T11:51:00", "2026-12-06T00:00:00", "2026-11-30T00:00:00"),
        ("2026-03-01T00:00:01", "2026-02-28T00:00:00", "2026-02-28T00:00:00"),
        ("2028-03-31T23:59:59", "2028-03-30T00:00:00", "2028-02-29T00:00:00"),
        ("2027-01-01T08:00:00", "2026-12-31T00:00:00", "2026-12-31T00:00:00"),
    ],
)
def test_newest_point_of_a_billing_date_query(now: str, daily: str, monthly: str) -> None:
    import datetime as dt

    t = dt.datetime.fromisoformat(now).replace(tzinfo=dt.UTC)
    by = {q.id: q for q in dashboard_queries()}
    assert by["spend-teams/Daily spend by team/A"].at(t).isoformat() == daily + "+00:00"
    assert by["spend-teams/Monthly spend by team, 13 months/A"].at(t).isoformat() == monthly + "+00:00"
    assert by["spend-overview/Month to date/A"].at(t) == t
