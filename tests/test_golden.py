"""The demo data at a fixed clock, against a golden exposition, byte for byte.

The demo files are generated into a temporary directory by ``examples.generate_demo.generate`` at
``FIXED`` and served with ``examples/demo-config.yml``. Three values vary between runs and
machines and are replaced before comparing: build_info's Python version, the refresh duration
and the last-success timestamp.

To regenerate the golden file after an intended change, run::

    UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_golden.py

and review the diff of ``tests/data/golden/demo.prom`` before committing it.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import os
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from examples.generate_demo import generate
from exporter.app import App, build_app
from exporter.config import parse_config
from exporter.pricing import TOKEN_KEYS, PriceTable

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "data" / "golden" / "demo.prom"
FIXED = dt.datetime(2025, 6, 17, 14, 30, tzinfo=dt.UTC)
PROVIDERS = ("aws", "azure", "gcp", "oci", "openai", "anthropic")

# every family in DESIGN.md's table
DESIGN_FAMILIES = [
    "spend_cost_month_to_date_usd",
    "spend_cost_daily_usd",
    "spend_cost_daily_baseline_usd",
    "spend_cost_daily_baseline_stddev_usd",
    "spend_cost_previous_month_usd",
    "spend_cost_forecast_month_end_usd",
    "spend_ai_tokens_month_to_date",
    "spend_ai_requests_month_to_date",
    "spend_ai_cost_last_hour_usd",
    "spend_ai_price_ratio",
    "spend_budget_limit_usd",
    "spend_budget_spent_usd",
    "spend_budget_forecast_usd",
    "spend_budget_warning_ratio",
    "spend_provider_forecast_month_end_usd",
    "spend_account_info",
    "spend_customer_revenue_monthly_usd",
    "spend_exporter_source_up",
    "spend_exporter_source_last_success_timestamp_seconds",
    "spend_exporter_source_data_through_timestamp_seconds",
    "spend_exporter_source_refresh_duration_seconds",
    "spend_exporter_api_requests_total",
    "spend_exporter_api_cost_usd_total",
    "spend_exporter_series_overflow",
    "spend_exporter_build_info",
]

# (pattern, replacement) for the values that legitimately vary
VARYING = [
    (re.compile(r'^(spend_exporter_build_info\{.*pythonversion=")[^"]*(".*)$', re.M), r"\g<1><python>\g<2>"),
    (re.compile(r"^(spend_exporter_source_refresh_duration_seconds\{.*\}) \S+$", re.M), r"\g<1> <duration>"),
    (re.compile(r"^(spend_exporter_source_last_success_timestamp_seconds\{.*\}) \S+$", re.M), r"\g<1> <timestamp>"),
]


def normalise(text: str) -> str:
    for pattern, replacement in VARYING:
        text, n = pattern.subn(replacement, text)
        assert n >= 1, f"{pattern.pattern} matched nothing: the exposition changed shape"
    return text


def demo_app(directory: Path) -> App:
    generate(directory / "data", now=FIXED)
    raw = yaml.safe_load((ROOT / "examples" / "demo-config.yml").read_text())
    raw["cache_path"] = str(directory / "cache.sqlite")
    (src,) = raw["sources"]
    src["paths"] = [str(directory / "data" / Path(p).name) for p in src["paths"]]
    raw["revenue_file"] = str(directory / "data" / Path(raw["revenue_file"]).relative_to("examples/data"))
    app = build_app(parse_config(raw), now=lambda: FIXED)
    outcomes = app.refresh_all()
    assert all(o.ok for o in outcomes), outcomes
    return app


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    app = demo_app(tmp_path_factory.mktemp("demo"))
    yield app
    app.close()


@pytest.fixture(scope="module")
def exposition(demo: App) -> str:
    return demo.exposition()


def test_golden_exposition(exposition: str) -> None:
    got = normalise(exposition)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(got)
    want = GOLDEN.read_text()
    if got != want:
        diff = "".join(
            list(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "golden", "now", n=1))[:60]
        )
        pytest.fail(f"the demo exposition differs from {GOLDEN} (UPDATE_GOLDEN=1 to accept):\n{diff}")


def test_generation_is_reproducible(tmp_path: Path, exposition: str) -> None:
    """A second generation and refresh, from scratch, gives the same bytes: the golden file is stable."""
    app = demo_app(tmp_path)
    try:
        assert normalise(app.exposition()) == normalise(exposition)
    finally:
        app.close()


def test_golden_file_passes_promtool(exposition: str, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH (make promtool-deps installs it)")
    r = subprocess.run([promtool, "check", "metrics"], input=exposition.encode(), capture_output=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == b"" and r.stderr == b""


def _by_family(exposition: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = defaultdict(list)
    for fam in text_string_to_metric_families(exposition):
        for s in fam.samples:
            out[s.name].append(s)
    return out


def test_all_six_providers_have_month_to_date_spend(exposition: str) -> None:
    mtd: dict[str, float] = defaultdict(float)
    for s in _by_family(exposition)["spend_cost_month_to_date_usd"]:
        mtd[s.labels["provider"]] += s.value
    for p in PROVIDERS:
        assert mtd[p] > 0, f"no month-to-date spend for {p}"
    assert set(mtd) == set(PROVIDERS)


@pytest.mark.parametrize(
    "family",
    [
        pytest.param(
            f,
            marks=pytest.mark.xfail(
                strict=True,
                reason="reported to the lead: FOCUS files carry no provider forecast, so the demo has none",
            ),
        )
        if f == "spend_provider_forecast_month_end_usd"
        else f
        for f in DESIGN_FAMILIES
    ],
)
def test_every_design_family_has_a_sample(exposition: str, family: str) -> None:
    assert _by_family(exposition)[family], f"{family} has no sample in the demo"


def test_demo_ai_costs_are_list_prices(demo: App) -> None:
    """The demo's AI bill is its tokens at the exporter's list prices, to the cent, per model; ratio 1."""
    (source,) = demo.source_names()
    first, last = dt.date(2000, 1, 1), FIXED.date()
    billed: dict[tuple[str, str], float] = defaultdict(float)
    for provider, _account, model, usd in demo.store.ai_cost_by_model(source, ["openai", "anthropic"], first, last):
        billed[(provider, model)] += usd
    tokens: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for provider, _account, model, *counts in demo.store.usage_by_model(source, first, last):
        for tt, n in zip(TOKEN_KEYS, counts, strict=True):
            tokens[(provider, model)][tt] += n
    assert (
        set(billed)
        == set(tokens)
        == {
            ("openai", "gpt-4o"),
            ("openai", "gpt-4o-mini"),
            ("anthropic", "claude-sonnet-4-5"),
            ("anthropic", "claude-haiku-4-5"),
        }
    )
    table = PriceTable.load(at=FIXED)
    for key, usd in billed.items():
        est = table.estimate(*key, tokens[key])
        assert est.unpriced_tokens == 0, key
        assert round(usd, 2) == round(est.usd, 2), key
    ratios = series_values(demo.exposition(), "spend_ai_price_ratio")
    assert len(ratios) == 8 and all(v == pytest.approx(1.0, abs=1e-6) for v in ratios), ratios


def series_values(text: str, family: str) -> list[float]:
    return [s.value for f in text_string_to_metric_families(text) if f.name == family for s in f.samples]


def test_demo_tells_its_story(exposition: str) -> None:
    """What the demo is built to show: a budget past 80%, one over its limit, one anomalous day, AI burn."""
    fams = _by_family(exposition)

    def budget(family: str, name: str) -> float:
        (v,) = [s.value for s in fams[family] if s.labels["budget"] == name]
        return v

    ai = budget("spend_budget_spent_usd", "ai-platform") / budget("spend_budget_limit_usd", "ai-platform")
    assert 0.8 < ai < 1.0
    data = budget("spend_budget_spent_usd", "data-platform") / budget("spend_budget_limit_usd", "data-platform")
    assert data > 1.0

    def by_labels(family: str) -> dict[tuple[str, ...], float]:
        return {tuple(sorted(s.labels.items())): s.value for s in fams[family]}

    daily = by_labels("spend_cost_daily_usd")
    mean = by_labels("spend_cost_daily_baseline_usd")
    sd = by_labels("spend_cost_daily_baseline_stddev_usd")
    anomalies = [dict(k) for k, v in daily.items() if v > mean[k] + 3 * sd[k] and v > 2 * mean[k]]
    # the misconfigured Lambda of team search, yesterday (in each account that runs it), and nothing else
    assert {(a["provider"], a["service_name"], a["team"]) for a in anomalies} == {("aws", "AWS Lambda", "search")}
    assert all(math.isfinite(v) for v in daily.values())
    assert sum(s.value for s in fams["spend_ai_cost_last_hour_usd"]) > 0
    teams = {s.labels["team"] for s in fams["spend_cost_month_to_date_usd"]}
    assert {"search", "payments", "data", "ml-platform", "unallocated"} <= teams
    assert all(s.value == 1.0 for s in fams["spend_exporter_source_up"])
